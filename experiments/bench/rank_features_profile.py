"""Where the feature ranker's time goes, against a one-pass lower bound measured in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/rank_features_profile.py            # 1M x 40
    .venv/bin/python experiments/bench/rank_features_profile.py --rows 200000 --repeats 1 --no-spy

On the ``rank_features.py`` data (``make_feature_ranking_data``, parquet, cached):

* ``fit``: ``FeatureRanker(label="label").fit(path)`` (the ``recsys rank-features`` default, no
  pairs), each repeat in a fresh process: wall, CPU (user + sys, all threads) and peak RSS;
* ``lower bound``: the least any exact one-pass ranking has to do -- read the 41 columns
  (``pl.read_parquet``) and one ``np.bincount`` per column per label vector (the label and 5
  permutations) over precomputed dense codes (the coding itself, which the ranker must do,
  is *not* counted): wall and CPU, in a fresh process too;
* with py-spy installed (``pip install py-spy``, not a recsys dependency) and without
  ``--no-spy``: a sampled profile of one fit, as the share of samples per recsys function
  (inclusive) and per leaf function (self).

Prints medians and the ratio fit / lower bound. On a shared machine quote CPU seconds: wall time
moves with the load, CPU much less.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_FIT = r"""
import json, resource, sys, time
from recsys.features import FeatureRanker
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
t, c = time.perf_counter(), cpu()
FeatureRanker(label="label").fit(sys.argv[1])
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_BOUND = r"""
import json, resource, sys, time
import numpy as np, polars as pl
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
t, c = time.perf_counter(), cpu()
df = pl.read_parquet(sys.argv[1])
read_wall, read_cpu = time.perf_counter() - t, cpu() - c
y = df["label"].to_numpy().astype(np.int64)
rng = np.random.default_rng(0)
ys = [y] + [rng.permutation(y) for _ in range(5)]
codes = []
for name in df.columns:  # dense codes, not timed
    if name == "label":
        continue
    s = df[name]
    if isinstance(s.dtype, pl.List):
        s = s.cast(pl.List(pl.String)).list.sort().list.join(",")
    if s.dtype.is_float():
        s = s.qcut(10, allow_duplicates=True)
    codes.append(s.rank("dense").fill_null(0).cast(pl.Int64).to_numpy())
t, c = time.perf_counter(), cpu()
for k in codes:
    card = int(k.max()) + 1
    for yy in ys:
        np.bincount(k * 2 + yy, minlength=2 * card)
print(json.dumps({"read_wall_s": read_wall, "read_cpu_s": read_cpu, "count_wall_s": time.perf_counter() - t,
                  "count_cpu_s": cpu() - c}))
"""


def run(code: str, path: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def spy(path: Path) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "spy.raw"
        subprocess.run([exe, "record", "-r", "100", "--format", "raw", "-o", str(raw), "--", sys.executable, "-c",
                        _FIT, str(path)], check=True, capture_output=True, cwd=ROOT)
        incl, leaf, total = Counter(), Counter(), 0
        for line in raw.read_text().splitlines():
            if not line.strip():
                continue
            stack, n = line.rsplit(" ", 1)
            total += int(n)
            frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0] for f in stack.split(";")]
            leaf[frames[-1]] += int(n)
            for f in set(frames):
                if "recsys" in f or f.split(" ")[-1] in ("ranking.py", "counting.py", "quality.py", "significance.py"):
                    incl[f] += int(n)
    return ([(k, v / total) for k, v in incl.most_common(20)], [(k, v / total) for k, v in leaf.most_common(15)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-spy", action="store_true")
    ap.add_argument("--data", default=None, help="a parquet file of the same data (skips rank_features' cache)")
    args = ap.parse_args()
    if args.data:
        pq = Path(args.data)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from rank_features import make_data

        pq, _, _ = make_data(args.rows, args.seed)
    fits, bounds = [], []
    for _ in range(args.repeats):  # alternate, so both see the same load
        fits.append(run(_FIT, pq))
        bounds.append(run(_BOUND, pq))
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    f_wall, f_cpu = med(fits, "wall_s"), med(fits, "cpu_s")
    b_wall = med(bounds, "read_wall_s") + med(bounds, "count_wall_s")
    b_cpu = med(bounds, "read_cpu_s") + med(bounds, "count_cpu_s")
    print(f"{args.rows} rows, median of {args.repeats}:")
    print(f"  fit          wall {f_wall:7.2f} s  cpu {f_cpu:6.2f} s  peak RSS {max(r['peak_rss_mib'] for r in fits):.0f} MiB")
    print(f"  lower bound  wall {b_wall:7.2f} s  cpu {b_cpu:6.2f} s  (read {med(bounds, 'read_cpu_s'):.2f} + "
          f"bincounts {med(bounds, 'count_cpu_s'):.2f} cpu s)")
    print(f"  fit / lower bound: wall {f_wall / b_wall:.2f}x, cpu {f_cpu / b_cpu:.2f}x")
    if not args.no_spy:
        incl, leaf = spy(pq)
        print("  profile, share of samples (inclusive, recsys):")
        for k, v in incl:
            print(f"    {v:6.1%}  {k}")
        print("  profile, share of samples (leaf functions):")
        for k, v in leaf:
            print(f"    {v:6.1%}  {k}")


if __name__ == "__main__":
    main()

"""The default ranker fit in two checkouts (before / after a change), alternating fresh processes.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/bench/rank_features_compare.py \\
        --data /tmp/fr1m.parquet --before /work/main --after . --repeats 3

``--data``: a parquet file of the ranking benchmark data (``make_feature_ranking_data``, 1M x 40,
as ``rank_features_profile.py`` writes it). Each repeat runs ``FeatureRanker(label="label").fit``
(the ``recsys rank-features`` default) once with each checkout's ``recsys`` first on the path, in a
fresh process: CPU seconds (user + sys, all threads), wall, peak RSS, the heuristic and the top 9.
Prints the medians and the CPU ratio after / before. On a shared machine quote CPU seconds.
``--single-thread``: both fits with ``n_threads=1`` and ``POLARS_MAX_THREADS=1`` (steadier CPU figures).
Issue 18 item 5 (the coder's insert and string-batch dedupe), 2026-12-07, single thread, load 8-15:
4.85 s before, 4.63 s after (0.955; again 4.46 vs 4.09 s, 0.915); default threads 4.94 vs 4.83 s (0.979, noisier).
Issue 18 items 5/6, session 3 (EMI table, grow-first coder, code fingerprint, ...; 1930ad6 -> 8556a9a),
load 10-25: single thread 4.60 -> 3.86 s (0.840), default threads 5.25 -> 4.10 s (0.782); same ranking.
Issue 21 (``mi-redundancy`` replacing ``mi-cardinality``), 2026-12-07, load 10-30: median CPU
4.80 s before, 5.28 s after, ratio 1.10; peak RSS 991 -> 1008 MiB (again on the final code:
4.75 s vs 5.22 s, 1.10).

``--ids-worst-case``: instead, in this checkout, ``mi-cardinality`` vs ``mi-redundancy`` on a
generated 1M-row table of 20 *informative* integer id columns (1,000 to 50,000 values, additive
effects): every column passes the selection test, so the redundancy step orders 20 candidates
whose pairs are all sparse -- its most expensive case (2026-12-07: 0.53 s vs 1.58 s CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

FIT = r"""
import json, resource, sys, time
from recsys.features import FeatureRanker
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
t, c = time.perf_counter(), cpu()
kw = {"n_threads": int(sys.argv[2])} if len(sys.argv) > 2 else {}
r = FeatureRanker(label="label", **kw).fit(sys.argv[1])
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c, "heuristic": r.heuristic,
                  "top": r.ranking_["feature"].to_list()[:9],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--ids-worst-case", action="store_true",
                    help="mi-cardinality vs mi-redundancy in this checkout on 20 informative id columns (see above)")
    ap.add_argument("--before", default=None, help="checkout (repository root) of the baseline")
    ap.add_argument("--after", default=".", help="checkout of the change (default: this one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single-thread", action="store_true",
                    help="n_threads=1 and POLARS_MAX_THREADS=1 in both (less noisy CPU figures than the default's two threads)")
    args = ap.parse_args()
    if args.ids_worst_case:
        return ids_worst_case(args.repeats)
    if not args.data or not args.before:
        ap.error("--data and --before are needed (or --ids-worst-case)")
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    res: dict[str, list[dict]] = {k: [] for k in trees}
    for i in range(args.repeats):
        for k, tree in trees.items():  # cwd and PYTHONPATH: that checkout's recsys wins
            env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            extra = []
            if args.single_thread:
                env["POLARS_MAX_THREADS"] = "1"
                extra = ["1"]
            out = subprocess.run([sys.executable, "-c", FIT, str(Path(args.data).resolve()), *extra], env=env, cwd=tree,
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[k].append(r)
            print(k, i, json.dumps(r), flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("cpu_s", "wall_s", "peak_rss_mib")}
           for k, v in res.items()}
    print(f"median CPU before {med['before']['cpu_s']:.2f} s, after {med['after']['cpu_s']:.2f} s, ratio after/before "
          f"{med['after']['cpu_s'] / med['before']['cpu_s']:.3f}; peak RSS {med['before']['peak_rss_mib']:.0f} -> "
          f"{med['after']['peak_rss_mib']:.0f} MiB")


def ids_worst_case(repeats: int) -> None:
    import resource

    import numpy as np
    import polars as pl

    from recsys.features import FeatureRanker

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    rng = np.random.default_rng(0)
    n = 1_000_000
    cols, logit = {}, np.zeros(n)
    for j in range(20):
        card = (1_000, 5_000, 20_000, 50_000)[j % 4]
        c = rng.integers(0, card, n)
        logit += rng.normal(0, 0.5, card)[c]
        cols[f"id{j}"] = c
    cols["label"] = (rng.random(n) < 1 / (1 + np.exp(-(logit - 1)))).astype(np.int8)
    df = pl.DataFrame(cols)
    res: dict[str, list[float]] = {"mi-cardinality": [], "mi-redundancy": []}
    for _ in range(repeats):
        for h in res:
            c = cpu()
            r = FeatureRanker(label="label", heuristic=h).fit(df)
            res[h].append(cpu() - c)
            print(h, f"CPU {res[h][-1]:.2f} s, {len(r.selected())} selected", flush=True)
    a, b = (statistics.median(v) for v in res.values())
    print(f"median CPU mi-cardinality {a:.2f} s, mi-redundancy {b:.2f} s, ratio {b / a:.2f}")


if __name__ == "__main__":
    main()

"""The default ranker fit in two checkouts (before / after a change), alternating fresh processes.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/bench/rank_features_compare.py \\
        --data /tmp/fr1m.parquet --before /work/main --after . --repeats 3

``--data``: a parquet file of the ranking benchmark data (``make_feature_ranking_data``, 1M x 40,
as ``rank_features_profile.py`` writes it). Each repeat runs ``FeatureRanker(label="label").fit``
(the ``recsys rank-features`` default) once with each checkout's ``recsys`` first on the path, in a
fresh process: CPU seconds (user + sys, all threads), wall, peak RSS, the heuristic and the top 9.
Prints the medians and the CPU ratio after / before. On a shared machine quote CPU seconds.
Issue 21 (``mi-redundancy`` replacing ``mi-cardinality``), 2026-12-07, load 10-30: median CPU
4.80 s before, 5.28 s after, ratio 1.10; peak RSS 991 -> 1008 MiB.
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
r = FeatureRanker(label="label").fit(sys.argv[1])
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c, "heuristic": r.heuristic,
                  "top": r.ranking_["feature"].to_list()[:9],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--before", required=True, help="checkout (repository root) of the baseline")
    ap.add_argument("--after", default=".", help="checkout of the change (default: this one)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    res: dict[str, list[dict]] = {k: [] for k in trees}
    for i in range(args.repeats):
        for k, tree in trees.items():  # cwd and PYTHONPATH: that checkout's recsys wins
            env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            out = subprocess.run([sys.executable, "-c", FIT, str(Path(args.data).resolve())], env=env, cwd=tree,
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[k].append(r)
            print(k, i, json.dumps(r), flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("cpu_s", "wall_s", "peak_rss_mib")}
           for k, v in res.items()}
    print(f"median CPU before {med['before']['cpu_s']:.2f} s, after {med['after']['cpu_s']:.2f} s, ratio after/before "
          f"{med['after']['cpu_s'] / med['before']['cpu_s']:.3f}; peak RSS {med['before']['peak_rss_mib']:.0f} -> "
          f"{med['after']['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()

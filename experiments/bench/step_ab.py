"""Training-step time, same run, arms alternated: the allocator settings (issue 18) and, with
``--before DIR``, the code of another checkout.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/step_ab.py \\
        [--models autoint_plus autoint deepfm moe dcn_v2] [--datasets ml100k adult wide] \\
        [--rounds 3] [--before /tmp/recsys-before]

Arms, each a fresh process per round (the allocator settings are process-wide and must come
before torch loads):

* ``default``: this checkout, ``RECSYS_ALLOCATOR=default`` (glibc's and torch's defaults);
* ``tuned``: this checkout after :func:`recsys.utils.tune_allocator`, what ``recsys fit`` does;
* ``before`` (with ``--before``): that checkout's code (``PYTHONPATH``), glibc's and torch's
  defaults: the state before a code change, to read the change and the allocator together.

A process builds the model of ``experiments/<model>_ml100k.yaml`` on the data set at batch 4,096
(``ctr_models.build_ours``: the same model, data and optimizer step as the benchmark's
compute-only mode; AutoInt with FuxiCTR's ``residual: auto``), holds 8 batches, steps them 3 times
to warm up, then times 5 passes over them; the figure is the median seconds per step, and the
peak RSS of the process. Rounds alternate the arms; the table has the median over rounds of
each arm, and the median of the per-round ratios against the first arm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BATCH, HELD, WARM, PASSES = 4096, 8, 3, 5


def worker(model: str, dataset: str, wide_rows: int, tune: bool) -> None:
    if tune:
        from recsys.utils import tune_allocator

        applied = tune_allocator()
        if not all(applied.values()):
            raise SystemExit(f"allocator settings not applied: {applied}")
    import resource

    import torch

    sys.path.insert(0, str(HERE))
    import ctr_models

    torch.set_num_threads(1)
    dm, step = ctr_models.build_ours(model, dataset, BATCH, wide_rows, paper_residual=False)
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == HELD:
            break
    for batch in batches[:WARM]:
        step(batch)
    times = []
    for _ in range(PASSES):
        t0 = time.perf_counter()
        for batch in batches:
            step(batch)
        times.append((time.perf_counter() - t0) / len(batches))
    print(json.dumps({"s_per_step": statistics.median(times),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_arm(arm: str, model: str, dataset: str, wide_rows: int, before: Path | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        env.pop(k, None)
    tree = before if arm == "before" else ROOT
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["RECSYS_ALLOCATOR"] = "tuned" if arm == "tuned" else "default"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model, dataset, str(wide_rows)]
    if arm == "tuned":
        cmd.append("--tune")
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{arm} {model} {dataset} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["autoint_plus", "autoint", "deepfm", "moe", "dcn_v2"])
    ap.add_argument("--datasets", nargs="+", default=["ml100k", "adult", "wide"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wide-rows", type=int, default=50_000)
    ap.add_argument("--before", type=Path, help="a checkout whose code is the 'before' arm")
    ap.add_argument("--out", help="write the rows as JSON to experiments/bench/results/<out>.json")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "DATASET", "WIDE_ROWS"), help=argparse.SUPPRESS)
    ap.add_argument("--tune", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]), args.tune)
        return
    arms = (["before"] if args.before else []) + ["default", "tuned"]
    rows = []
    print(f"| data set | model | {' | '.join(f'{a} ms/step' for a in arms)} | "
          f"{' | '.join(f'{a} vs {arms[0]}' for a in arms[1:])} | peak RSS MiB ({' / '.join(arms)}) |")
    print("|---" * (3 + 2 * len(arms)) + "|")
    for dataset in args.datasets:
        for model in args.models:
            res: dict[str, list[dict]] = {a: [] for a in arms}
            for _ in range(args.rounds):
                for arm in arms:
                    res[arm].append(run_arm(arm, model, dataset, args.wide_rows, args.before))
            med = {a: statistics.median(r["s_per_step"] for r in res[a]) for a in arms}
            ratios = {a: statistics.median(res[arms[0]][i]["s_per_step"] / res[a][i]["s_per_step"]
                                           for i in range(args.rounds)) for a in arms[1:]}
            rss = {a: statistics.median(r["peak_rss_mib"] for r in res[a]) for a in arms}
            print(f"| {dataset} | {model} | {' | '.join(f'{1000 * med[a]:.1f}' for a in arms)} | "
                  f"{' | '.join(f'{ratios[a]:.2f}x' for a in arms[1:])} | "
                  f"{' / '.join(f'{rss[a]:.0f}' for a in arms)} |", flush=True)
            rows.append({"dataset": dataset, "model": model, "rounds": args.rounds, "runs": res,
                         "median_s_per_step": med, "speedup_vs_first": ratios, "peak_rss_mib": rss})
    if args.out:
        path = HERE / "results" / f"{args.out}.json"
        path.write_text(json.dumps({"arms": arms, "before": str(args.before) if args.before else None,
                                    "rows": rows}, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

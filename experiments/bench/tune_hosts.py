"""Trials per hour of one study on a shared storage: 1 `recsys tune` process vs 2, same space and seed.

    python experiments/bench/tune_hosts.py --storage postgresql://tuner:PASSWORD@127.0.0.1:5432/optuna
    python experiments/bench/tune_hosts.py --storage ... --n-trials 16 --rounds 2

Each run is a new study (``bench_<K>p_<round>_<time>``) of ``--n-trials`` trials on ``--storage``,
worked by K separately started `recsys tune` processes (K = 1 and 2), each ``--workers 1`` with its
own ``--study-dir`` and ``RECSYS_TUNE_HOST`` name, the way K hosts would run the same command.
Every run uses the same config, space and ``--seed``, and ``--pruner none`` so that every trial
trains the same number of epochs (pruning would make the work depend on the order trials finish
in). Rounds alternate the order (1, 2, 2, 1, ...) so that a drift in the machine's load hits both.

Printed per run: wall time of the commands (start to last exit, imports and the config check
included), the trials' own span (first trial start to last trial end, from the storage), and
trials per hour on each; then the medians and the ratio 2 processes / 1 process. On a machine
with fewer free cores than processes the ratio stays near 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args, k: int, tag: str) -> dict:
    import optuna

    name = f"bench_{k}p_{tag}"
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    procs = []
    load = os.getloadavg()[0]
    t0 = time.time()
    for i in range(k):
        host = f"host-{i + 1}"
        cmd = [sys.executable, "-m", "recsys.cli", "tune", "--config", args.config, "--space", args.space,
               "--n-trials", str(args.n_trials), "--storage", args.storage, "--study-name", name,
               "--study-dir", str(out / host), "--workers", "1", "--seed", str(args.seed), "--pruner", "none",
               "--no-export"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**env, "RECSYS_TUNE_HOST": host},
                                      stdout=open(out / f"{host}.log", "w"), stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    wall = time.time() - t0
    if any(codes):
        raise SystemExit(f"{name}: exit codes {codes}; see {out}/host-*.log")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from recsys.tuning.study import storage_url

    trials = optuna.load_study(study_name=name, storage=storage_url(args.storage)).get_trials()
    done = [t for t in trials if t.state.is_finished()]
    assert len(done) == args.n_trials, (name, len(done))
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    by_host: dict[str, int] = {}
    for t in done:
        h = t.system_attrs["recsys:owner"]["host"]
        by_host[h] = by_host.get(h, 0) + 1
    r = {"k": k, "name": name, "load": load, "wall": wall, "span": span, "per_hour_wall": 3600 * len(done) / wall,
         "per_hour_span": 3600 * len(done) / span, "by_host": by_host}
    print(f"{name}: {len(done)} trials, wall {wall:.0f}s ({r['per_hour_wall']:.0f}/h), trials' span {span:.0f}s "
          f"({r['per_hour_span']:.0f}/h), trials per host {by_host}; load average at start {load:.1f}", flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--storage", required=True, help="the shared storage URL (e.g. postgresql://user:pw@host/db)")
    p.add_argument("--config", default="experiments/deepfm_synthetic.yaml")
    p.add_argument("--space", default="experiments/spaces/deepfm_synthetic.yaml")
    p.add_argument("--n-trials", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1, help="each round runs 1 and 2 processes (order alternates)")
    p.add_argument("--out", default="runs/bench/tune_hosts")
    args = p.parse_args()
    tag0 = time.strftime("%H%M%S")
    results = []
    for r in range(args.rounds):
        for k in ((1, 2) if r % 2 == 0 else (2, 1)):
            results.append(run(args, k, f"{r}_{tag0}"))
    print(f"\n{'processes':>9} {'runs':>4} {'median wall s':>13} {'trials/h (wall)':>15} {'trials/h (span)':>15}")
    med = {}
    for k in (1, 2):
        rs = [x for x in results if x["k"] == k]
        med[k] = {key: statistics.median(x[key] for x in rs) for key in ("wall", "per_hour_wall", "per_hour_span")}
        print(f"{k:>9} {len(rs):>4} {med[k]['wall']:>13.0f} {med[k]['per_hour_wall']:>15.0f} "
              f"{med[k]['per_hour_span']:>15.0f}")
    print(f"ratio 2/1: trials/h (wall) {med[2]['per_hour_wall'] / med[1]['per_hour_wall']:.2f}, "
          f"(span) {med[2]['per_hour_span'] / med[1]['per_hour_span']:.2f}; "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

"""Sweeps benchmark: one search space and trial budget, with and without pruning, on ml100k-ctr.

    python experiments/bench/tuning.py                       # DeepFM, 30 trials, <= 8 epochs each
    python experiments/bench/tuning.py --n-trials 40 --pruner hyperband

Runs ``recsys tune`` twice (the same config, space, seed and budget; ``--pruner none`` and then
the chosen pruner), each in its own study directory under ``--out``, and prints for each: best
valid AUC, test AUC of the best config (the best trial's own test evaluation, as `recsys fit`
writes it), total epochs trained and wall time, then the ratios pruned / unpruned.

Bar (BENCHMARKS.md, "sweeps"): pruning reaches the unpruned best valid AUC within 0.002 using
<= 60% of the epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_study(args, pruner: str) -> dict:
    study_dir = Path(args.out) / pruner
    if study_dir.exists() and not args.resume:
        import shutil

        shutil.rmtree(study_dir)
    cmd = [sys.executable, "-m", "recsys.cli", "tune", "--config", args.config, "--space", args.space,
           "--n-trials", str(args.n_trials), "--study-dir", str(study_dir), "--study-name", f"bench_{pruner}",
           "--pruner", pruner, "--seed", str(args.seed)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    log = open(Path(args.out) / f"{pruner}.log", "w")
    rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"recsys tune ({pruner}) failed with status {rc}; see {log.name}")
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=f"bench_{pruner}", storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")
    trials = study.get_trials(deepcopy=False)
    best = study.best_trial
    return {
        "pruner": pruner,
        "best_valid_auc": best.value,
        "best_test_auc": best.user_attrs.get("test_auc"),
        "best_trial": best.number,
        "epochs": sum(int(t.user_attrs.get("epochs") or 0) for t in trials),
        "wall_s": wall,
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/deepfm_ml100k.yaml")
    p.add_argument("--space", default="experiments/spaces/deepfm_ml100k_bench.yaml")
    p.add_argument("--n-trials", type=int, default=30)
    p.add_argument("--pruner", default="median", choices=("median", "hyperband"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_tuning")
    p.add_argument("--resume", action="store_true", help="keep existing study directories (resume them)")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    res = [run_study(args, "none"), run_study(args, args.pruner)]
    (Path(args.out) / "results.json").write_text(json.dumps(res, indent=2))
    print(f"config {args.config}, space {args.space}, {args.n_trials} trials each, seed {args.seed}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
    print(f"{'pruner':<10}{'best valid AUC':>16}{'test AUC (best)':>17}{'epochs':>8}{'wall s':>9}"
          f"{'complete/pruned/failed':>25}")
    for r in res:
        test = f"{r['best_test_auc']:.4f}" if isinstance(r["best_test_auc"], float) else "-"
        print(f"{r['pruner']:<10}{r['best_valid_auc']:>16.4f}{test:>17}{r['epochs']:>8}{r['wall_s']:>9.0f}"
              f"{r['complete']:>13}/{r['pruned']}/{r['failed']}")
    a, b = res
    d_auc = b["best_valid_auc"] - a["best_valid_auc"]
    e_ratio = b["epochs"] / max(1, a["epochs"])
    w_ratio = b["wall_s"] / max(1e-9, a["wall_s"])
    print(f"ratios ({b['pruner']} / none): epochs {e_ratio:.2f}, wall time {w_ratio:.2f}; "
          f"best valid AUC difference {d_auc:+.4f}")
    ok = d_auc >= -0.002 and e_ratio <= 0.60
    print(f"bar (best valid AUC within 0.002 using <= 60% of the epochs): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()

"""How many intra-op threads to use on a small machine: OMP_NUM_THREADS=1 vs 2 (vs the default).

    .venv/bin/python experiments/bench/threads.py [--repeats 3] [--rows 50000]

Runs a short `recsys fit` (DeepFM, synthetic data, 2 epochs) with each setting, alternating
settings between repeats, and prints the median training samples/s and the ratio to 1 thread.
A second pass runs two fits at once (what a test suite, a sweep with 2 workers or a busy CI
machine looks like) to show the cost of oversubscription.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECSYS = Path(sys.executable).parent / "recsys"


def fit_cmd(work: Path, name: str, rows: int) -> list[str]:
    return [str(RECSYS), "fit", "--config", str(ROOT / "experiments" / "deepfm_synthetic.yaml"),
            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--test_after_fit", "true",
            "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
            "--data.init_args.dataset_options", json.dumps({"n_rows": rows}),
            "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name]


def throughput(work: Path, name: str) -> float:
    return json.loads(sorted((work / name).glob("version_*/metrics.json"))[-1].read_text())["train"]["samples_per_s_median"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=50_000)
    args = ap.parse_args()
    settings = {"1": "1", "2": "2", "default": None}
    alone: dict[str, list[float]] = {k: [] for k in settings}
    paired: dict[str, list[float]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.repeats):
            for key, value in settings.items():
                env = dict(os.environ)
                env.pop("OMP_NUM_THREADS", None)
                env.pop("MKL_NUM_THREADS", None)
                if value:
                    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = value
                name = f"alone_{key}_{r}"
                subprocess.run(fit_cmd(work, name, args.rows), env=env, check=True, capture_output=True)
                alone[key].append(throughput(work, name))
                procs = [subprocess.Popen(fit_cmd(work, f"pair_{key}_{r}_{i}", args.rows), env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
                for p in procs:
                    if p.wait() != 0:
                        raise SystemExit("a paired fit failed")
                paired[key].extend(throughput(work, f"pair_{key}_{r}_{i}") for i in range(2))
    base_a, base_p = statistics.median(alone["1"]), statistics.median(paired["1"])
    print(f"{'threads':<10}{'alone samples/s':>18}{'ratio':>8}{'2 fits at once':>18}{'ratio':>8}")
    for key in settings:
        a, p = statistics.median(alone[key]), statistics.median(paired[key])
        print(f"{key:<10}{a:>18,.0f}{a / base_a:>8.2f}{p:>18,.0f}{p / base_p:>8.2f}")


if __name__ == "__main__":
    main()

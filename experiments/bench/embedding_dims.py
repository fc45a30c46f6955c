"""Embedding widths: full (16) vs uniform 8 / 4 vs DNIS-searched at 50% / 25% of the table parameters.

    .venv/bin/python experiments/bench/embedding_dims.py                          # ml100k + synthetic, 3 seeds
    .venv/bin/python experiments/bench/embedding_dims.py --datasets synthetic --seeds 0

For each data set (``experiments/deepfm_<dataset>.yaml``, DeepFM, embedding_dim 16) and seed:

* ``full16``: the config as is (every table 16 wide);
* ``uniform8`` / ``uniform4``: every table 8 / 4 wide through ``dims`` (projected to 16 by
  DeepFM's per-field projections, exactly as the searched widths are, so only the widths differ);
* ``dnis50`` / ``dnis25``: ``recsys search-dims --budget 0.5 / 0.25`` on that seed's config, then
  ``recsys fit`` of the exported config from scratch (the search's own weights are discarded).

Each variant is one ``recsys fit`` in its own process (``OMP_NUM_THREADS=1``), one at a time.
Printed: embedding-table parameters (sum of rows x width) and test AUC mean/std over seeds.
The bar (issue 6): DNIS at <= 50% parameters has test AUC >= full width - 0.001 and above the
uniform-width model of the same parameter count (uniform8 for dnis50, uniform4 for dnis25).
Writes ``experiments/bench/results/embedding_dims.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "bench" / "results"
CONFIGS = {"ml100k": "experiments/deepfm_ml100k.yaml", "synthetic": "experiments/deepfm_synthetic.yaml"}
SEEDS = {"ml100k": (2019, 2020, 2021), "synthetic": (0, 1, 2)}
VARIANTS = ("full16", "uniform8", "uniform4", "dnis50", "dnis25")


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", JSONARGPARSE_DEPRECATION_WARNINGS="off")


def recsys(*args: str) -> None:
    cmd = [sys.executable, "-m", "recsys.cli", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")


def seeded_config(dataset: str, seed: int, work: Path, name: str, dims: dict[str, int] | None = None) -> Path:
    """The dataset's DeepFM config with this seed, writing its runs under ``work/name``."""
    cfg = yaml.safe_load((ROOT / CONFIGS[dataset]).read_text())
    cfg["seed_everything"] = seed
    cfg["data"]["init_args"]["seed"] = seed
    cfg["trainer"].update({"default_root_dir": str(work / name), "enable_progress_bar": False,
                           "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(work), "name": name}}})
    if dims is not None:
        cfg["model"]["init_args"]["model"]["init_args"]["dims"] = dims
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit(config: Path, log_dir: Path) -> dict:
    recsys("fit", "--config", str(config))
    files = sorted(log_dir.glob("version_*/metrics.json"))
    return json.loads(files[-1].read_text())


def table_sizes(dataset: str) -> dict[str, int]:
    from recsys.data import CTRDataModule

    cfg = yaml.safe_load((ROOT / CONFIGS[dataset]).read_text())["data"]["init_args"]
    return CTRDataModule(**cfg).features.table_sizes


def run_one(dataset: str, seed: int, variant: str, work: Path, sizes: dict[str, int], search_args: list[str]) -> dict:
    name = f"{dataset}_{variant}_{seed}"
    t0 = time.perf_counter()
    if variant.startswith("dnis"):
        budget = int(variant[4:]) / 100
        base = seeded_config(dataset, seed, work, name)
        out = work / f"{name}_search"
        recsys("search-dims", "--config", str(base), "--budget", str(budget), "--out", str(out), *search_args)
        dims = yaml.safe_load((out / "config.yaml").read_text())["model"]["init_args"]["model"]["init_args"]["dims"]
        config = seeded_config(dataset, seed, work, name, dims=dims)  # same runner settings as the others
    else:
        width = {"full16": 16, "uniform8": 8, "uniform4": 4}[variant]
        dims = {t: width for t in sizes}
        config = seeded_config(dataset, seed, work, name, dims=None if width == 16 else dims)
    metrics = fit(config, work / name)
    return {"dataset": dataset, "seed": seed, "variant": variant, "dims": dims,
            "table_params": sum(sizes[t] * w for t, w in dims.items()),
            "full_params": sum(16 * n for n in sizes.values()),
            "test_auc": metrics["test"]["auc"], "test_logloss": metrics["test"]["logloss"],
            "valid_auc": metrics["valid"]["auc"], "seconds": round(time.perf_counter() - t0, 1)}


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for variant in VARIANTS:
            rs = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            if not rs:
                continue
            aucs = [r["test_auc"] for r in rs]
            out.append({"dataset": dataset, "variant": variant, "seeds": len(rs),
                        "table_params": statistics.mean(r["table_params"] for r in rs),
                        "param_fraction": statistics.mean(r["table_params"] / r["full_params"] for r in rs),
                        "test_auc_mean": statistics.mean(aucs),
                        "test_auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0})
    return out


def markdown(summary: list[dict], args) -> str:
    lines = ["# Embedding widths: full vs uniform vs DNIS (DeepFM)", "",
             f"`{' '.join(sys.argv)}`", "",
             "| data set | variant | table params | fraction | test AUC mean | std | seeds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['dataset']} | {s['variant']} | {s['table_params']:,.0f} | {s['param_fraction']:.2f} | "
                     f"{s['test_auc_mean']:.4f} | {s['test_auc_std']:.4f} | {s['seeds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 3 per data set")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--search-args", default="", help="extra `recsys search-dims` options, e.g. "
                                                      "'--warm_start_epochs 2 --search_epochs 3'")
    ap.add_argument("--out", default=str(RESULTS / "embedding_dims"), help="results stem (.json/.md)")
    args = ap.parse_args()
    from recsys.utils import atomic_write_text

    rows = []
    with tempfile.TemporaryDirectory(prefix="embedding_dims_") as tmp:
        work = Path(tmp)
        for dataset in args.datasets:
            sizes = table_sizes(dataset)
            for seed in args.seeds or SEEDS[dataset]:
                for variant in args.variants:
                    row = run_one(dataset, seed, variant, work, sizes, args.search_args.split())
                    rows.append(row)
                    print(f"{dataset} seed {seed} {variant:9s} params {row['table_params']:>9,} "
                          f"test AUC {row['test_auc']:.4f} ({row['seconds']} s)", flush=True)
    summary = summarize(rows)
    text = markdown(summary, args)
    print(text)
    atomic_write_text(f"{args.out}.json", json.dumps({"rows": rows, "summary": summary}, indent=2))
    atomic_write_text(f"{args.out}.md", text)


if __name__ == "__main__":
    main()

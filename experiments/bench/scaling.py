"""Scaling benchmark: streaming memory vs row count, time to first batch, streaming vs in-memory
throughput, and training samples/s with 1 vs 2 processes (`recsys fit`, Lightning DDP on CPU).

    python experiments/bench/scaling.py                         # 1M + 5M rows, ddp, 2 processes
    python experiments/bench/scaling.py --rows 1000000 --skip_ddp
    python experiments/bench/scaling.py --strategy <other strategy> --devices 2
    python experiments/bench/scaling.py --models deepfm sdim --repeats 3   # only the model runs below

``--models``: the README's multi-process command (``--config experiments/<model>_synthetic.yaml
--config experiments/sharded_ddp.yaml``: 2 processes, TorchRec-sharded tables) against the same
run on one process (same config without the overlay, the tables trained by the same row-wise
Adagrad), alternating 1 and 2 processes over ``--repeats``. Printed: median train samples/s (all
ranks' rows over the epoch's wall time), the 2/1 ratio, test AUC of both and wall time. The
runs are the same up to float summation order except where a table cannot be sharded: DeepFM's
first-order table has width 1 (FBGEMM needs widths divisible by 4), so on 2 CPU processes it
stays replicated and trains with the dense optimizer (Adam), on one process with the row-wise
Adagrad of the other tables; DeepFM's two AUCs therefore differ a little. SDIM runs over a shorter history than its
config (``--sdim_history``) so that a CPU finishes in minutes.

Every measurement runs in a fresh subprocess (``OMP_NUM_THREADS=1``); peak RSS is that process's
``VmHWM`` (/proc/self/status; ``getrusage``'s maxrss would inherit the parent's peak across fork +
exec). "Added" RSS is the peak minus the RSS after importing torch/torchrec/polars/recsys.
Data sets are written once with ``write_synthetic_parquet`` (100k-row files, 16k-row row groups)
under ``--data_dir`` and reused. Results are printed and written to ``<data_dir>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_COMMON = r"""
import json, sys, time
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
import torchrec, polars  # noqa: F401
"""

_STREAM = _COMMON + r"""
from recsys.data.streaming import StreamingCTRDataModule
base = status("VmRSS")
t0 = time.perf_counter()
dm = StreamingCTRDataModule(dataset=sys.argv[1], schema=sys.argv[1] + "/schema.yaml", batch_size=int(sys.argv[2]),
                            fit_rows=int(sys.argv[3]), piece_rows=16_384, shuffle_buffer=65_536)
dm.setup("fit")
it = iter(dm.train_dataloader())
b = next(it)
t1 = time.perf_counter()
n = len(b)
for b in it:
    n += len(b)
t2 = time.perf_counter()
print(json.dumps({"rows": n, "base_mb": base, "peak_mb": status("VmHWM"), "first_batch_s": t1 - t0,
                  "rows_per_s": (n - len(b)) / max(t2 - t1, 1e-9) if n > len(b) else None}))
"""

_MEMORY = _COMMON + r"""
from recsys.data.datamodule import CTRDataModule
base = status("VmRSS")
t0 = time.perf_counter()
dm = CTRDataModule(dataset=sys.argv[1], schema=sys.argv[1] + "/schema.yaml", batch_size=int(sys.argv[2]))
dm.setup("fit")
it = iter(dm.train_dataloader())
b = next(it)
t1 = time.perf_counter()
n = len(b)
for b in it:
    n += len(b)
t2 = time.perf_counter()
print(json.dumps({"rows": n, "base_mb": base, "peak_mb": status("VmHWM"), "first_batch_s": t1 - t0,
                  "rows_per_s": (n - len(b)) / max(t2 - t1, 1e-9)}))
"""


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", JSONARGPARSE_DEPRECATION_WARNINGS="off")


def _run_json(code: str, *args: str, timeout: int = 1800) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env(),
                         cwd=ROOT, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"benchmark subprocess failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_data(data_dir: Path, n_rows: int) -> Path:
    from recsys.data.datasets.synthetic import write_synthetic_parquet

    path = data_dir / f"synthetic_{n_rows // 1000}k"
    t = time.perf_counter()
    write_synthetic_parquet(path, n_rows, chunk_rows=100_000, row_group_size=16_384, seed=0)
    print(f"data: {path} ({n_rows:,} rows) ready in {time.perf_counter() - t:.1f} s", flush=True)
    return path


def fit_throughput(data: Path, devices: int, strategy: str, batch_size: int, epochs: int, work: Path) -> dict:
    """Median train samples/s of `recsys fit` (streaming module, DeepFM) on ``devices`` processes."""
    import yaml

    name = f"fit_{devices}"
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_epochs": epochs, "accelerator": "cpu", "devices": devices, "enable_progress_bar": False,
                    "enable_checkpointing": False, "enable_model_summary": False, "limit_val_batches": 0,
                    "num_sanity_val_steps": 0, "default_root_dir": str(work / name),
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(work), "name": name}}},
        "model": {"class_path": "recsys.tasks.RankingTask", "init_args": {
            "model": {"class_path": "recsys.models.DeepFM", "init_args": {"embedding_dim": 16, "hidden_units": [256, 128]}},
            "lr": 0.001}},
        "data": {"class_path": "recsys.data.streaming.StreamingCTRDataModule", "init_args": {
            "dataset": str(data), "schema": str(data / "schema.yaml"), "batch_size": batch_size,
            "fit_rows": 200_000, "piece_rows": 16_384, "shuffle_buffer": 65_536}},
    }
    if devices > 1:
        cfg["trainer"]["strategy"] = strategy
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "recsys.cli", "fit", "--config", str(path), "--test_after_fit", "false"],
                         capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=3600)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"`recsys fit` on {devices} process(es) failed:\n{out.stderr[-4000:]}")
    import polars as pl

    logs = sorted((work / name).glob("version_*/metrics.csv"))
    m = pl.read_csv(logs[-1])
    rates = m["train/samples_per_s"].drop_nulls().to_list()
    total = sorted(rates)[len(rates) // 2]
    # train/samples_per_s is already the whole run's (all ranks' rows over the wall time); an
    # earlier version of this script multiplied it by the processes again
    return {"devices": devices, "strategy": strategy if devices > 1 else "single", "wall_s": wall,
            "per_rank_samples_per_s": total / devices, "samples_per_s": total, "epochs": len(rates)}


MODEL_RUNS = {
    # model -> (experiment, overrides that size the run for a CPU)
    "deepfm": ("deepfm_synthetic.yaml", {"n_rows": 50_000, "seed": 0}, 1024, 2),
    "sdim": ("sdim_synthetic.yaml", {"n_rows": 20_000, "n_users": 100, "history_len": 256, "seed": 0}, 512, 2),
}


def model_run(model: str, devices: int, work: Path, tag: str, sdim_history: int | None = None) -> dict:
    """One `recsys fit` of ``model`` on 1 process, or on 2 with the README's sharded overlay."""
    experiment, options, batch_size, epochs = MODEL_RUNS[model]
    options = dict(options)
    if model == "sdim" and sdim_history:
        options["history_len"] = sdim_history
    name = f"{model}_{devices}_{tag}"
    argv = [sys.executable, "-m", "recsys.cli", "fit", "--config", str(ROOT / "experiments" / experiment)]
    if devices > 1:
        argv += ["--config", str(ROOT / "experiments" / "sharded_ddp.yaml"), "--trainer.devices", str(devices)]
    else:  # the same run on one process: the tables' optimizer of the overlay, unsharded
        argv += ["--model.init_args.embedding_optimizer", "rowwise_adagrad", "--model.init_args.embedding_lr", "0.05"]
    argv += ["--data.init_args.dataset_options", json.dumps(options), "--data.init_args.batch_size", str(batch_size),
             "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
             "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name,
             "--trainer.default_root_dir", str(work / name)]
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=work, timeout=3600,
                         start_new_session=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"`recsys fit` ({model}, {devices} process(es)) failed:\n{out.stderr[-4000:]}")
    m = json.loads(sorted((work / name).glob("version_*/metrics.json"))[-1].read_text())
    return {"model": model, "devices": devices, "wall_s": wall, "samples_per_s": m["train"]["samples_per_s_median"],
            "test_auc": m["test"]["auc"], "valid_auc": m["valid"]["auc"], "world_size": m["world_size"]}


def model_scaling(models: list[str], repeats: int, sdim_history: int | None) -> dict:
    import statistics

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="scaling_models_") as tmp:
        for model in models:
            runs: dict[int, list[dict]] = {1: [], 2: []}
            for r in range(repeats):
                for devices in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate the order: drifts in load cancel
                    res = model_run(model, devices, Path(tmp), str(r), sdim_history)
                    runs[devices].append(res)
                    print(f"  {model} {devices} process(es), repeat {r}: {res['samples_per_s']:,.0f} samples/s, "
                          f"test AUC {res['test_auc']:.4f}, wall {res['wall_s']:.0f} s", flush=True)
            med = {d: statistics.median(x["samples_per_s"] for x in v) for d, v in runs.items()}
            ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(runs[1], runs[2])]
            out[model] = {"runs": runs, "samples_per_s_median": med, "ratio_median": statistics.median(ratios),
                          "test_auc": {d: v[0]["test_auc"] for d, v in runs.items()},
                          "wall_s_median": {d: statistics.median(x["wall_s"] for x in v) for d, v in runs.items()}}
            o = out[model]
            print(f"{model}: 1 process {med[1]:,.0f} samples/s, 2 processes {med[2]:,.0f} (ratio of medians "
                  f"{med[2] / med[1]:.2f}, median of paired ratios {o['ratio_median']:.2f}); test AUC "
                  f"{o['test_auc'][1]:.4f} vs {o['test_auc'][2]:.4f}; wall {o['wall_s_median'][1]:.0f} s vs "
                  f"{o['wall_s_median'][2]:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000], help="data set sizes for the RSS runs")
    p.add_argument("--data_dir", type=Path, default=ROOT / "runs" / "bench" / "scaling")
    p.add_argument("--batch_size", type=int, default=4096)
    p.add_argument("--fit_rows", type=int, default=200_000, help="encoder sample of the streaming module")
    p.add_argument("--strategy", default="ddp", help="Lightning strategy of the multi-process fit")
    p.add_argument("--devices", type=int, default=2, help="processes of the multi-process fit")
    p.add_argument("--fit_data_rows", type=int, default=200_000, help="rows of the data set the fits train on")
    p.add_argument("--fit_epochs", type=int, default=2)
    p.add_argument("--skip_memory", action="store_true", help="skip the in-memory CTRDataModule comparison")
    p.add_argument("--skip_ddp", action="store_true", help="skip the 1 vs N process fits")
    p.add_argument("--models", nargs="+", choices=sorted(MODEL_RUNS), default=None,
                   help="only the 1 vs 2 process runs of these models (README command vs one process)")
    p.add_argument("--repeats", type=int, default=3, help="--models: repeats of each pair")
    p.add_argument("--sdim_history", type=int, default=None, help="--models: SDIM's history_len (default 256)")
    args = p.parse_args(argv)
    if args.models:
        results = model_scaling(args.models, args.repeats, args.sdim_history)
        out = ROOT / "runs" / "bench" / "scaling_models.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str))
        print(f"results written to {out}")
        return 0
    args.data_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"batch_size": args.batch_size, "fit_rows": args.fit_rows, "cpus": os.cpu_count(), "stream": {}}

    for n in args.rows:
        data = make_data(args.data_dir, n)
        r = _run_json(_STREAM, str(data), str(args.batch_size), str(args.fit_rows))
        r["added_mb"] = r["peak_mb"] - r["base_mb"]
        results["stream"][n] = r
        print(f"stream {n:>9,} rows: {r['rows']:,} train rows, peak RSS {r['peak_mb']:.0f} MB "
              f"(+{r['added_mb']:.0f} MB over {r['base_mb']:.0f} MB after imports), "
              f"first batch {r['first_batch_s']:.2f} s, {r['rows_per_s']:,.0f} rows/s", flush=True)
    if len(args.rows) > 1:
        lo, hi = min(args.rows), max(args.rows)
        a, b = results["stream"][lo], results["stream"][hi]
        results["peak_ratio"] = b["peak_mb"] / a["peak_mb"]
        results["added_ratio"] = b["added_mb"] / max(a["added_mb"], 1e-9)
        print(f"peak RSS {hi:,} / {lo:,} rows: {results['peak_ratio']:.3f} (added RSS ratio "
              f"{results['added_ratio']:.3f}; rows ratio {hi / lo:.1f})", flush=True)

    if not args.skip_memory:
        n = min(args.rows)
        data = make_data(args.data_dir, n)
        r = _run_json(_MEMORY, str(data), str(args.batch_size))
        r["added_mb"] = r["peak_mb"] - r["base_mb"]
        results["memory"] = {n: r}
        s = results["stream"][n]
        print(f"in-memory {n:>6,} rows: peak RSS {r['peak_mb']:.0f} MB (+{r['added_mb']:.0f} MB), "
              f"first batch {r['first_batch_s']:.2f} s, {r['rows_per_s']:,.0f} rows/s; "
              f"streaming/in-memory throughput {s['rows_per_s'] / r['rows_per_s']:.2f}", flush=True)

    if not args.skip_ddp:
        data = make_data(args.data_dir, args.fit_data_rows)
        with tempfile.TemporaryDirectory(prefix="scaling_fit_") as tmp:
            one = fit_throughput(data, 1, args.strategy, args.batch_size, args.fit_epochs, Path(tmp))
            many = fit_throughput(data, args.devices, args.strategy, args.batch_size, args.fit_epochs, Path(tmp))
        results["fit"] = [one, many]
        for r in (one, many):
            print(f"recsys fit, {r['devices']} process(es) ({r['strategy']}): {r['samples_per_s']:,.0f} samples/s "
                  f"({r['per_rank_samples_per_s']:,.0f} per process), wall {r['wall_s']:.0f} s", flush=True)
        results["fit_speedup"] = many["samples_per_s"] / one["samples_per_s"]
        print(f"samples/s {args.devices} / 1 processes: {results['fit_speedup']:.2f}", flush=True)

    out = args.data_dir / "results.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Library default init (issue 19 item 4): PyTorch's Linear init vs Xavier-normal (FuxiCTR's), per
model, on ml100k-ctr and a second data set, 3 seeds each.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/bench/init_defaults.py \\
        [--models autoint autoint_plus deepfm moe dcn_v2] [--datasets ml100k adult] \\
        [--seeds 2019 2020 2021] [--max-epochs 6]
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/bench/init_defaults.py \\
        --models aw_moe sdim din --datasets ml100k rowtail
    .venv/bin/python experiments/bench/init_defaults.py --table     # the table of what has run

The behaviour-sequence models (AW-MoE, SDIM, DIN) need a history, which Adult does not have: their
second data set is the synthetic long-tail set ``rowtail`` of ``aw_moe_longtail.py`` (per-row
interests planted in a power-law number of behaviours), with that script's recipe (batch 256, lr
0.003 constant, embedding init std 0.01). For them a default is set only where both data sets agree.

Each run is ``recsys fit --config experiments/<model>_ml100k.yaml`` (on Adult with the data set
swapped, as ``ctr_models.py`` does; batch 1024 on both), with every init option of the model set
to one arm (``INIT_OPTIONS``: ``torch`` = PyTorch's default Linear init, ``xavier`` =
Xavier-normal weights and zero biases), at most ``--max-epochs`` epochs with the config's early
stopping on valid AUC; the best checkpoint's valid and test AUC are kept. One JSON line per run
is appended to ``experiments/bench/results/init_defaults.jsonl`` (a run already there is skipped,
so an interrupted sweep resumes). Seeds are the outer loop, so a partial sweep has every cell.

The decision is taken on **validation** AUC (3-seed means): the default is the arm that is better
on both data sets; where the data sets disagree, the arm with the larger mean gain over the two
(the table says so). Test AUC is printed next to it, not used to choose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ctr_models  # noqa: E402  (data set overrides and the fit driver)

RESULTS = ctr_models.RESULTS
OUT = RESULTS / "init_defaults.jsonl"
ARMS = ("torch", "xavier")
# config stem -> the model's init options (all set to the arm). Plain AutoInt has no DNN: its
# attention_init also covers the output layer.
INIT_OPTIONS = {
    "autoint": ("attention_init",),
    "autoint_plus": ("attention_init", "mlp_init"),
    "deepfm": ("mlp_init",),
    "moe": ("mlp_init",),
    "dcn_v2": ("mlp_init",),
    # the behaviour-sequence models (issue 19, third session): their only init option
    "aw_moe": ("mlp_init",),
    "sdim": ("mlp_init",),
    "din": ("mlp_init",),
}
DATASETS = ("ml100k", "adult", "rowtail")
# models without a history cannot use rowtail; models that need one cannot use Adult
SEQUENCE_MODELS = ("aw_moe", "sdim", "din")


def model_datasets(model: str) -> tuple[str, str]:
    return ("ml100k", "rowtail") if model in SEQUENCE_MODELS else ("ml100k", "adult")


def rowtail_overrides() -> list[str]:
    """CLI overrides that swap an ml100k config to aw_moe_longtail.py's ``rowtail`` set and recipe."""
    import aw_moe_longtail as lt

    return ["--data.init_args.dataset", "synthetic", "--data.init_args.dataset_options", json.dumps(lt.ROWTAIL),
            "--data.init_args.batch_size", str(lt.LONGTAIL_BATCH), "--model.init_args.lr", str(lt.LONGTAIL_LR),
            "--model.init_args.plateau_factor", "null", "--model.init_args.model.init_args.init_std", "0.01"]


def done_runs() -> dict[tuple, dict]:
    if not OUT.exists():
        return {}
    rows = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    return {(r["model"], r["dataset"], r["init"], r["seed"], r["max_epochs"]): r for r in rows}


def run_one(model: str, dataset: str, arm: str, seed: int, max_epochs: int, work: Path) -> dict:
    data = (rowtail_overrides() if dataset == "rowtail"
            else ["--data.init_args.batch_size", "1024", *ctr_models.data_overrides(dataset, ctr_models.WIDE_ROWS)])
    extra = [*data, "--trainer.max_epochs", str(max_epochs)]
    for opt in INIT_OPTIONS[model]:
        extra += [f"--model.init_args.model.init_args.{opt}", arm]
    name = f"{dataset}_{model}_{arm}_s{seed}"
    metrics, wall = ctr_models.fit_ml100k(model, seed, work, name, extra)
    return {"model": model, "dataset": dataset, "init": arm, "seed": seed, "max_epochs": max_epochs,
            "options": list(INIT_OPTIONS[model]), "valid_auc": metrics["valid"]["auc"],
            "test_auc": metrics["test"]["auc"], "epochs": metrics["epochs_trained"], "wall_s": wall,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def table(max_epochs: int) -> str:
    runs = [r for r in done_runs().values() if r["max_epochs"] == max_epochs]
    lines = ["| model | data set | seeds | torch valid | xavier valid | xavier - torch (valid) | torch test | "
             "xavier test | xavier - torch (test) |", "|---|---|---|---|---|---|---|---|---|"]
    decisions = []
    for model in INIT_OPTIONS:
        gains = {}
        for dataset in model_datasets(model):
            cell = {arm: {r["seed"]: r for r in runs if (r["model"], r["dataset"], r["init"]) == (model, dataset, arm)}
                    for arm in ARMS}
            seeds = sorted(set(cell["torch"]) & set(cell["xavier"]))
            if not seeds:
                continue
            mean = {(arm, k): statistics.mean(cell[arm][s][k] for s in seeds) for arm in ARMS
                    for k in ("valid_auc", "test_auc")}
            dv = mean[("xavier", "valid_auc")] - mean[("torch", "valid_auc")]
            dt = mean[("xavier", "test_auc")] - mean[("torch", "test_auc")]
            gains[dataset] = (dv, len(seeds))
            lines.append(f"| {model} | {dataset} | {len(seeds)} | {mean[('torch', 'valid_auc')]:.4f} | "
                         f"{mean[('xavier', 'valid_auc')]:.4f} | {dv:+.4f} | {mean[('torch', 'test_auc')]:.4f} | "
                         f"{mean[('xavier', 'test_auc')]:.4f} | {dt:+.4f} |")
        if len(gains) == 2:
            signs = {g > 0 for g, _ in gains.values()}
            total = sum(g for g, _ in gains.values())
            pick = "xavier" if total > 0 else "torch"
            how = ("better on both" if len(signs) == 1 else
                   f"data sets disagree; larger mean gain ({total / len(gains):+.4f} valid AUC for xavier)")
            if model in SEQUENCE_MODELS and len(signs) > 1:  # a default only where both agree
                pick, how = "torch (unchanged)", f"data sets disagree (mean {total / len(gains):+.4f} for xavier)"
            decisions.append(f"- {model} ({', '.join(INIT_OPTIONS[model])}): **{pick}** ({how})")
    return "\n".join(lines + ["", "Default (valid AUC, 3-seed means):", *decisions])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(INIT_OPTIONS), choices=list(INIT_OPTIONS))
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[2019, 2020, 2021])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--max-epochs", type=int, default=6)
    ap.add_argument("--table", action="store_true", help="print the table of the runs so far and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.max_epochs))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recsys-init-") as tmp:
        work = Path(tmp)
        for seed in args.seeds:
            for dataset in args.datasets:
                for model in args.models:
                    if dataset not in model_datasets(model):
                        continue
                    for arm in args.arms:
                        if (model, dataset, arm, seed, args.max_epochs) in done_runs():
                            continue
                        r = run_one(model, dataset, arm, seed, args.max_epochs, work)
                        with open(OUT, "a") as fh:
                            fh.write(json.dumps(r) + "\n")
                        print(f"[{dataset} {model} {arm} seed {seed}] valid {r['valid_auc']:.4f} test "
                              f"{r['test_auc']:.4f} ({r['epochs']} epochs, {r['wall_s']:.0f} s)", flush=True)
    print("\n" + table(args.max_epochs))


if __name__ == "__main__":
    main()

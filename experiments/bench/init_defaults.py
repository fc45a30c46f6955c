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

``--option numeric_init`` (issue 18 item 2) runs the other sweep: the numeric fields' vectors
``v`` of ``x * v`` (``FeatureEmbedding(numeric_init=...)``), arm ``embedding`` (N(0, init_std^2),
like the id tables) vs ``xavier`` (N(0, 2/(1+D)), FuxiCTR's ``Linear(1, D)``), nothing else
changed (the config's other init options stay as the config sets them). ml100k-ctr has no numeric
field, so its two data sets are Adult and the generated wide table (``synthetic-wide``,
50,000 rows, seed 0, as ``ctr_models.py --wide-rows 50000``); the
same recipe otherwise (batch 1024, ``--max-epochs``, the config's early stopping). Its runs go to
``results/init_defaults_numeric_init.jsonl``, never mixed with the init sweep's, and its rule is
stricter: ``xavier`` becomes a model's default only if it is better on **both** data sets. The
defaults were chosen with ``--max-epochs 30``: at 6, 28 of the 30 Adult runs were cut short by
the cap (they went on to 7-12 epochs at 30), while the wide-table runs stop by themselves within 6.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/bench/init_defaults.py --option numeric_init \\
        [--models deepfm moe autoint_plus autoint dcn_v2] [--datasets adult wide] [--seeds 2019 2020 2021] \\
        --max-epochs 30
    .venv/bin/python experiments/bench/init_defaults.py --option numeric_init --max-epochs 30 --table
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

# --option numeric_init: the models with a numeric_init option and a flat-table config (AW-MoE has
# the option but needs a history, which Adult and the wide table do not have)
NUMERIC_ARMS = ("embedding", "xavier")
NUMERIC_MODELS = ("deepfm", "moe", "autoint_plus", "autoint", "dcn_v2")
NUMERIC_DATASETS = ("adult", "wide")
NUMERIC_WIDE_ROWS = 50_000
# option -> (its arms, its results file)
OPTIONS = {"init": (ARMS, OUT), "numeric_init": (NUMERIC_ARMS, RESULTS / "init_defaults_numeric_init.jsonl")}


def model_datasets(model: str, option: str = "init") -> tuple[str, str]:
    if option == "numeric_init":
        return NUMERIC_DATASETS
    return ("ml100k", "rowtail") if model in SEQUENCE_MODELS else ("ml100k", "adult")


def rowtail_overrides() -> list[str]:
    """CLI overrides that swap an ml100k config to aw_moe_longtail.py's ``rowtail`` set and recipe."""
    import aw_moe_longtail as lt

    return ["--data.init_args.dataset", "synthetic", "--data.init_args.dataset_options", json.dumps(lt.ROWTAIL),
            "--data.init_args.batch_size", str(lt.LONGTAIL_BATCH), "--model.init_args.lr", str(lt.LONGTAIL_LR),
            "--model.init_args.plateau_factor", "null", "--model.init_args.model.init_args.init_std", "0.01"]


def done_runs(option: str = "init") -> dict[tuple, dict]:
    out = OPTIONS[option][1]
    if not out.exists():
        return {}
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["model"], r["dataset"], r["init"], r["seed"], r["max_epochs"]): r for r in rows}


def run_one(model: str, dataset: str, arm: str, seed: int, max_epochs: int, work: Path,
            option: str = "init") -> dict:
    data = (rowtail_overrides() if dataset == "rowtail"
            else ["--data.init_args.batch_size", "1024", *ctr_models.data_overrides(dataset, NUMERIC_WIDE_ROWS)])
    extra = [*data, "--trainer.max_epochs", str(max_epochs)]
    options = INIT_OPTIONS[model] if option == "init" else ("numeric_init",)
    for opt in options:
        extra += [f"--model.init_args.model.init_args.{opt}", arm]
    name = f"{dataset}_{model}_{'' if option == 'init' else 'numeric_'}{arm}_s{seed}"
    metrics, wall = ctr_models.fit_ml100k(model, seed, work, name, extra)
    return {"model": model, "dataset": dataset, "init": arm, "seed": seed, "max_epochs": max_epochs,
            **({"wide_rows": NUMERIC_WIDE_ROWS} if dataset == "wide" else {}),
            "options": list(options), "valid_auc": metrics["valid"]["auc"],
            "test_auc": metrics["test"]["auc"], "epochs": metrics["epochs_trained"], "wall_s": wall,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cell(runs: list[dict], model: str, dataset: str, arms) -> tuple[dict, list[int], float, str]:
    """One (model, data set) cell of a sweep, ``arms = (base, other)``: the runs by arm and seed,
    the seeds both arms have, the valid-AUC gain of ``other`` over ``base`` (mean over those
    seeds) and the cell's row of the means table (base valid, other valid, gain, base test, other
    test, test gain); no seeds: ``({...}, [], 0.0, "")``."""
    cell = {arm: {r["seed"]: r for r in runs if (r["model"], r["dataset"], r["init"]) == (model, dataset, arm)}
            for arm in arms}
    seeds = sorted(set.intersection(*(set(cell[arm]) for arm in arms)))
    if not seeds:
        return cell, seeds, 0.0, ""
    mean = {(arm, k): statistics.mean(cell[arm][s][k] for s in seeds) for arm in arms
            for k in ("valid_auc", "test_auc")}
    base, other = arms
    dv = mean[(other, "valid_auc")] - mean[(base, "valid_auc")]
    dt = mean[(other, "test_auc")] - mean[(base, "test_auc")]
    row = (f"| {model} | {dataset} | {len(seeds)} | {mean[(base, 'valid_auc')]:.4f} | "
           f"{mean[(other, 'valid_auc')]:.4f} | {dv:+.4f} | {mean[(base, 'test_auc')]:.4f} | "
           f"{mean[(other, 'test_auc')]:.4f} | {dt:+.4f} |")
    return cell, seeds, dv, row


def table(max_epochs: int) -> str:
    runs = [r for r in done_runs().values() if r["max_epochs"] == max_epochs]
    lines = ["| model | data set | seeds | torch valid | xavier valid | xavier - torch (valid) | torch test | "
             "xavier test | xavier - torch (test) |", "|---|---|---|---|---|---|---|---|---|"]
    decisions = []
    for model in INIT_OPTIONS:
        gains = {}
        for dataset in model_datasets(model):
            _, seeds, dv, row = _cell(runs, model, dataset, ARMS)
            if not seeds:
                continue
            gains[dataset] = (dv, len(seeds))
            lines.append(row)
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


def numeric_table(max_epochs: int) -> str:
    """The numeric_init sweep: per-seed rows, then 3-seed means and the decision (xavier only
    where it is better on valid AUC on both Adult and the wide table)."""
    runs = [r for r in done_runs("numeric_init").values() if r["max_epochs"] == max_epochs]
    per_seed = ["| model | data set | seed | embedding valid | xavier valid | embedding test | xavier test | "
                "epochs (embedding / xavier) |", "|---|---|---|---|---|---|---|---|"]
    means = ["| model | data set | seeds | embedding valid | xavier valid | xavier - embedding (valid) | "
             "embedding test | xavier test | xavier - embedding (test) |", "|---|---|---|---|---|---|---|---|---|"]
    decisions = []
    for model in NUMERIC_MODELS:
        gains = {}
        for dataset in NUMERIC_DATASETS:
            cell, seeds, dv, row = _cell(runs, model, dataset, NUMERIC_ARMS)
            if not seeds:
                continue
            for s in seeds:
                e, x = cell["embedding"][s], cell["xavier"][s]
                per_seed.append(f"| {model} | {dataset} | {s} | {e['valid_auc']:.4f} | {x['valid_auc']:.4f} | "
                                f"{e['test_auc']:.4f} | {x['test_auc']:.4f} | {e['epochs']} / {x['epochs']} |")
            gains[dataset] = (dv, len(seeds))
            means.append(row)
        if len(gains) == len(NUMERIC_DATASETS):
            seeds = min(n for _, n in gains.values())
            better = [d for d, (g, _) in gains.items() if g > 0]
            pick = "xavier" if len(better) == len(gains) else "embedding"
            how = ("better on both" if pick == "xavier" else
                   "xavier better on neither" if not better else f"xavier better only on {better[0]}")
            decisions.append(f"- {model}: **{pick}** ({how}; {seeds} seeds)")
    return "\n".join(per_seed + ["", *means, "", "Default (valid AUC means; xavier only if better on both):",
                                  *decisions])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--option", choices=list(OPTIONS), default="init",
                    help="init: the Linear init options, torch vs xavier (issue 19); numeric_init: the numeric "
                         "fields' vectors, embedding vs xavier, on Adult and the wide table (issue 18)")
    ap.add_argument("--models", nargs="+", default=None, choices=list(INIT_OPTIONS),
                    help=f"default: all (init) or {' '.join(NUMERIC_MODELS)} (numeric_init)")
    ap.add_argument("--datasets", nargs="+", default=None, choices=[*DATASETS, "wide"],
                    help=f"default: {' '.join(DATASETS)} (init) or {' '.join(NUMERIC_DATASETS)} (numeric_init)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[2019, 2020, 2021])
    ap.add_argument("--arms", nargs="+", default=None, choices=[*ARMS, *NUMERIC_ARMS[:1]],
                    help=f"default: {' '.join(ARMS)} (init) or {' '.join(NUMERIC_ARMS)} (numeric_init)")
    ap.add_argument("--max-epochs", type=int, default=6)
    ap.add_argument("--table", action="store_true", help="print the table of the runs so far and exit")
    args = ap.parse_args()
    arms, out = OPTIONS[args.option]
    numeric = args.option == "numeric_init"
    args.models = args.models or list(NUMERIC_MODELS if numeric else INIT_OPTIONS)
    args.datasets = args.datasets or list(NUMERIC_DATASETS if numeric else DATASETS)
    args.arms = args.arms or list(arms)
    bad = ([f"arm {a!r}" for a in args.arms if a not in arms]
           + [f"model {m!r}" for m in args.models if numeric and m not in NUMERIC_MODELS]
           + [f"data set {d!r}" for d in args.datasets if d not in (NUMERIC_DATASETS if numeric else DATASETS)])
    if bad:
        ap.error(f"--option {args.option} cannot run {', '.join(bad)}")
    if args.table:
        print(numeric_table(args.max_epochs) if numeric else table(args.max_epochs))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recsys-init-") as tmp:
        work = Path(tmp)
        for seed in args.seeds:
            for dataset in args.datasets:
                for model in args.models:
                    if dataset not in model_datasets(model, args.option):
                        continue
                    for arm in args.arms:
                        if (model, dataset, arm, seed, args.max_epochs) in done_runs(args.option):
                            continue
                        r = run_one(model, dataset, arm, seed, args.max_epochs, work, args.option)
                        with open(out, "a") as fh:
                            fh.write(json.dumps(r) + "\n")
                        print(f"[{dataset} {model} {args.option}={arm} seed {seed}] valid {r['valid_auc']:.4f} test "
                              f"{r['test_auc']:.4f} ({r['epochs']} epochs, {r['wall_s']:.0f} s)", flush=True)
    print("\n" + (numeric_table(args.max_epochs) if numeric else table(args.max_epochs)))


if __name__ == "__main__":
    main()

"""AW-MoE variants vs MoE on the long tail: overall test AUC and AUC at history caps (issue 19).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python experiments/bench/aw_moe_longtail.py \\
        --data ml100k longtail --seeds 2019 2020 2021 [--variants moe aw0 ...] [--max-epochs 8]
    .venv/bin/python experiments/bench/aw_moe_longtail.py --table   # the table of what has run

Each run is ``recsys fit`` of ``experiments/{moe,aw_moe}_ml100k.yaml`` (ml100k-ctr) or
``experiments/{moe,aw_moe}_synthetic.yaml`` on the long-tail synthetic set (``history_tail``:
power-law behaviours per user with planted interests, see ``LONGTAIL``), with the variant's
model overrides; the best checkpoint (valid AUC) is then scored on the test split with every
row's behaviour sequence cut to its last K behaviours for K in ``CAPS`` (the code of
``recsys report --history-cap``). One JSON line per run is appended to
``experiments/bench/results/aw_moe_longtail.jsonl`` (a run already there is skipped, so an
interrupted sweep resumes); ``--table`` prints the 3-seed means as Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "bench" / "results"
OUT = RESULTS / "aw_moe_longtail.jsonl"
CAPS = (0, 1, 3, 5, 10)
# the long-tail synthetic set: 5,000 users for 50,000 rows,
# 200 items in 10 clusters (~200 training rows per item on average, so item embeddings can learn their
# cluster), users' number of behaviours ~ (n + 1)^-1.2 on 0..20 (about half of the users have
# <= 3; the most active users the longest histories), behaviours 90% from the user's 2 interest
# clusters, label effect +3 when the target is in an interest cluster
LONGTAIL = {"n_rows": 50_000, "n_users": 5_000, "n_items": 200, "n_clusters": 10, "seed": 0,
            "history_len": 20, "history_tail": 1.2, "history_focus": 0.9, "history_effect": 3.0}
# "rowtail": the history carries the signal (issue 19 item 2, second try). On LONGTAIL no model used
# the history (AUC flat across caps): the interests were the user's, so user_id stood in for them,
# and 10 clusters of 20 items were slow to learn. Here every row has interests of its own and draws
# its behaviours from them (the user's power-law length kept), the label effect is whether the
# target's cluster appears among the row's behaviours, and 100 items form 5 clusters.
ROWTAIL = {**LONGTAIL, "n_items": 100, "n_clusters": 5, "history_per_row": True}
DATA = {"longtail": LONGTAIL, "rowtail": ROWTAIL}
LONGTAIL_BATCH = 256
LONGTAIL_LR = 0.003

# name -> (config stem, model init_args overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "moe": ("moe", {}),
    "aw0": ("aw_moe", {"cl_weight": 0.0}),
    # InfoNCE on masked views that look like long-tail users (a random 1..10 behaviours kept)
    "nce_keep10": ("aw_moe", {"cl_weight": 0.01, "mask_keep": 10}),
    # alignment only: KL(full gate held fixed || masked gate)
    "kl_keep10": ("aw_moe", {"cl_weight": 0.1, "mask_keep": 10, "cl_loss": "kl"}),
    # the click loss on the masked view too (no gate loss)
    "click_keep10": ("aw_moe", {"cl_weight": 0.0, "mask_keep": 10, "masked_click_weight": 0.5}),
    # InfoNCE (keep 1..10) without same-user rows among the negatives
    "nce_keep10_nouser": ("aw_moe", {"cl_weight": 0.01, "mask_keep": 10, "exclude_same_user": True}),
    # mask rate 0.9 (users with ~10% of their behaviours left), InfoNCE
    "nce_rate09": ("aw_moe", {"cl_weight": 0.01, "mask_rate": 0.9}),
    # MoE trained longer (issue 19, third session): on rowtail MoE early-stopped after 3 epochs (best
    # valid AUC at epoch 1) while nce_rate09 trained 5-6; is the gap training length?
    "moe_pat5": ("moe", {}),
    "moe_pat5_lr1e3": ("moe", {}),
}
# name -> training overrides: early-stopping patience, learning rate
TRAIN: dict[str, dict] = {
    "moe_pat5": {"patience": 5},
    "moe_pat5_lr1e3": {"patience": 5, "lr": 0.001},
}


def _config(data: str, variant: str, seed: int, max_epochs: int, root: Path) -> Path:
    stem, overrides = VARIANTS[variant]
    name = f"{stem}_{'ml100k' if data == 'ml100k' else 'synthetic'}"
    cfg = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())
    cfg["seed_everything"] = seed
    run = f"{data}_{variant}_{seed}"
    cfg["trainer"].update({"max_epochs": max_epochs, "default_root_dir": str(root / run), "enable_progress_bar": False,
                           "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(root), "name": run}}})
    model = cfg["model"]["init_args"]["model"]["init_args"]
    if data in DATA:
        # the ml100k configs' model settings (Xavier init, fine-grained gate for AW-MoE) on the synthetic data
        ml = yaml.safe_load((ROOT / "experiments" / f"{stem}_ml100k.yaml").read_text())
        model.clear()
        model.update(ml["model"]["init_args"]["model"]["init_args"])
        cfg["data"]["init_args"]["dataset_options"] = dict(DATA[data])
        cfg["data"]["init_args"]["seed"] = seed
        # 40k training rows: batches of 256 (160 steps per epoch; at 1024 the 40 steps per epoch
        # stopped early before the item embeddings had learned the clusters the interests live in)
        cfg["data"]["init_args"]["batch_size"] = LONGTAIL_BATCH
        # embeddings N(0, 0.01^2) instead of the configs' 1e-4: the interests live in item clusters that
        # only products of item embeddings (target x behaviour) reveal; from 1e-4 those products start
        # at ~1e-8 and, within 6 epochs, neither MoE nor AW-MoE used the history at all (AUC equal at
        # every cap, 0.73 vs the generator's oracle 0.86)
        model["init_std"] = 0.01
        # and a learning rate of 0.003: at 0.001 the validation AUC peaked after the first epoch (the
        # id embeddings overfit first) and early stopping ended the run before the history was used
        cfg["model"]["init_args"]["lr"] = LONGTAIL_LR
    else:
        cfg["data"]["init_args"]["seed"] = seed
    model.update(overrides)
    train = TRAIN.get(variant, {})
    if "patience" in train:
        for cb in cfg["trainer"]["callbacks"]:
            if cb["class_path"].endswith("EarlyStopping"):
                cb["init_args"]["patience"] = train["patience"]
    if "lr" in train:
        cfg["model"]["init_args"]["lr"] = train["lr"]
    path = root / f"{run}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_one(data: str, variant: str, seed: int, max_epochs: int) -> dict:
    from recsys.cli import main as recsys_main
    from recsys import metrics as M
    from recsys.reports import build as B

    with tempfile.TemporaryDirectory(prefix="awlt_") as tmp:
        root = Path(tmp)
        cfg = _config(data, variant, seed, max_epochs, root)
        t0 = time.perf_counter()
        assert recsys_main(["fit", "--config", str(cfg)]) == 0
        fit_s = time.perf_counter() - t0
        run = f"{data}_{variant}_{seed}"
        metrics = json.loads(sorted((root / run).glob("version_*/metrics.json"))[-1].read_text())
        s = B._score("A", Path(metrics["best_checkpoint"]), "test", None, CAPS)
        return {"data": data, "variant": variant, "seed": seed, "max_epochs": max_epochs,
                "overrides": VARIANTS[variant][1], "train": TRAIN.get(variant, {}), "fit_s": round(fit_s, 1),
                "valid_auc": (metrics.get("valid") or {}).get("auc"), "epochs": metrics.get("epochs_trained"), "test_auc": M.roc_auc(s.labels, s.probs),
                "cap_auc": {str(k): M.roc_auc(s.labels, s.capped[k]) for k in CAPS}, "rows": int(s.labels.size)}


def _done() -> set[tuple[str, str, int, int]]:
    if not OUT.exists():
        return set()
    return {(r["data"], r["variant"], r["seed"], r["max_epochs"]) for r in map(json.loads, OUT.read_text().splitlines()) if r}


def table() -> str:
    rows = [json.loads(x) for x in OUT.read_text().splitlines() if x] if OUT.exists() else []
    out = []
    for data, max_epochs in sorted({(r["data"], r["max_epochs"]) for r in rows}):
        sub = [r for r in rows if (r["data"], r["max_epochs"]) == (data, max_epochs)]
        out += [f"\n**{data}**, at most {max_epochs} epochs (test AUC, mean over seeds; caps: each row's history "
                "cut to its last K behaviours; epochs trained: mean)\n",
                "| variant | seeds | overall | " + " | ".join(f"K={k}" for k in CAPS) + " | epochs |",
                "|---|---|---|" + "---|" * len(CAPS) + "---|"]
        for v in VARIANTS:
            rs = [r for r in sub if r["variant"] == v]
            if not rs:
                continue
            mean = lambda xs: statistics.fmean(xs)  # noqa: E731
            out.append(f"| {v} | {len(rs)} | {mean([r['test_auc'] for r in rs]):.4f} | "
                       + " | ".join(f"{mean([r['cap_auc'][str(k)] for r in rs]):.4f}" for k in CAPS)
                       + f" | {mean([r['epochs'] for r in rs]):.1f} |")
        out += shipping_rule(sub)
    return "\n".join(out)


def shipping_rule(rows: list[dict], cap: int = 3) -> list[str]:
    """Issue 19 item 3 on one table (seeds every arm shares with MoE): the candidates are the AW-MoE
    variants within 0.001 of MoE overall; the pick is the one with the best AUC at history cap
    ``cap`` (read one-sided: a variant far above MoE overall is a candidate too); the bar is >= MoE - 0.001 overall and >= MoE + 0.002 at the cap (3-seed means)."""
    moe = {r["seed"]: r for r in rows if r["variant"] == "moe"}
    lines = []
    for v in VARIANTS:
        if VARIANTS[v][0] != "aw_moe":
            continue
        runs = {r["seed"]: r for r in rows if r["variant"] == v}
        seeds = sorted(set(runs) & set(moe))
        if not seeds:
            continue
        d_all = statistics.fmean(runs[s]["test_auc"] - moe[s]["test_auc"] for s in seeds)
        d_cap = statistics.fmean(runs[s]["cap_auc"][str(cap)] - moe[s]["cap_auc"][str(cap)] for s in seeds)
        lines.append((v, len(seeds), d_all, d_cap))
    if not lines:
        return []
    out = ["", f"Item 3's rule (vs MoE, same seeds): overall delta / delta at cap {cap}; candidate = at most 0.001 "
           "below MoE overall ('within 0.001', read one-sided: a larger overall gain does not disqualify); bar = >= -0.001 overall and >= +0.002 at the cap"]
    for v, n, d_all, d_cap in lines:
        out.append(f"- {v} ({n} seeds): {d_all:+.4f} / {d_cap:+.4f}; candidate {'yes' if d_all >= -0.001 else 'no'}, "
                   f"bar {'met' if d_all >= -0.001 and d_cap >= 0.002 else 'not met'}")
    cands = [x for x in lines if x[2] >= -0.001]
    if cands:
        best = max(cands, key=lambda x: x[3])
        out.append(f"- pick: {best[0]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["ml100k", "longtail"], choices=["ml100k", "longtail", "rowtail"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[2019, 2020, 2021])
    p.add_argument("--max-epochs", type=int, default=8)
    p.add_argument("--table", action="store_true", help="print the table of the runs so far and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table())
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:  # seed-major: a partial sweep has every variant of the first seeds
        for data in args.data:
            for v in args.variants:
                if (data, v, seed, args.max_epochs) in _done():
                    continue
                r = run_one(data, v, seed, args.max_epochs)
                with OUT.open("a") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"[aw_moe_longtail] {data} {v} seed {seed}: test {r['test_auc']:.4f} caps "
                      + " ".join(f"{k}:{r['cap_auc'][str(k)]:.4f}" for k in CAPS) + f" ({r['fit_s']}s)", flush=True)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

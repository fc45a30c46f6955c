"""A FuxiCTR 2.3.10 model (DCNv2, AutoIntPlus, ...) driven step by step from outside: the peer half
of ``experiments/bench/replay_fuxictr.py``. Run with the PEER venv's python:

    experiments/bench/.venv-peers/bin/python experiments/bench/peers/fuxictr_replay.py \\
        init --model DCNv2 --data DIR --work WORK --seed 2019 [--features DIR/features.json]
    experiments/bench/.venv-peers/bin/python experiments/bench/peers/fuxictr_replay.py \\
        replay --work WORK --plan PLAN.npz --out PRED.npz

``init``: FuxiCTR's own preprocessing of the ml100k-ctr split, or of a flat table with ``--features``
(Adult, the wide table; ``fuxictr_deepfm.py``'s ``prepare_splits`` / ``feature_cols`` or their ``_table`` twins,
``build_dataset``, min_categr_count 1), then the model (``--model``: a name of the driver's
``MODELS``, composed by its ``BUILDERS``; ``DCNv2`` from ``fuxictr_dcnv2.py``) built with the seed
(FuxiCTR's ``reset_parameters``: Xavier Linears, embedding N(0, 1e-4^2)); writes ``WORK/init.pt``
(its state dict), and FuxiCTR's vocabulary and encoded splits stay in ``WORK/data/<dataset_id>``
for the other side to read (``WORK/dataset_id`` and ``WORK/model`` name them).

``replay``: the same model loaded from ``init.pt``, trained with FuxiCTR's own ``train_step``
(zero_grad, forward, BCE on the sigmoid output, backward, ``clip_grad_norm_`` 10, its Adam) on
batches taken from FuxiCTR's encoded train split in the order ``PLAN.npz`` gives (``train_pos``:
row positions, one per step slot; ``batch_size``; ``epochs``); after each epoch (and before the
first) it scores the valid rows in the plan's order (``valid_pos``) and writes the probabilities to
``PRED.npz`` as ``epoch_0`` ... ``epoch_E``, and the per-step train losses as ``losses``. The plan
also carries every categorical field's raw values (``train/<field>``, ``valid/<field>``, as
strings, null as ""): each position must decode to them in FuxiCTR's encoded split (or to OOV,
for a value the train split lacks), which checks that both sides mean the same rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuxictr_dcnv2  # noqa: E402,F401  (registers DCNv2 in the driver's MODELS and BUILDERS)
import fuxictr_deepfm as driver  # noqa: E402
from fuxictr.pytorch.torch_utils import seed_everything  # noqa: E402


def dataset_id(work: Path) -> str:
    return (work / "dataset_id").read_text().strip()


def model_name(work: Path) -> str:
    return (work / "model").read_text().strip()


def build_model(work: Path, seed: int):
    """The model ``init`` named, built with the seed on the feature map ``init`` wrote."""
    name, ds_id = model_name(work), dataset_id(work)
    params = driver.run_params(name, f"{name}_replay_{seed}", seed, ds_id, work / "data", work / "ckpt")
    feature_map = driver.load_feature_map(work / "data", ds_id, params)
    seed_everything(seed=seed)
    return driver.BUILDERS[name](feature_map, **params), feature_map


def cmd_init(args) -> None:
    table = json.loads(args.features.read_text()) if args.features else None
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "dataset_id").write_text(table["dataset_id"] if table else driver.DATASET_ID)
    (args.work / "model").write_text(args.model)
    driver.preprocess(args.data, args.work / "raw", args.work / "data", driver.MODELS[args.model], table)
    model, _ = build_model(args.work, args.seed)
    torch.save(model.state_dict(), args.work / "init.pt")
    print(json.dumps({"init": str(args.work / "init.pt"),
                      "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}))


class Rows:
    """FuxiCTR's encoded split as tensors, by row position."""

    def __init__(self, work: Path, split: str, feature_map):
        self.split = split
        root = work / "data" / dataset_id(work)
        vocab = json.loads((root / "feature_vocab.json").read_text())
        df = pl.read_parquet(root / f"{split}.parquet")
        self.columns = {}
        for name, spec in feature_map.features.items():
            col = df[name]
            if spec["type"] == "sequence":
                arr = np.stack(col.to_list()).astype(np.int64)          # fixed max_len, padded
            elif spec["type"] == "numeric":
                arr = col.to_numpy().astype(np.float32)
            else:
                arr = col.to_numpy().astype(np.int64)
            self.columns[name] = torch.from_numpy(arr)
        self.labels = torch.from_numpy(df[feature_map.labels[0]].to_numpy().astype(np.float32))
        self.tokens = {name: np.array([t for t, _ in sorted(vocab[name].items(), key=lambda kv: kv[1])])[
            df[name].to_numpy()] for name, spec in feature_map.features.items() if spec["type"] == "categorical"}

    def positions(self, pos: np.ndarray, plan) -> torch.Tensor:
        """The plan's row positions, once every row of the split is checked field by field against
        the plan's raw values (see the module docstring)."""
        for name, tokens in self.tokens.items():
            raw = plan[f"{self.split}/{name}"]                         # every row, in our order
            if len(raw) != len(tokens):
                raise SystemExit(f"{self.split}: the plan has {len(raw)} rows, FuxiCTR's encoded split {len(tokens)}")
            ok = (tokens == raw) | (tokens == "__OOV__")
            if not ok.all():
                raise SystemExit(f"{self.split}: {int((~ok).sum())} plan rows decode to another {name} in FuxiCTR's "
                                 "encoded split (the row order differs)")
        return torch.from_numpy(pos.astype(np.int64))

    def batch(self, pos: torch.Tensor) -> dict:
        out = {k: v[pos] for k, v in self.columns.items()}
        out["label"] = self.labels[pos]
        return out


def cmd_replay(args) -> None:
    plan = np.load(args.plan)
    seed, batch_size, epochs = int(plan["seed"]), int(plan["batch_size"]), int(plan["epochs"])
    model, feature_map = build_model(args.work, seed)
    model.load_state_dict(torch.load(args.work / "init.pt"))
    model._max_gradient_norm = 10.0                                    # BaseModel.fit's default
    train = Rows(args.work, "train", feature_map)
    valid = Rows(args.work, "valid", feature_map)
    order = train.positions(plan["train_pos"], plan).view(epochs, -1)
    valid_pos = valid.positions(plan["valid_pos"], plan)
    if not torch.equal(valid.labels[valid_pos], torch.from_numpy(plan["valid_label"].astype(np.float32))):
        raise SystemExit("valid labels of the plan's rows differ from FuxiCTR's encoded split")

    def score() -> np.ndarray:
        model.eval()
        with torch.no_grad():
            probs = [model.forward(valid.batch(valid_pos[i:i + 8192]))["y_pred"].reshape(-1)
                     for i in range(0, len(valid_pos), 8192)]
        model.train()
        return torch.cat(probs).numpy()

    out = {"epoch_0": score()}
    losses = []
    model.train()
    for e in range(epochs):
        for i in range(0, order.shape[1], batch_size):
            losses.append(float(model.train_step(train.batch(order[e, i:i + batch_size]))))
        out[f"epoch_{e + 1}"] = score()
    np.savez(args.out, losses=np.array(losses), **out)
    print(json.dumps({"out": str(args.out), "steps": len(losses)}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("init")
    a.add_argument("--model", default="DCNv2", choices=sorted(driver.MODELS))
    a.add_argument("--data", required=True, type=Path)
    a.add_argument("--work", required=True, type=Path)
    a.add_argument("--seed", type=int, default=2019)
    a.add_argument("--features", type=Path, default=None, help="a flat table's features.json (ctr_models.py)")
    b = sub.add_parser("replay")
    b.add_argument("--work", required=True, type=Path)
    b.add_argument("--plan", required=True, type=Path)
    b.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    (cmd_init if args.cmd == "init" else cmd_replay)(args)


if __name__ == "__main__":
    main()

"""Is a recsys model the same computation as FuxiCTR's? Same start, same batches, compare.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/replay_fuxictr.py --model dcn_v2 --seed 2019 --epochs 4
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/replay_fuxictr.py --model dcn_v2 --dataset adult
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/replay_fuxictr.py --model autoint_plus --batch-size 4096

Models: ``dcn_v2`` (FuxiCTR's DCNv2, ``peers/fuxictr_dcnv2.py``), ``autoint_plus`` and ``autoint``
(the driver's AutoInt with and without a DNN, ``peers/fuxictr_deepfm.py``; ours with
``residual: auto`` as ``ctr_models.py`` runs them, FuxiCTR's residual).

Both sides train from the *same* initial weights on the *same* rows in the *same* order, each with
its own code for everything that could differ: its own vocabulary and encoding of the ml100k-ctr
split, of Adult (``--dataset adult``: numeric fields standardized and embedded as ``x * v``) or
of the generated wide table (``--dataset wide``, 40 fields, ``--wide-rows`` rows)
(ours: ``CTRDataModule`` as ``experiments/<model>_ml100k.yaml`` configures it, with the data set
swapped as ``ctr_models.py`` does; FuxiCTR: its ``FeatureProcessor``), its own model, its own loss
and its own optimizer (ours: the Adam of ``RankingTask.configure_optimizers`` with the config's
arguments, gradients clipped as the config's ``gradient_clip_val``, if it has one; FuxiCTR:
``BaseModel.train_step``, clip 10). Only the random draws are shared: FuxiCTR draws the initial
weights (its ``reset_parameters``, with the seed), and they are copied into our model through the
two vocabularies (token -> row) and the two field orders; this script draws the row order (a
seeded permutation per epoch).

Prints, for the valid split: the largest gap between the two sides' predicted probabilities
before training and after each epoch, both sides' valid AUC after each epoch, and the per-step
train-loss gap. If the two implementations are the same computation, the gaps stay at float
rounding (the two pool lists and sum in different orders) and the AUCs agree to ~1e-4; a real
difference (an encoding, a layer, the loss, the optimizer) shows up as a gap that the first
epochs make large.

What this does not replay: the epoch-level control (early stopping on valid AUC, lr x0.1 after an
epoch without a gain, reload of the best epoch), which ``ctr_models.py`` exercises in full runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import ctr_models  # noqa: E402  (data sets, our config's model, the peer venv and its environment)

PEER = BENCH / "peers" / "fuxictr_replay.py"
FX_SPECIAL = ("__PAD__", "__OOV__")


def peer(*args: str) -> None:
    res = subprocess.run([str(ctr_models.PEER_PY), str(PEER), *args], env=ctr_models.env(), cwd=ROOT,
                         capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"peer {args[0]} failed (rc {res.returncode}):\n{res.stderr[-4000:]}")


def build_ours(model: str, dataset: str, batch_size: int, wide_rows: int):
    """The config's data module and model as ``ctr_models.py`` builds them (the model's own init is
    overwritten below), the task with the config's arguments, and the config's gradient clip
    (None: no clipping)."""
    from recsys.tasks.ranking import RankingTask

    dm, net, cfg = ctr_models.build_ours_net(model, dataset, batch_size, wide_rows, paper_residual=False)
    task_args = {k: v for k, v in cfg["model"]["init_args"].items() if k != "model"}
    task = RankingTask(model=net, features=dm.features, **task_args)
    clip = cfg["trainer"].get("gradient_clip_val")
    return dm, net, task, None if clip is None else float(clip)


PREFIX = "embedding_layer.embedding_layer.embedding_layers."


def embeddings_to_ours(fx: dict[str, torch.Tensor], net, dm, vocab: dict) -> tuple[dict, list[str]]:
    """Our embedding tables from FuxiCTR's (rows re-indexed through the two vocabularies; numeric
    vectors from its ``Linear(1, D)`` weights), and FuxiCTR's field order."""
    ours = {}
    fields = net.embedding.field_names
    fx_fields = [k[len(PREFIX):-len(".weight")] for k in fx if k.startswith(PREFIX)]
    if sorted(fx_fields) != sorted(fields):
        sys.exit(f"fields differ: FuxiCTR {fx_fields}, ours {fields}")
    schema = dm.features.schema
    dense = [f.name for f in schema.dense_fields]
    if dense:
        ours["embedding.numeric.weight"] = torch.stack([fx[f"{PREFIX}{f}.weight"][:, 0] for f in dense])
    for f in schema.fields:
        key = f"embedding.ebc.embedding_bags.{f.name}.weight"
        if f.name in dense or key not in net.state_dict():
            continue  # a sequence sharing a table: FuxiCTR's entry is the owner's table under a second name
        enc = dm.features.encoder_of(f)
        tokens = vocab[f.name]
        if len(tokens) != len(enc.values_) + len(FX_SPECIAL) + ("" in tokens):
            sys.exit(f"{f.name}: FuxiCTR has {len(tokens)} tokens, we have {len(enc.values_)} values")
        rows = torch.empty(2 + len(enc.values_), dtype=torch.int64)
        rows[0] = tokens["__OOV__"]                                   # our OOV id
        rows[1] = tokens.get("", tokens["__PAD__"])                   # our missing id: FuxiCTR's "" (it fills nulls)
        rows[2:] = torch.tensor([tokens[str(v)] for v in enc.values_])
        ours[key] = fx[f"{PREFIX}{f.name}.weight"][rows]
    return ours, fx_fields


def field_perm(fields: list[str], fx_fields: list[str], width: int) -> torch.Tensor:
    """Index ``perm`` with ``ours_flat[j] = fx_flat[perm[j]]`` for ``[F * width]`` field-major vectors."""
    return torch.cat([torch.arange(width) + width * fx_fields.index(f) for f in fields])


def dnn_to_ours(fx: dict[str, torch.Tensor], fields: list[str], fx_fields: list[str]) -> dict[str, torch.Tensor]:
    """FuxiCTR's ``MLP_Block`` on the flattened field embeddings (``dnn.mlp.*``) as our ``MLP``
    (``dnn.net.*``, the same Sequential layout): the first layer's input columns permuted to our
    field order; none when the model has no DNN."""
    if "dnn.mlp.0.weight" not in fx:
        return {}
    perm = field_perm(fields, fx_fields, fx["dnn.mlp.0.weight"].shape[1] // len(fields))
    return {"dnn.net." + k[len("dnn.mlp."):]: v[:, perm] if k == "dnn.mlp.0.weight" else v
            for k, v in fx.items() if k.startswith("dnn.mlp.")}


def dcn_v2_to_ours(fx: dict[str, torch.Tensor], net, dm, vocab: dict) -> dict[str, torch.Tensor]:
    """FuxiCTR's DCNv2 state dict in our DCNv2's layout: the cross / DNN / output weights permuted
    from its field order to ours."""
    ours, fx_fields = embeddings_to_ours(fx, net, dm, vocab)
    fields = net.embedding.field_names
    perm = field_perm(fields, fx_fields, fx["crossnet.cross_layers.0.weight"].shape[0] // len(fields))
    i = 0
    while f"crossnet.cross_layers.{i}.weight" in fx:
        ours[f"cross.layers.{i}.weight"] = fx[f"crossnet.cross_layers.{i}.weight"][perm][:, perm]
        ours[f"cross.layers.{i}.bias"] = fx[f"crossnet.cross_layers.{i}.bias"][perm]
        i += 1
    ours.update(dnn_to_ours(fx, fields, fx_fields))
    out_w = fx["fc.weight"].clone()
    out_w[:, :len(perm)] = fx["fc.weight"][:, perm]
    ours["out.weight"] = out_w
    ours["out.bias"] = fx["fc.bias"]
    return ours


def autoint_plus_to_ours(fx: dict[str, torch.Tensor], net, dm, vocab: dict) -> dict[str, torch.Tensor]:
    """FuxiCTR's AutoInt (with a DNN; without one for plain AutoInt) in our AutoIntPlus's layout: our fused ``qkv`` is W_q, W_k,
    W_v stacked by rows, ``res`` is W_res (layer 0 only: ``residual: auto``); attention treats the
    fields as a set, so only ``fc`` (blocks of the attention width) and the DNN's first layer
    (blocks of the embedding width) are permuted to our field order."""
    ours, fx_fields = embeddings_to_ours(fx, net, dm, vocab)
    fields = net.embedding.field_names
    i = 0
    while f"self_attention.{i}.W_q.weight" in fx:
        ours[f"interacting.{i}.qkv.weight"] = torch.cat([fx[f"self_attention.{i}.W_{x}.weight"] for x in "qkv"])
        if f"self_attention.{i}.W_res.weight" in fx:
            ours[f"interacting.{i}.res.weight"] = fx[f"self_attention.{i}.W_res.weight"]
        i += 1
    att = fx["fc.weight"].shape[1] // len(fields)
    ours["output.weight"] = fx["fc.weight"][:, field_perm(fields, fx_fields, att)]
    ours["output.bias"] = fx["fc.bias"]
    ours.update(dnn_to_ours(fx, fields, fx_fields))
    return ours


# our config name -> (the driver's model name, the weight map)
MODELS = {"dcn_v2": ("DCNv2", dcn_v2_to_ours), "autoint_plus": ("AutoIntPlus", autoint_plus_to_ours),
          "autoint": ("AutoInt", autoint_plus_to_ours)}


def fx_to_ours(model: str, fx: dict[str, torch.Tensor], net, dm, vocab: dict) -> dict[str, torch.Tensor]:
    ours = MODELS[model][1](fx, net, dm, vocab)
    want = net.state_dict()
    missing, extra = set(want) - set(ours), set(ours) - set(want)
    if missing or extra:
        sys.exit(f"weight map: no FuxiCTR counterpart for {sorted(missing)}; not in our model: {sorted(extra)}")
    bad = [k for k in want if want[k].shape != ours[k].shape]
    if bad:
        sys.exit(f"weight map: shapes differ for {bad}")
    return ours


def auc(p: np.ndarray, y: np.ndarray) -> float:
    from recsys.metrics import roc_auc

    return float(roc_auc(y, p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="dcn_v2")
    ap.add_argument("--dataset", choices=["ml100k", "adult", "wide"], default="ml100k")
    ap.add_argument("--wide-rows", type=int, default=50_000, help="rows of the generated wide table (--dataset wide)")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--clip", type=float, default=None,
                    help="clip our gradient norm at this value instead of the config's gradient_clip_val")
    ap.add_argument("--loss", choices=["logits", "probs"], default="logits",
                    help="our loss: BCE with logits (RankingTask's), or FuxiCTR's BCE on the sigmoid output "
                         "(float32; a row whose sigmoid rounds to exactly 0 or 1 gets a loss of 100 and no gradient)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctr_models.ensure_peers()
    work = args.work or Path(tempfile.mkdtemp(prefix="replay_fuxictr_"))
    if args.dataset == "ml100k":
        data, table = ctr_models.write_splits(work / "splits"), []
    else:
        data = ctr_models.write_table_splits(args.dataset, work / "splits", args.wide_rows)
        table = ["--features", str(data / "features.json")]
    peer("init", "--model", MODELS[args.model][0], "--data", str(data), "--work", str(work / "peer"),
         "--seed", str(args.seed), *table)
    ds_id = (work / "peer" / "dataset_id").read_text().strip()
    vocab = json.loads((work / "peer" / "data" / ds_id / "feature_vocab.json").read_text())

    dm, net, task, clip = build_ours(args.model, args.dataset, args.batch_size, args.wide_rows)
    clip = clip if args.clip is None else args.clip
    net.load_state_dict(fx_to_ours(args.model, torch.load(work / "peer" / "init.pt"), net, dm, vocab))
    train, valid = dm.dataset_for("train"), dm.dataset_for("valid")
    tf, vf = dm.frame("train"), dm.frame("valid")
    rng = np.random.default_rng(args.seed)
    order = np.concatenate([rng.permutation(len(train)) for _ in range(args.epochs)])
    plan = dict(seed=args.seed, batch_size=args.batch_size, epochs=args.epochs, train_pos=order,
                valid_pos=np.arange(len(vf)), valid_label=valid.labels.numpy())
    for f in dm.features.schema.fields:
        if f.kind == "categorical":  # raw values as FuxiCTR's strings, for the peer's row check
            for split, frame in (("train", tf), ("valid", vf)):
                plan[f"{split}/{f.name}"] = frame[f.name].cast(pl.String).fill_null("").to_numpy().astype(str)
    np.savez(work / "plan.npz", **plan)
    peer("replay", "--work", str(work / "peer"), "--plan", str(work / "plan.npz"), "--out", str(work / "fx.npz"))
    fx = np.load(work / "fx.npz")

    opt = task.configure_optimizers()["optimizer"]
    params = [p for g in opt.param_groups for p in g["params"]]
    y = valid.labels.numpy()

    def score() -> np.ndarray:
        net.eval()
        with torch.no_grad():
            p = torch.cat([torch.sigmoid(net(valid[torch.arange(i, min(i + 8192, len(valid)))]).logits)
                           for i in range(0, len(valid), 8192)])
        net.train()
        return p.numpy()

    ours = {"epoch_0": score()}
    losses, norms = [], []
    net.train()
    steps = order.reshape(args.epochs, -1)
    for e in range(args.epochs):
        for i in range(0, steps.shape[1], args.batch_size):
            batch = train[torch.from_numpy(steps[e, i:i + args.batch_size])]
            # RankingTask's training loss for a model without auxiliary losses (DCN-v2, AutoInt+)
            logits = net(batch).logits
            loss = (F.binary_cross_entropy_with_logits(logits, batch.labels) if args.loss == "logits"
                    else F.binary_cross_entropy(torch.sigmoid(logits), batch.labels))
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip)))
            else:
                norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])))
            opt.step()
            losses.append(float(loss.detach()))
        ours[f"epoch_{e + 1}"] = score()

    rows = []
    print(f"{args.model}, {args.dataset}, seed {args.seed}, loss {args.loss}, clip {clip} (FuxiCTR: 10), {len(train):,} train rows "
          f"x {args.epochs} epochs, batch {args.batch_size}, {len(y):,} valid rows (work folder {work})")
    print(f"{'after':>8} {'max |p_ours - p_fx|':>20} {'valid AUC ours':>15} {'valid AUC FuxiCTR':>18} {'diff':>8}")
    for e in range(args.epochs + 1):
        po, pf = ours[f"epoch_{e}"], fx[f"epoch_{e}"]
        r = dict(epoch=e, max_abs_prob_gap=float(np.abs(po - pf).max()), auc_ours=auc(po, y), auc_fx=auc(pf, y))
        rows.append(r)
        print(f"{'init' if e == 0 else f'epoch {e}':>8} {r['max_abs_prob_gap']:>20.2e} {r['auc_ours']:>15.5f} "
              f"{r['auc_fx']:>18.5f} {r['auc_ours'] - r['auc_fx']:>+8.5f}")
    lo, lf = np.array(losses), fx["losses"]
    gaps = np.abs(lo - lf)
    at = [s for s in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if s <= len(gaps)]
    big = [i + 1 for i, n in enumerate(norms) if n > 10.0]
    print(f"our gradient norm (before any clip) above 10, FuxiCTR's clip, at {len(big)} of {len(norms)} steps"
          + (f" (first: step {big[0]}; largest {max(norms):.1f})" if big else ""))
    print("train loss gap |ours - FuxiCTR| at step " + ", ".join(f"{s}: {gaps[s - 1]:.1e}" for s in at)
          + f"; largest {gaps.max():.1e}")
    np.save(work / "ours_losses.npy", lo)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "dataset": args.dataset, "seed": args.seed,
                                        "batch_size": args.batch_size, "clip": clip, "loss": args.loss, "epochs": rows,
                                        "steps_with_grad_norm_above_10": big,
                                        "max_step_loss_gap": float(gaps.max()),
                                        "step_loss_gap": {s: float(gaps[s - 1]) for s in at}}, indent=2) + "\n")


if __name__ == "__main__":
    main()

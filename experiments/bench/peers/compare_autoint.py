"""Equivalence check: recsys's AutoInt+ vs FuxiCTR's AutoInt+ composition on one real batch.

Two steps, two venvs (FuxiCTR's venv has no TorchRec, recsys's has no FuxiCTR):

    # 1. recsys venv: build our AutoIntPlus on ml100k-ctr, take one training batch, save our
    #    weights, the batch (as FuxiCTR input tensors), our logits and gradients
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/peers/compare_autoint.py dump \
        --out /tmp/aip/cmp.pt [--residual auto] [--seed 2019] [--batch-size 1024]
    # 2. peer venv: build FuxiCTR's AutoInt (the composition of peers/fuxictr_deepfm.py with
    #    its AutoIntPlus params), copy our weights into it, compare logits and gradients
    OMP_NUM_THREADS=1 experiments/bench/.venv-peers/bin/python \
        experiments/bench/peers/compare_autoint.py check --inp /tmp/aip/cmp.pt

Id mapping: FuxiCTR reserves row 0 of every table for padding (``padding_idx=0``; its
``MaskedAveragePooling`` drops zero vectors), recsys uses 0 = OOV, 1 = missing and has no
padding row. The dump therefore shifts every recsys id by +1 and FuxiCTR's tables get one row
more: ``fuxi_table[i + 1] = our_table[i]``, ``fuxi_table[0] = 0``. Multi-hot and sequence fields
are written as right-padded ``[B, L]`` id matrices (FuxiCTR's default ``padding="post"``). The
feature map lists the fields in recsys's order (pooled id fields in schema order), so the
flattened layouts of ``fc`` and the DNN's first layer coincide and weights copy one to one.

Our ``qkv`` weight ``[3*H*d, in]`` is W_q, W_k, W_v stacked (rows 0..H*d-1 = W_q, ...); our ``res``
is W_res (FuxiCTR has one only where the widths differ: with ``--residual auto`` the structures
are identical; with ``project``, our default, layers 2.. have an extra W_res x that FuxiCTR's
identity residual lacks, and the check reports that instead of comparing).

The check also prints the initial weight scale (std) of every component under each library's
own initialization (ours: the constructor's; FuxiCTR's: ``reset_parameters``), before copying.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]

# our yaml's AutoInt+ widths (experiments/autoint_plus_ml100k.yaml); FuxiCTR's AUTOINT_PARAMS
# in peers/fuxictr_deepfm.py are the same
WIDTHS = {"embedding_dim": 16, "attention_layers": 3, "num_heads": 2, "head_dim": 32,
          "dnn_hidden_units": [256, 128]}


def _std_table(named: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "std": float(v.detach().float().std()) if v.numel() > 1 else float(v.detach().abs())}
            for k, v in named.items()}


# ------------------------------------------------------------------------------ dump (recsys)
def dump(args) -> None:
    sys.path.insert(0, str(ROOT))
    import torch.nn.functional as F

    from recsys.data import CTRDataModule
    from recsys.models.autoint import AutoIntPlus

    torch.manual_seed(args.seed)
    dm = CTRDataModule(dataset="movielens-100k", dataset_options={"history_len": 50},
                       batch_size=args.batch_size, seed=args.seed)
    dm.setup("fit")
    model = AutoIntPlus(dm.features, residual=args.residual, use_scale=False, qkv_relu=False, layer_norm=False,
                        attention_init=args.attention_init, mlp_init=args.mlp_init, **WIDTHS)
    if args.table_std is not None:  # larger embeddings: non-uniform attention, a stronger test
        with torch.no_grad():
            for p in model.embedding.ebc.parameters():
                p.normal_(std=args.table_std)
    batch = next(iter(dm.train_dataloader()))
    schema = dm.features.schema
    emb = model.embedding
    if emb.ec is not None or emb.projections or emb.numeric is not None:
        raise SystemExit("expected only pooled EmbeddingBag tables, no projections, no numeric fields")

    # --- weights
    tables = {name: cfg_w.detach().clone() for name, cfg_w in
              ((t, emb.ebc.embedding_bags[t].weight) for t in emb.bag_tables)}
    layers = []
    for layer in model.interacting:
        w = layer.qkv.weight.detach().clone()
        o = layer.out_dim
        layers.append({"W_q": w[:o], "W_k": w[o:2 * o], "W_v": w[2 * o:],
                       "W_res": None if layer.res is None else layer.res.weight.detach().clone(),
                       "in_dim": layer.in_dim, "identity_residual": layer.res is None and layer.residual != "none"})
    dnn = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in model.dnn.net if isinstance(m, torch.nn.Linear)]
    fc = (model.output.weight.detach().clone(), model.output.bias.detach().clone())

    # --- the batch as FuxiCTR input: ids + 1, lists right-padded with 0
    kjt = batch.sparse.to_dict()
    inputs, fields = {}, []
    for f in schema.id_fields:
        jt = kjt[f.name]
        lengths = jt.lengths()
        fields.append({"name": f.name, "table": f.table, "kind": f.kind, "is_list": f.is_list,
                       "pooling": emb.pooling[f.name]})
        if f.is_list:
            width = max(int(lengths.max()), 1)
            inputs[f.name] = (jt.to_padded_dense(width, padding_value=-1) + 1).long()
        else:
            inputs[f.name] = jt.values().long() + 1
    # --- our forward / backward on that batch
    model.zero_grad()
    logits = model(batch).logits
    loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
    loss.backward()
    grads = {
        "tables": {t: emb.ebc.embedding_bags[t].weight.grad.detach().clone() for t in emb.bag_tables},
        "layers": [{"W_q": l.qkv.weight.grad[:l.out_dim].clone(), "W_k": l.qkv.weight.grad[l.out_dim:2 * l.out_dim].clone(),
                    "W_v": l.qkv.weight.grad[2 * l.out_dim:].clone(),
                    "W_res": None if l.res is None else l.res.weight.grad.clone()} for l in model.interacting],
        "dnn": [(m.weight.grad.clone(), m.bias.grad.clone()) for m in model.dnn.net if isinstance(m, torch.nn.Linear)],
        "fc": (model.output.weight.grad.clone(), model.output.bias.grad.clone()),
    }
    init_std = _std_table({**{f"emb.{t}": w for t, w in tables.items()},
                           **{f"att{i}.{k}": v for i, l in enumerate(layers) for k, v in l.items()
                              if isinstance(v, torch.Tensor)},
                           **{f"dnn{i}.weight": w for i, (w, _) in enumerate(dnn)},
                           **{f"dnn{i}.bias": b for i, (_, b) in enumerate(dnn)},
                           "fc.weight": fc[0], "fc.bias": fc[1]})
    torch.save({"tables": tables, "table_sizes": dict(dm.features.table_sizes), "layers": layers, "dnn": dnn,
                "fc": fc, "fields": fields, "inputs": inputs, "labels": batch.labels.clone(),
                "logits": logits.detach().clone(), "loss": float(loss.detach()), "grads": grads, "widths": WIDTHS,
                "residual": args.residual, "init_std": init_std,
                "args": {k: v for k, v in vars(args).items() if k != "func"}}, args.out)
    print(f"dumped {args.out}: batch {len(batch)}, fields {[f['name'] for f in fields]}, loss {float(loss.detach()):.6f}")


# ------------------------------------------------------------------------------ check (FuxiCTR)
def _feature_map(d: dict, work: Path):
    from fuxictr.features import FeatureMap

    feats = []
    for f in d["fields"]:
        spec = {"source": "", "padding_idx": 0, "vocab_size": d["table_sizes"][f["table"]] + 1}
        if f["is_list"]:
            spec.update(type="sequence", max_len=int(d["inputs"][f["name"]].shape[1]),
                        feature_encoder="layers.MaskedAveragePooling()" if f["pooling"] == "mean"
                        else "layers.MaskedSumPooling()")
            if f["table"] != f["name"]:
                spec["share_embedding"] = f["table"]
        else:
            spec["type"] = "categorical"
        feats.append({f["name"]: spec})
    fmap = {"dataset_id": "cmp", "num_fields": len(feats), "total_features": 0, "input_length": 0,
            "labels": ["label"], "features": feats}
    (work / "feature_map.json").write_text(json.dumps(fmap))
    fm = FeatureMap("cmp", str(work))
    fm.load(str(work / "feature_map.json"), {"embedding_dim": d["widths"]["embedding_dim"]})
    return fm


def check(args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fuxictr_deepfm as peer  # the driver's composition (model_zoo AutoInt)
    from fuxictr.pytorch.torch_utils import seed_everything
    from torch import nn

    d = torch.load(args.inp, weights_only=False)
    w = d["widths"]
    work = Path(tempfile.mkdtemp(prefix="cmp_autoint_"))
    fm = _feature_map(d, work)
    params = dict(peer.COMMON_PARAMS)
    params.update(peer.MODELS["AutoIntPlus"]["params"])
    params.update(embedding_dim=w["embedding_dim"], attention_layers=w["attention_layers"],
                  num_heads=w["num_heads"], attention_dim=w["num_heads"] * w["head_dim"],
                  dnn_hidden_units=w["dnn_hidden_units"], model_root=str(work), verbose=0, gpu=-1)
    seed_everything(seed=d["args"]["seed"])
    model = peer.AutoInt(fm, **params)
    model.train()
    emb = model.embedding_layer.embedding_layer.embedding_layers
    att = list(model.self_attention)
    lin = [m for m in model.dnn.mlp if isinstance(m, nn.Linear)]

    # --- initial scales (FuxiCTR's own init) vs ours
    fux_init = _std_table({**{f"emb.{t}": emb[t].weight[1:] for t in d["tables"]},
                           **{f"att{i}.{k}": getattr(l, k).weight for i, l in enumerate(att)
                              for k in ("W_q", "W_k", "W_v", "W_res") if getattr(l, k, None) is not None},
                           **{f"dnn{i}.weight": m.weight for i, m in enumerate(lin)},
                           **{f"dnn{i}.bias": m.bias for i, m in enumerate(lin)},
                           "fc.weight": model.fc.weight, "fc.bias": model.fc.bias})
    print("initial weight std (ours as constructed | FuxiCTR after reset_parameters):")
    for k in sorted(set(fux_init) | set(d["init_std"])):
        a, b = d["init_std"].get(k), fux_init.get(k)
        sa = f"{a['std']:.4g}" if a else "-"
        sb = f"{b['std']:.4g}" if b else "-"
        shape = (a or b)["shape"]
        print(f"  {k:<22} {str(shape):<14} ours {sa:>10} | fuxictr {sb:>10}")

    # --- structure
    problems = []
    for i, (ours, theirs) in enumerate(zip(d["layers"], att)):
        if (ours["W_res"] is None) != (theirs.W_res is None) or ours["identity_residual"] != (
                theirs.W_res is None and theirs.use_residual):
            problems.append(f"layer {i + 1}: residual differs (ours: "
                            f"{'W_res x' if ours['W_res'] is not None else 'x' if ours['identity_residual'] else 'none'}, "
                            f"FuxiCTR: {'W_res x' if theirs.W_res is not None else 'x' if theirs.use_residual else 'none'})")
    if problems:
        print("STRUCTURE DIFFERS (dump with --residual auto to compare like with like):")
        for p in problems:
            print("  " + p)
        return 1

    # --- copy our weights into FuxiCTR's modules
    with torch.no_grad():
        for t, wt in d["tables"].items():
            emb[t].weight.zero_()
            emb[t].weight[1:] = wt
        for ours, theirs in zip(d["layers"], att):
            for k in ("W_q", "W_k", "W_v"):
                getattr(theirs, k).weight.copy_(ours[k])
            if ours["W_res"] is not None:
                theirs.W_res.weight.copy_(ours["W_res"])
        for (wt, b), m in zip(d["dnn"], lin, strict=True):
            m.weight.copy_(wt)
            m.bias.copy_(b)
        model.fc.weight.copy_(d["fc"][0])
        model.fc.bias.copy_(d["fc"][1])

    inputs = dict(d["inputs"])
    inputs["label"] = d["labels"]
    model.zero_grad()
    out = model(inputs)["y_pred"].view(-1)
    y = model.get_labels(inputs)
    loss = model.compute_loss({"y_pred": out.view(-1, 1)}, y)
    loss.backward()
    ours_p = torch.sigmoid(d["logits"])
    report = {"loss_ours": d["loss"], "loss_fuxictr": float(loss),
              "max_abs_diff_prob": float((out.detach() - ours_p).abs().max()),
              "max_abs_diff_logit": float((torch.logit(out.detach().double()) - d["logits"].double()).abs().max())}
    g = d["grads"]
    gdiff = {}

    def rel(a, b):
        return float((a - b).norm() / max(float(b.norm()), 1e-30))

    for t in d["tables"]:
        gdiff[f"emb.{t}"] = rel(emb[t].weight.grad[1:], g["tables"][t])
        gdiff[f"emb.{t}.padding_row_grad"] = float(emb[t].weight.grad[0].abs().max())
    for i, (ours, theirs) in enumerate(zip(g["layers"], att)):
        for k in ("W_q", "W_k", "W_v", "W_res"):
            if ours[k] is not None:
                gdiff[f"att{i}.{k}"] = rel(getattr(theirs, k).weight.grad, ours[k])
    for i, ((gw, gb), m) in enumerate(zip(g["dnn"], lin)):
        gdiff[f"dnn{i}.weight"] = rel(m.weight.grad, gw)
        gdiff[f"dnn{i}.bias"] = rel(m.bias.grad, gb)
    gdiff["fc.weight"] = rel(model.fc.weight.grad, g["fc"][0])
    gdiff["fc.bias"] = rel(model.fc.bias.grad, g["fc"][1])
    report["grad_rel_diff"] = gdiff
    ok = report["max_abs_diff_logit"] < args.tol and all(
        v < args.tol for k, v in gdiff.items() if not k.endswith("padding_row_grad"))
    report["equivalent"] = ok
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("dump", help="recsys venv: save our model, batch, logits, gradients")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--seed", type=int, default=2019)
    a.add_argument("--batch-size", type=int, default=1024)
    a.add_argument("--residual", default="auto", help="our residual (auto = FuxiCTR's structure)")
    a.add_argument("--attention-init", default="torch")
    a.add_argument("--mlp-init", default="torch")
    a.add_argument("--table-std", type=float, default=None,
                   help="re-draw the tables from N(0, std^2) (e.g. 0.3: attention far from uniform)")
    b = sub.add_parser("check", help="peer venv: load the dump into FuxiCTR's AutoInt+ and compare")
    b.add_argument("--inp", type=Path, required=True)
    b.add_argument("--tol", type=float, default=1e-4, help="max |logit diff| and max relative grad diff")
    args = ap.parse_args(argv)
    if args.cmd == "dump":
        dump(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())

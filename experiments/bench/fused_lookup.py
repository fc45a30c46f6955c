"""Fused lookup of single-valued fields vs the EmbeddingBagCollection's per-table forward.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/fused_lookup.py
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/fused_lookup.py --datasets wide --models deepfm --rounds 7

For each data set and model: our config's model (``experiments/<model>_ml100k.yaml``, the data set
swapped as in ``ctr_models.py``), ``--steps`` training batches of ``--batch`` rows held in memory;
each round times one training step per batch (forward, BCE, backward, Adam) with
``FeatureEmbedding.fused_lookup`` on, then off (the collection's own forward), and the two embedding
lookups alone (forward + backward of every ``FeatureEmbedding`` in the model, on the same batches).
Prints medians over rounds and the median of the per-round ratios (off time / on time: > 1 means
the fused lookup is faster). Before timing it checks that both paths give the same logits (exactly)
and gradients (to float rounding) on the first batch.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ctr_models  # noqa: E402

from recsys.models.embedding import FeatureEmbedding  # noqa: E402


def set_fused(on: bool) -> None:
    FeatureEmbedding.fused_lookup = on


def check_same(net, batch) -> float:
    """Largest gradient difference relative to the gradient's largest entry; asserts equal logits."""
    outs, grads = [], []
    for on in (True, False):
        set_fused(on)
        net.zero_grad()
        out = net(batch).logits
        out.sum().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    set_fused(True)
    if not torch.equal(outs[0], outs[1]):
        raise SystemExit(f"fused and per-table logits differ: max |diff| {(outs[0] - outs[1]).abs().max():.3g}")
    return max(float((grads[0][n] - g).abs().max() / g.abs().max().clamp(min=1e-30)) for n, g in grads[1].items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["wide", "adult", "ml100k"], choices=list(ctr_models.DATASETS))
    ap.add_argument("--models", nargs="+", default=["deepfm", "moe"])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3, help="batches held in memory, one step each per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--wide-rows", type=int, default=50_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = ["| data set | model | step ms fused | step ms per-table | step ratio (paired) | lookup ms fused | "
             "lookup ms per-table | lookup ratio (paired) | max grad diff (rel.) |", "|---|---|---|---|---|---|---|---|---|"]
    for dataset in args.datasets:
        for model in args.models:
            dm, step = ctr_models.build_ours(model, dataset, args.batch, args.wide_rows, False)
            net = step.net
            held = list(itertools.islice(dm.train_dataloader(), args.steps))
            gdiff = check_same(net, held[0])
            embs = [m for m in net.modules() if isinstance(m, FeatureEmbedding)]

            def time_steps() -> float:
                t0 = time.perf_counter()
                for b in held:
                    step(b)
                return (time.perf_counter() - t0) / len(held)

            def time_lookups() -> float:
                t0 = time.perf_counter()
                for b in held:
                    loss = 0.0
                    for e in embs:
                        o = e(b)
                        loss = loss + o.concat().sum() + (o.numeric.sum() if o.numeric is not None else 0.0)
                    loss.backward()
                return (time.perf_counter() - t0) / len(held)

            res = {k: [] for k in ("step_on", "step_off", "look_on", "look_off")}
            for r in range(args.rounds + 1):  # round 0 warms up
                for on in (True, False):
                    set_fused(on)
                    s, lk = time_steps(), time_lookups()
                    if r:
                        res[f"step_{'on' if on else 'off'}"].append(s)
                        res[f"look_{'on' if on else 'off'}"].append(lk)
            set_fused(True)
            med = {k: 1000 * statistics.median(v) for k, v in res.items()}
            sr = statistics.median(b / a for a, b in zip(res["step_on"], res["step_off"]))
            lr = statistics.median(b / a for a, b in zip(res["look_on"], res["look_off"]))
            lines.append(f"| {dataset} | {model} | {med['step_on']:.1f} | {med['step_off']:.1f} | {sr:.2f}x | "
                         f"{med['look_on']:.1f} | {med['look_off']:.1f} | {lr:.2f}x | {gdiff:.1e} |")
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()

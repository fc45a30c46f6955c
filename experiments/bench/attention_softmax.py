"""AutoInt's interacting layers on CPU: our exp/sum softmax vs ``torch.softmax``, same run.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/attention_softmax.py [--repeats 7]

Times one training step (forward, backward, Adam) of ``recsys.models.AutoInt`` with the
ml100k-ctr widths (F = 10 fields, D = 16, 3 layers, 2 heads of 32, batch 1,024) on random field
embeddings, alternating the two softmax implementations inside ``InteractingLayer`` round by
round, and prints the median step time of each and the median of the paired ratios. Both give
the same outputs to float rounding (checked first).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from recsys.models import autoint as A


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    args = ap.parse_args()
    torch.manual_seed(0)
    layers = torch.nn.Sequential(A.InteractingLayer(16, 2, 32), A.InteractingLayer(64, 2, 32),
                                 A.InteractingLayer(64, 2, 32))
    head = torch.nn.Linear(10 * 64, 1)
    opt = torch.optim.Adam([*layers.parameters(), *head.parameters()], 1e-3)
    x = torch.randn(args.batch, 10, 16)
    y = torch.randint(0, 2, (args.batch,)).float()
    ours = A._softmax_last

    def fused(s: torch.Tensor) -> torch.Tensor:
        return torch.softmax(s, dim=-1)

    with torch.no_grad():
        A._softmax_last = fused
        ref = head(layers(x).flatten(1))
        A._softmax_last = ours
        torch.testing.assert_close(head(layers(x).flatten(1)), ref)

    def step_ms(impl) -> float:
        A._softmax_last = impl
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = F.binary_cross_entropy_with_logits(head(layers(x).flatten(1)).squeeze(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / args.steps * 1e3

    step_ms(ours), step_ms(fused)  # warm-up
    times = {"torch.softmax": [], "exp/sum (ours)": []}
    for _ in range(args.repeats):
        times["torch.softmax"].append(step_ms(fused))
        times["exp/sum (ours)"].append(step_ms(ours))
    A._softmax_last = ours
    ratios = [a / b for a, b in zip(times["torch.softmax"], times["exp/sum (ours)"])]
    for name, ts in times.items():
        print(f"{name:16s} median {statistics.median(ts):7.1f} ms/step")
    print(f"speed-up (median of paired ratios): {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()

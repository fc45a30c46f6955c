"""AutoInt's interacting layers on CPU by field count: attention kernels compared, same run.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/attention_softmax.py [--fields 10 14 40] [--repeats 5]

Times one training step (forward, backward, Adam) of three ``InteractingLayer``s with the
AutoInt+ widths (D = 16, 3 layers, 2 heads of ``--head-dim`` 32, batch 4,096) plus the output
layer, on random field embeddings of F fields, for three ways to compute the attention:

* ``exp/sum``: ``exp(s - max) / sum`` over ``q @ k^T``, then ``@ v`` (``InteractingLayer`` below
  ``SDPA_MIN_FIELDS`` fields; the only path before issue 18);
* ``torch.softmax``: the fused softmax kernel between the two matmuls;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (``InteractingLayer`` from
  ``SDPA_MIN_FIELDS`` fields; one fused kernel forward and backward).

The threshold in ``recsys/models/autoint.py`` comes from this script's output.

The implementations alternate round by round; printed per F: the median step time of each and
the median of the paired ratios against ``sdpa``. All three give the same loss (to 1e-5) and
gradients (checked first, per F; the largest difference from exp/sum, relative to the largest
entry of that gradient, is printed: float32 rounding in a different order, ~1e-6 for
torch.softmax, up to a few 1e-4 for the fused kernel's backward, which recomputes the
softmax from its log-sum-exp). The machine is shared: read the ratios, not the times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from recsys.models import autoint as A


def _attend_exp_sum(q, k, v, scale):
    s = q @ k.transpose(-1, -2) * scale
    e = torch.exp(s - s.amax(dim=-1, keepdim=True).detach())
    return (e / e.sum(dim=-1, keepdim=True)) @ v


def _attend_softmax(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


def _attend_sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


IMPLS = {"exp/sum": _attend_exp_sum, "torch.softmax": _attend_softmax, "sdpa": _attend_sdpa}


def layer_forward(layer: A.InteractingLayer, x: torch.Tensor, attend) -> torch.Tensor:
    """``InteractingLayer.forward`` (no dropout) with the attention computed by ``attend``."""
    b, f, _ = x.shape
    qkv = layer.qkv(x)
    q, k, v = (t.view(b, f, layer.num_heads, layer.head_dim).transpose(1, 2)
               for t in qkv.split(layer.out_dim, dim=-1))
    out = attend(q, k, v, layer._scale).transpose(1, 2).reshape(b, f, layer.out_dim)
    if layer.res is not None:
        out = out + layer.res(x)
    elif layer.residual != "none":
        out = out + x
    return torch.relu(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fields", type=int, nargs="+", default=[10, 14, 40])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--residual", default="auto", help="InteractingLayer residual (auto = FuxiCTR's)")
    args = ap.parse_args()
    print(f"batch {args.batch}, D 16, 3 layers x 2 heads x {args.head_dim}, residual {args.residual}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for n_fields in args.fields:
        torch.manual_seed(0)
        hd = args.head_dim
        layers = torch.nn.ModuleList([A.InteractingLayer(16, 2, hd, residual=args.residual),
                                      A.InteractingLayer(2 * hd, 2, hd, residual=args.residual),
                                      A.InteractingLayer(2 * hd, 2, hd, residual=args.residual)])
        head = torch.nn.Linear(n_fields * 2 * hd, 1)
        params = [*layers.parameters(), *head.parameters()]
        opt = torch.optim.Adam(params, 1e-3)
        x = torch.randn(args.batch, n_fields, 16)
        y = torch.randint(0, 2, (args.batch,)).float()

        def loss_of(attend):
            h = x
            for layer in layers:
                h = layer_forward(layer, h, attend)
            return F.binary_cross_entropy_with_logits(head(h.flatten(1)).squeeze(1), y)

        grads = {}
        for name, attend in IMPLS.items():  # same loss and gradients to float rounding
            opt.zero_grad()
            loss = loss_of(attend)
            loss.backward()
            grads[name] = (loss.detach(), [p.grad.clone() for p in params])
        ref_loss, ref_g = grads["exp/sum"]
        dev = {}
        for name, (loss, g) in grads.items():
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            # the largest gradient difference, relative to the parameter's largest gradient
            dev[name] = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g, ref_g))
            assert dev[name] < 1e-2, (name, dev[name])
        opt.zero_grad()

        def step_ms(attend) -> float:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = loss_of(attend)
                opt.zero_grad()
                loss.backward()
                opt.step()
            return (time.perf_counter() - t0) / args.steps * 1e3

        for attend in IMPLS.values():  # warm-up
            step_ms(attend)
        times: dict[str, list[float]] = {name: [] for name in IMPLS}
        for _ in range(args.repeats):
            for name, attend in IMPLS.items():
                times[name].append(step_ms(attend))
        cells = []
        for name, ts in times.items():
            ratio = statistics.median(a / b for a, b in zip(ts, times["sdpa"]))
            cells.append(f"{name} {statistics.median(ts):7.1f} ms (time {ratio:.2f} of sdpa)")
        print(f"F = {n_fields:3d}: " + " | ".join(cells), flush=True)
        print("        largest gradient difference vs exp/sum (relative to the largest gradient): "
              + ", ".join(f"{n} {d:.1e}" for n, d in dev.items()), flush=True)


if __name__ == "__main__":
    main()

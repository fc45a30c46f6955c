"""Long behaviour sequences: SDIM vs DIN target attention (issue 5), speed and quality.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/long_sequences.py speed
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/long_sequences.py quality --seeds 2019 2020 2021
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/long_sequences.py quality --seeds 2019 --tau-sweep
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/long_sequences.py quality --seeds 2019 2020 2021 --peer

**Speed** (the long-term interest module alone, the part the models differ in; forward, no
gradient, one request = one user's sequence of L behaviours and B = 1,024 candidates, d = 32):

* ``din``: :class:`recsys.models.sdim.TargetAttention` (DIN's activation unit [64, 32] + softmax)
  over ``[B, L, d]`` (the user's sequence repeated per candidate);
* ``sdim``: :class:`recsys.models.sdim.SDIMAttention` (m = 48, τ = 3, ℓ2) direct path on the
  request: the user's ``[1, L, d]`` sequence hashed once (the paper's O(Lm log d + ...)), the
  collisions ``[B, L, G]`` and sums computed per candidate;
* ``sdim per-row``: the same direct path with the sequence repeated per row (``[B, L, d]``, as a
  training batch of B different users: each row hashes its own L behaviours);
* ``bse``: serving split: the user's tables ``[16, 8, d]`` encoded once (``bse_encode``, timed
  apart: the paper's BSE server runs it in parallel with retrieval) and the B candidates scored
  from them (``bse``).

Both direct paths run over the candidates in chunks of ``--chunk`` rows (bounded memory; the
work is the same). The five timings alternate round by round (``--repeats`` rounds after one
warm-up each), so load on a shared machine hits them alike; each cell is the median, and the
ratios are also given as the median of the per-round ratios (``*_paired`` in the JSON). The bars
of the issue: SDIM >= 5x faster than DIN at L = 1,024; BSE >= 20x faster than DIN at L = 4,096.

**Quality**: ``recsys fit`` of ``experiments/sdim_ml100k.yaml`` and ``din_ml100k.yaml`` (ml100k-ctr,
history up to 1,000) per seed, test AUC mean/std; ``--tau-sweep`` adds SDIM at m = 48 with
τ in {1, 2, 3, 4, 6}; ``--mean-pool`` adds the τ = 0 mean-pooling baseline. Bar: SDIM mean test AUC
within 0.003 of DIN.

``--peer`` adds FuxiCTR's SDIM per seed on the same data (the ml100k-ctr splits written by
``ctr_models.write_splits``, history up to 1,000), run in the peer venv by
``experiments/bench/peers/fuxictr_deepfm.py --model SDIM`` (FuxiCTR 2.3.10's layers composed as
its LongCTR zoo SDIM, with our yaml's widths: embedding 16, m = 48 / tau = 3 as 16 hashes of 3 bits,
L2 per signature, short-term over the last 10, DNN [256, 128], batch 1024; see
``experiments/bench/peers/README.md``); its row is ``fuxictr_sdim``. ``--peer-only`` runs just the
peer (and writes ``--out`` elsewhere so it does not replace a full run's table).

Writes ``experiments/bench/results/long_sequences_{speed,quality}.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "bench" / "results"
SEEDS = (2019, 2020, 2021)
TAUS = (1, 2, 3, 4, 6)


# ------------------------------------------------------------------------------------------ speed
def _alternated_times(fns: dict, repeats: int, sync) -> dict[str, list[float]]:
    """One warm-up each, then ``repeats`` rounds timing every function once per round."""
    for fn in fns.values():
        fn()
        sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return times


def speed(lengths: list[int], n_candidates: int, dim: int, repeats: int, chunk: int, device: str) -> list[dict]:
    import torch

    from recsys.models.sdim import SDIMAttention, TargetAttention

    torch.manual_seed(0)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    din = TargetAttention(dim, (64, 32)).to(dev).eval()
    sdim = SDIMAttention(dim, n_hashes=48, tau=3, normalization="l2").to(dev).eval()
    rows = []
    with torch.no_grad():
        for length in lengths:
            user = torch.randn(1, length, dim, device=dev)
            cands = torch.randn(n_candidates, dim, device=dev)
            seq = user.expand(n_candidates, -1, -1).contiguous()
            mask = torch.ones(n_candidates, length, dtype=torch.bool, device=dev)

            def chunked(module):
                return lambda: [module(seq[i:i + chunk], mask[i:i + chunk], cands[i:i + chunk])
                                for i in range(0, n_candidates, chunk)]

            tables = sdim.encode(user, mask[:1])
            fns = {"din": chunked(din), "rows": chunked(sdim), "sdim": lambda: sdim(user, mask[:1], cands),
                   "enc": lambda: sdim.encode(user, mask[:1]),
                   "bse": lambda: sdim.lookup(tables, cands.unsqueeze(0))}
            times = _alternated_times(fns, repeats, sync)  # round by round: the load hits all alike
            t_din, t_rows, t_sdim, t_enc, t_bse = (statistics.median(times[k]) for k in fns)
            paired = {k: statistics.median(a / b for a, b in zip(times["din"], times[k])) for k in ("sdim", "rows")}
            # the three SDIM paths compute the same function: check it on this input
            k = min(64, n_candidates)
            served = sdim.lookup(tables, cands[:k].unsqueeze(0))[0]
            err = max((served - sdim(seq[:k], mask[:k], cands[:k])).abs().max().item(),
                      (served - sdim(user, mask[:1], cands[:k])).abs().max().item())
            row = {"L": length, "B": n_candidates, "d": dim, "din_ms": 1e3 * t_din, "sdim_ms": 1e3 * t_sdim,
                   "sdim_rows_ms": 1e3 * t_rows, "bse_ms": 1e3 * t_bse, "bse_encode_ms": 1e3 * t_enc,
                   "sdim_speedup_vs_din": t_din / t_sdim, "sdim_rows_speedup_vs_din": t_din / t_rows,
                   "sdim_speedup_vs_din_paired": paired["sdim"], "sdim_rows_speedup_vs_din_paired": paired["rows"],
                   "bse_speedup_vs_din": t_din / t_bse, "bse_speedup_vs_sdim": t_sdim / t_bse,
                   "bse_max_abs_diff": err}
            rows.append(row)
            print(f"L={length:5d}  din {row['din_ms']:9.2f} ms  sdim {row['sdim_ms']:8.2f} ms  "
                  f"sdim per-row {row['sdim_rows_ms']:8.2f} ms  bse {row['bse_ms']:6.3f} ms "
                  f"(encode {row['bse_encode_ms']:6.2f} ms)  sdim/din {row['sdim_speedup_vs_din']:5.1f}x  "
                  f"per-row/din {row['sdim_rows_speedup_vs_din']:4.1f}x  bse/din {row['bse_speedup_vs_din']:7.1f}x  "
                  f"max|diff| {err:.1e}", flush=True)
    return rows


def speed_markdown(rows: list[dict], device: str, threads: str) -> str:
    lines = [f"Long-term interest forward, B = {rows[0]['B']} candidates, d = {rows[0]['d']}, m = 48, tau = 3, "
             f"device {device}, OMP_NUM_THREADS={threads}; median of alternated rounds (paired: median of "
             "the per-round ratios).", "",
             "| L | DIN (ms) | SDIM (ms) | SDIM per-row (ms) | BSE score (ms) | BSE encode (ms) | SDIM vs DIN "
             "| SDIM per-row vs DIN | BSE vs DIN | BSE vs SDIM |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['L']} | {r['din_ms']:.1f} | {r['sdim_ms']:.1f} | {r['sdim_rows_ms']:.1f} | "
                     f"{r['bse_ms']:.3f} | {r['bse_encode_ms']:.2f} | {r['sdim_speedup_vs_din']:.1f}x "
                     f"(paired {r['sdim_speedup_vs_din_paired']:.1f}x) | {r['sdim_rows_speedup_vs_din']:.1f}x "
                     f"(paired {r['sdim_rows_speedup_vs_din_paired']:.1f}x) | "
                     f"{r['bse_speedup_vs_din']:.0f}x | {r['bse_speedup_vs_sdim']:.0f}x |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- quality
def run_fit(config: str, seed: int, work: Path, name: str, overrides: list[str]) -> dict:
    from ctr_models import fit_ml100k  # same folder: the shared `recsys fit` runner of the benchmarks

    metrics, wall = fit_ml100k(config, seed, work, name, overrides)
    return {"test_auc": metrics["test"]["auc"], "test_logloss": metrics["test"]["logloss"],
            "valid_auc": metrics["valid"]["auc"], "epochs": metrics["epochs_trained"],
            "samples_per_s": metrics["train"]["samples_per_s_median"], "wall_s": wall}


PEER = "fuxictr_sdim"


def run_peer_sdim(seed: int, data: Path, work: Path, batch_size: int) -> dict:
    """FuxiCTR's SDIM on the written splits (ctr_models.run_peer: the peer venv's driver)."""
    from ctr_models import run_peer

    return run_peer("SDIM", seed, data, work, batch_size)


def quality(seeds: list[int], tau_sweep: bool, mean_pool: bool, peer: bool = False, ours: bool = True,
            peer_batch_size: int = 1024) -> dict[str, list[dict]]:
    arg = "--model.init_args.model.init_args."
    variants: dict[str, tuple[str, list[str]]] = {"din": ("din", []), "sdim": ("sdim", [])} if ours else {}
    if tau_sweep:
        for tau in TAUS:
            if tau != 3:
                variants[f"sdim_tau{tau}"] = ("sdim", [f"{arg}tau", str(tau), f"{arg}n_hashes", "48"])
    if mean_pool:
        variants["mean_pool"] = ("sdim", [f"{arg}tau", "0", f"{arg}normalization", "count"])
    out: dict[str, list[dict]] = {v: [] for v in variants}
    if peer:
        from ctr_models import ensure_peers

        ensure_peers()
        out[PEER] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = None
        if peer:
            from ctr_models import write_splits

            data = write_splits(Path(tmp) / "ml100k_ctr")
        for seed in seeds:
            for variant, (config, overrides) in variants.items():
                r = run_fit(config, seed, Path(tmp), f"{variant}_s{seed}", overrides)
                r["seed"] = seed
                out[variant].append(r)
                print(f"{variant:12s} seed {seed}: test AUC {r['test_auc']:.4f} (valid {r['valid_auc']:.4f}, "
                      f"{r['epochs']} epochs, {r['samples_per_s']:.0f} samples/s, {r['wall_s']:.0f} s)", flush=True)
            if peer:
                try:
                    r = run_peer_sdim(seed, data, Path(tmp), peer_batch_size)
                except SystemExit as exc:  # keep our rows: a peer failure is reported, not fatal
                    print(f"{PEER:12s} seed {seed}: FAILED\n{exc}", file=sys.stderr, flush=True)
                    out.setdefault(f"{PEER}_failed", []).append({"seed": seed, "error": str(exc)[-2000:]})
                    continue
                r.update(seed=seed, batch_size=peer_batch_size)
                out[PEER].append(r)
                print(f"{PEER:12s} seed {seed}: test AUC {r['test_auc']:.4f} (valid {r['valid_auc']:.4f}, "
                      f"{r['epochs']} epochs, {r['samples_per_s']:.0f} samples/s end to end, "
                      f"{r['compute_samples_per_s']:.0f} compute, {r['wall_s']:.0f} s)", flush=True)
    return out


def quality_markdown(res: dict[str, list[dict]]) -> str:
    lines = ["ml100k-ctr, history up to 1,000 (experiments/{sdim,din}_ml100k.yaml).", "",
             "| model | seeds | test AUC mean ± std | per seed | test logloss | epochs | train samples/s (median) |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in res.items():
        if not rows or name.endswith("_failed"):
            continue
        aucs = [r["test_auc"] for r in rows]
        std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        lines.append(f"| {name} | {len(rows)} | {statistics.mean(aucs):.4f} ± {std:.4f} | "
                     f"{' / '.join(f'{a:.4f}' for a in aucs)} | "
                     f"{statistics.mean(r['test_logloss'] for r in rows):.4f} | "
                     f"{' / '.join(str(r['epochs']) for r in rows)} | "
                     f"{statistics.median(r['samples_per_s'] for r in rows):,.0f} |")
    if res.get("din") and res.get("sdim"):
        gap = statistics.mean(r["test_auc"] for r in res["sdim"]) - statistics.mean(r["test_auc"] for r in res["din"])
        lines += ["", f"SDIM - DIN mean test AUC: {gap:+.4f} (bar: >= -0.003)"]
    if res.get(PEER):
        lines += ["", f"{PEER}: FuxiCTR 2.3.10's layers composed as its LongCTR zoo SDIM (peer venv, "
                  "experiments/bench/peers/fuxictr_deepfm.py --model SDIM; our yaml's widths, batch "
                  f"{res[PEER][0].get('batch_size', 1024)}); samples/s end to end incl. Ray data loading "
                  f"(compute only: {statistics.median(r['compute_samples_per_s'] for r in res[PEER]):,.0f}). "
                  "Its shuffling is not seeded (Ray), so a rerun differs slightly."]
        if res.get("sdim"):
            gap = (statistics.mean(r["test_auc"] for r in res["sdim"])
                   - statistics.mean(r["test_auc"] for r in res[PEER]))
            lines.append(f"SDIM (ours) - FuxiCTR SDIM mean test AUC: {gap:+.4f}")
    if res.get(f"{PEER}_failed"):
        lines += ["", f"{PEER} FAILED for seeds {[r['seed'] for r in res[f'{PEER}_failed']]} (errors in the JSON)."]
    return "\n".join(lines) + "\n"


def _write(stem: str, payload, md: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(payload, indent=2)), (".md", md)):
        tmp = RESULTS / f".{stem}{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(RESULTS / f"{stem}{suffix}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    sp.add_argument("--candidates", type=int, default=1024)
    sp.add_argument("--dim", type=int, default=32)
    sp.add_argument("--repeats", type=int, default=5)
    sp.add_argument("--chunk", type=int, default=128)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--out", default="long_sequences_speed")
    qp = sub.add_parser("quality")
    qp.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    qp.add_argument("--tau-sweep", action="store_true")
    qp.add_argument("--mean-pool", action="store_true")
    qp.add_argument("--peer", action="store_true", help="add FuxiCTR's SDIM (peer venv) per seed")
    qp.add_argument("--peer-only", action="store_true", help="run FuxiCTR's SDIM only (implies --peer)")
    qp.add_argument("--peer-batch-size", type=int, default=1024,
                    help="FuxiCTR SDIM's batch size (default 1024, our yaml's; 4096 = shared recipe)")
    qp.add_argument("--out", default=None, help="result stem (default long_sequences_quality; "
                    "long_sequences_quality_peer with --peer-only)")
    args = ap.parse_args()
    if args.part == "speed":
        import torch

        rows = speed(args.lengths, args.candidates, args.dim, args.repeats, args.chunk, args.device)
        md = speed_markdown(rows, args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                            os.environ.get("OMP_NUM_THREADS", "unset"))
        print(md)
        _write(args.out, rows, md)
    else:
        peer = args.peer or args.peer_only
        res = quality(args.seeds, args.tau_sweep and not args.peer_only, args.mean_pool and not args.peer_only,
                      peer=peer, ours=not args.peer_only, peer_batch_size=args.peer_batch_size)
        md = quality_markdown(res)
        print(md)
        stem = args.out or ("long_sequences_quality_peer" if args.peer_only else "long_sequences_quality")
        _write(stem, res, md)


if __name__ == "__main__":
    main()

"""Feature ranking on the synthetic 1M x 40 data: recsys vs outrank==0.97.5, in one run.

    bash experiments/bench/peers/setup_outrank.sh        # once: the peer's own venv
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/rank_features.py
    .venv/bin/python experiments/bench/rank_features.py --rows 200000 --repeats 1 --no-peer-all-rows
    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/rank_features.py --repeats 5 --pair-repeats 1

Data: ``make_feature_ranking_data(rows, seed)`` (BENCHMARKS.md: informative columns of cardinality
2/5/10/50/10k + multi-hot ``tags`` + numeric ``num_inf``; a noisy copy of ``inf_10``; 32 noise
columns up to ~630k distinct values, Zipf, missing), the 40 features and ``label`` written once to
``$RECSYS_CACHE/bench/rank_features/`` as parquet and as CSV (outrank's ``csv-raw`` layout,
``<dir>/data.csv``; ``tags`` joined with ``;``, missing values empty).

Methods, each a separate process on the same data:
  * ours, ``recsys rank-features`` (its default heuristic: ``mi-redundancy`` since issue 21,
    ``mi-cardinality`` before; permutation correction, all rows),
    on the parquet file and on the CSV file, without pairs (``--pair-top-k 0``: scores against the
    label only, like outrank's ``--target_ranking_only``) and, on parquet, with the default pairs
    (top 20: pair table, redundancy heatmap);
  * outrank ``--task ranking --data_source csv-raw --heuristic MI-numba-randomized`` with its
    defaults (``--subsampling 10``: every 10th row) and with ``--subsampling 1`` (all rows).

Ours counts the columns in parallel threads, as many as polars' thread pool (all cores, here 2;
``POLARS_MAX_THREADS`` sets both); outrank runs its own worker pool (``NUMBA_NUM_THREADS=2``).

Per method: wall time (median over ``--repeats`` for ours; outrank once), peak RSS of the whole
process tree (sampled from /proc every 0.1 s, summed over the processes alive at each sample:
outrank runs a worker pool), the rank of each informative column, the AUC of informative over
noise columns (the redundant copy left out), and ours / outrank ratios. Writes
``experiments/bench/results/rank_features.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "experiments" / "bench"
RESULTS = BENCH / "results"
OUTRANK = BENCH / ".venv-outrank" / "bin" / "outrank"
OUR_BIN = Path(sys.executable).parent / "recsys"


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="2")


def make_data(rows: int, seed: int) -> tuple[Path, Path, dict]:
    """Parquet file, outrank csv-raw directory, ground truth (cached)."""
    from recsys.utils import cache_dir

    d = cache_dir("bench/rank_features") / f"fr_{rows}_{seed}"
    pq, csv_dir, truth_path = d / "data.parquet", d / "csv", d / "truth.json"
    if not (pq.exists() and (csv_dir / "data.csv").exists() and truth_path.exists()):
        import polars as pl

        from recsys.data.datasets.synthetic import make_feature_ranking_data
        from recsys.utils import atomic_path, atomic_write_text

        t = time.time()
        data = make_feature_ranking_data(n_rows=rows, seed=seed)
        feats = [f.name for f in data.schema.fields]
        frame = data.frame.select(feats + ["label"])
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(pq) as tmp:
            frame.write_parquet(tmp)
        csv_dir.mkdir(exist_ok=True)
        with atomic_path(csv_dir / "data.csv") as tmp:
            frame.with_columns(pl.col("tags").list.join(";")).write_csv(tmp)
        truth = {"features": feats, "informative": data.informative, "redundant": data.redundant, "noise": data.noise}
        atomic_write_text(truth_path, json.dumps(truth, indent=2))
        print(f"data: {rows} rows x {len(feats)} features written to {d} in {time.time() - t:.1f} s", flush=True)
    return pq, csv_dir, json.loads(truth_path.read_text())


# ----------------------------------------------------------------------------- measuring
def _tree_rss_kib(pid: int) -> int:
    """Summed VmRSS (KiB) of pid and its descendants."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_measured(cmd: list[str], cwd: Path, log: Path) -> dict:
    """Run cmd; wall time and peak summed RSS of its process tree."""
    peak = [0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_rss_kib(proc.pid))
                stop.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed (rc {rc}); log {log}:\n{tail}")
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the machine is shared: CPU time is steadier than wall
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak[0] / 1024}


def auc(pos: list[float], neg: list[float]) -> float:
    from recsys.metrics import roc_auc

    return roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])


def score_quality(scores: dict[str, float], truth: dict) -> dict:
    order = sorted(scores, key=lambda f: -scores[f])
    ranks = {f: order.index(f) + 1 if f in scores else None for f in truth["informative"]}
    missing = [f for f in truth["informative"] + truth["noise"] if f not in scores]
    fill = min(scores.values()) - 1 if scores else 0.0
    pos = [scores.get(f, fill) for f in truth["informative"]]
    neg = [scores.get(f, fill) for f in truth["noise"]]
    return {"ranks": ranks, "auc": auc(pos, neg), "unscored": missing,
            "worst_informative_rank": max(r for r in ranks.values() if r is not None)}


# ------------------------------------------------------------------------------- methods
def run_ours(data: Path, work: Path, truth: dict, pairs: bool, tag: str) -> dict:
    out = work / f"ours_{tag}"
    cmd = [str(OUR_BIN), "rank-features", "--data", str(data), "--label", "label", "--out", str(out), "--no-progress"]
    if not pairs:
        cmd += ["--pair-top-k", "0"]
    m = run_measured(cmd, work, work / f"ours_{tag}.log")
    import polars as pl

    r = pl.read_csv(out / "ranking.csv")
    m.update(score_quality(dict(zip(r["feature"], r["score"])), truth))
    return m


def run_outrank(csv_dir: Path, work: Path, truth: dict, subsampling: int | None, tag: str) -> dict:
    out = work / f"outrank_{tag}"
    cmd = [str(OUTRANK), "--task", "ranking", "--data_path", str(csv_dir), "--data_source", "csv-raw",
           "--heuristic", "MI-numba-randomized", "--label_column", "label", "--output_folder", str(out)]
    if subsampling is not None:
        cmd += ["--subsampling", str(subsampling)]
    cwd = work / f"cwd_{tag}"
    cwd.mkdir(exist_ok=True)  # outrank writes ranking_checkpoint_tmp.tsv into its working directory
    m = run_measured(cmd, cwd, work / f"outrank_{tag}.log")
    import polars as pl

    t = pl.read_csv(out / "pairwise_ranks.tsv", separator="\t", infer_schema_length=0)
    base = lambda s: s.rsplit("-(", 1)[0] if s.endswith(")") and "-(" in s else s  # noqa: E731
    scores = {}
    for a, b, s in t.iter_rows():
        a, b = base(a), base(b)
        if b == "label" and a != "label":
            scores[a] = float(s)
        elif a == "label" and b != "label":
            scores[b] = float(s)
    m.update(score_quality(scores, truth))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of our runs (median reported)")
    ap.add_argument("--pair-repeats", type=int, default=None,
                    help="repeats of our run with pairs (default: --repeats; it is not part of the bar)")
    ap.add_argument("--no-peer", action="store_true", help="skip outrank")
    ap.add_argument("--no-peer-all-rows", action="store_true", help="skip outrank --subsampling 1 (slow)")
    args = ap.parse_args()
    pq, csv_dir, truth = make_data(args.rows, args.seed)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rank_features_") as tmp:
        work = Path(tmp)
        runs: list[tuple[str, callable]] = [
            ("ours parquet", lambda i: run_ours(pq, work, truth, False, f"pq{i}")),
            ("ours csv", lambda i: run_ours(csv_dir / "data.csv", work, truth, False, f"csv{i}")),
            ("ours parquet + pairs(top 20)", lambda i: run_ours(pq, work, truth, True, f"pairs{i}")),
        ]
        for name, fn in runs:
            n_rep = args.pair_repeats if ("pairs" in name and args.pair_repeats is not None) else args.repeats
            reps = [fn(i) for i in range(max(1, n_rep))]
            res = dict(reps[-1])
            res["wall_s"] = statistics.median(r["wall_s"] for r in reps)
            res["wall_s_all"] = [round(r["wall_s"], 2) for r in reps]
            res["cpu_s"] = statistics.median(r["cpu_s"] for r in reps)
            res["peak_rss_mib"] = max(r["peak_rss_mib"] for r in reps)
            results[name] = res
            print(f"{name}: {res['wall_s']:.2f} s, {res['peak_rss_mib']:.0f} MiB, AUC {res['auc']:.4f}", flush=True)
        if not args.no_peer:
            if not OUTRANK.exists():
                sys.exit(f"outrank venv missing: run bash experiments/bench/peers/setup_outrank.sh ({OUTRANK})")
            peer_runs = [("outrank default (every 10th row)", None, "default")]
            if not args.no_peer_all_rows:
                peer_runs.append(("outrank --subsampling 1 (all rows)", 1, "all"))
            for name, sub, tag in peer_runs:
                res = run_outrank(csv_dir, work, truth, sub, tag)
                results[name] = res
                print(f"{name}: {res['wall_s']:.2f} s, {res['peak_rss_mib']:.0f} MiB, AUC {res['auc']:.4f}", flush=True)
    report(results, truth, args)


def report(results: dict[str, dict], truth: dict, args) -> None:
    inf = truth["informative"]
    lines = [f"# Feature ranking: {args.rows} rows x {len(truth['features'])} features, seed {args.seed}", "",
             "| method | wall s | CPU s | peak RSS MiB | AUC inf>noise | worst inf rank | " + " | ".join(inf) + " |",
             "|" + "---|" * (6 + len(inf))]
    for name, r in results.items():
        lines.append(f"| {name} | {r['wall_s']:.2f} | {r.get('cpu_s', float('nan')):.2f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['auc']:.4f} | "
                     f"{r['worst_informative_rank']} | " + " | ".join(str(r['ranks'][f]) for f in inf) + " |")
    ours = results.get("ours parquet")
    if ours:
        lines += ["", f"ours parquet, each run (s): {ours['wall_s_all']}"]
    lines.append("")
    for peer in ("outrank default (every 10th row)", "outrank --subsampling 1 (all rows)"):
        if ours and peer in results:
            p = results[peer]
            for mine in ("ours parquet", "ours csv", "ours parquet + pairs(top 20)"):
                o = results[mine]
                lines.append(f"- {mine} / {peer}: time {o['wall_s'] / p['wall_s']:.4f} "
                             f"(1/{p['wall_s'] / o['wall_s']:.1f}), CPU 1/{p['cpu_s'] / o['cpu_s']:.1f}, "
                             f"peak RSS {o['peak_rss_mib'] / p['peak_rss_mib']:.2f}")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rank_features.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    (RESULTS / "rank_features.md").write_text(text)


if __name__ == "__main__":
    main()

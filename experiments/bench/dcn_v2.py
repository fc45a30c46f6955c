"""DCN-v2 on ml100k-ctr: recsys's ``DCNv2`` vs FuxiCTR 2.3.10's DCNv2, same split, same recipe,
same run, 3 seeds (issue 19). Also our DCN-v2 on Adult (no peer: the FuxiCTR driver reads the
ml100k-ctr columns only).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench/dcn_v2.py                     # seeds 2019-2021
    .venv/bin/python experiments/bench/dcn_v2.py --seeds 2019 --data ml100k --no-peer   # one quick run

For each seed, ours (``recsys fit --config experiments/dcn_v2_ml100k.yaml``) and the peer
(``experiments/bench/peers/fuxictr_dcnv2.py`` in its own venv, ``.venv-peers``) run one after the
other in separate processes, on the same ml100k-ctr rows, batch 1024 both, one intra-op thread.
Prints test AUC / logloss per seed and the means; writes ``experiments/bench/results/dcn_v2.json``.
(``ctr_models.py``, owned by the speed work, is where DCN-v2 joins the common model list.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ctr_models as common  # noqa: E402  (fit_ml100k, write_splits, env, paths)

SEEDS = (2019, 2020, 2021)


def run_ours_ml100k(seed: int, work: Path) -> dict:
    metrics, wall = common.fit_ml100k("dcn_v2", seed, work, f"dcn_v2_s{seed}")
    return {"test_auc": metrics["test"]["auc"], "test_logloss": metrics["test"]["logloss"],
            "valid_auc": metrics["valid"]["auc"], "epochs": metrics["epochs_trained"], "wall_s": round(wall, 1)}


def run_ours_adult(seed: int, work: Path) -> dict:
    name = f"dcn_v2_adult_s{seed}"
    cmd = [str(common.OUR_BIN), "fit", "--config", str(common.ROOT / "experiments" / "dcn_v2_adult.yaml"),
           "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
           "--trainer.enable_progress_bar", "false",
           "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name,
           "--trainer.default_root_dir", str(work / name)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=common.env(), cwd=common.ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"recsys fit failed ({name}):\n{res.stderr[-3000:]}")
    metrics = json.loads(sorted((work / name).glob("version_*/metrics.json"))[-1].read_text())
    return {"test_auc": metrics["test"]["auc"], "test_logloss": metrics["test"]["logloss"],
            "valid_auc": metrics["valid"]["auc"], "epochs": metrics["epochs_trained"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def run_peer(seed: int, data: Path, work: Path) -> dict:
    out = work / f"fuxictr_dcnv2_{seed}.json"
    cmd = [str(common.PEER_PY), str(common.BENCH / "peers" / "fuxictr_dcnv2.py"), "--data", str(data),
           "--seed", str(seed), "--model", "DCNv2", "--out", str(out), "--batch-size", "1024"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=common.env(), cwd=common.ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"FuxiCTR DCNv2 failed (seed {seed}):\n{res.stderr[-3000:]}")
    r = json.loads(out.read_text())
    return {"test_auc": r["test_auc"], "test_logloss": r["test_logloss"], "valid_auc": r["valid_auc"],
            "epochs": r["epochs"], "wall_s": round(time.perf_counter() - t0, 1)}


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--data", nargs="+", default=["ml100k", "adult"], choices=["ml100k", "adult"])
    ap.add_argument("--no-peer", action="store_true", help="ours only")
    args = ap.parse_args()
    results: dict = {"seeds": args.seeds, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="recsys-dcn-") as tmp:
        work = Path(tmp)
        data = common.write_splits(work / "data") if "ml100k" in args.data and not args.no_peer else None
        for seed in args.seeds:
            for ds in args.data:
                runs = {"ours": run_ours_ml100k if ds == "ml100k" else run_ours_adult}
                if ds == "ml100k" and not args.no_peer:
                    runs["fuxictr"] = lambda s, w: run_peer(s, data, w)
                for who, fn in runs.items():
                    r = fn(seed, work)
                    results["runs"].setdefault(f"{ds}/{who}", []).append({"seed": seed, **r})
                    print(f"{ds} {who} seed {seed}: test AUC {r['test_auc']:.4f} logloss {r['test_logloss']:.4f} "
                          f"({r['epochs']} epochs, {r['wall_s']}s)", flush=True)
    print("\n| data | implementation | seeds | test AUC (per seed) | mean | logloss |\n|---|---|---|---|---|---|")
    for key, rows in results["runs"].items():
        ds, who = key.split("/")
        print(f"| {ds} | {who} | {len(rows)} | {' / '.join(f'{r['test_auc']:.4f}' for r in rows)} | "
              f"{_mean(rows, 'test_auc'):.4f} | {_mean(rows, 'test_logloss'):.4f} |")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    (common.RESULTS / "dcn_v2.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

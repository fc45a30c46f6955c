"""Feature selection judged downstream: DeepFM on the top-k fields of each ranking (issue 21).

    bash experiments/bench/peers/setup_outrank.sh        # once: outrank 0.97.5 in its own venv
    nice -n 5 .venv/bin/python experiments/bench/feature_selection.py
    .venv/bin/python experiments/bench/feature_selection.py --tables adult --seeds 2019 --no-peer   # a quick look

Tables (built-in data sets; each ranking sees the **train** split only):
  * ``ml100k``: ml100k-ctr (``movielens-100k``, 10 fields, the history sequence included);
  * ``adult``: Adult census income (14 fields);
  * ``wide``: the generated 40-field table (``synthetic-wide``, ``--wide-rows`` rows, default
    30,000: 24k train rows; 16 categoricals + user/item + 4 numerics carry planted signal).

Rankings of the table's schema fields:
  * recsys ``mi-redundancy`` (the default since issue 21: relevance with redundant fields pushed
    down), ``mi-cardinality`` (the former default: relevance only), ``3mr`` (pairs over all
    fields) and plain ``mi`` (:class:`recsys.features.FeatureRanker` with the table's schema,
    default settings);
  * outrank 0.97.5 (``--heuristic MI-numba-randomized``, all rows: ``--subsampling 1``), run from
    its own venv (``experiments/bench/.venv-outrank``) on the train rows written as outrank's
    ``csv-raw`` layout, as ``rank_features.py`` does (list fields joined with ``;``);
  * ``random``: a seeded random order of the fields (the same order for every model seed).

For each ranking and k in ``--ks`` (2, 4, 8) plus all fields: ``recsys fit`` of the table's DeepFM
config (``experiments/deepfm_ml100k.yaml``, ``deepfm_adult.yaml``; the wide table uses
``deepfm_adult.yaml`` with ``--data.init_args.dataset synthetic-wide``) with a
``selected_features.yaml`` fragment ``data: {init_args: {fields: [top k]}}`` as a second
``--config`` -- the file ``recsys rank-features`` writes -- for each of ``--seeds`` (model init and
shuffling), with ``--max-epochs`` (default 3: the machine is shared, 2 cores) and the configs' early
stopping on validation AUC. Each fit is the ``recsys fit`` command run in this process (one
interpreter for all fits; ``--subprocess`` for one process each).
The same field set is fitted once per seed, whichever rankings chose it.

Reported: test AUC (mean over seeds, and std) by table, k and ranking; the normalized area under
the AUC-vs-k curve (trapezoids over the k points 2, 4, 8, all placed at equal spacing, divided by
the width: a weighted mean AUC); the goal check of the issue (recsys's default >= outrank at every
k, and above random / plain MI at k = 2 and 4). ``--cache FILE`` keeps fits between runs (a new
ranking method then fits only the field sets no other method chose). Writes ``experiments/bench/results/
feature_selection.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "experiments" / "bench"
RESULTS = BENCH / "results"
OUR_BIN = Path(sys.executable).parent / "recsys"
OUTRANK_CANDIDATES = [BENCH / ".venv-outrank" / "bin" / "outrank",
                      Path("/work/main/experiments/bench/.venv-outrank/bin/outrank")]
TABLES = {
    "ml100k": ("movielens-100k", "deepfm_ml100k.yaml", []),
    "adult": ("adult", "deepfm_adult.yaml", []),
    "wide": ("synthetic-wide", "deepfm_adult.yaml", ["--data.init_args.dataset", "synthetic-wide"]),
}
METHODS = ("mi-redundancy", "mi-cardinality", "3mr", "mi", "outrank", "random")
DEFAULT = "mi-redundancy"  # recsys's default heuristic, the one the goal check is about


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="2")


def load(table: str, wide_rows: int):
    from recsys.data.sources import BUILTIN

    name, _, _ = TABLES[table]
    opts = {"n_rows": wide_rows} if table == "wide" else {}
    frame, schema = BUILTIN[name](**opts)
    return frame, schema, opts


# ------------------------------------------------------------------------------- rankings
def rank_recsys(train, schema, heuristic: str) -> tuple[list[str], float]:
    from recsys.features import FeatureRanker

    t = time.perf_counter()
    r = FeatureRanker(schema=schema, heuristic=heuristic, pair_top_k=None, progress=False).fit(train)
    return r.ranking_["feature"].to_list(), time.perf_counter() - t


def rank_outrank(train, schema, work: Path) -> tuple[list[str], float]:
    import polars as pl

    exe = next((p for p in OUTRANK_CANDIDATES if p.exists()), None)
    if exe is None:
        raise SystemExit("outrank venv missing: bash experiments/bench/peers/setup_outrank.sh (or pass --no-peer)")
    names = [f.name for f in schema.fields]
    cols = []
    for f in schema.fields:
        c = pl.col(f.source)
        if isinstance(train.schema[f.source], (pl.List, pl.Array)):
            c = c.cast(pl.List(pl.String)).list.join(";")
        cols.append(c.alias(f.name))
    csv_dir = work / "outrank_csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    train.select(cols + [pl.col(schema.label).alias("label")]).write_csv(csv_dir / "data.csv")
    out, cwd = work / "outrank_out", work / "outrank_cwd"
    cwd.mkdir(exist_ok=True)
    cmd = [str(exe), "--task", "ranking", "--data_path", str(csv_dir), "--data_source", "csv-raw",
           "--heuristic", "MI-numba-randomized", "--label_column", "label", "--output_folder", str(out),
           "--subsampling", "1"]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"outrank failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    t = pl.read_csv(out / "pairwise_ranks.tsv", separator="\t", infer_schema_length=0)
    base = lambda s: s.rsplit("-(", 1)[0] if s.endswith(")") and "-(" in s else s  # noqa: E731
    scores: dict[str, float] = {}
    for a, b, s in t.iter_rows():
        a, b = base(a), base(b)
        if b == "label" and a != "label":
            scores[a] = float(s)
        elif a == "label" and b != "label":
            scores[b] = float(s)
    # fields outrank did not score go last, in schema order
    order = sorted([n for n in names if n in scores], key=lambda n: -scores[n]) + [n for n in names if n not in scores]
    return order, wall


# ------------------------------------------------------------------------------- fitting
def fit(table: str, fields: list[str] | None, seed: int, work: Path, name: str, max_epochs: int,
        opts: dict, in_process: bool = True) -> dict:
    _, config, extra = TABLES[table]
    cmd = [str(OUR_BIN), "fit", "--config", str(ROOT / "experiments" / config), *extra,
           "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
           "--trainer.max_epochs", str(max_epochs), "--trainer.enable_progress_bar", "false",
           "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name,
           "--trainer.default_root_dir", str(work / name)]
    if opts:
        cmd += ["--data.init_args.dataset_options", json.dumps(opts)]
    if fields is not None:
        sel = work / f"{name}_selected_features.yaml"
        import yaml

        sel.write_text(yaml.safe_dump({"data": {"init_args": {"fields": list(fields)}}}, sort_keys=False))
        cmd += ["--config", str(sel)]
    t = time.perf_counter()
    if in_process:  # the same command, without a new interpreter (torch / Lightning imports) per fit
        import contextlib

        from recsys.cli import main as recsys_main

        with open(work / f"{name}.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            rc = recsys_main(cmd[1:])
        if rc != 0:
            raise SystemExit(f"recsys fit failed ({name}): see {work / name}.log:\n{(work / f'{name}.log').read_text()[-3000:]}")
    else:
        res = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"recsys fit failed ({name}):\n{res.stderr[-3000:]}")
    m = json.loads(sorted((work / name).glob("version_*/metrics.json"))[-1].read_text())
    return {"test_auc": m["test"]["auc"], "valid_auc": m["valid"]["auc"], "epochs": m["epochs_trained"],
            "wall_s": time.perf_counter() - t}


class _Cache:
    """Fits kept on disk between runs (``--cache``): re-running with another ranking method fits
    only the field sets not seen before. The key is the table, the sorted field set (``None``: all),
    the seed, the epochs and the data set options; the file is re-read before each write, so runs
    in parallel processes share it."""

    def __init__(self, path: str | None, table: str, max_epochs: int, opts: dict):
        self.path = Path(path) if path else None
        self.prefix = f"{table}|{max_epochs}|{json.dumps(opts, sort_keys=True)}"

    def _key(self, fields: list[str] | None, seed: int) -> str:
        return f"{self.prefix}|{','.join(sorted(fields)) if fields is not None else '*'}|{seed}"

    def _load(self) -> dict:
        return json.loads(self.path.read_text()) if self.path is not None and self.path.exists() else {}

    def get(self, fields: list[str] | None, seed: int) -> dict | None:
        return self._load().get(self._key(fields, seed))

    def put(self, fields: list[str] | None, seed: int, result: dict) -> None:
        if self.path is None:
            return
        from recsys.utils import atomic_path

        data = self._load()
        data[self._key(fields, seed)] = result
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))


def area(aucs: list[float]) -> float:
    """Normalized trapezoid area of AUC over equally spaced k points (a weighted mean)."""
    if len(aucs) == 1:
        return aucs[0]
    return float(np.trapezoid(aucs) / (len(aucs) - 1))


def main() -> None:
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="ml100k,adult,wide")
    ap.add_argument("--seeds", default="2019,2020,2021")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--wide-rows", type=int, default=30_000)
    ap.add_argument("--no-peer", action="store_true", help="skip outrank")
    ap.add_argument("--subprocess", action="store_true",
                    help="each fit in its own `recsys fit` process (default: the same command in this process)")
    ap.add_argument("--out", default=str(RESULTS / "feature_selection"), help="results prefix (.json/.md)")
    ap.add_argument("--cache", default=None, metavar="JSON",
                    help="a fit cache shared by runs: (table, field set, seed, epochs, rows) -> metrics; fits found "
                         "there are not redone (delete it after changing the model code)")
    ap.add_argument("--orders", nargs="+", default=None, metavar="JSON",
                    help="take the rankings of these earlier runs' results (per table and method, e.g. outrank's, "
                         "which takes minutes) instead of ranking again; methods they lack are ranked")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only write the report of earlier runs' JSON files (e.g. tables run in separate processes)")
    args = ap.parse_args()
    if args.merge:
        merged: dict = {}
        for path in args.merge:
            part = json.loads(Path(path).read_text())
            merged.setdefault("args", part["args"])
            merged.setdefault("tables", {}).update(part["tables"])
        methods = list(next(iter(merged["tables"].values()))["summary"])
        text = report(merged, methods)
        print(text)
        Path(args.out).with_suffix(".md").write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(merged, indent=2))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    methods = [m for m in args.methods.split(",") if not (args.no_peer and m == "outrank")]
    results: dict = {"args": vars(args), "tables": {}}
    out_prefix = Path(args.out)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="feature_selection_") as tmp:
        work = Path(tmp)
        for table in args.tables.split(","):
            import polars as pl

            frame, schema, opts = load(table, args.wide_rows)
            train = frame.filter(pl.col("split") == "train")
            fields = [f.name for f in schema.fields]
            orders, rank_s = {}, {}
            earlier = {}
            for path in args.orders or []:
                got = json.loads(Path(path).read_text())["tables"].get(table)
                if got is not None:
                    earlier.update({m: (got["orders"][m], got["rank_s"][m]) for m in got["orders"]})
            for m in methods:
                if m in earlier:
                    orders[m], rank_s[m] = earlier[m]
                    print(f"[{table}] {m}: the order of an earlier run (--orders)", flush=True)
                elif m == "outrank":
                    orders[m], rank_s[m] = rank_outrank(train, schema, work / table)
                elif m == "random":
                    orders[m], rank_s[m] = [fields[i] for i in np.random.default_rng(0).permutation(len(fields))], 0.0
                else:
                    orders[m], rank_s[m] = rank_recsys(train, schema, m)
                print(f"[{table}] {m}: {orders[m]} ({rank_s[m]:.1f} s)", flush=True)
            cache: dict[tuple, dict] = {}
            disk = _Cache(args.cache, table, args.max_epochs, opts)
            fits: dict[str, dict[str, list[dict]]] = {m: {} for m in methods}
            table_ks = [k for k in ks if k < len(fields)] + [len(fields)]
            for k in table_ks:
                for m in methods:
                    chosen = orders[m][:k]
                    fits[m][str(k)] = []
                    for seed in seeds:
                        key = (frozenset(chosen), seed)
                        if key not in cache and (hit := disk.get(chosen if k < len(fields) else None, seed)):
                            cache[key] = hit
                        if key not in cache:
                            name = f"{table}_k{k}_{m}_s{seed}"
                            cache[key] = fit(table, None if k == len(fields) else chosen, seed, work, name,
                                             args.max_epochs, opts, not args.subprocess)
                            disk.put(chosen if k < len(fields) else None, seed, cache[key])
                            print(f"[{table}] k={k} {m} seed {seed}: test AUC {cache[key]['test_auc']:.4f} "
                                  f"({cache[key]['epochs']} epochs, {cache[key]['wall_s']:.0f} s)", flush=True)
                        fits[m][str(k)].append({**cache[key], "fields": chosen})
            summary = {m: {str(k): {"mean": statistics.fmean(r["test_auc"] for r in fits[m][str(k)]),
                                    "std": statistics.stdev(r["test_auc"] for r in fits[m][str(k)])
                                    if len(seeds) > 1 else 0.0}
                           for k in table_ks} for m in methods}
            for m in methods:
                summary[m]["area"] = area([summary[m][str(k)]["mean"] for k in table_ks])
            results["tables"][table] = {"fields": fields, "ks": table_ks, "orders": orders, "rank_s": rank_s,
                                        "fits": fits, "summary": summary, "dataset_options": opts}
            out_prefix.with_suffix(".json").write_text(json.dumps(results, indent=2))  # after every table
    text = report(results, methods)
    print("\n" + text)
    out_prefix.with_suffix(".md").write_text(text)


def report(results: dict, methods: list[str]) -> str:
    a = results["args"]
    lines = [f"# Feature selection downstream: DeepFM test AUC on the top-k fields (seeds {a['seeds']}, "
             f"max {a['max_epochs']} epochs)", ""]
    goal_tables = 0
    for table, t in results["tables"].items():
        ks = t["ks"]
        s = t["summary"]
        lines += [f"## {table} ({len(t['fields'])} fields)", "",
                  "| ranking | " + " | ".join(f"k={k}" if k < len(t['fields']) else f"all ({k})" for k in ks)
                  + " | area |", "|---|" + "---|" * (len(ks) + 1)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(f"{s[m][str(k)]['mean']:.4f} ± {s[m][str(k)]['std']:.4f}"
                                                  for k in ks) + f" | {s[m]['area']:.4f} |")
        lines.append("")
        for m in methods:
            lines.append(f"- {m} order: {', '.join(t['orders'][m])}")
        checks = []
        small = [k for k in ks if k <= 4]
        d = DEFAULT if DEFAULT in methods else "mi-cardinality"
        mean = lambda m, k: s[m][str(k)]["mean"]  # noqa: E731
        if "outrank" in methods:
            ok = all(mean(d, k) >= mean("outrank", k) for k in ks)
            checks.append(f"default >= outrank at every k: {'yes' if ok else 'no'}")
        beats_all = True
        for other in ("random", "mi"):
            if other not in methods:
                continue
            verdict = []
            for k in small:
                if set(t["orders"][d][:k]) == set(t["orders"][other][:k]):
                    verdict.append(f"k={k}: same fields")
                    beats_all = False
                else:
                    up = mean(d, k) > mean(other, k)
                    beats_all &= up
                    verdict.append(f"k={k}: {'above' if up else 'below'} ({mean(d, k) - mean(other, k):+.4f})")
            checks.append(f"default vs {other}: " + ", ".join(verdict))
        goal_tables += beats_all
        lines += [""] + [f"- {c}" for c in checks] + [""]
    lines.append(f"Tables where the default is above both random and plain MI at every k <= 4: {goal_tables} of "
                 f"{len(results['tables'])}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

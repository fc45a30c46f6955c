"""``recsys rank-features``: rank a file's features against a label; write the ranking and reports.

    recsys rank-features --data train.parquet --label label --out runs/ranking
    recsys rank-features --data train.csv --schema schema.yaml --heuristic 3mr --out runs/3mr

Writes into ``--out`` (all at once: the files are built in a temporary directory beside it and
moved in only when every file is complete, so a failure leaves no partial output):

* ``ranking.csv`` / ``ranking.json``: one row per feature, best first (see
  :class:`recsys.features.ranking.FeatureRanker`); the JSON adds the settings, the label and
  the pair table;
* ``quality.json``: the data-quality report (:mod:`recsys.features.quality`);
* ``summary.md`` with ``scores.png`` (bar chart of the scores) and ``redundancy.png`` (the
  feature x feature redundancy heatmap of the ``--pair-top-k`` most relevant features);
* ``selected_features.yaml``: a config fragment ``data: {init_args: {fields: [...]}}`` for
  ``recsys fit --config exp.yaml --config selected_features.yaml`` (top ``--top-k``, or
  ``score > --min-score``, or by default the features whose MI is significant: a G-test p-value
  per column, corrected for the number of columns (Holm by default, ``--p-adjust bh`` for
  Benjamini-Hochberg), at most ``--significance`` (0.01); see
  :mod:`recsys.features.significance`. ``ranking.csv`` reports ``p_value``, ``p_adjusted`` and
  ``p_method``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import yaml

from recsys.console import ArgumentParser, add_progress_flags, resolve_progress
from recsys.errors import ConfigError
from recsys.features.ranking import AGGREGATIONS, CORRECTIONS, HEURISTICS, FeatureRanker, _jsonable
from recsys.utils import tune_allocator

OUTPUTS = ("ranking.csv", "ranking.json", "quality.json", "summary.md", "scores.png", "redundancy.png",
           "selected_features.yaml")


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="recsys rank-features",
                                description="Rank features by cardinality-normalized mutual information (OutRank), "
                                            "with 3MR, pair scores and a data-quality report.")
    p.add_argument("--data", required=True, help="parquet or CSV file (or a directory of parquet files)")
    p.add_argument("--label", default=None, help="label column (default: the schema's label, else 'label')")
    p.add_argument("--schema", default=None, help="schema YAML: which columns are features, of which kind")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--heuristic", default="mi-redundancy", choices=HEURISTICS,
                   help="mi-redundancy (default): relevance with redundant features pushed down; mi-cardinality: "
                        "relevance only (chance-corrected MI); mi: plain MI; 3mr: OutRank's 3MR")
    p.add_argument("--correction", default="permutation", choices=CORRECTIONS,
                   help="chance MI subtracted: mean over label permutations, or the closed-form expectation")
    p.add_argument("--permutations", type=int, default=5, help="label permutations for the chance MI (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default=None, help="comma-separated features to rank (default: all)")
    p.add_argument("--exclude", default=None, help="comma-separated columns to leave out")
    p.add_argument("--n-bins", type=int, default=10, help="quantile bins of numeric columns")
    p.add_argument("--batch-size", type=int, default=262_144, help="rows per streamed batch")
    p.add_argument("--sample", type=int, default=None, help="rank on this many random rows (default: all rows)")
    p.add_argument("--pair-top-k", type=int, default=20,
                   help="pairs / redundancy heatmap / 3MR over this many most relevant features; 0 = no pairs")
    p.add_argument("--alpha", type=float, default=1.0, help="3MR redundancy weight")
    p.add_argument("--beta", type=float, default=1.0, help="3MR relation weight")
    p.add_argument("--aggregation", default="median", choices=AGGREGATIONS, help="3MR aggregate over the chosen set")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--top-k", type=int, default=None, help="selected_features.yaml: the k best features")
    sel.add_argument("--min-score", type=float, default=None, help="selected_features.yaml: features with score > t")
    sel.add_argument("--keep-flagged", action="store_true",
                     help="selected_features.yaml: also select columns the quality report flags as suspected "
                          "leaks or constant (dropped by default)")
    p.add_argument("--significance", type=float, default=0.01,
                   help="default selection: keep features whose corrected p-value is at most this (default 0.01)")
    p.add_argument("--p-adjust", default="holm", choices=("holm", "bh"),
                   help="multiple-testing correction of the p-values: Holm (family-wise error, default) or "
                        "Benjamini-Hochberg (false discovery rate)")
    p.add_argument("--threads", type=int, default=None,
                   help="columns counted in parallel (default: polars' thread pool size, i.e. the cores)")
    add_progress_flags(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    pair_k = args.pair_top_k
    if pair_k == 0 and args.heuristic == "3mr":
        raise ConfigError("3mr needs pairs", where="--pair-top-k", fix="use --pair-top-k 2 or more (default 20)")
    if pair_k not in (0, None) and pair_k < 2:
        raise ConfigError(f"must be 0 or >= 2, got {pair_k}", where="--pair-top-k")
    _tune_process()
    threading.Thread(target=_preload_matplotlib, daemon=True).start()  # overlaps its import with the counting
    ranker = FeatureRanker(
        label=args.label, heuristic=args.heuristic, correction=args.correction, n_permutations=args.permutations,
        seed=args.seed, schema=args.schema, features=_names(args.features), exclude=_names(args.exclude) or (),
        n_bins=args.n_bins, batch_size=args.batch_size, sample=args.sample, pairs=pair_k > 0,
        pair_top_k=pair_k if pair_k > 0 else None, alpha=args.alpha, beta=args.beta, aggregation=args.aggregation,
        progress=resolve_progress(args.progress), n_threads=args.threads, significance=args.significance,
        p_adjust=args.p_adjust,
    ).fit(args.data)
    check_enough_rows(ranker, args.significance, args.data)
    selected = ranker.selected(top_k=args.top_k, min_score=args.min_score,
                               **({"drop_flagged": ()} if args.keep_flagged else {}))
    write_outputs(ranker, Path(args.out), selected, data=args.data)
    print(f"recsys: ranked {ranker.ranking_.height} features on {ranker.n_rows_} rows ({args.heuristic}); "
          f"{len(selected)} selected; wrote {args.out}")
    return 0


def rows_needed(class_counts, n_features: int, significance: float) -> tuple[float, int]:
    """(best p-value any feature could reach on these rows, rows needed at this class balance for
    it to pass ``significance`` after Holm over ``n_features``). The best feature is one that
    predicts the label exactly: its G statistic is ``2 N H(y)`` (nats), ``C - 1`` degrees of freedom.

    >>> p, need = rows_needed([1, 1], 3, 0.01); round(p, 3), need
    (0.096, 7)
    """
    import math

    from recsys.features.significance import chi2_sf

    counts = [int(c) for c in class_counts if c > 0]
    n = sum(counts)
    h = -sum(c / n * math.log(c / n) for c in counts)
    df = max(len(counts) - 1, 1)
    alpha = significance / max(n_features, 1)

    def best_p(rows: float) -> float:
        return chi2_sf(2 * rows * h, df) if h > 0 else 1.0

    if h <= 0:
        return 1.0, 0
    hi = max(n, 1)
    while best_p(hi) > alpha:
        hi *= 2
    lo = hi // 2 if hi > n else 0
    while hi - lo > 1:  # smallest row count that passes
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if best_p(mid) <= alpha else (mid, hi)
    return best_p(n), hi


def check_enough_rows(ranker: FeatureRanker, significance: float, data: str) -> None:
    """Refuse to write a ranking of data too small to rank: when not even a feature that predicts
    the label exactly could pass the significance test, every score is noise (and the default
    selection would be empty)."""
    from recsys.errors import DataError

    counts = ranker.class_counts_
    n_features = ranker.ranking_.height
    p, need = rows_needed(counts, n_features, significance)
    if p <= significance / max(n_features, 1):
        return
    classes = ", ".join(f"{int(c)} with {ranker.label_name_} = {v!r}" for v, c in zip(ranker.classes_, counts))
    raise DataError(f"too few rows to rank features: {ranker.n_rows_} rows ({classes}); even a feature that predicts "
                    f"the label exactly would not be significant (p = {p:.2g} > {significance:g} / {n_features} "
                    f"features); at this class balance it needs at least {need} rows", where=str(data),
                    fix="rank on more rows (the whole file, or a larger --sample)")


def _tune_process() -> None:
    """Process settings for this one-shot command (the library leaves them alone): the counting makes
    many short-lived arrays of a few MB, which glibc would return to the OS and numpy would back
    with freshly zeroed huge pages each time; keeping freed memory in the heap
    (:func:`recsys.utils.tune_allocator`, which the ``recsys`` command has already called) and
    using plain pages for numpy saves about a fifth of the run time (page faults) for a few % more
    peak memory."""
    try:
        import numpy as np

        np._core.multiarray._set_madvise_hugepage(False)
    except Exception:  # noqa: BLE001 - an optimization only
        pass
    tune_allocator(torch_hugepages=False)


def _preload_matplotlib() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except Exception:  # noqa: BLE001 - the plots import it again and report any error
        pass


def write_outputs(ranker: FeatureRanker, out: Path, selected: list[str], data: str = "") -> None:
    """Write every output into a temporary directory beside ``out``, then move them in."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_all(ranker, tmp, selected, data)
        if not out.exists():
            os.chmod(tmp, 0o777 & ~_umask())
            os.replace(tmp, out)
            return
        for name in OUTPUTS:  # existing directory: replace each file (each rename is atomic)
            src = tmp / name
            if src.exists():
                os.replace(src, out / name)
            elif (out / name).exists():
                (out / name).unlink()  # e.g. no redundancy.png this time: do not leave a stale one
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _write_all(ranker: FeatureRanker, d: Path, selected: list[str], data: str) -> None:
    r = ranker.ranking_
    r.write_csv(d / "ranking.csv")
    info = ranker.to_dict()
    info["data"] = str(data)
    info["selected"] = selected
    (d / "ranking.json").write_text(json.dumps(_jsonable(info), indent=2))
    (d / "quality.json").write_text(json.dumps(_jsonable(ranker.quality_), indent=2))
    fragment = ("# Restrict `recsys fit` to these features:\n"
                "#   recsys fit --config exp.yaml --config selected_features.yaml\n"
                + yaml.safe_dump({"data": {"init_args": {"fields": list(selected)}}}, sort_keys=False))
    (d / "selected_features.yaml").write_text(fragment)
    _plot_scores(ranker, d / "scores.png", set(selected))
    has_heatmap = ranker.redundancy_ is not None and ranker.redundancy_.height > 1
    if has_heatmap:
        _plot_redundancy(ranker, d / "redundancy.png")
    (d / "summary.md").write_text(_summary(ranker, selected, data, has_heatmap))


def _plot_scores(ranker: FeatureRanker, path: Path, selected: set[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = ranker.ranking_.head(60)
    names = r["feature"].to_list()[::-1]
    scores = [0.0 if s is None else s for s in r["score"].to_list()[::-1]]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(names) + 1)))
    ax.barh(names, scores, color=["tab:blue" if n in selected else "tab:gray" for n in names])
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(f"score ({ranker.heuristic}{', ' + ranker.correction if ranker.heuristic != 'mi' else ''}; nats"
                  f"{'' if ranker.heuristic != '3mr' else ', normalized'})")
    ax.set_title("feature scores (blue: selected)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_redundancy(ranker: FeatureRanker, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = ranker.redundancy_
    names = m["feature"].to_list()
    a = m.select(names).to_numpy().astype(float)
    np.fill_diagonal(a, np.nan)
    fig, ax = plt.subplots(figsize=(1.5 + 0.35 * len(names), 1 + 0.35 * len(names)))
    im = ax.imshow(a, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    fig.colorbar(im, ax=ax, label="corrected MI(a; b), nats")
    ax.set_title("redundancy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _summary(ranker: FeatureRanker, selected: list[str], data: str, heatmap: bool) -> str:
    q = ranker.quality_
    lines = [f"# Feature ranking: {data}", "",
             f"{ranker.n_rows_} rows, label `{ranker.label_name_}` (entropy {ranker.label_entropy_:.4f} nats, "
             f"classes {dict(zip(map(str, ranker.classes_), ranker.class_counts_.tolist()))}), "
             f"heuristic `{ranker.heuristic}`, correction `{ranker.correction}` "
             f"({ranker.n_permutations} permutations, seed {ranker.seed}).", "",
             f"Selected ({len(selected)}): " + ", ".join(f"`{s}`" for s in selected), "",
             "![scores](scores.png)", ""]
    cols = ["rank", "feature", "kind", "score", "mi", "chance_mi_mean", "emi", "z", "p_adjusted", "cardinality", "coverage"]
    cols += [c for c in ("redundancy", "redundant_with") if c in ranker.ranking_.columns]  # mi-redundancy
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in ranker.ranking_.select(cols).iter_rows():
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    lines += ["", "## Data quality", ""]
    for flag, names in q["flagged"].items():
        lines.append(f"- {flag.replace('_', ' ')}: " + (", ".join(f"`{n}`" for n in names) if names else "none"))
    if ranker.pairs_ is not None:
        lines += ["", "## Pairs (top 10 by corrected relation MI)", "",
                  "| a | b | relation | relation_mi | redundancy |", "|---|---|---|---|---|"]
        for r in ranker.pairs_.head(10).iter_rows(named=True):
            lines.append(f"| {r['feature_a']} | {r['feature_b']} | {_fmt(r['relation'])} | {_fmt(r['relation_mi'])} "
                         f"| {_fmt(r['redundancy'])} |")
    if heatmap:
        lines += ["", "![redundancy](redundancy.png)"]
    return "\n".join(lines) + "\n"

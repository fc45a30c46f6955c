"""``recsys retrieve``: candidates for every held-out row of a split, from a two-tower checkpoint.

::

    recsys retrieve --ckpt runs/two_tower_ml100k/version_0/checkpoints/best.ckpt \\
        --k 100 --method knn-embed --out candidates.parquet

Writes a parquet with one row per candidate: the user key column, ``rank`` (1 = best),
the item key column, ``score`` (the user-vector score) and ``component`` (the item cluster whose
kNN-Embed query supplied it; ``-1`` for the single-vector query and backfill). Seen items are
excluded. ``--metrics FILE.json`` also writes Recall/NDCG/hit rate/diversity against the split's
held-out items. The data comes from the checkpoint's saved data module and is encoded with the
checkpoint's encoders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recsys.console import ArgumentParser, add_progress_flags, resolve_progress
from recsys.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="recsys retrieve", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="checkpoint written by `recsys fit` with a RetrievalTask")
    p.add_argument("--k", type=int, default=100, help="candidates per user (default 100)")
    p.add_argument("--method", choices=["knn-embed", "single"], default="knn-embed")
    p.add_argument("--out", required=True, help="output parquet file")
    p.add_argument("--split", choices=["valid", "test"], default="test", help="held-out rows to retrieve for")
    p.add_argument("--index", default="exact", choices=["exact", "faiss-hnsw", "faiss-ivf"],
                   help="item index backend (faiss needs faiss-cpu installed)")
    p.add_argument("--clusters", type=int, default=16, help="kNN-Embed: item clusters")
    p.add_argument("--neighbors", type=int, default=20, help="kNN-Embed: neighbours for smoothing")
    p.add_argument("--lam", type=float, default=0.7, help="kNN-Embed: smoothing weight lambda in [0, 1]")
    p.add_argument("--m", type=int, default=16, help="kNN-Embed: mixture components kept")
    p.add_argument("--unimodal", type=float, default=0.5,
                   help="kNN-Embed: share of the budget for the user's own (single-vector) query")
    p.add_argument("--recent", type=int, default=20,
                   help="kNN-Embed: mixtures count the user's last N engagements (0: all)")
    p.add_argument("--query", default="user", choices=["user", "centroid", "mean", "user+mean"],
                   help="kNN-Embed: component query vector")
    p.add_argument("--no-restrict", action="store_true", help="kNN-Embed: search the whole catalogue per component")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--dataset", default=None, help="override the checkpoint's data set (built-in name or file)")
    p.add_argument("--schema", default=None, help="schema YAML for a file --dataset")
    p.add_argument("--metrics", default=None, help="also write metrics against the held-out items to this JSON")
    add_progress_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}", where="--k")
    if args.recent < 0:
        raise ConfigError(f"--recent must be >= 0, got {args.recent}", where="--recent", fix="0 counts every engagement")
    from recsys.retrieval.pipeline import datamodule_from_checkpoint, evaluate, retrieve, write_candidates
    from recsys.tasks.retrieval import load_retrieval_checkpoint
    from recsys.utils import atomic_write_text

    task = load_retrieval_checkpoint(args.ckpt)
    dm = datamodule_from_checkpoint(args.ckpt, dataset=args.dataset, schema=args.schema)
    knn = {"n_clusters": args.clusters, "n_neighbors": args.neighbors, "lam": args.lam, "m": args.m,
           "query": args.query, "restrict": not args.no_restrict, "seed": args.seed,
           "unimodal": args.unimodal, "recent": args.recent or None}
    result, model = retrieve(task, dm, args.split, k=args.k, method=args.method, index=args.index, knn=knn,
                             progress=resolve_progress(args.progress))
    frame = write_candidates(result, dm, args.split, args.out)
    print(f"recsys: wrote {len(frame)} candidates for {result.ids.shape[0]} {args.split} rows to {args.out}")
    if args.metrics:
        items = model.item_vectors_ if model is not None else task.item_vectors(dm.catalogue()).cpu()
        clusters = model.item_cluster_ if model is not None else None
        ks = sorted({k for k in (10, 50, 100) if k <= args.k} | {args.k})
        metrics = evaluate(result, dm, args.split, items, item_clusters=clusters, ks=ks)
        atomic_write_text(Path(args.metrics), json.dumps({"method": args.method, "split": args.split,
                                                          "k": args.k, "knn_embed": knn if model else None,
                                                          **metrics}, indent=2))
        print("recsys: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("recall", "ndcg"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

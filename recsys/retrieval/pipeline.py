"""From a trained checkpoint to retrieved candidates: embed, retrieve, measure, write.

>>> # task = load_retrieval_checkpoint("runs/.../best.ckpt"); dm = datamodule_from_checkpoint(...)
>>> # res = retrieve(task, dm, "test", k=100, method="knn-embed")
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import polars as pl
import torch
from tqdm.auto import tqdm

from recsys.errors import ConfigError, RecsysError
from recsys.retrieval.index import make_index
from recsys.retrieval.knn_embed import KNNEmbed, RetrievalResult, csr_lists, single_vector
from recsys.retrieval.metrics import retrieval_metrics
from recsys.utils import atomic_path

__all__ = ["datamodule_from_checkpoint", "query_vectors", "retrieve", "evaluate", "write_candidates",
           "item_genres"]

METHODS = ("single", "knn-embed")


def datamodule_from_checkpoint(path: str | Path, **overrides: Any):
    """The :class:`~recsys.data.retrieval.RetrievalDataModule` a checkpoint was trained with
    (its saved arguments, its fitted encoders); ``overrides`` replace saved arguments."""
    from recsys.data.retrieval import RetrievalDataModule

    from recsys.checkpoint import read_checkpoint

    p = Path(path)
    ckpt = read_checkpoint(p, keys=())  # weights_only=True; a sharded run's directory too (metadata only)
    saved = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if not saved and "dataset" not in overrides:
        raise RecsysError("the checkpoint does not record its data module", where=str(p),
                          fix="pass --dataset (and --schema for a file) explicitly")
    accepted = set(inspect.signature(RetrievalDataModule.__init__).parameters) - {"self"}
    args = {k: v for k, v in saved.items() if k in accepted}
    args.update({k: v for k, v in overrides.items() if v is not None})
    args["features_from"] = str(p)
    return RetrievalDataModule(**args)


@torch.no_grad()
def query_vectors(task, dm, split: str, batch_size: int = 4096, progress: bool = False) -> torch.Tensor:
    """Query vectors ``[N, D]`` of every row of ``split``, in row order."""
    ds = dm.dataset_for(split)
    parts = []
    for s in tqdm(range(0, len(ds), batch_size), desc=f"embedding {split} queries", disable=not progress, leave=False):
        parts.append(task.model.user_embedding(ds[torch.arange(s, min(s + batch_size, len(ds)))]))
    return torch.cat(parts)


def retrieve(task, dm, split: str = "test", k: int = 100, method: str = "knn-embed", index: str = "exact",
             knn: dict[str, Any] | None = None, progress: bool = False,
             vectors: tuple[torch.Tensor, torch.Tensor] | None = None,
             model: KNNEmbed | None = None) -> tuple[RetrievalResult, KNNEmbed | None]:
    """Top-``k`` candidates for every row of ``split`` (seen items excluded).

    Args:
        task: a trained RetrievalTask (eval mode).
        dm: its RetrievalDataModule.
        method: ``single`` (the query vector alone) or ``knn-embed``.
        index: item index backend (``exact``, ``faiss-hnsw``, ``faiss-ivf``).
        knn: :class:`KNNEmbed` arguments (``n_clusters``, ``n_neighbors``, ``lam``, ``m``, ``query``, ...).
        vectors: precomputed ``(queries [U, D], items [N, D])`` (to reuse across calls).
        model: an already fitted KNNEmbed (to reuse its clusters across calls).

    Returns:
        The result ``[U, k]`` and the fitted KNNEmbed (``None`` for ``single``).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}", where="--method", fix=f"use one of {list(METHODS)}")
    if vectors is None:
        task.eval()
        items = task.item_vectors(dm.catalogue()).cpu()
        queries = query_vectors(task, dm, split, progress=progress).cpu()
    else:
        queries, items = vectors
    seen = csr_lists(*dm.seen(split))
    if method == "single":
        idx = make_index(index).build(items)
        return single_vector(idx, queries, k, seen), None
    if model is None:
        model = KNNEmbed(backend=index, progress=progress, **(knn or {})).fit(items)
    return model.retrieve(queries, k, engaged=csr_lists(*dm.engagements(split)), exclude=seen), model


def item_genres(dm, column: str = "genres") -> list[list[str]] | None:
    """Per catalogue item, its genres (a list column of the data), if the data has one."""
    frame = dm.catalogue().frame
    if column not in frame.columns:
        return None
    col = frame[column]
    if isinstance(col.dtype, pl.List):
        return [list(v or []) for v in col.to_list()]
    return [[v] for v in col.to_list()]


def evaluate(results: dict[int, RetrievalResult] | RetrievalResult, dm, split: str, items: torch.Tensor,
             item_clusters: torch.Tensor | None = None, ks=(10, 50, 100)) -> dict[str, float]:
    """:func:`~recsys.retrieval.metrics.retrieval_metrics` of a result (or one result per budget)
    against the split's held-out items."""
    tops = {k: r.ids for k, r in results.items()} if isinstance(results, dict) else results.ids
    return retrieval_metrics(tops, torch.as_tensor(dm.targets(split)), ks=ks, item_clusters=item_clusters,
                             item_genres=item_genres(dm), item_vectors=items, n_items=len(items))


def write_candidates(result: RetrievalResult, dm, split: str, out: str | Path) -> pl.DataFrame:
    """Write ``(user key, rank, item key, score, component)`` rows as parquet, atomically."""
    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".pq"):
        raise ConfigError(f"the output must be a .parquet file, got {out.name!r}", where="--out")
    users = dm.user_ids(split)
    ids, scores, comps = result.ids, result.scores, result.components
    n_u, k = ids.shape
    valid = (ids >= 0).flatten()
    row = torch.arange(n_u).repeat_interleave(k)[valid]
    cat = dm.catalogue().item_ids
    frame = pl.DataFrame({
        dm.user_key: users.gather(pl.Series(row.numpy())),
        "rank": (torch.arange(k).repeat(n_u)[valid] + 1).numpy(),
        dm.item_key: cat.gather(pl.Series(ids.flatten()[valid].numpy())),
        "score": scores.flatten()[valid].numpy(),
        "component": comps.flatten()[valid].numpy(),
    })
    with atomic_path(out) as tmp:
        frame.write_parquet(tmp)
    return frame

"""Item indexes: top-k items by inner product for a batch of query vectors.

Two backends, one API (``build(vectors, ids=None)`` then ``search(queries, k, exclude=None)``):

* :class:`ExactIndex` (default): exact top-k by matrix product in torch, chunked over queries and
  items so memory stays at ``query_chunk x item_chunk`` scores whatever the catalogue size; a
  running top-k is merged chunk by chunk.
* :class:`FaissIndex`: faiss ``IndexHNSWFlat`` or ``IndexIVFFlat`` with the inner-product metric,
  when ``faiss`` (``faiss-cpu``) is installed; it is not a recsys dependency. Approximate.

``exclude`` lists, per query, item ids never to return (the user's seen items). The exact index
masks them inside the product; faiss over-fetches ``k + len(exclude)`` and filters.

Results are ``(scores [Q, k], ids [Q, k])`` sorted by descending score; where fewer than ``k``
items qualify, the tail holds ``-inf`` and id ``-1``. Ties keep the lower position in the index.

>>> idx = ExactIndex().build(torch.eye(3))
>>> s, i = idx.search(torch.tensor([[0.1, 0.9, 0.0]]), k=2, exclude=[torch.tensor([1])])
>>> i.tolist()
[[0, 2]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys.errors import ConfigError

__all__ = ["ExactIndex", "FaissIndex", "ItemIndex", "faiss_available", "make_index"]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _check_vectors(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ConfigError(f"{what} must be a 2-D tensor [N, D], got {getattr(x, 'shape', type(x))}", where=what)
    if not torch.isfinite(x).all():
        raise ConfigError(f"{what} holds NaN/inf values", where=what, fix="check the model's embeddings")
    return x.detach().float().contiguous()


class ItemIndex:
    """Common API. ``ids_`` ``[N]`` are the ids returned for the indexed rows (default 0..N-1)."""

    ids_: torch.Tensor
    dim_: int

    def build(self, vectors: torch.Tensor, ids: torch.Tensor | None = None) -> "ItemIndex":
        raise NotImplementedError

    def search(self, queries: torch.Tensor, k: int,
               exclude: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.ids_.numel())

    def _set_ids(self, n: int, ids: torch.Tensor | None) -> None:
        self.ids_ = torch.arange(n, dtype=torch.int64) if ids is None else torch.as_tensor(ids, dtype=torch.int64)
        if self.ids_.shape != (n,):
            raise ConfigError(f"ids must have one entry per vector ({n}), got shape {tuple(self.ids_.shape)}",
                              where="index.build(ids=...)")
        # global id -> row (a dense table over 0..max id), for translating exclusions
        self._row_of = None
        if ids is not None and n:
            if int(self.ids_.min()) < 0:
                raise ConfigError("ids must be non-negative", where="index.build(ids=...)")
            self._row_of = torch.full((int(self.ids_.max()) + 1,), -1, dtype=torch.int64)
            self._row_of[self.ids_] = torch.arange(n, dtype=torch.int64)

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the given global ids (ids not in this index dropped)."""
        ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
        if self._row_of is None:
            return ids[(ids >= 0) & (ids < len(self))]
        ids = ids[(ids >= 0) & (ids < self._row_of.numel())]
        rows = self._row_of[ids]
        return rows[rows >= 0]

    def _check_query(self, queries: torch.Tensor, k: int, exclude) -> torch.Tensor:
        q = _check_vectors(queries, "queries")
        if q.shape[1] != self.dim_:
            raise ConfigError(f"queries have width {q.shape[1]}, the index {self.dim_}", where="index.search")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}", where="index.search(k=...)")
        if exclude is not None and len(exclude) != q.shape[0]:
            raise ConfigError(f"exclude has {len(exclude)} lists for {q.shape[0]} queries", where="index.search")
        return q


class ExactIndex(ItemIndex):
    """Exact inner-product top-k in torch.

    Args:
        query_chunk: queries scored at once.
        item_chunk: items scored at once (memory is ``query_chunk x item_chunk`` floats).
        progress: show a tqdm bar over query chunks (for large searches).
    """

    def __init__(self, query_chunk: int = 256, item_chunk: int = 131_072, progress: bool = False):
        if query_chunk < 1 or item_chunk < 1:
            raise ConfigError("query_chunk and item_chunk must be >= 1", where="ExactIndex")
        self.query_chunk, self.item_chunk, self.progress = query_chunk, item_chunk, progress

    def build(self, vectors: torch.Tensor, ids: torch.Tensor | None = None) -> "ExactIndex":
        """Index ``vectors [N, D]`` (returned as ``ids [N]``)."""
        self.vectors_ = _check_vectors(vectors, "item vectors")
        self.dim_ = self.vectors_.shape[1]
        self._set_ids(self.vectors_.shape[0], ids)
        return self

    def search(self, queries: torch.Tensor, k: int,
               exclude: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` ``(scores [Q, k], ids [Q, k])`` of ``queries [Q, D]``; ``exclude``: per query, ids to skip."""
        q = self._check_query(queries, k, exclude)
        n, n_q = len(self), q.shape[0]
        kk = min(k, n)
        out_s = torch.full((n_q, k), float("-inf"))
        out_i = torch.full((n_q, k), -1, dtype=torch.int64)
        if n == 0:
            return out_s, out_i
        # (query, row) pairs to mask
        ex_q = ex_r = None
        if exclude is not None:
            rows = [self._rows(e) for e in exclude]
            ex_q = torch.repeat_interleave(torch.arange(n_q), torch.tensor([len(r) for r in rows], dtype=torch.int64))
            ex_r = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
        starts = range(0, n_q, self.query_chunk)
        for qs in tqdm(starts, desc="exact search", disable=not self.progress, leave=False):
            qe = min(qs + self.query_chunk, n_q)
            best_s = best_r = None
            if ex_q is not None:
                sel = (ex_q >= qs) & (ex_q < qe)
                cq, cr = ex_q[sel] - qs, ex_r[sel]
            for its in range(0, n, self.item_chunk):
                ite = min(its + self.item_chunk, n)
                scores = q[qs:qe] @ self.vectors_[its:ite].T
                if ex_q is not None:
                    m = (cr >= its) & (cr < ite)
                    scores[cq[m], cr[m] - its] = float("-inf")
                s, r = torch.topk(scores, min(kk, ite - its), dim=1)
                r = r + its
                if best_s is None:
                    best_s, best_r = s, r
                else:
                    cat_s, cat_r = torch.cat([best_s, s], 1), torch.cat([best_r, r], 1)
                    top = torch.topk(cat_s, min(kk, cat_s.shape[1]), dim=1)
                    best_s, best_r = top.values, torch.gather(cat_r, 1, top.indices)
            # stable order: ties by row position
            order = torch.argsort(best_r, dim=1)
            best_s, best_r = torch.gather(best_s, 1, order), torch.gather(best_r, 1, order)
            order = torch.argsort(best_s, dim=1, descending=True, stable=True)
            best_s, best_r = torch.gather(best_s, 1, order), torch.gather(best_r, 1, order)
            valid = torch.isfinite(best_s)
            out_s[qs:qe, :best_s.shape[1]] = best_s
            out_i[qs:qe, :best_r.shape[1]] = torch.where(valid, self.ids_[best_r], torch.full_like(best_r, -1))
        return out_s, out_i


class FaissIndex(ItemIndex):
    """faiss inner-product index (approximate), same API as :class:`ExactIndex`.

    Args:
        kind: ``hnsw`` (``IndexHNSWFlat``, ``m`` links, ``ef_search``) or ``ivf``
            (``IndexIVFFlat`` with ``nlist`` lists, default ``4 sqrt(N)``, trained on the vectors,
            ``nprobe`` probed).
    """

    def __init__(self, kind: str = "hnsw", m: int = 32, ef_search: int = 128, ef_construction: int = 80,
                 nlist: int | None = None, nprobe: int = 32):
        if kind not in ("hnsw", "ivf"):
            raise ConfigError(f"unknown faiss index kind {kind!r}", where="FaissIndex(kind=...)", fix="use 'hnsw' or 'ivf'")
        if not faiss_available():
            raise ConfigError("faiss is not installed", where="index backend 'faiss'",
                              fix="pip install faiss-cpu, or use the exact index")
        self.kind, self.m, self.ef_search, self.ef_construction = kind, m, ef_search, ef_construction
        self.nlist, self.nprobe = nlist, nprobe

    def build(self, vectors: torch.Tensor, ids: torch.Tensor | None = None) -> "FaissIndex":
        import faiss

        x = _check_vectors(vectors, "item vectors").numpy().astype(np.float32)
        self.dim_ = x.shape[1]
        self._set_ids(x.shape[0], ids)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim_, self.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            quant = faiss.IndexFlatIP(self.dim_)
            # default 4 sqrt(N) lists, and at least 39 training points per list (faiss's minimum)
            nlist = self.nlist or int(4 * np.sqrt(x.shape[0]))
            nlist = max(1, min(nlist, x.shape[0] // 39 or 1))
            index = faiss.IndexIVFFlat(quant, self.dim_, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(x)
            index.nprobe = self.nprobe
            self._quant = quant
        index.add(x)
        self.index_ = index
        return self

    def search(self, queries: torch.Tensor, k: int,
               exclude: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q = self._check_query(queries, k, exclude).numpy().astype(np.float32)
        rows = [self._rows(e) for e in exclude] if exclude is not None else None
        extra = max((len(r) for r in rows), default=0) if rows else 0
        fetch = min(k + extra, len(self))
        if self.kind == "hnsw":
            self.index_.hnsw.efSearch = max(self.ef_search, fetch)
        d, i = self.index_.search(q, fetch)
        out_s = torch.full((q.shape[0], k), float("-inf"))
        out_i = torch.full((q.shape[0], k), -1, dtype=torch.int64)
        d_t, i_t = torch.from_numpy(d), torch.from_numpy(i).long()
        for n in range(q.shape[0]):
            keep = i_t[n] >= 0
            if rows is not None and len(rows[n]):
                keep &= ~torch.isin(i_t[n], rows[n])
            s, r = d_t[n][keep][:k], i_t[n][keep][:k]
            out_s[n, :len(s)] = s
            out_i[n, :len(r)] = self.ids_[r]
        return out_s, out_i


def make_index(backend: str = "exact", **options) -> ItemIndex:
    """``exact`` (default) or ``faiss`` / ``faiss-hnsw`` / ``faiss-ivf``."""
    if backend == "exact":
        return ExactIndex(**options)
    if backend in ("faiss", "faiss-hnsw"):
        return FaissIndex(kind="hnsw", **options)
    if backend == "faiss-ivf":
        return FaissIndex(kind="ivf", **options)
    raise ConfigError(f"unknown index backend {backend!r}", where="--index",
                      fix="use exact, faiss-hnsw or faiss-ivf")

"""Retrieval metrics over top-K lists: accuracy (Recall, NDCG, hit rate) and diversity.

Inputs: ``topk [U, K]`` item ids (catalogue positions, ``-1`` for an empty slot) and, per user,
the held-out relevant items (``targets``: a ``[U]`` tensor for one item each, or a list of id
tensors). Every metric is the mean over users (users without a relevant item are skipped by the
accuracy metrics).

* ``recall@K`` = |top-K ∩ T| / |T|; ``hit@K`` = 1 if the intersection is non-empty;
  ``ndcg@K`` = sum over hits of 1/log2(rank + 1) divided by the ideal sum over min(|T|, K) hits
  (rank starts at 1). With one held-out item, recall = hit rate.
* ``clusters@K``: distinct item clusters in the top-K; ``genres@K``: distinct genres (an item
  may have several); ``ild@K``: intra-list average distance, the mean of ``1 - cos(v_i, v_j)``
  over the pairs of the top-K; ``coverage@K``: distinct items recommended to anyone / catalogue
  size.

>>> top = torch.tensor([[3, 1, 2], [0, 4, 5]])
>>> recall_at_k(top, torch.tensor([2, 9]), 3), hit_rate_at_k(top, torch.tensor([2, 9]), 2)
(0.5, 0.0)
>>> round(ndcg_at_k(top, torch.tensor([1, 0]), 3), 4)  # (1/log2(3) + 1/log2(2)) / 2
0.8155
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["coverage", "distinct_per_list", "hit_rate_at_k", "intra_list_distance", "ndcg_at_k",
           "recall_at_k", "retrieval_metrics"]


def _targets(targets, n_users: int) -> list[torch.Tensor]:
    if isinstance(targets, torch.Tensor) and targets.dim() == 1:
        return [targets[i:i + 1] for i in range(n_users)]
    out = [torch.as_tensor(t, dtype=torch.int64).reshape(-1) for t in targets]
    if len(out) != n_users:
        raise ValueError(f"{len(out)} target lists for {n_users} users")
    return out


def _hits(topk: torch.Tensor, targets, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``hits [U, k]`` bool and ``n_relevant [U]``."""
    top = topk[:, :k]
    tg = _targets(targets, topk.shape[0])
    hits = torch.stack([torch.isin(top[u], t[t >= 0]) & (top[u] >= 0) for u, t in enumerate(tg)]) if tg else \
        torch.zeros(0, k, dtype=torch.bool)
    n_rel = torch.tensor([int((torch.unique(t) >= 0).sum()) for t in tg], dtype=torch.float64)
    return hits, n_rel


def recall_at_k(topk: torch.Tensor, targets, k: int) -> float:
    """Mean over users of |top-k ∩ targets| / |targets|."""
    hits, n_rel = _hits(topk, targets, k)
    ok = n_rel > 0
    if not ok.any():
        return float("nan")
    return float((hits.sum(1).double()[ok] / n_rel[ok]).mean())


def hit_rate_at_k(topk: torch.Tensor, targets, k: int) -> float:
    """Share of users with at least one relevant item in the top-k."""
    hits, n_rel = _hits(topk, targets, k)
    ok = n_rel > 0
    if not ok.any():
        return float("nan")
    return float(hits.any(1).double()[ok].mean())


def ndcg_at_k(topk: torch.Tensor, targets, k: int) -> float:
    """Mean NDCG@k with binary relevance."""
    hits, n_rel = _hits(topk, targets, k)
    ok = n_rel > 0
    if not ok.any():
        return float("nan")
    kk = hits.shape[1]
    disc = 1.0 / torch.log2(torch.arange(2, kk + 2, dtype=torch.float64))
    dcg = (hits.double() * disc).sum(1)
    ideal = torch.tensor([float(disc[:int(min(n, kk))].sum()) for n in n_rel.tolist()], dtype=torch.float64)
    return float((dcg[ok] / ideal[ok]).mean())


def distinct_per_list(topk: torch.Tensor, labels, k: int) -> float:
    """Mean number of distinct labels in each top-k list.

    ``labels``: ``[N]`` tensor (one label per item, e.g. its cluster) or a sequence of per-item
    label collections (several labels per item, e.g. genres).
    """
    top = topk[:, :k].tolist()
    counts = []
    for row in top:
        found: set = set()
        for i in row:
            if i < 0:
                continue
            if isinstance(labels, torch.Tensor):
                found.add(int(labels[i]))
            else:
                found.update(labels[i])
        counts.append(len(found))
    return float(sum(counts) / len(counts)) if counts else float("nan")


def intra_list_distance(topk: torch.Tensor, item_vectors: torch.Tensor, k: int) -> float:
    """Mean over users of the mean pairwise cosine distance ``1 - cos`` within the top-k."""
    v = F.normalize(item_vectors.float(), dim=1)
    vals = []
    for row in topk[:, :k]:
        row = row[row >= 0]
        n = len(row)
        if n < 2:
            continue
        x = v[row]
        sim = x @ x.T
        mean_sim = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
        vals.append(1.0 - float(mean_sim))
    return float(sum(vals) / len(vals)) if vals else float("nan")


def coverage(topk: torch.Tensor, n_items: int, k: int) -> float:
    """Distinct items in all top-k lists together / ``n_items``."""
    top = topk[:, :k]
    return float(torch.unique(top[top >= 0]).numel() / n_items)


def retrieval_metrics(topk_by_k: dict[int, torch.Tensor] | torch.Tensor, targets, ks: Sequence[int] = (10, 50, 100),
                      item_clusters: torch.Tensor | None = None, item_genres: Sequence | None = None,
                      item_vectors: torch.Tensor | None = None, n_items: int | None = None) -> dict[str, float]:
    """Every metric at every ``k``: ``recall@k``, ``ndcg@k``, ``hit@k`` and, when the item data is
    given, ``clusters@k``, ``genres@k``, ``ild@k``, ``coverage@k``.

    ``topk_by_k`` is one ``[U, max k]`` list (scored at every cut-off) or ``{k: [U, k]}``, a list
    per budget (kNN-Embed allocates its slots per budget, so its top-10 is not the first 10 of
    its top-100).
    """
    out: dict[str, float] = {}
    for k in ks:
        top = topk_by_k[k] if isinstance(topk_by_k, dict) else topk_by_k
        out[f"recall@{k}"] = recall_at_k(top, targets, k)
        out[f"ndcg@{k}"] = ndcg_at_k(top, targets, k)
        out[f"hit@{k}"] = hit_rate_at_k(top, targets, k)
        if item_clusters is not None:
            out[f"clusters@{k}"] = distinct_per_list(top, item_clusters, k)
        if item_genres is not None:
            out[f"genres@{k}"] = distinct_per_list(top, item_genres, k)
        if item_vectors is not None:
            out[f"ild@{k}"] = intra_list_distance(top, item_vectors, k)
        if n_items is not None:
            out[f"coverage@{k}"] = coverage(top, n_items, k)
    return out

"""Candidate retrieval: two-tower encoder, kNN-Embed multi-interest mixtures, item index, metrics.

* :class:`TwoTower` (trained by :class:`recsys.tasks.retrieval.RetrievalTask`),
* :class:`KNNEmbed` (item k-means, smoothed user mixtures, proportional per-component queries),
* :class:`ExactIndex` / :class:`FaissIndex` (optional), :func:`single_vector`,
* :mod:`recsys.retrieval.metrics` (Recall/NDCG/hit rate, distinct clusters/genres, ILD, coverage),
* ``recsys retrieve`` (:mod:`recsys.commands.retrieve`).

See ``docs/retrieval.md``.
"""

from recsys.retrieval.index import ExactIndex, FaissIndex, ItemIndex, faiss_available, make_index
from recsys.retrieval.kmeans import KMeans
from recsys.retrieval.knn_embed import (
    KNNEmbed,
    RetrievalResult,
    csr_lists,
    largest_remainder,
    raw_mixtures,
    single_vector,
    smooth_mixtures,
    top_m,
)
from recsys.retrieval.metrics import retrieval_metrics
from recsys.retrieval.two_tower import RetrievalModel, TwoTower, TwoTowerOutput

__all__ = [
    "ExactIndex", "FaissIndex", "ItemIndex", "KMeans", "KNNEmbed", "RetrievalModel", "RetrievalResult",
    "TwoTower", "TwoTowerOutput", "csr_lists", "faiss_available", "largest_remainder", "make_index",
    "raw_mixtures", "retrieval_metrics", "single_vector", "smooth_mixtures", "top_m",
]

"""Seeded k-means in torch: spherical (cosine) or Euclidean, k-means++ initialisation.

Spherical k-means (the default, for cosine-trained embeddings) L2-normalises the points, assigns
each to the centroid of highest cosine, and sets each centroid to the normalised mean of its
points. An emptied cluster is re-seeded with the point farthest from its centroid. The same
seed gives the same result.

>>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
>>> km = KMeans(n_clusters=2, seed=0).fit(x)
>>> sorted(km.labels_.tolist()) == [0, 0, 1, 1] and bool(km.labels_[0] == km.labels_[1])
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recsys.errors import ConfigError

__all__ = ["KMeans"]


class KMeans:
    """k-means over ``x [N, D]``.

    Args:
        n_clusters: ``C``.
        spherical: cosine k-means on normalised points (else squared Euclidean).
        n_iter: maximum Lloyd iterations.
        tol: stop when fewer than this fraction of points change cluster.
        seed: seeds the k-means++ draw.
        chunk: points assigned at once.
        progress: tqdm bar over the iterations.

    Learned: ``centroids_ [C, D]`` (unit norm when spherical), ``labels_ [N]``, ``n_iter_``.
    """

    def __init__(self, n_clusters: int = 16, spherical: bool = True, n_iter: int = 50, tol: float = 1e-4,
                 seed: int = 0, chunk: int = 65_536, progress: bool = False):
        if not isinstance(n_clusters, int) or n_clusters < 1:
            raise ConfigError(f"n_clusters must be a positive integer, got {n_clusters!r}", where="KMeans(n_clusters=...)")
        self.n_clusters, self.spherical, self.n_iter, self.tol = n_clusters, spherical, n_iter, tol
        self.seed, self.chunk, self.progress = seed, chunk, progress

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        return F.normalize(x, dim=1) if self.spherical else x

    def _dist(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Distance to be minimised ``[n, C]``: 1 - cos, or squared Euclidean."""
        if self.spherical:
            return 1.0 - x @ c.T
        return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)[None, :]).clamp(min=0)

    def _assign(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels, dists = [], []
        for s in range(0, x.shape[0], self.chunk):
            d = self._dist(x[s:s + self.chunk], c)
            v, i = d.min(dim=1)
            labels.append(i)
            dists.append(v)
        return torch.cat(labels), torch.cat(dists)

    def fit(self, x: torch.Tensor) -> "KMeans":
        """Cluster ``x [N, D]``; ``N`` must be at least ``n_clusters``."""
        if x.dim() != 2 or x.shape[0] < self.n_clusters:
            raise ConfigError(f"k-means needs at least n_clusters={self.n_clusters} points, got {x.shape[0]}",
                              where="KMeans.fit", fix="lower n_clusters")
        x = self._prep(x)
        g = torch.Generator().manual_seed(self.seed)
        n = x.shape[0]
        # k-means++
        first = int(torch.randint(n, (1,), generator=g))
        centroids = [x[first]]
        closest = self._dist(x, x[first:first + 1]).squeeze(1).clamp(min=0)
        for _ in range(1, self.n_clusters):
            total = closest.sum()
            if total <= 0:
                idx = int(torch.randint(n, (1,), generator=g))
            else:
                idx = int(torch.multinomial(closest / total, 1, generator=g))
            centroids.append(x[idx])
            closest = torch.minimum(closest, self._dist(x, x[idx:idx + 1]).squeeze(1).clamp(min=0))
        c = torch.stack(centroids)
        labels = torch.full((n,), -1, dtype=torch.int64)
        self.n_iter_ = 0
        for it in tqdm(range(self.n_iter), desc="k-means", disable=not self.progress, leave=False):
            new, dist = self._assign(x, c)
            changed = int((new != labels).sum())
            labels = new
            self.n_iter_ = it + 1
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=self.n_clusters).float()
            empty = torch.nonzero(counts == 0).flatten().tolist()
            c = sums / counts.clamp(min=1)[:, None]
            if self.spherical:
                c = F.normalize(c, dim=1)
            if empty:  # re-seed emptied clusters with the worst-fitting points
                far = torch.argsort(dist, descending=True, stable=True)[:len(empty)]
                c[empty] = x[far]
            if changed <= self.tol * n and not empty:
                break
        self.labels_, _ = self._assign(x, c)
        self.centroids_ = c
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster of each row of ``x [N, D]`` -> ``[N]``."""
        return self._assign(self._prep(x), self.centroids_)[0]

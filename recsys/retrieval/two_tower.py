"""Two-tower retrieval model: a user (query) tower and an item tower into one unit-norm space.

Parts (DLRM-style naming):

* ``sparse``: one :class:`~recsys.models.embedding.FeatureEmbedding` over every id field of the
  schema. The behaviour sequence (``history``, ``shares: item_id``) and the item tower's
  ``item_id`` look up the *same* table, so a user's history and the candidates live in one space.
* ``user_tower``: the pooled user fields (the history mean-pooled) and any user dense numerics,
  concatenated ``[B, sum D_f]`` -> MLP(``hidden_units``) -> Linear -> ``[B, D]``, L2-normalized.
* ``item_tower``: the same over the item fields -> ``[B, D]``, L2-normalized.

The score of a (user, item) pair is the dot product (cosine) of the two vectors; the task divides
it by a temperature. Item vectors therefore never depend on the user, and the whole catalogue can
be embedded once and indexed (:mod:`recsys.retrieval.index`).

>>> from recsys.data.retrieval import RetrievalDataModule
>>> dm = RetrievalDataModule(dataset_options={"n_users": 40, "n_items": 50}, batch_size=16)
>>> dm.setup("fit")
>>> model = TwoTower(dm.features, item_fields=["item_id", "genre"], embedding_dim=8, out_dim=4)
>>> out = model(next(iter(dm.train_dataloader())))
>>> tuple(out.user.shape), tuple(out.item.shape)
((16, 4), (16, 4))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.preprocess import FeatureEncoder
from recsys.models.base import ConfigRecorder, instantiate
from recsys.models.embedding import FeatureEmbedding
from recsys.models.layers import MLP

__all__ = ["RetrievalModel", "TwoTower", "TwoTowerOutput", "build_retrieval_model"]


@dataclass
class TwoTowerOutput:
    """``user``: ``[B, D]`` query vectors; ``item``: ``[B, D]`` vectors of the rows' items (unit norm)."""

    user: torch.Tensor
    item: torch.Tensor


class RetrievalModel(ConfigRecorder):
    """Base of retrieval models: records its constructor arguments (minus ``features``) in
    ``self.config = {"class_path", "init_args"}`` so a checkpoint rebuilds it from JSON, like
    :class:`~recsys.models.base.RankingModel`. Subclasses provide ``user_embedding(batch) -> [B, D]``
    and ``item_embedding(batch) -> [B, D]``."""

    def user_embedding(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def item_embedding(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Any) -> TwoTowerOutput:
        return TwoTowerOutput(user=self.user_embedding(batch), item=self.item_embedding(batch))


def build_retrieval_model(config: dict[str, Any], features: FeatureEncoder) -> RetrievalModel:
    """Instantiate ``config`` (``{"class_path", "init_args"}``) with the fitted ``features``
    (the class must come from an allowed package, see :func:`recsys.models.base.instantiate`)."""
    return instantiate(config, features, "retrieval model")


class _Tower(nn.Module):
    """Concatenated field vectors ``[B, sum D_f]`` (+ dense ``[B, Dn']``) -> MLP -> Linear -> ``[B, D]``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float):
        super().__init__()
        self.mlp = MLP(in_dim, list(hidden), dropout=dropout) if hidden else None
        self.out = nn.Linear(self.mlp.out_dim if self.mlp is not None else in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp is not None:
            x = self.mlp(x)
        return F.normalize(self.out(x), dim=-1)


class TwoTower(RetrievalModel):
    """User tower x item tower, cosine score.

    Args:
        features: the fitted FeatureEncoder.
        item_fields: the item tower's fields (id or dense numeric). Default: the schema's
            ``item`` key field alone.
        user_fields: the user tower's fields. Default: every other field of the schema.
        embedding_dim: width of the embedding tables.
        hidden_units: MLP widths of both towers (``[]``: a single linear map).
        out_dim: ``D``, the width of the shared space.
        dropout: dropout inside the MLPs.
        init_std: embedding init std.

    Raises:
        ValueError: an unknown field, a field in both towers, or an empty tower.

    Shapes: ``user_embedding(batch) -> [B, D]``, ``item_embedding(batch) -> [B, D]``, unit norm.
    """

    def __init__(self, features: FeatureEncoder, item_fields: Sequence[str] | None = None,
                 user_fields: Sequence[str] | None = None, embedding_dim: int = 32,
                 hidden_units: Sequence[int] = (128,), out_dim: int = 64, dropout: float = 0.0,
                 init_std: float = 0.05):
        super().__init__()
        schema = features.schema
        names = schema.names
        if item_fields is None:
            if "item" not in schema.keys or schema.keys["item"] not in names:
                raise ValueError("item_fields is not set and the schema has no item key field; "
                                 f"name the item tower's fields (fields: {names})")
            item_fields = [schema.keys["item"]]
        item_fields = list(item_fields)
        if user_fields is None:
            user_fields = [n for n in names if n not in item_fields]
        user_fields = list(user_fields)
        for what, fields in (("item_fields", item_fields), ("user_fields", user_fields)):
            unknown = [f for f in fields if f not in names]
            if unknown:
                raise ValueError(f"{what} names unknown fields {unknown}; schema fields: {names}")
            if not fields:
                raise ValueError(f"{what} is empty: each tower needs at least one field")
        both = sorted(set(item_fields) & set(user_fields))
        if both:
            raise ValueError(f"fields {both} are in both towers; a field feeds one tower")
        self.item_fields, self.user_fields = item_fields, user_fields
        self.sparse = FeatureEmbedding(features, embedding_dim=embedding_dim, init_std=init_std)
        dense_names = [f.name for f in schema.dense_fields]
        self._dense_idx = {n: i for i, n in enumerate(dense_names)}

        def width(fields: list[str]) -> int:
            return sum(1 if f in self._dense_idx else self.sparse.output_dim(f) for f in fields)

        self.user_tower = _Tower(width(user_fields), hidden_units, out_dim, dropout)
        self.item_tower = _Tower(width(item_fields), hidden_units, out_dim, dropout)
        self.out_dim = out_dim

    def _inputs(self, batch: Any, fields: list[str]) -> torch.Tensor:
        emb = self.sparse(batch)
        parts = [batch.dense[:, self._dense_idx[f]:self._dense_idx[f] + 1] if f in self._dense_idx
                 else emb.pooled[f] for f in fields]
        return torch.cat(parts, dim=1)

    def user_embedding(self, batch: Any) -> torch.Tensor:
        """Query vectors ``[B, D]`` from the user fields of ``batch``."""
        return self.user_tower(self._inputs(batch, self.user_fields))

    def item_embedding(self, batch: Any) -> torch.Tensor:
        """Item vectors ``[B, D]`` from the item fields of ``batch``."""
        return self.item_tower(self._inputs(batch, self.item_fields))

    def forward(self, batch: Any) -> TwoTowerOutput:
        emb = self.sparse(batch)  # one lookup for both towers

        def cat(fields: list[str]) -> torch.Tensor:
            return torch.cat([batch.dense[:, self._dense_idx[f]:self._dense_idx[f] + 1] if f in self._dense_idx
                              else emb.pooled[f] for f in fields], dim=1)

        return TwoTowerOutput(user=self.user_tower(cat(self.user_fields)), item=self.item_tower(cat(self.item_fields)))

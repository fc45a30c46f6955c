"""Baselines that later models are judged against: logistic regression, DNN, DeepFM.

Notation: B = batch, F = number of fields (id fields + numeric fields), D = embedding width.

>>> from recsys.data import CTRDataModule
>>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
>>> batch = next(iter(dm.train_dataloader()))
>>> DeepFM(dm.features, embedding_dim=4, hidden_units=[8])(batch).logits.shape
torch.Size([8])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from recsys.data.preprocess import FeatureEncoder
from recsys.models.base import ModelOutput, RankingModel
from recsys.models.embedding import FeatureEmbedding, NumericEmbedding  # noqa: F401 (re-export)
from recsys.models.layers import MLP, FMInteraction


class FirstOrder(nn.Module):
    """Linear (wide) part: one weight per id (a width-1 table per schema table) plus a linear map
    of the dense numerics and a bias. ``Batch -> [B]``.

    ``pooling`` (``sum``/``mean``) pools the weights of list fields; ``None`` follows the schema."""

    def __init__(self, features: FeatureEncoder, init_std: float = 1e-4, share_tables: bool = True,
                 pooling: str | None = None):
        super().__init__()
        schema = features.schema
        self.emb = FeatureEmbedding(features, embedding_dim=1, dims={t: 1 for t in schema.tables}, init_std=init_std,
                                    share_tables=share_tables, pooling=pooling)
        n_dense = len(schema.dense_fields)
        self.dense = nn.Linear(n_dense, 1, bias=False) if n_dense else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch) -> torch.Tensor:
        logit = self.emb(batch).concat().sum(dim=1) + self.bias
        if self.dense is not None:
            logit = logit + self.dense(batch.dense).squeeze(1)
        return logit


class LogisticRegression(RankingModel):
    """One weight per feature value plus a linear map of numerics: ``Batch -> logits [B]``.

    Args:
        features: fitted FeatureEncoder.
        init_std: std of the N(0, std^2) initial weights (of the effective weights).
        lr_scale: the weights are stored divided by this and multiplied back in ``forward``, so
            an optimizer step moves them ``lr_scale`` times further than a deep model's (for
            Adam: as a learning rate ``lr_scale`` times the task's). A linear model needs weights
            of size ~1 from a near-zero start, where a deep model's layers need small steps:
            with the shipped Adam 1e-3 and ``lr_scale=1``, Adult's valid AUC still rises after
            30 epochs (0.9043); with the default 10 it is within 0.001 of its best (0.9054) after
            4 (experiments/logistic_adult.yaml). Valid AUC, Adam 1e-3, seed 0, lr_scale 10 vs 1:
            ml100k-ctr 0.6786 (best, epoch 9) vs 0.6645 (epoch 12, still rising); the 40-field
            synthetic-wide table 0.7818 (flat from epoch 4) vs 0.7837 (epoch 8, still rising): there
            the plain one ends 0.002 higher, given the epochs. Set 1 for the plain parametrization.
    """

    def __init__(self, features: FeatureEncoder, init_std: float = 1e-4, lr_scale: float = 10.0):
        super().__init__()
        if not lr_scale > 0:
            from recsys.errors import ConfigError

            raise ConfigError(f"lr_scale must be > 0, got {lr_scale}", where="LogisticRegression.lr_scale")
        self.lr_scale = float(lr_scale)
        self.linear = FirstOrder(features, init_std=init_std / self.lr_scale)

    def forward(self, batch) -> ModelOutput:
        return ModelOutput(logits=self.lr_scale * self.linear(batch))


class DNN(RankingModel):
    """MLP over the concatenated field embeddings and the raw standardized numerics.

    Shapes: pooled embeddings ``[B, sum_f D_f]`` ++ dense ``[B, Dn]`` -> MLP -> ``[B]``.

    Args:
        features: fitted FeatureEncoder.
        embedding_dim: default table width (per-table overrides in ``dims``).
        hidden_units: MLP widths.
        dropout: dropout after each hidden layer.
        batch_norm: batch norm in the MLP.
        dims: table -> width overrides.
        init_std: std of the N(0, std^2) embedding init.
        mlp_init: ``torch`` (default) or ``xavier`` MLP weights.
    """

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, hidden_units: Sequence[int] = (256, 128),
                 dropout: float = 0.0, batch_norm: bool = False, dims: dict[str, int] | None = None,
                 init_std: float = 1e-4, mlp_init: str = "torch"):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embedding_dim=embedding_dim, dims=dims, init_std=init_std)
        in_dim = self.embedding.pooled_dim + len(features.schema.dense_fields)
        self.mlp = MLP(in_dim, list(hidden_units), out_dim=1, dropout=dropout, batch_norm=batch_norm, init=mlp_init)

    def forward(self, batch) -> ModelOutput:
        x = torch.cat([self.embedding(batch).concat(), batch.dense], dim=1)
        return ModelOutput(logits=self.mlp(x).squeeze(1))


class DeepFM(RankingModel):
    """DeepFM (Guo et al., 2017): first-order + FM second-order + DNN, sharing the embeddings.

    Fields: every id field's pooled vector and every numeric field's ``x * v``, so
    ``E [B, F, D]`` with ``F = #id fields + #numeric fields``. Logit
    ``= first_order(batch) + FM(E) + MLP(flatten(E))``. Needs one width D for FM; tables with
    other widths (per-field ``dims``) are projected to ``embedding_dim``.

    Args:
        features: fitted FeatureEncoder.
        embedding_dim: D.
        hidden_units: MLP widths.
        dropout: MLP dropout.
        batch_norm: batch norm in the MLP.
        dims: table -> width overrides (projected to D).
        init_std: std of the N(0, std^2) embedding init.
        mlp_init: ``torch`` (default) or ``xavier`` MLP weights (see :class:`~recsys.models.layers.MLP`).
        wide_share_tables: whether the first-order (wide) weights of a field that shares a table
            (history -> item_id) are the shared field's weights (``True``) or its own.
        wide_pooling: how the first-order weights of a list field (genres, history) are pooled:
            ``sum`` (default: each id adds its weight, as in an LR over multi-hot inputs and in
            FuxiCTR, whose LR pools sequences with ``MaskedSumPooling``), ``mean``, or ``None``
            (the schema's pooling, i.e. the embeddings' own; what recsys did before). On
            ml100k-ctr ``sum`` scores test AUC 0.7089 vs 0.7073 for the mean (9 seeds).
        numeric_init: ``embedding`` (default) or ``xavier`` (FuxiCTR's): how the numeric fields'
            vectors are drawn; see :class:`~recsys.models.embedding.FeatureEmbedding`. Measured
            (valid AUC, 3 seeds, ``init_defaults.py --option numeric_init --max-epochs 30``):
            ``xavier`` -0.0006 on Adult and -0.0078 on the wide table, so the default stays
            ``embedding``.
    """

    # checkpoints saved before ``wide_pooling`` existed were trained with the schema's pooling
    legacy_defaults = {"wide_pooling": None}

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, hidden_units: Sequence[int] = (256, 128),
                 dropout: float = 0.0, batch_norm: bool = False, dims: dict[str, int] | None = None,
                 init_std: float = 1e-4, mlp_init: str = "torch", wide_share_tables: bool = True,
                 wide_pooling: str | None = "sum", numeric_init: str = "embedding"):
        super().__init__()
        self.embedding = FeatureEmbedding(features, embedding_dim=embedding_dim, dims=dims,
                                          project_to=embedding_dim, init_std=init_std, embed_numeric=True,
                                          numeric_init=numeric_init)
        self.first_order = FirstOrder(features, init_std=init_std, share_tables=wide_share_tables,
                                      pooling=wide_pooling)
        self.fm = FMInteraction()
        n_fields = len(self.embedding.field_names)
        self.mlp = MLP(n_fields * embedding_dim, list(hidden_units), out_dim=1, dropout=dropout,
                       batch_norm=batch_norm, init=mlp_init)

    def field_embeddings(self, batch) -> torch.Tensor:
        """``E [B, F, D]``: id fields (schema order) then numeric fields."""
        return self.embedding(batch).stack()

    def forward(self, batch) -> ModelOutput:
        e = self.field_embeddings(batch)
        logit = self.first_order(batch) + self.fm(e) + self.mlp(e.flatten(1)).squeeze(1)
        return ModelOutput(logits=logit)

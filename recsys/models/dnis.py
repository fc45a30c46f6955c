"""DNIS soft selection, pruning to per-table widths, export of a retrainable config.

DNIS (Cheng et al., arXiv 2006.04466, as its official code ``SJTU-DMTai/AutoSrh`` implements it;
``specs/PAPERS.md`` section 1) multiplies every embedding entry by a learnable
``alpha in [0, 1]`` shared by a (frequency block of values) x (dimension block):
``e~_x = e_x * alpha[block(x)]``. After a bi-level search (:class:`~recsys.tasks.dims.DimensionSearchTask`)
the embedding is pruned by magnitude to a parameter budget and the model is retrained from scratch
with the chosen widths.

Decisions (the spec's "ambiguities", section 1.5):

* **Frequency blocks are per table** (not global): the vocabulary already orders ids ``2..`` by
  descending train frequency, so a block is a contiguous id range. ``freq_blocks`` is either an
  int ``S`` (S blocks holding near-equal shares of the train *occurrences*, as the Hetu
  re-implementation groups ids) or a list of fractions of the kept values (the official
  ``feature_split``; values past their sum form one more block). OOV (0) and missing (1), whose counts
  the vocabulary does not keep, join the last (rarest) block. Hashed and bucketized tables have
  no frequency order: one block. Empty blocks are dropped.
* **Dimension blocks**: ``dim_block`` consecutive dims share an alpha (default 1: each dim its
  own block, as every released script does).
* **How alpha is applied**, model-agnostic: a forward hook on the TorchRec collections cannot
  work (pooling mixes ids of different blocks before the output is seen). Instead the search
  runs the model with :func:`torch.func.functional_call`, substituting each searched table's
  weight by a *masked copy* ``W * alpha[row_block] (expanded over dim blocks)``. Every model
  built on :class:`~recsys.models.embedding.FeatureEmbedding` is searched unchanged, and the
  gradient reaches both ``W`` and ``alpha``. Cost: one ``[N, K]`` multiply per table per step
  (fine for tables of up to a few million entries; the masked copy is dense).
* **Which tables**: the tables of the model's main embedding (``model.embedding``, else the
  first :class:`FeatureEmbedding` wider than 1), i.e. exactly what the model's ``dims``
  argument sets. First-order (width-1) tables and the numeric ``x * v`` vectors are not
  searched.
* **Pruning** (:func:`prune_to_budget`): importance of dim ``k`` of table ``t`` is the
  train-frequency-weighted mean over the table's rows of ``|e_xk * alpha_{b(x)k}|``
  (``criterion="magnitude"``, the Hetu/blog reading; ``|e|`` alone is the notebook's) or of
  ``alpha_{b(x)k}`` (``criterion="alpha"``). Frequency weighting makes it the expected
  contribution per example, so rare, untrained rows do not swamp a table. The shared
  embedding module supports one width per table, so widths are **per table**: dims are taken
  greedily in descending global importance, each costing ``N_t * dim_block`` parameters,
  skipped when they no longer fit, until nothing fits. The result never exceeds the budget and
  is below it by less than one dimension block of the largest table that still had a dim
  left. Every table keeps at least ``min_width`` dims (``FeatureEmbedding`` needs >= 1).
  Because the order is by importance, not importance per parameter, small tables (a few dozen
  rows) are nearly free and usually keep their full width; the budget is decided on the
  large tables, which is where the parameters are.
  The same greedy run at (table, frequency block) granularity (block importance from the rows
  of that block, cost = the block's rows) gives per-block widths; they are reported (summary,
  plot) but not exported, since the shared embedding module has one width per table.
* **Retraining**: the exported config is the experiment config with
  ``model.init_args.model.init_args.dims`` set; ``recsys fit --config`` trains it from
  scratch. Models needing equal widths (DeepFM, AutoInt, MoE) project each field back to
  ``embedding_dim`` with their per-field projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from recsys.errors import ConfigError
from recsys.models.embedding import FeatureEmbedding

__all__ = ["SoftSelection", "DimsResult", "frequency_blocks", "find_embedding", "prune_to_budget",
           "table_counts", "plot_widths"]


def find_embedding(model: nn.Module) -> tuple[str, FeatureEmbedding]:
    """The model's searched embedding: ``(attribute path, module)``; ``model.embedding`` if it is
    a :class:`FeatureEmbedding`, else the first one with a table wider than 1."""
    emb = getattr(model, "embedding", None)
    if isinstance(emb, FeatureEmbedding):
        return "embedding", emb
    for name, m in model.named_modules():
        if isinstance(m, FeatureEmbedding) and max(m.table_dims.values(), default=0) > 1:
            return name, m
    raise ConfigError(f"{type(model).__name__} has no FeatureEmbedding to search", where="model",
                      fix="search a model built on recsys.models.embedding.FeatureEmbedding")


def table_counts(features, table: str) -> np.ndarray | None:
    """Train occurrences per id of a vocabulary table (``[N]``; ids 0/1 get the smallest kept
    count), or ``None`` for tables without a frequency order (hashed, bucketized)."""
    enc = features.encoders_.get(table)
    counts = getattr(enc, "counts_", None)
    if not counts:
        return None
    c = np.asarray(counts, dtype=np.float64)
    return np.concatenate([[c.min(), c.min()], c])


def frequency_blocks(n_rows: int, counts: np.ndarray | None, freq_blocks: int | Sequence[float]) -> np.ndarray:
    """Block index of every row (id) of a table: ``[N]`` int64, block 0 = most frequent.

    ``counts`` (``[N]``, ids 2.. in descending order) or ``None`` (one block). ``freq_blocks``: an
    int S (near-equal shares of the occurrences) or fractions of the kept values (values past
    their sum form one more block). OOV (0) and missing (1) join the last block; empty blocks are
    dropped, so indices are contiguous.
    """
    block = np.zeros(n_rows, dtype=np.int64)
    if counts is None or n_rows <= 2:
        return block
    kept = counts[2:]
    n = len(kept)
    if isinstance(freq_blocks, int):
        if freq_blocks < 1:
            raise ConfigError(f"freq_blocks must be >= 1, got {freq_blocks}", where="freq_blocks")
        share = np.cumsum(kept) / kept.sum()
        # a value's block: which S-quantile of the occurrence mass it starts in
        starts = np.concatenate([[0.0], share[:-1]])
        kb = np.minimum((starts * freq_blocks).astype(np.int64), freq_blocks - 1)
    else:
        fr = [float(f) for f in freq_blocks]
        if not fr or any(f <= 0 for f in fr):
            raise ConfigError(f"freq_blocks fractions must be > 0, got {fr}", where="freq_blocks")
        bounds = np.round(np.cumsum(fr) * n).astype(np.int64)
        kb = np.searchsorted(bounds, np.arange(n), side="right")
    block[2:] = kb
    block[:2] = kb.max()
    _, block = np.unique(block, return_inverse=True)  # drop empty blocks
    return block.astype(np.int64)


class SoftSelection(nn.Module):
    """alpha ``[S_t, K_t / dim_block]`` in [0, 1] per searched table, initialised to 1.

    :meth:`masked_weights` gives, for ``torch.func.functional_call``, each searched table's
    weight multiplied by its rows' alpha: ``W_t [N_t, K_t] * alpha_t[block_t] (expanded)``.

    Args:
        embedding: the model's searched :class:`FeatureEmbedding`.
        prefix: its attribute path in the model (``"embedding"``).
        features: the fitted FeatureEncoder (vocabulary counts give the frequency order).
        freq_blocks: see :func:`frequency_blocks`.
        dim_block: dims per dimension block (must divide every table width).
        init_alpha: initial alpha.

    >>> from recsys.data import CTRDataModule
    >>> from recsys.models import DNN
    >>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
    >>> model = DNN(dm.features, embedding_dim=4, hidden_units=[8])
    >>> sel = SoftSelection(model.embedding, "embedding", dm.features, freq_blocks=2)
    >>> sel.alpha["inf_50"].shape
    torch.Size([2, 4])
    >>> batch = next(iter(dm.train_dataloader()))
    >>> out = torch.func.functional_call(model, sel.masked_weights(model), (batch,), strict=False)
    """

    def __init__(self, embedding: FeatureEmbedding, prefix: str, features, freq_blocks: int | Sequence[float] = 4,
                 dim_block: int = 1, init_alpha: float = 1.0):
        super().__init__()
        if dim_block < 1:
            raise ConfigError(f"dim_block must be >= 1, got {dim_block}", where="dim_block")
        schema = features.schema
        self.dim_block = dim_block
        self.alpha = nn.ParameterDict()
        self.param_names: dict[str, str] = {}   # table -> parameter name in the model
        self.widths: dict[str, int] = {}        # table -> full width K_t
        self.vocab: dict[str, str] = {}         # table -> vocabulary table (its name in `dims`)
        self.counts: dict[str, np.ndarray | None] = {}
        pre = f"{prefix}." if prefix else ""
        collections = [("ebc", "embedding_bags", embedding.ebc), ("ec", "embeddings", embedding.ec)]
        for attr, sub, coll in collections:
            if coll is None:
                continue
            for t, mod in getattr(coll, sub).items():
                width = mod.weight.shape[1]
                if width % dim_block:
                    raise ConfigError(f"dim_block {dim_block} does not divide the width {width} of table {t!r}",
                                      where="dim_block", fix="use a dim_block that divides every table width")
                vocab = schema.field(t).table
                counts = table_counts(features, vocab)
                blocks = frequency_blocks(mod.weight.shape[0], counts, freq_blocks)
                self.register_buffer(f"block_{t}", torch.from_numpy(blocks), persistent=False)
                self.alpha[t] = nn.Parameter(torch.full((int(blocks.max()) + 1, width // dim_block), float(init_alpha)))
                self.param_names[t] = f"{pre}{attr}.{sub}.{t}.weight"
                self.widths[t] = width
                self.vocab[t] = vocab
                self.counts[t] = counts

    @property
    def tables(self) -> list[str]:
        return list(self.alpha.keys())

    def blocks(self, table: str) -> torch.Tensor:
        """Frequency block of each row of ``table``: ``[N_t]``."""
        return getattr(self, f"block_{table}")

    def row_alpha(self, table: str) -> torch.Tensor:
        """alpha expanded to the table's shape ``[N_t, K_t]``."""
        a = self.alpha[table][self.blocks(table)]
        return a.repeat_interleave(self.dim_block, dim=1) if self.dim_block > 1 else a

    def masked_weights(self, model: nn.Module | None = None, weights: dict[str, torch.Tensor] | None = None
                       ) -> dict[str, torch.Tensor]:
        """Parameter name -> ``W * alpha_rows`` for every searched table, for
        ``functional_call(model, ...)``. The weights are read from ``weights`` (name -> tensor)
        or else from ``model`` (its named parameters)."""
        if weights is None:
            if model is None:
                raise ValueError("pass the model or its weights")
            params = dict(model.named_parameters())
            weights = {self.param_names[t]: params[self.param_names[t]] for t in self.tables}
        return {self.param_names[t]: weights[self.param_names[t]] * self.row_alpha(t) for t in self.tables}

    @torch.no_grad()
    def clip_(self) -> None:
        for a in self.alpha.values():
            a.clamp_(0.0, 1.0)

    @torch.no_grad()
    def reset_(self, value: float = 1.0) -> None:
        for a in self.alpha.values():
            a.fill_(value)

    def l1(self) -> torch.Tensor:
        return sum(a.abs().sum() for a in self.alpha.values())


@dataclass
class DimsResult:
    """Outcome of :func:`prune_to_budget`.

    ``widths``: vocabulary table -> kept width (what ``dims`` takes); ``full_widths``;
    ``rows``: table -> N_t; ``block_widths``: table -> per-frequency-block widths at the final
    threshold (informational); ``importance``: table -> per-dim importance (dim order);
    ``params_full`` / ``params_budget`` / ``params_kept``: table parameters.
    """

    widths: dict[str, int]
    full_widths: dict[str, int]
    rows: dict[str, int]
    block_widths: dict[str, list[int]]
    importance: dict[str, list[float]]
    budget: float
    params_full: int
    params_budget: int
    params_kept: int
    criterion: str
    threshold: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget, "criterion": self.criterion, "threshold": self.threshold,
            "table_parameters": {"full": self.params_full, "budget": self.params_budget, "kept": self.params_kept,
                                 "kept_fraction": self.params_kept / max(self.params_full, 1)},
            "tables": {t: {"rows": self.rows[t], "full_width": self.full_widths[t], "width": self.widths[t],
                           "block_widths": self.block_widths[t],
                           "importance": [round(v, 8) for v in self.importance[t]]} for t in self.widths},
            **self.extra,
        }


@torch.no_grad()
def _scores(sel: SoftSelection, weights: dict[str, torch.Tensor], criterion: str) -> tuple[dict, dict]:
    """Per table: importance per dim ``[K_t / db]`` (frequency-weighted over rows) and per
    (block, dim) ``[S_t, K_t / db]`` (frequency-weighted within each block)."""
    per_dim, per_block = {}, {}
    for t in sel.tables:
        w = weights[sel.param_names[t]].detach().float()
        n, k = w.shape
        if criterion == "magnitude":
            s = (w * sel.row_alpha(t)).abs()
        elif criterion == "alpha":
            s = sel.row_alpha(t).expand(n, k)
        else:
            raise ConfigError(f"unknown criterion {criterion!r}", where="criterion", fix="use 'magnitude' or 'alpha'")
        s = s.reshape(n, k // sel.dim_block, sel.dim_block).mean(dim=2)  # per dim block
        counts = sel.counts[t]
        freq = torch.ones(n, dtype=s.dtype) if counts is None else torch.as_tensor(counts, dtype=s.dtype)
        per_dim[t] = (s * freq[:, None]).sum(0) / freq.sum()
        blocks = sel.blocks(t)
        nb = int(blocks.max()) + 1
        num = torch.zeros(nb, s.shape[1], dtype=s.dtype).index_add_(0, blocks, s * freq[:, None])
        den = torch.zeros(nb, dtype=s.dtype).index_add_(0, blocks, freq)
        per_block[t] = num / den.clamp(min=1e-12)[:, None]
    return per_dim, per_block


def _greedy(units: dict, allowed: int, start_blocks: int, db: int) -> tuple[dict | None, int, float]:
    """Greedy allocation of dim blocks: ``units`` key -> (rows, importance per dim block).

    Every unit starts with its ``start_blocks`` most important blocks; then blocks are added in
    descending importance (within a unit in its own order), each costing ``rows * db``, skipped
    when they do not fit. Returns (key -> number of blocks, parameters kept, lowest importance
    taken); the first is ``None`` when the start alone exceeds ``allowed``."""
    order = {u: torch.argsort(sc, descending=True, stable=True).tolist() for u, (_, sc) in units.items()}
    n_blocks = {u: min(len(order[u]), start_blocks) for u in units}
    kept = sum(units[u][0] * n_blocks[u] * db for u in units)
    if kept > allowed:
        return None, kept, 0.0
    candidates = sorted(((float(units[u][1][order[u][j]]), i, j, u) for i, u in enumerate(units)
                         for j in range(n_blocks[u], len(order[u]))), key=lambda c: (-c[0], c[1], c[2]))
    threshold = min((float(units[u][1][order[u][n_blocks[u] - 1]]) for u in units if n_blocks[u]), default=0.0)
    for score, _, j, u in candidates:
        if j != n_blocks[u]:  # a more important block of this unit did not fit
            continue
        cost = units[u][0] * db
        if kept + cost <= allowed:
            kept += cost
            n_blocks[u] += 1
            threshold = min(threshold, score)
    return n_blocks, kept, threshold


def prune_to_budget(sel: SoftSelection, weights: dict[str, torch.Tensor], budget: float,
                    criterion: str = "magnitude", min_width: int = 1) -> DimsResult:
    """Per-table widths whose table parameters ``sum_t N_t * w_t`` fit ``budget * sum_t N_t * K_t``.

    Greedy in descending importance (see the module docstring): never over the budget, under it
    by less than one dim block of a table that still had dims left.

    Args:
        sel: the searched soft selection (alpha).
        weights: parameter name -> table weight (``dict(model.named_parameters())`` works).
        budget: fraction of the full-width table parameters, in (0, 1].
        criterion: ``magnitude`` (``|e * alpha|``) or ``alpha``.
        min_width: dims every table keeps (>= 1).
    """
    if not 0 < budget <= 1:
        raise ConfigError(f"budget must be in (0, 1], got {budget}", where="--budget")
    if min_width < 1:
        raise ConfigError(f"min_width must be >= 1, got {min_width}", where="min_width")
    per_dim, per_block = _scores(sel, weights, criterion)
    db = sel.dim_block
    rows = {t: int(sel.blocks(t).numel()) for t in sel.tables}
    full = sum(rows[t] * sel.widths[t] for t in sel.tables)
    allowed = int(math.floor(budget * full + 1e-9))
    start_blocks = -(-min_width // db)  # min_width rounded up to whole dim blocks
    n_blocks, kept, threshold = _greedy({t: (rows[t], per_dim[t]) for t in sel.tables}, allowed, start_blocks, db)
    if n_blocks is None:
        raise ConfigError(f"budget {budget} ({allowed} parameters) is below the minimum of {min_width} dims per "
                          f"table ({kept} parameters)", where="--budget", fix="raise the budget or lower min_width")
    # the same allocation at (table, frequency block) granularity: what per-block widths would be
    units = {}
    for t in sel.tables:
        sizes = torch.bincount(sel.blocks(t), minlength=per_block[t].shape[0]).tolist()
        for s_, n_s in enumerate(sizes):
            units[(t, s_)] = (n_s, per_block[t][s_])
    per_unit, _, _ = _greedy(units, allowed, start_blocks, db)
    per_unit = per_unit or {u: start_blocks for u in units}
    block_widths = {sel.vocab[t]: [per_unit[(t, s_)] * db for s_ in range(per_block[t].shape[0])] for t in sel.tables}
    widths = {sel.vocab[t]: n_blocks[t] * db for t in sel.tables}
    importance = {sel.vocab[t]: [float(v) for v in per_dim[t]] for t in sel.tables}
    return DimsResult(widths=widths, full_widths={sel.vocab[t]: sel.widths[t] for t in sel.tables},
                      rows={sel.vocab[t]: rows[t] for t in sel.tables}, block_widths=block_widths,
                      importance=importance, budget=budget, params_full=full, params_budget=allowed,
                      params_kept=kept, criterion=criterion, threshold=threshold)


def plot_widths(result: DimsResult, sel: SoftSelection | None, path) -> None:
    """PNG: kept vs full width per table (bars), and per-(table, frequency block) widths at the
    final threshold (heat map; blocks ordered most frequent first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = list(result.widths)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 0.6 * len(tables) + 6), 4.5))
    x = np.arange(len(tables))
    ax1.bar(x, [result.full_widths[t] for t in tables], color="#dddddd", label="full")
    ax1.bar(x, [result.widths[t] for t in tables], color="#3366aa", label="searched")
    ax1.set_xticks(x, tables, rotation=60, ha="right", fontsize=8)
    ax1.set_ylabel("embedding width")
    ax1.set_title(f"widths per table ({result.params_kept / max(result.params_full, 1):.0%} of "
                  f"{result.params_full:,} table parameters)", fontsize=9)
    ax1.legend(fontsize=8)
    n_blocks = max(len(v) for v in result.block_widths.values())
    grid = np.full((n_blocks, len(tables)), np.nan)
    for j, t in enumerate(tables):
        grid[: len(result.block_widths[t]), j] = result.block_widths[t]
    im = ax2.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(result.full_widths.values()))
    ax2.set_xticks(x, tables, rotation=60, ha="right", fontsize=8)
    ax2.set_yticks(range(n_blocks), [f"block {s}" for s in range(n_blocks)], fontsize=8)
    ax2.set_title("width per frequency block (0 = most frequent)", fontsize=9)
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)

"""FeatureEmbedding: TorchRec embedding tables built from the schema, with per-field widths.

One table per schema table (a ``sequence`` that ``shares: item_id`` looks up item_id's table).
Tables whose features are all pooled live in an ``EmbeddingBagCollection`` (single ids are
pooled trivially, multi-hot lists mean/sum-pooled, sequences mean-pooled unless asked for
unpooled). Tables holding a sequence that a model wants *unpooled* (target attention, SDIM)
live in an ``EmbeddingCollection``; the target item and its behaviour sequence then share that
one table, as the design requires.

Widths: ``embedding_dim`` is the default; a schema field's ``embedding_dim`` or the ``dims``
argument (table -> width, what the dimension search exports) override it per table. Models that
need equal widths pass ``project_to=D``: each narrower/wider field gets a bias-free linear map
to ``D`` (identity where the width already matches).

Lookup of the pooled tables (models without an unpooled sequence): single-valued fields
(categoricals and bucketized numerics: one id per row) are looked up together: the tables of one
width are concatenated (a copy of the table weights, each step) and every field's ids, shifted by
its table's row offset, index that one matrix (``[B * F, D]``; backward one ``index_add_``), so the
33 categorical fields of a 40-field table cost one gather instead of 33 embedding-bag calls. List
fields (multi-hot, pooled sequences) are a gather plus one ``index_add_`` per field. Same values as
the ``EmbeddingBagCollection``'s forward; gradients equal to float rounding (summed in another
order); forward + backward of the lookups 1.3-3.3x faster (experiments/bench/README.md, "Fused
lookup"). Parameters, state dict and per-table (in-backward) optimizers are the collection's,
untouched: each table's gradient arrives in its own parameter. A sharded collection
(``recsys_ddp``), a model with unpooled sequences, and a batch whose single-valued field has a row
of other than one id use the collection's own forward.

Output (:class:`EmbeddingOutput`):
  * ``pooled``: field -> ``[B, D_f]`` (``[B, D]`` after projection), for every id field that is
    not an unpooled sequence, in schema order;
  * ``sequences``: field -> (``[B, L, D_f]`` padded, ``mask [B, L]`` bool, True = real item), ids
    oldest first, left-aligned, ``L`` = the batch's longest sequence (at least 1, at most the
    schema's ``max_len``): padding beyond the longest row never reaches a model's output, so it
    is not built (a long-history model on a batch of short histories does not pay for
    ``max_len``).

>>> from recsys.data import CTRDataModule
>>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
>>> emb = FeatureEmbedding(dm.features, embedding_dim=4)
>>> out = emb(next(iter(dm.train_dataloader())))
>>> out.stack().shape[0], out.stack().shape[2]
(8, 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)

from recsys.data.preprocess import FeatureEncoder

NUMERIC_INITS = ("embedding", "xavier")


class NumericEmbedding(nn.Module):
    """Numeric field ``m`` embedded as ``x_m * v_m`` (one learned vector per field).

    Shapes: ``dense [B, Dn] -> [B, Dn, D]``.
    """

    def __init__(self, n_dense: int, dim: int, init_std: float = 1e-4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_dense, dim) * init_std)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(2) * self.weight.unsqueeze(0)


class _Gather(torch.autograd.Function):
    """``weight[idx]`` (``[N, D]``, ``[M]`` -> ``[M, D]``) whose backward is one ``index_add_``
    into a zero ``[N, D]`` gradient: on CPU several times faster than ``F.embedding``'s backward
    (which sorts the ids) for the ``B * F`` ids of a batch. Same values; the gradient sums the
    same terms, in row order."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.n_rows = weight.shape[0]
        return weight.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        out = torch.zeros(ctx.n_rows, grad.shape[1], dtype=grad.dtype, device=grad.device)
        return out.index_add_(0, idx, grad), None


class _BagPool(torch.autograd.Function):
    """Sum (``mean=False``) or mean of each row's table rows: ``weight [N, D]``, ``ids [nnz]``,
    ``rows [nnz]`` (the batch row of each id, ascending), ``lengths [B]`` -> ``[B, D]``; an empty
    row gives zeros. ``nn.EmbeddingBag``'s sums in the same order (same values); its backward
    sorts the ids, this one is a gather and one ``index_add_`` (2-4x faster on CPU at D = 1-16)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor,
                mean: bool) -> torch.Tensor:
        ctx.save_for_backward(ids, rows, lengths)
        ctx.n_rows, ctx.mean = weight.shape[0], mean
        out = torch.zeros(lengths.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device)
        out.index_add_(0, rows, weight.index_select(0, ids))
        return out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype) if mean else out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ids, rows, lengths = ctx.saved_tensors
        if ctx.mean:
            grad = grad / lengths.clamp(min=1).unsqueeze(1).to(grad.dtype)
        out = torch.zeros(ctx.n_rows, grad.shape[1], dtype=grad.dtype, device=grad.device)
        return out.index_add_(0, ids, grad.index_select(0, rows)), None, None, None, None


@dataclass
class EmbeddingOutput:
    """``pooled``: field -> ``[B, D_f]``; ``sequences``: field -> (``[B, L, D]``, mask ``[B, L]``);
    ``numeric``: ``[B, Dn, D]`` numeric fields as ``x * v`` (only with ``embed_numeric=True``).
    ``block``: when every pooled field came out of one fused lookup, that ``[B, F, D]`` tensor
    (the ``pooled`` entries are its slices), so :meth:`stack` and :meth:`concat` need no copy."""

    pooled: dict[str, torch.Tensor] = field(default_factory=dict)
    sequences: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    numeric: torch.Tensor | None = None
    block: torch.Tensor | None = None

    def _whole_block(self) -> torch.Tensor | None:
        """``block`` if ``pooled`` still holds exactly its slices (a caller may have replaced one)."""
        b = self.block
        if b is None or len(self.pooled) != b.shape[1]:
            return None
        ptr, step = b.data_ptr(), b.stride(1) * b.element_size()
        shape, stride = (b.shape[0], b.shape[2]), (b.stride(0), b.stride(2))
        for i, v in enumerate(self.pooled.values()):
            if v.data_ptr() != ptr + i * step or v.shape != shape or v.stride() != stride:
                return None
        return b

    def stack(self, names: list[str] | None = None) -> torch.Tensor:
        """Field vectors as ``E [B, F, D]`` (needs equal widths: use ``project_to``): the pooled id
        fields in schema order, then the embedded numeric fields; or only the named pooled fields."""
        if names is not None:
            return torch.stack([self.pooled[n] for n in names], dim=1)
        e = self._whole_block()
        if e is None:
            e = torch.stack(list(self.pooled.values()), dim=1)
        return e if self.numeric is None else torch.cat([e, self.numeric], dim=1)

    def concat(self, names: list[str] | None = None) -> torch.Tensor:
        """Pooled field vectors concatenated, ``[B, sum_f D_f]``."""
        if names is None:
            e = self._whole_block()
            if e is not None:
                return e.flatten(1)
        names = list(self.pooled) if names is None else names
        return torch.cat([self.pooled[n] for n in names], dim=1)


class FeatureEmbedding(nn.Module):
    """Embedding tables for every id field of a fitted schema.

    Args:
        features: the fitted FeatureEncoder (schema + table sizes).
        embedding_dim: default width of every table.
        dims: table -> width overrides (e.g. from ``recsys search-dims``); schema
            ``embedding_dim`` entries come next; then the default.
        unpooled: sequence fields to return unpooled as ``[B, L, D]`` + mask.
        project_to: project every pooled field to this common width (``None``: keep widths).
        init_std: embeddings start as N(0, init_std^2).
        share_tables: ``False`` gives every field its own table, even where the schema says
            ``shares`` (the vocabulary stays shared). FuxiCTR's wide/LR part does this.
        pooling: ``mean`` or ``sum`` for every list field (multi-hot, pooled sequence),
            overriding the schema's per-field ``pooling``; ``None`` (default) follows the schema.
            A wide/LR part wants ``sum``: each active id adds its weight.
        embed_numeric: also embed the standardized numeric fields as ``x * v`` (one learned
            vector per field, width ``project_to`` or ``embedding_dim``); they come last in
            ``EmbeddingOutput.stack()`` and in ``field_names``.
        numeric_init: how the numeric fields' vectors ``v`` (``[Dn, D]``, D their width) are
            drawn: ``embedding`` (default) as the id tables, N(0, init_std^2); ``xavier``
            N(0, 2 / (1 + D)), Xavier-normal of a ``Linear(1, D)`` whose weight ``[D, 1]`` is one
            field's ``v``. FuxiCTR embeds a numeric field with ``nn.Linear(1, D, bias=False)``
            and draws it Xavier-normal. With ``xavier`` alone our wide-table MoE came level with
            FuxiCTR (test AUC -0.0039 -> +0.0007, 3 seeds) and Adult AutoInt's gap shrank (-0.0034 ->
            -0.0008; experiments/bench/README.md, "Multi-epoch, 3 seeds: ours vs FuxiCTR"). Measured
            per model on valid AUC over both data sets with numeric fields (Adult, the wide table;
            ml100k-ctr has none; ``experiments/bench/init_defaults.py --option numeric_init``),
            ``xavier`` is better on both for AutoInt, AutoInt+ and DCN-v2, whose default it is;
            DeepFM, MoE (and AW-MoE, not measured) and this class keep ``embedding`` (so SDIM/DIN,
            without the option, draw as before).
            ``xavier`` redraws over the default draw, as DCN-v2's own ``numeric_init`` did after
            construction, so a DCN-v2 draws the same weights for a seed as before the option
            moved here.

    ``fused_lookup`` (class attribute, default ``True``): ``False`` makes every lookup go
    through the ``EmbeddingBagCollection``'s own forward (benchmarks and tests compare the two).
    """

    fused_lookup: bool = True

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, dims: dict[str, int] | None = None,
                 unpooled: list[str] | tuple[str, ...] = (), project_to: int | None = None,
                 init_std: float = 1e-4, share_tables: bool = True, pooling: str | None = None,
                 embed_numeric: bool = False, numeric_init: str = "embedding"):
        super().__init__()
        schema = features.schema
        if pooling not in (None, "mean", "sum"):
            raise ValueError(f"pooling must be 'mean', 'sum' or None, got {pooling!r}")
        if numeric_init not in NUMERIC_INITS:
            raise ValueError(f"unknown numeric_init {numeric_init!r}; use one of {NUMERIC_INITS}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        dims = dict(dims or {})
        unknown = set(dims) - set(schema.tables)
        if unknown:
            raise ValueError(f"dims names unknown tables {sorted(unknown)}; tables are {schema.tables}")
        for name in unpooled:
            if schema.field(name).kind != "sequence":
                raise ValueError(f"unpooled field {name!r} is not a sequence field")
        sizes = features.table_sizes
        # table name -> its fields; with share_tables=False every field gets a table of its own
        # (same vocabulary and width as the table it would share), e.g. for a wide/LR part
        self.table_of = {f.name: f.table if share_tables else f.name for f in schema.id_fields}
        groups: dict[str, list] = {}
        for f in schema.id_fields:
            groups.setdefault(self.table_of[f.name], []).append(f)
        vocab_of = {t: members[0].table for t, members in groups.items()}
        self.table_dims: dict[str, int] = {
            t: dims.get(vocab_of[t]) or schema.field(vocab_of[t]).embedding_dim or embedding_dim for t in groups}
        unpooled_tables = {self.table_of[n] for n in unpooled}
        self.bag_tables = [t for t in groups if t not in unpooled_tables]
        self.seq_tables = [t for t in groups if t in unpooled_tables]
        self.bag_keys = [f.name for t in self.bag_tables for f in groups[t]]
        self.seq_keys = [f.name for t in self.seq_tables for f in groups[t]]
        all_keys = [f.name for f in schema.id_fields]
        order = self.bag_keys + self.seq_keys
        self._permute = [all_keys.index(k) for k in order]
        self._identity = order == all_keys
        self.unpooled = list(unpooled)
        self.max_len = {f.name: f.max_len for f in schema.sequence_fields}
        self.field_dims = {f.name: self.table_dims[self.table_of[f.name]] for f in schema.id_fields}
        self.pooled_names = [n for n in all_keys if n not in self.unpooled]
        cpu = torch.device("cpu")
        self.ebc = None
        if self.bag_tables:
            configs = []
            for t in self.bag_tables:
                members = groups[t]
                sum_pool = all((pooling or f.pooling) == "sum" for f in members if f.is_list) and any(
                    f.is_list for f in members)
                configs.append(EmbeddingBagConfig(
                    name=t, embedding_dim=self.table_dims[t], num_embeddings=sizes[vocab_of[t]],
                    feature_names=[f.name for f in members],
                    pooling=PoolingType.SUM if sum_pool else PoolingType.MEAN))
            self.ebc = EmbeddingBagCollection(tables=configs, device=cpu)
        self.ec = None
        if self.seq_tables:
            self.ec = EmbeddingCollection(tables=[
                EmbeddingConfig(name=t, embedding_dim=self.table_dims[t], num_embeddings=sizes[vocab_of[t]],
                                feature_names=[f.name for f in groups[t]])
                for t in self.seq_tables], device=cpu)
        for p in self.parameters():
            nn.init.normal_(p, std=init_std)
        self.project_to = project_to
        self.projections = nn.ModuleDict()
        if project_to is not None:
            for n in self.pooled_names + self.unpooled:
                if self.field_dims[n] != project_to:
                    self.projections[n] = nn.Linear(self.field_dims[n], project_to, bias=False)
        self.pooling = {f.name: pooling or f.pooling for f in schema.id_fields}
        dense_names = [f.name for f in schema.dense_fields]
        self.numeric = (NumericEmbedding(len(dense_names), project_to or embedding_dim, init_std=init_std)
                        if embed_numeric and dense_names else None)
        if numeric_init == "xavier" and self.numeric is not None:
            w = self.numeric.weight                    # [Dn, D]: each row the weight [D, 1] of a Linear(1, D)
            with torch.no_grad():  # over the default draw (the RNG order of DCN-v2's former redraw)
                w.normal_(0.0, (2.0 / (1 + w.shape[1])) ** 0.5)
        # the F fields of ``EmbeddingOutput.stack()``, in order
        self.field_names = self.pooled_names + (dense_names if self.numeric is not None else [])
        # fused lookup of the single-valued fields of the pooled tables, one group per width:
        # (field names, their KJT key indices, tables to concatenate, each field's row offset)
        all_index = {k: i for i, k in enumerate(all_keys)}
        single = [f.name for f in schema.id_fields if not f.is_list and self.table_of[f.name] in self.bag_tables]
        self._single_idx = torch.tensor([all_index[n] for n in single], dtype=torch.int64)
        self._groups: list[tuple[list[str], torch.Tensor, list[str], torch.Tensor]] = []
        for width in dict.fromkeys(self.field_dims[n] for n in single):
            names = [n for n in single if self.field_dims[n] == width]
            tables = list(dict.fromkeys(self.table_of[n] for n in names))
            start, row0 = 0, {}
            for t in tables:
                row0[t] = start
                start += sizes[vocab_of[t]]
            self._groups.append((names, torch.tensor([all_index[n] for n in names], dtype=torch.int64), tables,
                                 torch.tensor([row0[self.table_of[n]] for n in names], dtype=torch.int64)))
        self._list_bag_keys = [k for k in self.bag_keys if k not in set(single)]
        # the fused block is the whole pooled output: one group, every pooled field, no projection
        self._block_is_pooled = (len(self._groups) == 1 and self._groups[0][0] == self.pooled_names
                                 and not any(n in self.projections for n in self.pooled_names))
        self._n_keys = len(all_keys)
        self._key_index = all_index

    def output_dim(self, name: str) -> int:
        """Width of a field's output vector (after projection)."""
        return self.project_to or self.field_dims[name]

    @property
    def pooled_dim(self) -> int:
        """Sum of the pooled output widths: the width of ``EmbeddingOutput.concat()``."""
        return sum(self.output_dim(n) for n in self.pooled_names)

    def _proj(self, name: str, x: torch.Tensor) -> torch.Tensor:
        p = self.projections[name] if name in self.projections else None
        return p(x) if p is not None else x

    def _fused_bags(self, kjt: KeyedJaggedTensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None] | None:
        """The pooled tables' fields by the fused lookup (see the module docstring): (field ->
        ``[B, D_f]``, the ``[B, F, D]`` block when it is the whole pooled output); ``None`` when
        the collection's own forward must run (sharded, weighted, variable batch per key, or a
        single-valued field with a row of other than one id)."""
        if not self.fused_lookup or not isinstance(self.ebc, EmbeddingBagCollection) or not self._groups:
            return None
        if kjt.weights_or_none() is not None or kjt.variable_stride_per_key() or len(kjt.keys()) != self._n_keys:
            return None
        b = kjt.stride()
        lengths = kjt.lengths().view(self._n_keys, b)
        dev = lengths.device  # the index tensors below are built on the CPU; moved where a batch lives
        if not bool((lengths[self._single_idx.to(dev)] == 1).all()):
            return None
        values = kjt.values()
        per_key = lengths.sum(dim=1)
        ends = per_key.cumsum(0)
        starts = ends - per_key                        # [K] first value of each key
        bags = self.ebc.embedding_bags
        pooled: dict[str, torch.Tensor] = {}
        block = None
        rows = torch.arange(b, dtype=torch.int64, device=dev)
        for names, idx, tables, row0 in self._groups:
            ids = values[starts[idx.to(dev)].unsqueeze(1) + rows] + row0.to(dev).unsqueeze(1)  # [F_g, B]
            weight = bags[tables[0]].weight if len(tables) == 1 else torch.cat([bags[t].weight for t in tables])
            e = _Gather.apply(weight, ids.t().reshape(-1)).view(b, len(names), -1)   # [B, F_g, D]
            for i, n in enumerate(names):
                pooled[n] = e[:, i]
            block = e
        for k in self._list_bag_keys:
            i = self._key_index[k]
            lo, hi = int(starts[i]), int(ends[i])
            bag = bags[self.table_of[k]]
            row_of = torch.repeat_interleave(rows, lengths[i], output_size=hi - lo)
            pooled[k] = _BagPool.apply(bag.weight, values[lo:hi], row_of, lengths[i], bag.mode == "mean")
        return pooled, (block if self._block_is_pooled else None)

    def forward(self, batch) -> EmbeddingOutput:
        kjt: KeyedJaggedTensor = batch.sparse
        out = EmbeddingOutput()
        fused = self._fused_bags(kjt) if self.ec is None else None
        if fused is not None:
            pooled, out.block = fused
        else:
            pooled = self._collection_lookup(kjt, out)
        for name in self.pooled_names:
            out.pooled[name] = self._proj(name, pooled[name])
        if self.numeric is not None:
            out.numeric = self.numeric(batch.dense)
        return out

    def _collection_lookup(self, kjt: KeyedJaggedTensor, out: EmbeddingOutput) -> dict[str, torch.Tensor]:
        """The collections' own forward: returns the pooled fields (field -> ``[B, D_f]``, before
        projection) and puts the unpooled sequences into ``out.sequences``."""
        if not self._identity:
            kjt = kjt.permute(self._permute)
        if self.ebc is not None and self.ec is not None:
            bag_kjt, seq_kjt = kjt.split([len(self.bag_keys), len(self.seq_keys)])
        else:
            bag_kjt, seq_kjt = (kjt, None) if self.ebc is not None else (None, kjt)
        pooled: dict[str, torch.Tensor] = {}
        if bag_kjt is not None:
            kt = self.ebc(bag_kjt)
            for name, tensor in kt.to_dict().items():
                pooled[name] = tensor
        if seq_kjt is not None:
            jts = self.ec(seq_kjt)
            for name in self.seq_keys:
                jt = jts[name]
                if name in self.unpooled:
                    lengths = jt.lengths()
                    width = max(1, min(self.max_len[name], int(lengths.max())) if lengths.numel() else 1)
                    dense = jt.to_padded_dense(width)                     # [B, L, D_f], L = longest row
                    mask = torch.arange(width, device=dense.device)[None, :] < lengths[:, None]
                    out.sequences[name] = (self._proj(name, dense), mask)
                else:
                    pooled[name] = _pool_jagged(jt.values(), jt.lengths(), self.pooling[name])
        return pooled


def _pool_jagged(values: torch.Tensor, lengths: torch.Tensor, mode: str) -> torch.Tensor:
    """Sum/mean of each row's vectors: ``values [nnz, D]``, ``lengths [B]`` -> ``[B, D]``."""
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device), lengths)
    out = torch.zeros(lengths.numel(), values.shape[1], dtype=values.dtype, device=values.device)
    out.index_add_(0, rows, values)
    if mode == "mean":
        out = out / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)
    return out


def resolve_sequence_target(schema, sequence_field: str | None, target_field: str | None,
                            model: str) -> tuple[str, str]:
    """The (behaviour sequence, target item) field pair of a sequence model, validated.

    Defaults: the schema's first sequence field, and the field owning its table (history ->
    item_id). Raises :class:`~recsys.errors.ConfigError` at construction when the sequence is missing, the target is
    not another id field, or the two do not share one embedding table.
    """
    from recsys.errors import ConfigError

    where = f"model.init_args.model ({model})"
    seqs = [f.name for f in schema.sequence_fields]
    if sequence_field is None:
        if not seqs:
            raise ConfigError(f"{model} needs a behaviour sequence field; the schema has none", where=where,
                              fix="add one to the schema (e.g. '- {name: history, kind: sequence, shares: "
                                  "item_id, max_len: 50}': a list of the user's past item ids per row), or pick "
                                  "a model without one (DeepFM, DNN, AutoInt, MoE, LogisticRegression)")
        sequence_field = seqs[0]
    if sequence_field not in seqs:
        raise ConfigError(f"sequence_field {sequence_field!r} is not a sequence field", where=where,
                          fix=f"use one of the schema's sequence fields {seqs}" if seqs else
                          "add a sequence field to the schema (kind: sequence, shares: <item field>)")
    seq_spec = schema.field(sequence_field)
    if target_field is None:
        target_field = seq_spec.table
    ids = [f.name for f in schema.id_fields]
    if target_field not in ids or target_field == sequence_field:
        raise ConfigError(f"target_field {target_field!r} is not an id field other than the sequence", where=where,
                          fix=f"use one of {[i for i in ids if i != sequence_field]}")
    if schema.field(target_field).table != seq_spec.table:
        raise ConfigError(f"target_field {target_field!r} (table {schema.field(target_field).table!r}) and "
                          f"sequence {sequence_field!r} (table {seq_spec.table!r}) must share one table",
                          where=where, fix=f"give the sequence field 'shares: {target_field}' in the schema")
    return sequence_field, target_field

"""Synthetic CTR data with planted signal: the built-in default data set (no download).

The label is ``Bernoulli(sigmoid(b + sum of per-value effects))``. Effects come from

* a user bias (``user_id``) and an item bias (``item_id``),
* informative categoricals (default cardinalities 2, 5, 10, 50, 1000),
* an informative multi-hot field ``tags`` (1..4 tags out of 30; effect = mean of the tag effects),
* an informative numeric (linear effect),
* an item-history affinity: every item belongs to one of ``n_clusters`` clusters, every user
  prefers a few clusters (and sees their items more often); the effect is proportional to the
  fraction of the user's ``history`` (the items the user saw at strictly earlier timestamps, the
  last ``history_len``) that lies in the target item's cluster. A sequence-aware model
  (target attention) can exploit it fully; pooled history and user x item interactions partly.

Everything else is independent noise: uniform and Zipf-distributed categoricals (one of them with
about 20% nulls) and a numeric. Per-value effects are drawn ``N(0, 1)`` and then standardized so
that their spread over the values is exactly the field's ``effect`` (a field's signal strength
does not depend on the luck of the draw), and scaled by ``effect_scale``; ``b`` is solved so that
the mean click probability is ``base_rate``.

The frame is sorted by ``(timestamp, user_id, item_id)`` and split by that order into
``train`` / ``valid`` / ``test`` (80/10/10 by default). Besides the features, ``label`` (Int8)
and ``split``, it holds ``_p_true``, the true click probability: **oracle information for
evaluation only, never a feature** (it is not in the schema). ``oracle_auc`` is the AUC of
``_p_true`` per split, the Bayes-optimal ranking a model can approach but not beat in expectation.

Every column draws from its own random stream (``default_rng([seed, crc32(name)])``), so the same
seed and config give the identical frame, and adding a column does not change the others.

>>> data = make_synthetic(n_rows=2_000, n_users=200, n_items=100)
>>> data.frame.height, sorted(set(data.frame["split"]))
(2000, ['test', 'train', 'valid'])
>>> data.schema.keys
{'user': 'user_id', 'item': 'item_id', 'time': 'timestamp'}
>>> "inf_2" in data.informative and "noise_10" not in data.informative
True
>>> make_synthetic(n_rows=2_000, n_users=200, n_items=100).frame.equals(data.frame)
True

The feature-ranking benchmark data (1M rows x 40 features, see ``BENCHMARKS.md``) is
:func:`make_feature_ranking_data`; its config, :func:`feature_ranking_config`, can be tweaked.
The wide-table speed benchmark data (40 fields, mostly small categoricals, 180k training rows) is
:func:`make_wide_table` (built-in data set ``synthetic-wide``), config :func:`wide_table_config`.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import polars as pl

from recsys.errors import ConfigError
from recsys.metrics import roc_auc  # the one exact AUC (re-exported: synthetic.roc_auc)
from recsys.schema import FieldSpec, Schema

__all__ = [
    "CategoricalSpec",
    "NumericSpec",
    "SyntheticConfig",
    "SyntheticData",
    "make_synthetic",
    "write_synthetic_parquet",
    "feature_ranking_config",
    "make_feature_ranking_data",
    "wide_table_config",
    "make_wide_table",
    "roc_auc",
]

SPLITS: tuple[str, str, str] = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class CategoricalSpec:
    """One single-valued categorical column.

    Attributes:
        name: column (and field) name.
        cardinality: number of distinct values, ``0 .. cardinality - 1``.
        effect: spread (std over the values) of the per-value logit effects; 0 = pure noise.
        zipf: ``None`` draws values uniformly; ``a > 0`` draws value rank ``k`` with probability
            proportional to ``k ** -a`` (ranks are shuffled onto value ids).
        missing: fraction of rows set to null (a null contributes no effect).
        as_string: values as strings ``"c<i>_<value>"`` (``i`` = the column's position among the
            categoricals) instead of Int64.
        copy_of: make this column a noisy copy of an earlier categorical (same cardinality): the
            source's value with probability ``copy_keep``, else a uniform random value. It has no
            planted effect of its own: it is redundant, informative only through its source.
        copy_keep: see ``copy_of``.
        min_count: passed to the schema's :class:`~recsys.schema.FieldSpec`.
        hash_buckets: passed to the schema's :class:`~recsys.schema.FieldSpec`.
    """

    name: str
    cardinality: int
    effect: float = 0.0
    zipf: float | None = None
    missing: float = 0.0
    as_string: bool = False
    copy_of: str | None = None
    copy_keep: float = 0.8
    min_count: int = 1
    hash_buckets: int | None = None


@dataclass(frozen=True)
class NumericSpec:
    """One numeric column: ``loc + scale * z`` (``exp`` of that when ``log``), ``z ~ N(0, 1)``.

    Attributes:
        name: column (and field) name.
        effect: logit effect per standard deviation of ``z`` (linear); 0 = pure noise.
        loc, scale: the raw value's location and scale (before ``exp`` when ``log``).
        log: log-normal raw values (still monotone in ``z``).
        missing: fraction of rows set to null (a null contributes no effect).
    """

    name: str
    effect: float = 0.0
    loc: float = 0.0
    scale: float = 1.0
    log: bool = False
    missing: float = 0.0


DEFAULT_CATEGORICALS: tuple[CategoricalSpec, ...] = (
    CategoricalSpec("inf_2", 2, effect=0.4),
    CategoricalSpec("inf_5", 5, effect=0.4, as_string=True),
    CategoricalSpec("inf_10", 10, effect=0.4),
    CategoricalSpec("inf_50", 50, effect=0.4, as_string=True),
    CategoricalSpec("inf_1000", 1000, effect=0.4),
    CategoricalSpec("noise_10", 10),
    CategoricalSpec("noise_100", 100, zipf=1.1, as_string=True),
    CategoricalSpec("noise_10000", 10_000, zipf=1.1, min_count=2),
    CategoricalSpec("noise_missing", 20, missing=0.2, as_string=True),
)

DEFAULT_NUMERICS: tuple[NumericSpec, ...] = (
    NumericSpec("num_inf", effect=0.4, loc=3.0, scale=2.0),
    NumericSpec("num_noise", loc=0.0, scale=1.0, log=True),
)


def _coerce_specs(value: Any, cls: type, what: str) -> tuple:
    """Accept specs, dicts (from YAML / CLI) or a mix; return a tuple of ``cls``."""
    if isinstance(value, (cls, Mapping)):
        value = [value]
    out = []
    for v in value:
        if isinstance(v, cls):
            out.append(v)
        elif isinstance(v, Mapping):
            try:
                out.append(cls(**v))
            except TypeError as e:
                raise ConfigError(f"bad {what} spec {dict(v)!r}: {e}", where=f"SyntheticConfig.{what}") from None
        else:
            raise ConfigError(f"expected a {cls.__name__} or a mapping, got {v!r}", where=f"SyntheticConfig.{what}")
    return tuple(out)


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of :func:`make_synthetic`. Defaults: a small, fast, learnable demo.

    Attributes:
        n_rows, n_users, n_items, seed: size and seed.
        user_zipf, item_zipf: skew of user activity / item popularity (Zipf exponent, 0 = uniform).
        user_effect, item_effect: spread of the user / item logit biases (0 = ids are noise).
        categoricals: the single-valued categorical columns (informative, noise, noisy copies).
        numerics: the numeric columns.
        n_tags: size of the tag vocabulary of the multi-hot ``tags`` column (0 = no tags column).
        max_tags: each row has 1..``max_tags`` distinct tags.
        tags_zipf: skew of tag popularity.
        tags_effect: spread of the per-tag effects; a row's effect is the mean over its tags.
        history_len: the ``history`` sequence keeps the user's last ``history_len`` items
            seen at strictly earlier timestamps (0 = no history column, no affinity effect).
        n_clusters: item clusters.
        user_clusters: preferred clusters per user.
        cluster_affinity: probability that a row's item is drawn (uniformly) from one of the
            user's preferred clusters rather than from overall popularity.
        history_effect: logit effect per unit of "fraction of history in the target's cluster"
            (with ``history_tail``: the effect of the target being in one of the user's interests).
        history_tail: 0 (default): the history is the user's earlier rows. ``a > 0``: long-tail
            users on purpose: each user gets ``n_u`` behaviours with ``P(n_u = n) ∝ (n + 1)^-a``
            on ``0..history_len`` (the most active users get the longest histories, so short
            histories go with rare users), each behaviour an item of one of the user's
            ``user_clusters`` preferred clusters (the planted interests) with probability
            ``history_focus``, else a popular item; every row of the user carries that history,
            and the label effect is ``history_effect`` when the target item's cluster is one of
            the user's interests. A model that reads interests from few behaviours can show it.
        history_focus: with ``history_tail``: probability that a behaviour is an interest item.
        history_per_row: with ``history_tail``: each row has interests of its own (its
            ``user_clusters`` clusters drawn per row, like a session) and draws its own behaviours
            from them (the user's power-law length kept), and the label effect is
            ``history_effect`` when the target item's cluster **appears among the row's
            behaviours**. The user id then cannot stand in for the history, and cutting the
            history (``recsys report --history-cap K``) removes signal: AUC rises with K.
        effect_scale: multiplies every effect (the overall signal strength).
        base_rate: mean click probability (the intercept ``b`` is solved for it).
        start_time, time_span_s: timestamps are integer seconds, uniform in
            ``[start_time, start_time + time_span_s)``; a small span makes same-second ties.
        split_fractions: train / valid / test fractions by time order.
        effects_seed: seed of the *structure* (per-value effects, item clusters, user cluster
            preferences) when it should differ from ``seed`` (``None``: ``seed``, the default).
            :func:`write_synthetic_parquet` draws every chunk's rows with its own ``seed`` but one
            ``effects_seed``, so all chunks share one planted signal.
    """

    n_rows: int = 50_000
    n_users: int = 2_000
    n_items: int = 1_000
    seed: int = 0
    user_zipf: float = 0.5
    item_zipf: float = 0.7
    user_effect: float = 0.3
    item_effect: float = 0.3
    categoricals: tuple[CategoricalSpec, ...] = DEFAULT_CATEGORICALS
    numerics: tuple[NumericSpec, ...] = DEFAULT_NUMERICS
    n_tags: int = 30
    max_tags: int = 4
    tags_zipf: float = 0.5
    tags_effect: float = 0.8
    history_len: int = 20
    n_clusters: int = 20
    user_clusters: int = 2
    cluster_affinity: float = 0.5
    history_effect: float = 4.0
    history_tail: float = 0.0
    history_focus: float = 0.9
    history_per_row: bool = False
    effect_scale: float = 1.0
    base_rate: float = 0.3
    start_time: int = 1_700_000_000
    time_span_s: int = 30 * 86_400
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    effects_seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "categoricals", _coerce_specs(self.categoricals, CategoricalSpec, "categoricals"))
        object.__setattr__(self, "numerics", _coerce_specs(self.numerics, NumericSpec, "numerics"))
        object.__setattr__(self, "split_fractions", tuple(float(x) for x in self.split_fractions))
        self._validate()

    def _validate(self) -> None:
        def bad(attr: str, msg: str) -> ConfigError:
            return ConfigError(msg, where=f"SyntheticConfig.{attr}")

        for attr in ("n_rows", "n_users", "n_items"):
            v = getattr(self, attr)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise bad(attr, f"must be a positive integer, got {v!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise bad("seed", f"must be a non-negative integer, got {self.seed!r}")
        if self.effects_seed is not None and (not isinstance(self.effects_seed, (int, np.integer))
                                              or self.effects_seed < 0):
            raise bad("effects_seed", f"must be None or a non-negative integer, got {self.effects_seed!r}")
        if not 0.0 < self.base_rate < 1.0:
            raise bad("base_rate", f"must be in (0, 1), got {self.base_rate!r}")
        if self.time_span_s < 1:
            raise bad("time_span_s", f"must be >= 1, got {self.time_span_s!r}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise bad("split_fractions", f"must be three non-negative fractions summing to 1, got {self.split_fractions!r}")
        if self.n_tags < 0 or (self.n_tags and not 1 <= self.max_tags <= self.n_tags):
            raise bad("max_tags", f"must be in [1, n_tags={self.n_tags}], got {self.max_tags!r}")
        if self.history_len < 0:
            raise bad("history_len", f"must be >= 0, got {self.history_len!r}")
        if not 0.0 <= self.cluster_affinity <= 1.0:
            raise bad("cluster_affinity", f"must be in [0, 1], got {self.cluster_affinity!r}")
        if not 1 <= self.n_clusters <= self.n_items:
            raise bad("n_clusters", f"must be in [1, n_items={self.n_items}], got {self.n_clusters!r}")
        if self.history_tail < 0:
            raise bad("history_tail", f"must be >= 0 (0: the history is the user's earlier rows), got {self.history_tail!r}")
        if not 0.0 <= self.history_focus <= 1.0:
            raise bad("history_focus", f"must be in [0, 1], got {self.history_focus!r}")
        if self.history_per_row and not (self.history_tail > 0 and self.history_len > 0):
            raise bad("history_per_row", "needs history_tail > 0 and history_len > 0 (the long-tail histories "
                      f"it draws per row), got history_tail={self.history_tail!r}, history_len={self.history_len!r}")
        if self.user_clusters < 1:
            raise bad("user_clusters", f"must be >= 1, got {self.user_clusters!r}")
        reserved = {"user_id", "item_id", "timestamp", "label", "split", "_p_true", "history", "tags"}
        seen: dict[str, CategoricalSpec | NumericSpec] = {}
        for spec in self.categoricals + self.numerics:
            where = "categoricals" if isinstance(spec, CategoricalSpec) else "numerics"
            if spec.name in reserved or spec.name in seen:
                raise bad(where, f"column name {spec.name!r} is reserved or used twice")
            if not 0.0 <= spec.missing < 1.0:
                raise bad(where, f"{spec.name}: missing must be in [0, 1), got {spec.missing!r}")
            if isinstance(spec, CategoricalSpec):
                if spec.cardinality < 1:
                    raise bad(where, f"{spec.name}: cardinality must be >= 1, got {spec.cardinality!r}")
                if spec.copy_of is not None:
                    src = seen.get(spec.copy_of)
                    if not isinstance(src, CategoricalSpec):
                        raise bad(where, f"{spec.name}: copy_of={spec.copy_of!r} must name an earlier categorical")
                    if src.cardinality != spec.cardinality:
                        raise bad(where, f"{spec.name}: a copy needs the cardinality of {spec.copy_of!r} "
                                         f"({src.cardinality}), got {spec.cardinality}")
            seen[spec.name] = spec


@dataclass
class SyntheticData:
    """What :func:`make_synthetic` returns.

    Attributes:
        frame: raw feature columns, ``user_id``, ``item_id``, ``timestamp`` (Int64 seconds),
            ``label`` (Int8 0/1), ``split`` (``train``/``valid``/``test``), and ``_p_true`` (the
            true click probability: oracle information, never a feature), sorted by
            ``(timestamp, user_id, item_id)``.
        schema: the features' schema (label ``label``; keys user/item/time).
        informative: fields with a planted effect, in schema order.
        oracle_auc: AUC of ``_p_true`` on each split (rank-based, ties averaged).
        redundant: noisy copies of informative fields (informative only through their source).
        noise: fields with no relation to the label.
        config: the config that generated the data.
    """

    frame: pl.DataFrame
    schema: Schema
    informative: list[str]
    oracle_auc: dict[str, float]
    redundant: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    config: SyntheticConfig | None = None


# -------------------------------------------------------------------------------------- helpers
def _rng(seed: int, key: str) -> np.random.Generator:
    """An independent, stable random stream per (seed, key)."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def _draw(rng: np.random.Generator, k: int, n: int, zipf: float | None) -> np.ndarray:
    """``n`` values in ``[0, k)``: uniform, or Zipf over ranks shuffled onto value ids."""
    if not zipf:
        return rng.integers(0, k, n, dtype=np.int64)
    cdf = np.cumsum(np.arange(1, k + 1, dtype=np.float64) ** -float(zipf))
    cdf /= cdf[-1]
    rank = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), k - 1)
    return rng.permutation(k).astype(np.int64)[rank]


def _effects(rng: np.random.Generator, k: int, std: float) -> np.ndarray:
    """``k`` per-value effects ``N(0, 1)`` standardized to mean 0 and std exactly ``std``."""
    e = rng.standard_normal(k)
    if k < 2 or std == 0:
        return np.zeros(k)
    return (e - e.mean()) / e.std() * std


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _intercept(z: np.ndarray, rate: float) -> float:
    """``b`` with ``mean(sigmoid(b + z)) == rate``: Newton steps kept inside a shrinking bracket
    (the mean is increasing in ``b``)."""
    lo, hi = -30.0 - float(z.max()), 30.0 - float(z.min())
    b = float(np.log(rate / (1.0 - rate)) - z.mean())
    for _ in range(100):
        p = _sigmoid(b + z)
        f = p.mean() - rate
        if abs(f) < 1e-10:
            break
        if f < 0:
            lo = b
        else:
            hi = b
        slope = float((p * (1.0 - p)).mean())
        step = b - f / slope if slope > 0 else 0.5 * (lo + hi)
        b = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-12:
            break
    return b


def _list_column(name: str, rows: np.ndarray, values: np.ndarray, n: int) -> pl.Series:
    """A list column of ``n`` rows from flat ``values`` and their row numbers ``rows`` (values of
    one row in the given order; rows absent from ``rows`` get an empty list)."""
    flat = pl.DataFrame({"_r": rows.astype(np.int64), name: values})
    inner = flat.schema[name]
    grouped = flat.group_by("_r", maintain_order=True).agg(pl.col(name))
    out = pl.DataFrame({"_r": np.arange(n, dtype=np.int64)}).join(grouped, on="_r", how="left", maintain_order="left")
    return out[name].fill_null(pl.lit([], dtype=pl.List(inner))).alias(name)


# ------------------------------------------------------------------------------------ generator
def make_synthetic(config: SyntheticConfig | None = None, **overrides: Any) -> SyntheticData:
    """Generate the synthetic CTR data set (vectorized numpy, returned as polars).

    Args:
        config: the knobs (default :class:`SyntheticConfig`).
        **overrides: replace config fields, e.g. ``make_synthetic(n_rows=10_000, seed=3)``.

    >>> d = make_synthetic(n_rows=1_000, n_users=50, n_items=40, history_len=5)
    >>> d.frame["history"].list.len().max() <= 5
    True
    """
    cfg = config if config is not None else SyntheticConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(SyntheticConfig)}
        if unknown:
            raise ConfigError(f"unknown options {sorted(unknown)}", where="synthetic data set",
                              fix=f"use SyntheticConfig fields: {[f.name for f in dataclasses.fields(SyntheticConfig)]}")
        cfg = dataclasses.replace(cfg, **overrides)
    n, seed, scale = int(cfg.n_rows), int(cfg.seed), float(cfg.effect_scale)
    # structure (effects, clusters) comes from effects_seed when set; with the default (None) every
    # stream below is exactly the one it always was, so existing seeds give identical frames
    eseed = seed if cfg.effects_seed is None else int(cfg.effects_seed)

    def effects_rng(r: np.random.Generator, key: str) -> np.random.Generator:
        return r if cfg.effects_seed is None else _rng(eseed, "effects:" + key)
    logit = np.zeros(n)
    cols: dict[str, Any] = {}
    fields: list[FieldSpec] = []
    informative: list[str] = []
    redundant: list[str] = []
    noise: list[str] = []

    def role(name: str, effect: float) -> None:
        (informative if effect * scale != 0 else noise).append(name)

    # ---- time, users, items (items lean towards the user's preferred clusters)
    ts = cfg.start_time + np.sort(_rng(seed, "timestamp").integers(0, cfg.time_span_s, n, dtype=np.int64))
    users = _draw(_rng(seed, "user_id"), cfg.n_users, n, cfg.user_zipf)
    r_cl = _rng(eseed, "item_cluster")
    item_cluster = r_cl.permutation(np.arange(cfg.n_items) % cfg.n_clusters)
    by_cluster = np.argsort(item_cluster, kind="stable")
    cl_size = np.bincount(item_cluster, minlength=cfg.n_clusters)
    cl_start = np.cumsum(cl_size) - cl_size
    user_pref = r_cl.integers(0, cfg.n_clusters, (cfg.n_users, cfg.user_clusters))
    r_it = _rng(seed, "item_id")
    items = _draw(r_it, cfg.n_items, n, cfg.item_zipf)
    if cfg.cluster_affinity > 0:
        pick = r_it.random(n) < cfg.cluster_affinity
        c = user_pref[users, r_it.integers(0, cfg.user_clusters, n)]
        within = np.minimum((r_it.random(n) * cl_size[c]).astype(np.int64), cl_size[c] - 1)
        items = np.where(pick, by_cluster[cl_start[c] + within], items)
    order = np.lexsort((items, users, ts))  # rows sorted by (timestamp, user_id, item_id)
    users, items = users[order], items[order]
    cols["timestamp"], cols["user_id"], cols["item_id"] = ts, users, items

    r_ui = _rng(eseed, "user_item_effects")
    logit += _effects(r_ui, cfg.n_users, cfg.user_effect * scale)[users]
    logit += _effects(r_ui, cfg.n_items, cfg.item_effect * scale)[items]
    fields += [FieldSpec("user_id", "categorical"), FieldSpec("item_id", "categorical")]
    role("user_id", cfg.user_effect)
    role("item_id", cfg.item_effect)

    # ---- single-valued categoricals
    raw_values: dict[str, np.ndarray] = {}
    null_masks: dict[str, np.ndarray] = {}
    string_cols: dict[str, str] = {}
    copied = {spec.copy_of for spec in cfg.categoricals if spec.copy_of is not None}
    for i, spec in enumerate(cfg.categoricals):
        r = _rng(seed, "cat:" + spec.name)
        if spec.copy_of is not None:
            keep = r.random(n) < spec.copy_keep
            vals = np.where(keep, raw_values[spec.copy_of], r.integers(0, spec.cardinality, n))
            mask = null_masks[spec.copy_of].copy()
            redundant.append(spec.name)
        else:
            vals = _draw(r, spec.cardinality, n, spec.zipf)
            mask = np.zeros(n, dtype=bool)
        if spec.missing > 0:
            mask |= r.random(n) < spec.missing
        if spec.copy_of is None:
            eff = _effects(effects_rng(r, "cat:" + spec.name), spec.cardinality, spec.effect * scale)[vals]
            eff[mask] = 0.0
            logit += eff
            role(spec.name, spec.effect)
        if spec.name in copied:  # keep only what a later copy needs (memory at 1M rows)
            raw_values[spec.name], null_masks[spec.name] = vals, mask
        s = pl.Series(spec.name, vals, dtype=pl.Int64)
        if mask.any():
            s = s.scatter(np.flatnonzero(mask), None)
        if spec.as_string and spec.cardinality <= n // 4:  # few values: format a vocabulary, gather
            vocab = pl.select(pl.format(f"c{i}_{{}}", pl.int_range(0, spec.cardinality, dtype=pl.Int64))).to_series()
            s = vocab.gather(s).alias(spec.name)
        elif spec.as_string:
            string_cols[spec.name] = f"c{i}_"
        cols[spec.name] = s
        fields.append(FieldSpec(spec.name, "categorical", min_count=spec.min_count, hash_buckets=spec.hash_buckets))

    # ---- multi-hot tags: 1..max_tags distinct tags, drawn by popularity without replacement
    if cfg.n_tags > 0:
        r = _rng(seed, "tags")
        m, n_tags = cfg.max_tags, cfg.n_tags
        cdf = np.cumsum(np.arange(1, n_tags + 1, dtype=np.float64) ** -float(cfg.tags_zipf))
        cdf /= cdf[-1]

        def draw_tags(size: Any) -> np.ndarray:
            return np.minimum(np.searchsorted(cdf, r.random(size), side="right"), n_tags - 1)

        slots = draw_tags((n, m))
        for j in range(1, m):  # redraw slot j where it repeats an earlier slot (= sequential draw)
            while True:
                dup = np.flatnonzero((slots[:, j : j + 1] == slots[:, :j]).any(axis=1))
                if dup.size == 0:
                    break
                slots[dup, j] = draw_tags(dup.size)
        k = r.integers(1, m + 1, n)
        keep = np.arange(m)[None, :] < k[:, None]
        tags = np.sort(np.where(keep, slots, n_tags), axis=1)  # the row's k tags first, ascending
        tag_eff = np.append(_effects(effects_rng(r, "tags"), n_tags, cfg.tags_effect * scale), 0.0)  # n_tags = padding
        logit += tag_eff[tags].sum(axis=1) / k
        cols["tags"] = (
            pl.DataFrame({"tags": pl.Series(tags), "_k": k})
            .select(pl.col("tags").arr.to_list().list.head(pl.col("_k"))
                    .list.eval(pl.lit("t") + pl.element().cast(pl.String)))
            .to_series()
        )
        fields.append(FieldSpec("tags", "multi_hot", max_len=m))
        role("tags", cfg.tags_effect)

    # ---- numerics
    for spec in cfg.numerics:
        r = _rng(seed, "num:" + spec.name)
        z = r.standard_normal(n)
        mask = r.random(n) < spec.missing if spec.missing > 0 else np.zeros(n, dtype=bool)
        logit += np.where(mask, 0.0, spec.effect * scale * z)
        raw = spec.loc + spec.scale * z
        if spec.log:
            raw = np.exp(raw)
        raw[mask] = np.nan
        cols[spec.name] = pl.Series(spec.name, raw, nan_to_null=True)
        fields.append(FieldSpec(spec.name, "numeric"))
        role(spec.name, spec.effect)

    # ---- history: the user's items at strictly earlier timestamps, the last history_len
    if cfg.history_len > 0 and cfg.history_tail > 0:
        L = cfg.history_len
        r = _rng(seed, "history_tail")
        w = (np.arange(L + 1) + 1.0) ** -float(cfg.history_tail)
        n_u = np.sort(r.choice(L + 1, size=cfg.n_users, p=w / w.sum()))[::-1]     # longest first
        activity = np.bincount(users, minlength=cfg.n_users)
        n_u = n_u[np.argsort(np.argsort(-activity, kind="stable"), kind="stable")]  # most active: longest
        length = n_u[users]
        total = int(length.sum())
        flat_row = np.repeat(np.arange(n), length)

        def behaviours_of(c: np.ndarray) -> np.ndarray:
            """One behaviour per entry of ``c`` (a cluster): with probability ``history_focus`` an
            item of that cluster, else a popularity draw."""
            within = np.minimum((r.random(c.size) * cl_size[c]).astype(np.int64), cl_size[c] - 1)
            return np.where(r.random(c.size) < cfg.history_focus, by_cluster[cl_start[c] + within],
                            _draw(r, cfg.n_items, c.size, cfg.item_zipf))

        if cfg.history_per_row:
            # per row: its own interests (a session's), behaviours drawn from them; the label effect
            # is whether the target's cluster appears among the row's behaviours
            row_pref = r.integers(0, cfg.n_clusters, (n, cfg.user_clusters))
            hist_items = behaviours_of(row_pref[flat_row, r.integers(0, cfg.user_clusters, total)])
            same = item_cluster[hist_items] == item_cluster[items][flat_row]
            interest = np.bincount(flat_row, weights=same, minlength=n) > 0
        else:
            owner = np.repeat(np.arange(cfg.n_users), n_u)
            behaviours = behaviours_of(user_pref[owner, r.integers(0, cfg.user_clusters, owner.size)])
            u_start = np.cumsum(n_u) - n_u
            flat_pos = np.repeat(u_start[users] - (np.cumsum(length) - length), length) + np.arange(total)
            hist_items = behaviours[flat_pos]
            interest = (user_pref[users] == item_cluster[items][:, None]).any(axis=1)
        cols["history"] = _list_column("history", flat_row, hist_items, n)
        logit += cfg.history_effect * scale * interest
        fields.append(FieldSpec("history", "sequence", max_len=L, shares="item_id"))
        role("history", cfg.history_effect)
    elif cfg.history_len > 0:
        L = cfg.history_len
        by_user = np.lexsort((np.arange(n), users))  # by user, then time order (stable)
        u_s, t_s = users[by_user], ts[by_user]
        pos = np.arange(n)
        new_user = np.r_[True, u_s[1:] != u_s[:-1]]
        new_run = new_user | np.r_[True, t_s[1:] != t_s[:-1]]
        g = np.maximum.accumulate(np.where(new_user, pos, 0))  # first row of the user
        t = np.maximum.accumulate(np.where(new_run, pos, 0))  # first row of the user's same-second run
        start = np.maximum(g, t - L)
        length = t - start
        total = int(length.sum())
        flat_pos = np.repeat(start - (np.cumsum(length) - length), length) + np.arange(total)
        hist_items = items[by_user][flat_pos]
        flat_row = np.repeat(by_user, length)
        cols["history"] = _list_column("history", flat_row, hist_items, n)
        # affinity: fraction of the (visible) history in the target item's cluster
        same = item_cluster[hist_items] == item_cluster[items][flat_row]
        frac = np.bincount(flat_row, weights=same, minlength=n) / np.maximum(np.bincount(flat_row, minlength=n), 1)
        logit += cfg.history_effect * scale * frac
        fields.append(FieldSpec("history", "sequence", max_len=L, shares="item_id"))
        role("history", cfg.history_effect)

    # ---- label, split, oracle
    b = _intercept(logit, cfg.base_rate)
    p = _sigmoid(b + logit)
    label = (_rng(seed, "label").random(n) < p).astype(np.int8)
    n_train = int(round(cfg.split_fractions[0] * n))
    n_valid = int(round((cfg.split_fractions[0] + cfg.split_fractions[1]) * n)) - n_train
    code = np.zeros(n, dtype=np.int64)
    code[n_train:] = 1
    code[n_train + n_valid:] = 2
    oracle = {s: roc_auc(label[code == i], p[code == i]) for i, s in enumerate(SPLITS)}

    cols["label"] = pl.Series("label", label, dtype=pl.Int8)
    cols["split"] = pl.Series("split", np.array(SPLITS)[code], dtype=pl.String)
    cols["_p_true"] = pl.Series("_p_true", p, dtype=pl.Float64)
    frame = pl.DataFrame(cols)
    if string_cols:
        frame = frame.with_columns((pl.lit(pre) + pl.col(c).cast(pl.String)).alias(c) for c, pre in string_cols.items())
    schema = Schema(fields=tuple(fields), label="label", keys={"user": "user_id", "item": "item_id", "time": "timestamp"})
    return SyntheticData(frame=frame, schema=schema, informative=informative, oracle_auc=oracle,
                         redundant=redundant, noise=noise, config=cfg)


# ------------------------------------------------------------------------- larger than memory
def _chunk_seed(seed: int, i: int) -> int:
    """The row seed of chunk ``i`` (distinct per chunk, stable across versions and platforms)."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1)[0])


def write_synthetic_parquet(out_dir: str | Path, n_rows: int, chunk_rows: int = 100_000,
                            row_group_size: int = 16_384, seed: int = 0,
                            config: SyntheticConfig | None = None, overwrite: bool = False,
                            **overrides: Any) -> Path:
    """Write ``n_rows`` synthetic rows as a directory of parquet files, one chunk in memory at a time.

    Chunk ``i`` (``chunk_rows`` rows, the last one shorter) is ``make_synthetic`` with its own row
    seed (derived from ``(seed, i)``) but ``effects_seed=seed``, so every chunk carries the same
    planted signal (user/item/value effects, item clusters); its timestamps start
    ``i * time_span_s`` after chunk ``i - 1``'s, and its own ``split`` column holds the usual
    80/10/10 train/valid/test by time. It is written to ``part-{i:05d}.parquet`` with row groups of
    ``row_group_size`` rows. ``schema.yaml`` (the features) and ``synthetic.json`` (these
    arguments) are written last; the directory is built under a temporary name and renamed when
    complete, so a crash never leaves a half-written data set under ``out_dir``.

    Peak memory is that of one chunk (``make_synthetic`` of ``chunk_rows`` rows), independent of
    ``n_rows``. Calling it again with the same arguments reuses the existing directory; different
    arguments raise :class:`~recsys.errors.ConfigError` unless ``overwrite=True``.

    Args:
        out_dir: the directory to create.
        n_rows: total rows.
        chunk_rows: rows generated (and held in memory) at once = rows per file.
        row_group_size: parquet row-group size inside each file.
        seed: seed of the whole data set.
        config: base :class:`SyntheticConfig` (its ``n_rows``/``seed``/``effects_seed``/``start_time``
            are set per chunk); ``overrides`` replace its fields, as in :func:`make_synthetic`.
        overwrite: replace an existing directory written with other arguments.

    Returns:
        ``out_dir`` as a Path.

    >>> import tempfile, polars as pl
    >>> d = write_synthetic_parquet(tempfile.mkdtemp() + "/ds", 3_000, chunk_rows=1_000, n_users=50, n_items=40)
    >>> sorted(p.name for p in d.iterdir())[:2], pl.scan_parquet(d / "*.parquet").select(pl.len()).collect().item()
    (['part-00000.parquet', 'part-00001.parquet'], 3000)
    """
    import json
    import os
    import shutil

    out = Path(out_dir)
    for name, v in (("n_rows", n_rows), ("chunk_rows", chunk_rows), ("row_group_size", row_group_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}", where="write_synthetic_parquet")
    base = config if config is not None else SyntheticConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(SyntheticConfig)}
        if unknown:
            raise ConfigError(f"unknown options {sorted(unknown)}", where="write_synthetic_parquet",
                              fix=f"use SyntheticConfig fields: {[f.name for f in dataclasses.fields(SyntheticConfig)]}")
        base = dataclasses.replace(base, **overrides)
    meta = {"n_rows": int(n_rows), "chunk_rows": int(chunk_rows), "row_group_size": int(row_group_size),
            "seed": int(seed), "config": repr(base)}
    if out.exists():
        try:
            old = json.loads((out / "synthetic.json").read_text())
        except (OSError, ValueError):
            old = None
        if old == meta:
            return out
        if not overwrite:
            raise ConfigError("the directory exists and was not written with these arguments", where=str(out),
                              fix="pass overwrite=True, or choose another directory")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        schema = None
        for i, start in enumerate(range(0, int(n_rows), int(chunk_rows))):
            rows = min(int(chunk_rows), int(n_rows) - start)
            cfg = dataclasses.replace(base, n_rows=rows, seed=_chunk_seed(seed, i), effects_seed=int(seed),
                                      start_time=base.start_time + i * base.time_span_s)
            data = make_synthetic(cfg)
            data.frame.write_parquet(tmp / f"part-{i:05d}.parquet", row_group_size=int(row_group_size))
            schema = data.schema
            del data
        assert schema is not None
        schema.to_yaml(tmp / "schema.yaml")
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1))
        if out.exists():  # overwrite=True
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:  # another process (a DDP rank) finished first: keep its identical copy
            shutil.rmtree(tmp, ignore_errors=True)
            if not (out / "synthetic.json").is_file():
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------- feature-ranking benchmark
def _ranking_categoricals() -> tuple[CategoricalSpec, ...]:
    C = CategoricalSpec
    specs: list[CategoricalSpec] = [
        C("inf_2", 2, effect=0.4),
        C("inf_5", 5, effect=0.4, as_string=True),
        C("inf_10", 10, effect=0.4),
        C("inf_50", 50, effect=0.4, as_string=True),
        C("inf_10000", 10_000, effect=0.5, min_count=2),
        C("inf_10_copy", 10, copy_of="inf_10", copy_keep=0.7, as_string=True),
    ]
    specs += [C(f"noise_100k_{i}", 100_000, as_string=i % 2 == 1, min_count=2) for i in range(5)]
    specs += [C(f"noise_1m_{i}", 1_000_000, as_string=i % 2 == 0, min_count=2) for i in range(5)]
    specs += [C(f"noise_zipf_100k_{i}", 100_000, zipf=1.1, min_count=2, as_string=i == 0) for i in range(2)]
    specs += [C(f"noise_{k}", k, as_string=k in (10_000, 100, 5), min_count=2 if k >= 10_000 else 1)
              for k in (50_000, 10_000, 1_000, 100, 20, 10, 5, 2)]
    specs += [C(f"noise_zipf_{k}", k, zipf=1.1, as_string=k in (1_000, 10)) for k in (10_000, 1_000, 100, 10)]
    specs += [C("noise_missing_50", 1_000, missing=0.5, as_string=True),
              C("noise_missing_20", 100, missing=0.2)]
    return tuple(specs)


def feature_ranking_config(n_rows: int = 1_000_000, seed: int = 0) -> SyntheticConfig:
    """The config of the feature-ranking benchmark data (``BENCHMARKS.md``), 40 features.

    Informative (7): ``inf_2``, ``inf_5``, ``inf_10``, ``inf_50``, ``inf_10000``, ``tags``
    (multi-hot), ``num_inf``. Redundant (1): ``inf_10_copy`` (a noisy copy of ``inf_10``).
    Noise (32): ``user_id`` (100k users), ``item_id`` (10k items), 5 x cardinality 100k, 5 x 1M
    (about 630k distinct in 1M rows), 2 x Zipf over 100k, cardinalities 50k/10k/1k/100/20/10/5/2,
    Zipf over 10k/1k/100/10, ``noise_missing_50`` (cardinality 1k, 50% nulls),
    ``noise_missing_20`` (100, 20% nulls), and 4 numerics (one with 10% nulls). No history.
    """
    return SyntheticConfig(
        n_rows=n_rows, n_users=100_000, n_items=10_000, seed=seed,
        user_effect=0.0, item_effect=0.0, cluster_affinity=0.0,
        categoricals=_ranking_categoricals(),
        numerics=(
            NumericSpec("num_inf", effect=0.4, loc=3.0, scale=2.0),
            NumericSpec("num_noise_0", loc=0.0, scale=1.0),
            NumericSpec("num_noise_1", loc=0.0, scale=1.0, log=True),
            NumericSpec("num_noise_2", loc=10.0, scale=3.0, missing=0.1),
            NumericSpec("num_noise_3", loc=-1.0, scale=0.5, log=True),
        ),
        n_tags=30, max_tags=4, tags_effect=0.8,
        history_len=0, history_effect=0.0,
        base_rate=0.3,
    )


def make_feature_ranking_data(n_rows: int = 1_000_000, seed: int = 0) -> SyntheticData:
    """The feature-ranking benchmark data: ``make_synthetic(feature_ranking_config(n_rows, seed))``.

    ``informative`` / ``redundant`` / ``noise`` on the result give the ground truth for scoring a
    ranking (informative over noise should rank with AUC 1.0).
    """
    return make_synthetic(feature_ranking_config(n_rows=n_rows, seed=seed))


# ------------------------------------------------------------------------ wide-table benchmark
# 31 categoricals besides user_id / item_id: 29 small ones (2 .. 50 values) and two larger ones
# (200, 1000). Every other one carries a planted effect; the rest are noise.
_WIDE_SMALL = (2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50,
               2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 50)
_WIDE_LARGE = (200, 1000)


def wide_table_config(n_rows: int = 225_000, seed: int = 0) -> SyntheticConfig:
    """The config of the wide-table speed benchmark (issue 18): 40 fields, no sequences.

    Fields: ``user_id`` (1,000 users) and ``item_id`` (500 items), 31 more categoricals
    ``c00`` .. ``c30``: 29 with 2 to 50 values (``c00`` .. ``c28``; some Zipf-skewed, some
    strings) and ``c29`` (200 values), ``c30`` (1,000 values); 7 numerics ``n0`` .. ``n6``.
    So 33 categorical + 7 numeric = 40 fields. Planted signal: every categorical with an even
    index has a per-value effect of spread 0.3 (16 fields), ``user_id`` / ``item_id`` 0.3 each,
    numerics ``n0`` .. ``n3`` a linear effect 0.3; the rest are noise. The default
    ``n_rows`` = 225,000 gives 180,000 training rows (80/10/10 by time); tests pass a small one.

    >>> cfg = wide_table_config(n_rows=1_000)
    >>> len(cfg.categoricals) + 2, len(cfg.numerics)
    (33, 7)
    """
    cats = []
    for i, k in enumerate(_WIDE_SMALL + _WIDE_LARGE):
        cats.append(CategoricalSpec(f"c{i:02d}", k, effect=0.3 if i % 2 == 0 else 0.0,
                                    zipf=1.1 if i % 3 == 2 else None, as_string=i % 4 == 1))
    nums = tuple(NumericSpec(f"n{j}", effect=0.3 if j < 4 else 0.0, loc=float(j), scale=1.0 + j / 2,
                             log=j in (2, 5)) for j in range(7))
    return SyntheticConfig(
        n_rows=n_rows, n_users=1_000, n_items=500, seed=seed,
        user_effect=0.3, item_effect=0.3, cluster_affinity=0.0,
        categoricals=tuple(cats), numerics=nums,
        n_tags=0, history_len=0, history_effect=0.0, base_rate=0.3,
    )


def make_wide_table(n_rows: int = 225_000, seed: int = 0, **overrides: Any) -> SyntheticData:
    """The wide-table benchmark data: ``make_synthetic(wide_table_config(n_rows, seed))``.

    ``overrides`` replace further :class:`SyntheticConfig` fields (e.g. ``effect_scale``).

    >>> d = make_wide_table(n_rows=2_000)
    >>> len(d.schema.fields), d.frame.filter(pl.col("split") == "train").height
    (40, 1600)
    """
    return make_synthetic(wide_table_config(n_rows=n_rows, seed=seed), **overrides)

"""Encoders: raw column values -> integer ids / normalized floats, fitted on the train split only.

They follow scikit-learn's habits: ``fit`` returns ``self``, learned state ends in ``_``, and
``expr`` (the transform) is a pure polars expression, so a whole frame is encoded in one
``select`` without a Python loop per row. Every encoder saves to a JSON-able dict and loads back
identically (``to_dict`` / ``encoder_from_dict``).

Id conventions (the same for every id encoder):

* ``0`` is **OOV**: a value not in the vocabulary (unseen at fit time, or rarer than
  ``min_count``). Unseen values at predict time therefore never crash; they share this id.
* ``1`` is **missing** (null). Missing is a category of its own, never merged with OOV.
* ``2..`` are the kept values, ordered by descending train frequency (ties broken by the value's
  string form), so id 2 is the most frequent value. Frequency order is what the embedding
  dimension search uses to cut values into frequency blocks.

Hashing (:class:`HashEncoder`) maps a value to ``2 + h(v) mod n_buckets`` where ``h`` is the
first 8 bytes (little-endian, unsigned) of BLAKE2b (digest_size=8) of the UTF-8 bytes of the
value's string form (integers as decimal: ``17`` and ``"17"`` hash alike). The hash is in
Python's standard library and stable across versions and platforms, unlike polars'
``Expr.hash``. It is computed once per *distinct* value of a batch, not per row.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import polars as pl

from recsys.errors import DataError

OOV = 0
MISSING = 1
FIRST_ID = 2


class _BadState(ValueError):
    """An encoder state (from a checkpoint / JSON file) that cannot be what ``to_dict`` wrote."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise _BadState(what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stable_hash(value: Any, n_buckets: int) -> int:
    """Bucket of ``value`` in ``[0, n_buckets)``: BLAKE2b-64 of its UTF-8 string form, mod n."""
    digest = hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_buckets


class Vocabulary:
    """Value -> id for one categorical table, with ``min_count`` and OOV.

    >>> v = Vocabulary(min_count=2).fit(pl.Series(["a", "b", "a", "c", "b", "a"]))
    >>> v.values_, v.size
    (['a', 'b'], 4)
    >>> pl.select(v.expr(pl.lit(pl.Series(["a", "z", None])))).to_series().to_list()
    [2, 0, 1]
    """

    kind = "vocabulary"

    def __init__(self, min_count: int = 1):
        self.min_count = min_count
        self.values_: list[Any] = []
        self.counts_: list[int] = []

    def fit(self, values: pl.Series) -> "Vocabulary":
        """Count the non-null values of ``values`` (already flattened for list columns)."""
        # a fixed series name: the raw column's own name could collide with "n" / "_key" below
        counts = values.alias("value").drop_nulls().value_counts(name="n")
        counts = counts.filter(pl.col("n") >= self.min_count)
        col = counts.columns[0]
        counts = counts.with_columns(pl.col(col).cast(pl.String).alias("_key")).sort(
            ["n", "_key"], descending=[True, False]
        )
        self.values_ = counts[col].to_list()
        self.counts_ = counts["n"].to_list()
        return self

    @property
    def size(self) -> int:
        """Number of ids, including OOV and missing."""
        return len(self.values_) + FIRST_ID

    def expr(self, column: pl.Expr) -> pl.Expr:
        ids = pl.Series(np.arange(FIRST_ID, FIRST_ID + len(self.values_), dtype=np.int64))
        keys = pl.Series(self.values_)
        mapped = column.replace_strict(keys, ids, default=OOV, return_dtype=pl.Int64) if len(keys) else pl.lit(OOV, pl.Int64)
        return pl.when(column.is_null()).then(pl.lit(MISSING, pl.Int64)).otherwise(mapped)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "min_count": self.min_count, "values": self.values_, "counts": self.counts_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocabulary":
        min_count, values, counts = d["min_count"], d["values"], d["counts"]
        _require(_is_int(min_count) and min_count >= 1, f"min_count must be an integer >= 1, got {min_count!r}")
        _require(isinstance(values, list) and isinstance(counts, list) and len(values) == len(counts),
                 "values and counts must be lists of the same length")
        _require(all(_is_int(x) for x in values) or all(isinstance(x, str) for x in values),
                 "values must be all integers or all strings")
        _require(len(set(values)) == len(values), "values must be distinct")
        _require(all(_is_int(c) and c >= 0 for c in counts), "counts must be non-negative integers")
        v = cls(min_count=min_count)
        v.values_ = list(values)
        v.counts_ = list(counts)
        return v


class HashEncoder:
    """Value -> ``2 + stable_hash(value) mod n_buckets``; null -> 1. Nothing to learn.

    >>> h = HashEncoder(8).fit(pl.Series(["x"]))
    >>> h.size
    10
    """

    kind = "hash"

    def __init__(self, n_buckets: int):
        self.n_buckets = n_buckets

    def fit(self, values: pl.Series) -> "HashEncoder":
        return self

    @property
    def size(self) -> int:
        return self.n_buckets + FIRST_ID

    def _hash_series(self, s: pl.Series) -> pl.Series:
        uniq = s.drop_nulls().unique()
        buckets = [FIRST_ID + stable_hash(v, self.n_buckets) for v in uniq.to_list()]
        out = s.replace_strict(uniq, pl.Series(buckets, dtype=pl.Int64), default=MISSING, return_dtype=pl.Int64)
        return out

    def expr(self, column: pl.Expr) -> pl.Expr:
        return column.map_batches(self._hash_series, return_dtype=pl.Int64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_buckets": self.n_buckets}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HashEncoder":
        n = d["n_buckets"]
        _require(_is_int(n) and n >= 1, f"n_buckets must be an integer >= 1, got {n!r}")
        return cls(n)


class Standardizer:
    """``(x - mean) / std`` with train statistics; null -> 0 (the train mean).

    NaN and +-inf are rejected by :class:`~recsys.data.features.FeatureEncoder` before this runs.
    """

    kind = "standardize"

    def __init__(self) -> None:
        self.mean_ = 0.0
        self.std_ = 1.0

    def fit(self, values: pl.Series) -> "Standardizer":
        x = values.drop_nulls().cast(pl.Float64)
        self.mean_ = float(x.mean()) if len(x) else 0.0
        std = float(x.std()) if len(x) > 1 else 0.0
        if not (math.isfinite(self.mean_) and math.isfinite(std)):
            # sums overflowed (values near the float64 limit): the same statistics on x / max|x|
            a = x.to_numpy()
            scale = float(np.max(np.abs(a)))
            self.mean_ = float(np.mean(a / scale)) * scale
            std = float(np.std(a / scale, ddof=1)) * scale
            std = std if math.isfinite(std) else float(np.finfo(np.float64).max)
        self.std_ = std if std > 1e-12 else 1.0
        return self

    def expr(self, column: pl.Expr) -> pl.Expr:
        # clipped to float32's range, so that an extreme value (or x - mean overflowing float64)
        # stays finite
        f32 = float(np.finfo(np.float32).max)
        z = (column.cast(pl.Float64) - self.mean_) / self.std_
        z = pl.when(z.is_nan()).then(pl.lit(0.0)).otherwise(z)
        return z.clip(-f32, f32).fill_null(0.0).cast(pl.Float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean_, "std": self.std_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Standardizer":
        mean, std = d["mean"], d["std"]
        _require(_is_number(mean) and _is_number(std) and std > 0,
                 f"mean must be a finite number and std a finite number > 0, got {mean!r}, {std!r}")
        s = cls()
        s.mean_, s.std_ = float(mean), float(std)
        return s


class QuantileBucketizer:
    """Numeric -> quantile bucket id. Boundaries are the distinct train quantiles.

    Ids: 1 = missing, ``2 + k`` for bucket ``k`` (``k`` = number of boundaries strictly below
    the value... i.e. bucket ``k`` holds values in ``(b[k-1], b[k]]``). There is no OOV for
    numbers; id 0 stays unused so ids line up with the other encoders.
    """

    kind = "bucketize"

    def __init__(self, n_buckets: int = 10):
        self.n_buckets = n_buckets
        self.boundaries_: list[float] = []

    def fit(self, values: pl.Series) -> "QuantileBucketizer":
        x = values.drop_nulls().cast(pl.Float64).to_numpy()
        if len(x):
            with np.errstate(over="ignore", invalid="ignore"):  # interpolating near +-1.8e308
                qs = np.quantile(x, np.linspace(0, 1, self.n_buckets + 1)[1:-1])
            self.boundaries_ = sorted({float(q) for q in qs if math.isfinite(q)})
        return self

    @property
    def size(self) -> int:
        return len(self.boundaries_) + 1 + FIRST_ID

    def expr(self, column: pl.Expr) -> pl.Expr:
        x = column.cast(pl.Float64)
        if self.boundaries_:
            k = pl.sum_horizontal([(x > b).cast(pl.Int64) for b in self.boundaries_])
        else:
            k = pl.lit(0, pl.Int64)
        return pl.when(x.is_null()).then(pl.lit(MISSING, pl.Int64)).otherwise(k + FIRST_ID)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_buckets": self.n_buckets, "boundaries": self.boundaries_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantileBucketizer":
        n, bounds = d["n_buckets"], d["boundaries"]
        _require(_is_int(n) and n >= 2, f"n_buckets must be an integer >= 2, got {n!r}")
        _require(isinstance(bounds, list) and all(_is_number(x) for x in bounds)
                 and all(a < b for a, b in zip(bounds, bounds[1:])) and len(bounds) < n,
                 "boundaries must be fewer than n_buckets finite numbers, strictly increasing")
        b = cls(n)
        b.boundaries_ = [float(v) for v in bounds]
        return b


_ENCODERS = {c.kind: c for c in (Vocabulary, HashEncoder, Standardizer, QuantileBucketizer)}


def encoder_from_dict(d: dict[str, Any], where: str = "encoder state"):
    """Rebuild any encoder from its ``to_dict()``; a state that ``to_dict`` cannot have written (a
    corrupt or foreign checkpoint / JSON file) raises :class:`DataError` naming ``where``."""
    fix = "the checkpoint/encoder file is corrupt or was written by an incompatible recsys version"
    kind = d.get("kind") if isinstance(d, dict) else None
    if not isinstance(kind, str) or kind not in _ENCODERS:
        raise DataError(f"unknown encoder kind {kind!r}", where=where, fix=fix)
    try:
        return _ENCODERS[kind].from_dict(d)
    except KeyError as e:
        raise DataError(f"malformed {kind} encoder state: missing {e}", where=where, fix=fix) from None
    except (_BadState, TypeError, ValueError) as e:
        raise DataError(f"malformed {kind} encoder state: {e}", where=where, fix=fix) from None

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
from typing import Any

import numpy as np
import polars as pl

from recsys.errors import DataError

OOV = 0
MISSING = 1
FIRST_ID = 2


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
        v = cls(min_count=d["min_count"])
        v.values_ = list(d["values"])
        v.counts_ = list(d["counts"])
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
        return cls(d["n_buckets"])


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
        self.std_ = std if std > 1e-12 else 1.0
        return self

    def expr(self, column: pl.Expr) -> pl.Expr:
        return ((column.cast(pl.Float64) - self.mean_) / self.std_).fill_null(0.0).cast(pl.Float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean_, "std": self.std_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Standardizer":
        s = cls()
        s.mean_, s.std_ = float(d["mean"]), float(d["std"])
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
            qs = np.quantile(x, np.linspace(0, 1, self.n_buckets + 1)[1:-1])
            self.boundaries_ = sorted({float(q) for q in qs})
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
        b = cls(d["n_buckets"])
        b.boundaries_ = [float(v) for v in d["boundaries"]]
        return b


_ENCODERS = {c.kind: c for c in (Vocabulary, HashEncoder, Standardizer, QuantileBucketizer)}


def encoder_from_dict(d: dict[str, Any]):
    """Rebuild any encoder from its ``to_dict()``."""
    try:
        cls = _ENCODERS[d["kind"]]
    except KeyError:
        raise DataError(f"unknown encoder kind {d.get('kind')!r}", where="encoder state",
                        fix="the checkpoint/encoder file was written by an incompatible recsys version") from None
    return cls.from_dict(d)

"""FeatureEncoder: a whole schema's encoders, fitted on train, applied to any split.

The result of :meth:`FeatureEncoder.transform` is an :class:`EncodedSplit`: per id field a flat
``values`` array and ``offsets`` (CSR layout, the same for single ids, multi-hot lists and
sequences), one ``[N, Dn]`` float matrix for the standardized numerics, labels and user keys.
:mod:`recsys.data.batch` slices batches out of it with vectorized gathers.

>>> from recsys.schema import Schema
>>> schema = Schema.from_dict({"label": "y", "fields": [
...     {"name": "a", "kind": "categorical"}, {"name": "x", "kind": "numeric"},
...     {"name": "tags", "kind": "multi_hot"}]})
>>> df = pl.DataFrame({"a": ["u", "v", "u"], "x": [1.0, 2.0, 3.0],
...                    "tags": [["p"], [], ["p", "q"]], "y": [1, 0, 1]})
>>> enc = FeatureEncoder(schema).fit(df)
>>> split = enc.transform(df)
>>> split.ids["tags"][0].tolist(), split.ids["tags"][1].tolist()
([2, 2, 3], [0, 1, 1, 3])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.data.encoders import (
    MISSING,
    OOV,
    HashEncoder,
    QuantileBucketizer,
    Standardizer,
    Vocabulary,
    encoder_from_dict,
)
from recsys.data.missing import replace_missing
from recsys.errors import DataError
from recsys.schema import FieldSpec, Schema
from recsys.utils import atomic_write_text


@dataclass
class EncodedSplit:
    """One encoded split, columnar, ready for batching.

    Attributes:
        ids: field -> (values int64 [nnz], offsets int64 [N+1]); row i's ids are
            ``values[offsets[i]:offsets[i+1]]``.
        dense: float32 [N, Dn], standardized numerics in ``schema.dense_fields`` order.
        labels: float32 [N] (zeros when the data has no label, e.g. at predict time).
        users: int64 [N], the user key as a dense rank within this split (for grouped metrics),
            or ``None`` when the schema has no user key.
        has_labels: whether ``labels`` came from the data.
        missing_rate: field -> share of its values that were missing (null, or a declared
            ``missing_values`` placeholder): rows for single-value fields, list elements for
            multi-hot and sequence fields. A missing numeric becomes the train mean (0 after
            standardizing); a missing id becomes the table's *missing* id.
        oov_rate: id field -> share of its values unseen in training (or rarer than
            ``min_count``), mapped to the OOV id; rows or list elements as above. Hashed and
            bucketized fields have no OOV.
    """

    ids: dict[str, tuple[np.ndarray, np.ndarray]]
    dense: np.ndarray
    labels: np.ndarray
    users: np.ndarray | None
    has_labels: bool
    missing_rate: dict[str, float] = field(default_factory=dict)
    oov_rate: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _dtype_class(dtype: pl.DataType) -> str:
    """Coarse type of a column: int, float, bool, str, list[...] or other."""
    if isinstance(dtype, (pl.List, pl.Array)):
        return f"list[{_dtype_class(dtype.inner)}]"
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return "str"
    return str(dtype)


class FeatureEncoder:
    """Fits and applies every field's encoder; validates data against the schema.

    One encoder per embedding *table*: a sequence that ``shares: item_id`` uses item_id's
    vocabulary, fitted on the item ids of both fields (their frequency counts add up). Numeric
    fields get a :class:`Standardizer` or :class:`QuantileBucketizer`.

    Args:
        schema: the data's schema.
    """

    def __init__(self, schema: Schema):
        self.schema = schema
        self.encoders_: dict[str, Any] = {}
        self.dtypes_: dict[str, str] = {}

    # ----------------------------------------------------------------- checks
    def validate(self, frame: pl.DataFrame, source: str, require_label: bool = True) -> None:
        """Raise :class:`DataError` naming ``source`` and the column when ``frame`` can't be encoded."""
        cols = set(frame.columns)
        needed = [(f.source, f"schema field {f.name!r}") for f in self.schema.fields]
        if require_label:
            needed.append((self.schema.label, "the label"))
        for col, what in needed:
            if col not in cols:
                raise DataError(
                    f"column {col!r} ({what}) is missing; the file has columns {sorted(cols)}",
                    where=source,
                    fix=f"add the column, or fix the schema's name/column for {what}",
                )
        if len(frame) == 0:
            raise DataError("no rows", where=source, fix="check the file and the split column / filters")
        for f in self.schema.fields:
            self._check_field(frame, f, source)
        if require_label:
            self._check_label(frame, source)

    def _check_field(self, frame: pl.DataFrame, f: FieldSpec, source: str) -> None:
        col = frame[f.source]
        cls = _dtype_class(col.dtype)
        where = f"{source}, column {f.source!r}"
        if f.kind == "numeric":
            if cls not in ("int", "float", "bool"):
                raise DataError(f"numeric field {f.name!r} holds {col.dtype}, not numbers", where=where,
                                fix="convert the column to numbers, or declare the field categorical")
            if cls == "float":
                bad = int((col.is_nan() | col.is_infinite()).sum())
                if bad:
                    raise DataError(f"{bad} NaN/inf values in numeric field {f.name!r}", where=where,
                                    fix="replace them with nulls (treated as missing) or valid numbers")
        elif f.is_list:
            if not cls.startswith("list[") and not (cls == "str" and f.separator):
                raise DataError(f"{f.kind} field {f.name!r} needs a list column, got {col.dtype}", where=where,
                                fix="store lists (parquet) or set 'separator:' for a delimited string column")
            if cls.startswith("list[list[") or cls.startswith("list[Struct") or cls.startswith("list[Array"):
                raise DataError(f"{f.kind} field {f.name!r} holds nested values ({col.dtype}); its list elements "
                                "must be ids (integers or strings)", where=where,
                                fix="flatten the lists, or store one id per list element")
        elif cls.startswith("list["):
            raise DataError(f"categorical field {f.name!r} holds lists ({col.dtype})", where=where,
                            fix="declare it as multi_hot, or store one value per row")
        inner = col.dtype.inner if isinstance(col.dtype, (pl.List, pl.Array)) else col.dtype
        if f.kind != "numeric" and inner == pl.UInt64:
            ints = col.explode() if cls.startswith("list[") else col
            if ints.max() is not None and ints.max() > np.iinfo(np.int64).max:
                raise DataError(f"field {f.name!r} holds UInt64 ids above 2**63 - 1, which cannot be stored as ids",
                                where=where, fix="cast the column to strings (or to Int64 if values fit)")
        known = self.dtypes_.get(f.source)
        if known is not None and f.kind != "numeric" and _compatible(known, cls) is False:
            raise DataError(f"field {f.name!r} holds {cls} values but was fitted on {known}", where=where,
                            fix="give the column the same type as in the training data")

    def _check_label(self, frame: pl.DataFrame, source: str) -> None:
        label = self.schema.label
        col = frame[label]
        where = f"{source}, column {label!r}"
        if _dtype_class(col.dtype) not in ("int", "float", "bool"):
            raise DataError(f"the label must be 0/1, got type {col.dtype}", where=where,
                            fix="encode the label as 0/1 integers")
        nulls = col.null_count()
        x = col.cast(pl.Float64)
        bad = x.is_null() | ~x.is_in([0.0, 1.0])
        n_bad = int(bad.sum())
        if n_bad:
            examples = col.filter(bad).head(3).to_list()
            raise DataError(f"{n_bad} label values are not 0/1 (e.g. {examples}; {nulls} missing)", where=where,
                            fix="binarize the label (e.g. 1 if rating >= 4 else 0) and drop unlabeled rows")

    # -------------------------------------------------------------------- fit
    def _flat(self, frame: pl.DataFrame, f: FieldSpec) -> pl.Series:
        """All values of a field as one flat Series (lists exploded, truncated like transform)."""
        col = frame[f.source]
        if f.is_list:
            # empty and null lists contribute nothing; null *elements* stay (they encode as missing)
            return self._lists(col, f).explode(empty_as_null=False, keep_nulls=False)
        return col

    @staticmethod
    def _lists(col: pl.Series, f: FieldSpec) -> pl.Series:
        if f.separator and _dtype_class(col.dtype) == "str":  # String, Categorical or Enum
            # empty tokens are no values: "" is an empty list (like []), "a|" is ["a"]
            col = col.cast(pl.String).str.split(f.separator).list.eval(pl.element().filter(pl.element() != ""))
        if f.kind == "sequence":
            return col.list.tail(f.max_len)
        if f.max_len:
            return col.list.head(f.max_len)
        return col

    def fit(self, train: pl.DataFrame, source: str = "train split") -> "FeatureEncoder":
        """Fit every encoder on ``train`` (a DataFrame with the schema's columns)."""
        self.encoders_, self.dtypes_ = {}, {}
        train = replace_missing(train, self.schema, source)  # declared placeholders ("?") -> null
        self.validate(train, source)
        for f in self.schema.fields:
            self.dtypes_[f.source] = _dtype_class(train[f.source].dtype)
        for f in self.schema.fields:
            if f.kind == "numeric":
                enc = Standardizer() if f.is_dense else QuantileBucketizer(f.n_buckets)
                self.encoders_[f.name] = enc.fit(train[f.source])
        for table in self.schema.tables:
            owner = self.schema.field(table)
            if owner.kind == "numeric":
                continue
            flats = [self._normalize(self._flat(train, g)) for g in self.schema.fields_of_table(table)]
            base = flats[0]
            try:
                values = pl.concat([base] + [s.cast(base.dtype) for s in flats[1:]])
            except Exception:  # noqa: BLE001 - polars raises several types for bad casts
                raise DataError(f"fields sharing table {table!r} hold incompatible value types "
                                f"({[str(s.dtype) for s in flats]})", where=source,
                                fix="store the shared ids with one type") from None
            enc = HashEncoder(owner.hash_buckets) if owner.hash_buckets else Vocabulary(owner.min_count)
            self.encoders_[table] = enc.fit(values)
        return self

    @staticmethod
    def _normalize(s: pl.Series) -> pl.Series:
        """Integers as Int64, everything else as strings, so vocabularies compare like with like."""
        if s.dtype.is_integer():
            return s.cast(pl.Int64)
        return s.cast(pl.String)

    def encoder_of(self, f: FieldSpec):
        return self.encoders_[f.name if f.kind == "numeric" else f.table]

    @property
    def is_fitted(self) -> bool:
        return bool(self.encoders_)

    @property
    def table_sizes(self) -> dict[str, int]:
        """Embedding table name -> number of rows (ids), OOV and missing included."""
        return {t: self.encoder_of(self.schema.field(t)).size for t in self.schema.tables}

    # -------------------------------------------------------------- transform
    def transform(self, frame: pl.DataFrame, source: str = "data", require_label: bool = True) -> EncodedSplit:
        """Encode ``frame``. Unseen categories become OOV (id 0); nulls become id 1."""
        if not self.is_fitted:
            raise DataError("the feature encoder is not fitted", where=source, fix="call fit() on the train split first")
        has_label = self.schema.label in frame.columns
        frame = replace_missing(frame, self.schema, source)  # declared placeholders ("?") -> null
        self.validate(frame, source, require_label=require_label)
        n = len(frame)
        scalar = [f for f in self.schema.fields if not f.is_list]
        exprs = []
        for f in scalar:
            col = pl.col(f.source)
            if f.kind != "numeric":
                col = col.cast(pl.Int64) if frame[f.source].dtype.is_integer() else col.cast(pl.String)
            exprs.append(self.encoder_of(f).expr(col).alias(f.name))
        enc = frame.select(exprs) if exprs else pl.DataFrame()
        ids: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        one_each = np.arange(n + 1, dtype=np.int64)
        for f in self.schema.id_fields:
            if f.is_list:
                lists = self._lists(frame[f.source], f)
                lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
                flat = self._normalize(self._flat(frame, f))
                values = pl.DataFrame({"v": flat}).select(self.encoder_of(f).expr(pl.col("v"))).to_series()
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                ids[f.name] = (values.to_numpy().astype(np.int64, copy=False), offsets)
            else:
                ids[f.name] = (enc[f.name].to_numpy().astype(np.int64, copy=False), one_each)
        dense_names = [f.name for f in self.schema.dense_fields]
        dense = (enc.select(dense_names).to_numpy().astype(np.float32) if dense_names
                 else np.zeros((n, 0), dtype=np.float32))
        labels = (frame[self.schema.label].cast(pl.Float32).to_numpy() if has_label
                  else np.zeros(n, dtype=np.float32))
        user_col = self.schema.keys.get("user")
        users = None
        if user_col and user_col in frame.columns:
            # ranks start at 1; rows without a user (null key) form group 0 (a null rank would
            # turn the array into float64 with NaN)
            users = frame[user_col].rank("dense").cast(pl.Int64).fill_null(0).to_numpy()
        missing_rate: dict[str, float] = {}
        oov_rate: dict[str, float] = {}
        for f in self.schema.fields:
            if f.is_dense:
                missing_rate[f.name] = frame[f.source].null_count() / n
            else:
                values = ids[f.name][0]
                size = max(len(values), 1)  # lists with no elements at all: rates 0
                missing_rate[f.name] = int(np.count_nonzero(values == MISSING)) / size
                oov_rate[f.name] = int(np.count_nonzero(values == OOV)) / size
        return EncodedSplit(ids=ids, dense=np.ascontiguousarray(dense), labels=labels, users=users,
                            has_labels=has_label, missing_rate=missing_rate, oov_rate=oov_rate)

    # ---------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema.to_dict(),
            "dtypes": dict(self.dtypes_),
            "encoders": {k: v.to_dict() for k, v in self.encoders_.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "fitted encoders") -> "FeatureEncoder":
        """Rebuild from :meth:`to_dict`. A state it cannot have written (corrupt or foreign file)
        raises :class:`DataError` naming ``where``."""
        fix = "the checkpoint/encoder file is corrupt or was written by an incompatible recsys version"
        if not isinstance(d, dict) or not isinstance(d.get("schema"), dict) or not isinstance(d.get("encoders"), dict):
            raise DataError("expected a mapping with 'schema' and 'encoders' mappings", where=where, fix=fix)
        enc = cls(Schema.from_dict(d["schema"], source=f"{where}: schema"))
        dtypes = d.get("dtypes", {})
        if not isinstance(dtypes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in dtypes.items()):
            raise DataError("'dtypes' must map column names to type names", where=where, fix=fix)
        enc.dtypes_ = dict(dtypes)
        # exactly one encoder per numeric field and per table, of the kind its spec implies
        wanted: dict[str, str] = {}
        for f in enc.schema.fields:
            if f.kind == "numeric":
                wanted[f.name] = "standardize" if f.is_dense else "bucketize"
        for t in enc.schema.tables:
            owner = enc.schema.field(t)
            if owner.kind != "numeric":
                wanted[t] = "hash" if owner.hash_buckets else "vocabulary"
        if set(d["encoders"]) != set(wanted):
            raise DataError(f"encoders for {sorted(map(str, d['encoders']))}, but the schema needs {sorted(wanted)}",
                            where=where, fix=fix)
        encoders = {}
        for k, v in d["encoders"].items():
            e = encoder_from_dict(v, where=f"{where}: encoder {k!r}")
            owner = enc.schema.field(k)
            if e.kind != wanted[k] or (e.kind == "hash" and e.n_buckets != owner.hash_buckets) or (
                    e.kind == "bucketize" and e.n_buckets != owner.n_buckets):
                raise DataError(f"encoder {k!r} is a {e.kind} encoder that does not match its field {owner.to_dict()}",
                                where=where, fix=fix)
            encoders[k] = e
        enc.encoders_ = encoders
        return enc

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureEncoder":
        p = Path(path)
        if not p.is_file():
            raise DataError("encoder file not found", where=str(p))
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"cannot read the encoder file ({type(e).__name__})", where=str(p),
                            fix="the file is corrupt or not a FeatureEncoder JSON file") from None
        return cls.from_dict(data, where=str(p))


def _compatible(fitted: str, now: str) -> bool:
    """Whether ids of coarse type ``now`` can be looked up in a vocabulary fitted on ``fitted``.

    Vocabularies hold integers or strings (see ``FeatureEncoder._normalize``); list-ness is
    checked separately by the field kind.
    """
    def base(c: str) -> str:
        c = c[5:-1] if c.startswith("list[") else c
        return c if c in ("int", "Null") else "str"
    # an all-null column (polars dtype Null, e.g. every value missing at predict time) holds
    # nothing to look up (its nulls encode as missing), and a vocabulary fitted on one is empty
    return "Null" in (base(fitted), base(now)) or base(fitted) == base(now)


MISSING_WARN = 0.01  # a one-line warning when a field has more missing values than this share
OOV_WARN = 0.05      # ... or more values unseen in training than this share


def rates_line(rates: dict[str, float], threshold: float) -> str:
    """``"a 12.5%, b 3.0%"``: the fields above ``threshold``, highest first ("" if none)."""
    above = sorted(((r, f) for f, r in rates.items() if r > threshold), key=lambda t: (-t[0], t[1]))
    return ", ".join(f"{f} {r:.1%}" for r, f in above)


def data_warnings(split: Any, source: str, check_missing: bool = True, check_oov: bool = True) -> list[str]:
    """The one-line warnings for ``split`` (anything with ``missing_rate`` / ``oov_rate`` dicts,
    e.g. an :class:`EncodedSplit`): missing values above 1%, unseen values above 5%."""
    out = []
    if check_missing:
        line = rates_line(getattr(split, "missing_rate", None) or {}, MISSING_WARN)
        if line:
            out.append(f"recsys: warning: missing values in {source} (numeric: replaced by the train mean; "
                       f"categorical: the missing id): {line}")
    if check_oov:
        line = rates_line(getattr(split, "oov_rate", None) or {}, OOV_WARN)
        if line:
            out.append(f"recsys: warning: values unseen in training in {source} (scored as OOV): {line}")
    return out

"""Schema: which columns are features, of which kind, which is the label, which are keys.

A schema is declared in YAML and validated on load; every error names the field::

    label: label
    keys: {user: user_id, item: item_id, time: timestamp}
    fields:
      - {name: user_id, kind: categorical, min_count: 2}
      - {name: zip, kind: categorical, hash_buckets: 1000}
      - {name: genres, kind: multi_hot}                 # list column (or separator: "|")
      - {name: age, kind: numeric}                      # standardized -> dense
      - {name: price, kind: numeric, transform: bucketize, n_buckets: 20}   # -> an id field
      - {name: history, kind: sequence, shares: item_id, max_len: 50}

Field kinds:

* ``categorical``: one id per row (vocabulary with ``min_count`` and an OOV id, or hashing).
* ``multi_hot``: a list of ids per row (mean-pooled by default), e.g. genres.
* ``numeric``: a number, ``standardize``\\ d into the dense part of the batch, or ``bucketize``\\ d
  into quantile buckets that become an id field.
* ``sequence``: ordered ids, the most recent ``max_len`` kept (the last ones of the list),
  usually sharing the embedding table and vocabulary of another field (``shares: item_id``).

>>> s = Schema.from_dict({"label": "y", "fields": [{"name": "a", "kind": "categorical"}]})
>>> [f.name for f in s.id_fields]
['a']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from recsys.errors import SchemaError

Kind = Literal["categorical", "multi_hot", "numeric", "sequence"]
KINDS: tuple[str, ...] = ("categorical", "multi_hot", "numeric", "sequence")
KEY_ROLES: tuple[str, ...] = ("user", "item", "time")


@dataclass(frozen=True)
class FieldSpec:
    """One feature.

    Attributes:
        name: feature name; also its key in the batch's KeyedJaggedTensor.
        kind: ``categorical``, ``multi_hot``, ``numeric`` or ``sequence``.
        column: raw data column (defaults to ``name``).
        embedding_dim: this field's embedding width; ``None`` takes the model's default.
        min_count: values seen fewer times in the train split map to OOV.
        hash_buckets: hash values into this many buckets instead of keeping a vocabulary
            (for very high cardinality; see :mod:`recsys.data.encoders` for the hash).
        max_len: sequences keep their last ``max_len`` ids; multi-hot lists are truncated to it.
        shares: use the embedding table *and vocabulary* of this categorical field.
        separator: split a string column on this separator (multi_hot / sequence).
        transform: numeric only, ``standardize`` (dense) or ``bucketize`` (id).
        n_buckets: number of quantile buckets for ``bucketize``.
        pooling: how multi-hot ids are pooled, ``mean`` or ``sum``.
        missing_values: raw values that stand for "missing" in this column (e.g. ``["?"]``,
            ``["NA", ""]``): encoders map them to the missing id and the feature ranking counts
            them as missing. ``None`` takes the schema-wide ``missing_values``. Compared with the
            value's string form (``-1`` matches the integer -1); a numeric field stored as
            strings because of such tokens is read as numbers once they are removed.
    """

    name: str
    kind: Kind
    column: str | None = None
    embedding_dim: int | None = None
    min_count: int = 1
    hash_buckets: int | None = None
    max_len: int | None = None
    shares: str | None = None
    separator: str | None = None
    transform: Literal["standardize", "bucketize"] = "standardize"
    n_buckets: int = 10
    pooling: Literal["mean", "sum"] = "mean"
    missing_values: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.missing_values, list):  # frozen: lists from code/YAML become tuples
            object.__setattr__(self, "missing_values", _tokens(self.missing_values))

    @property
    def source(self) -> str:
        """The raw column this field reads."""
        return self.column or self.name

    @property
    def is_dense(self) -> bool:
        """True for standardized numerics (they go to ``Batch.dense``)."""
        return self.kind == "numeric" and self.transform == "standardize"

    @property
    def is_list(self) -> bool:
        """True when a row holds a variable number of ids."""
        return self.kind in ("multi_hot", "sequence")

    @property
    def table(self) -> str:
        """Name of the embedding table (and vocabulary) this field uses."""
        return self.shares or self.name

    def to_dict(self) -> dict[str, Any]:
        """Only the non-default attributes, for a compact YAML."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        for f in dataclasses.fields(self):
            if f.name in ("name", "kind"):
                continue
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_FIELD_ATTRS = {f.name for f in dataclasses.fields(FieldSpec)}


def _tokens(values: list[Any]) -> Any:
    """YAML ``missing_values`` as a tuple of strings (numbers by their string form, ``-1`` -> ``"-1"``);
    anything else is returned unchanged for validation to reject."""
    if all(isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        return tuple(v if isinstance(v, str) else str(v) for v in values)
    return tuple(values)


@dataclass(frozen=True)
class Schema:
    """Features, label and key roles of a data set.

    Attributes:
        fields: the features, in a fixed order (the order of the KJT keys and dense columns).
        label: the 0/1 label column.
        keys: role -> column for ``user``, ``item``, ``time`` (any subset). The user key feeds
            grouped metrics (GAUC), the time key orders sequences and splits.
        missing_values: placeholders that mean "missing" in every field that declares none of
            its own (``missing_values: ["?"]`` at the top of the YAML); see
            :meth:`missing_of`.
    """

    fields: tuple[FieldSpec, ...]
    label: str = "label"
    keys: dict[str, str] = field(default_factory=dict)
    missing_values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.missing_values, list):
            object.__setattr__(self, "missing_values", _tokens(self.missing_values))
        self._validate()

    # ------------------------------------------------------------------ views
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def missing_of(self, f: FieldSpec) -> tuple[str, ...]:
        """The placeholders that mean missing in field ``f``: its own, else the schema-wide ones."""
        return self.missing_values if f.missing_values is None else f.missing_values

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise SchemaError(f"no field named {name!r}; fields are {self.names}", where=f"schema field {name!r}")

    @property
    def dense_fields(self) -> list[FieldSpec]:
        """Standardized numeric fields, in order: the columns of ``Batch.dense``."""
        return [f for f in self.fields if f.is_dense]

    @property
    def id_fields(self) -> list[FieldSpec]:
        """Fields that become ids in the KeyedJaggedTensor (everything but standardized numerics)."""
        return [f for f in self.fields if not f.is_dense]

    @property
    def sequence_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind == "sequence"]

    @property
    def tables(self) -> list[str]:
        """Embedding table names, in field order; a shared table appears once."""
        out: list[str] = []
        for f in self.id_fields:
            if f.table not in out:
                out.append(f.table)
        return out

    def fields_of_table(self, table: str) -> list[FieldSpec]:
        return [f for f in self.id_fields if f.table == table]

    @property
    def source_columns(self) -> list[str]:
        """Every raw column the schema reads: features, label and keys, without repeats."""
        cols: list[str] = []
        for c in [f.source for f in self.fields] + [self.label] + list(self.keys.values()):
            if c not in cols:
                cols.append(c)
        return cols

    def select(self, names: list[str]) -> "Schema":
        """A schema with only the named fields (plus fields whose tables they share)."""
        keep = set(names)
        for n in names:
            f = self.field(n)
            if f.shares:
                keep.add(f.shares)
        return dataclasses.replace(self, fields=tuple(f for f in self.fields if f.name in keep))

    # ------------------------------------------------------------- validation
    @staticmethod
    def _check_types(f: FieldSpec) -> None:
        """Attribute types, checked before anything hashes or compares them."""
        if not isinstance(f, FieldSpec):
            raise SchemaError(f"expected FieldSpec objects, got {type(f).__name__}", where="schema")
        if not isinstance(f.name, str) or not f.name:
            raise SchemaError(f"a field has no name or a non-string name ({f.name!r})", where="schema",
                              fix="give every field a 'name:' string")
        where = f"schema field {f.name!r}"
        for attr in ("kind", "transform", "pooling"):
            if not isinstance(getattr(f, attr), str):
                raise SchemaError(f"{attr} must be a string, got {getattr(f, attr)!r}", where=where)
        for attr in ("column", "shares", "separator"):
            v = getattr(f, attr)
            if v is not None and (not isinstance(v, str) or not v):
                raise SchemaError(f"{attr} must be a non-empty string, got {v!r}", where=where)
        mv = f.missing_values
        if mv is not None and (not isinstance(mv, tuple) or not all(isinstance(t, str) for t in mv)):
            raise SchemaError(f"missing_values must be a list of strings, got {mv!r}", where=where,
                              fix='e.g. missing_values: ["?", "NA"] (numbers as strings: ["-1"])')
        for attr in ("embedding_dim", "min_count", "hash_buckets", "max_len", "n_buckets"):
            v = getattr(f, attr)
            if isinstance(v, bool) or (v is not None and not isinstance(v, int)):
                raise SchemaError(f"{attr} must be an integer, got {v!r}", where=where)

    def _validate(self) -> None:
        seen: set[str] = set()
        if not isinstance(self.fields, tuple):
            raise SchemaError("fields must be a tuple of FieldSpec", where="schema")
        for f in self.fields:
            self._check_types(f)
        by_name = {f.name: f for f in self.fields}
        if not self.fields:
            raise SchemaError("the schema declares no fields", where="schema", fix="list at least one field under 'fields:'")
        for f in self.fields:
            where = f"schema field {f.name!r}"
            if f.name in seen:
                raise SchemaError("declared twice", where=where, fix="give each field a unique name")
            seen.add(f.name)
            if f.kind not in KINDS:
                raise SchemaError(f"unknown kind {f.kind!r}", where=where, fix=f"use one of {list(KINDS)}")
            if f.embedding_dim is not None and (not isinstance(f.embedding_dim, int) or f.embedding_dim < 1):
                raise SchemaError(f"embedding_dim must be a positive integer, got {f.embedding_dim!r}", where=where)
            if not isinstance(f.min_count, int) or f.min_count < 1:
                raise SchemaError(f"min_count must be an integer >= 1, got {f.min_count!r}", where=where)
            if f.hash_buckets is not None and (not isinstance(f.hash_buckets, int) or f.hash_buckets < 2):
                raise SchemaError(f"hash_buckets must be an integer >= 2, got {f.hash_buckets!r}", where=where)
            if f.kind == "sequence":
                if not isinstance(f.max_len, int) or f.max_len < 1:
                    raise SchemaError("a sequence needs max_len (a positive integer)", where=where,
                                      fix="add e.g. 'max_len: 50'")
            elif f.max_len is not None and f.kind != "multi_hot":
                raise SchemaError(f"max_len applies to sequence/multi_hot fields, not {f.kind}", where=where)
            elif f.max_len is not None and f.max_len < 1:
                raise SchemaError(f"max_len must be a positive integer, got {f.max_len!r}", where=where)
            if f.kind == "numeric":
                if f.transform not in ("standardize", "bucketize"):
                    raise SchemaError(f"unknown transform {f.transform!r}", where=where,
                                      fix="use 'standardize' or 'bucketize'")
                if f.transform == "bucketize" and (not isinstance(f.n_buckets, int) or f.n_buckets < 2):
                    raise SchemaError(f"n_buckets must be an integer >= 2, got {f.n_buckets!r}", where=where)
                if f.hash_buckets is not None or f.shares or f.separator:
                    raise SchemaError("hash_buckets/shares/separator do not apply to numeric fields", where=where)
            if f.pooling not in ("mean", "sum"):
                raise SchemaError(f"unknown pooling {f.pooling!r}", where=where, fix="use 'mean' or 'sum'")
            if f.shares is not None:
                if f.shares == f.name:
                    raise SchemaError("a field cannot share its own table", where=where)
                owner = by_name.get(f.shares)
                if owner is None:
                    raise SchemaError(f"shares the table of {f.shares!r}, which is not a field", where=where,
                                      fix=f"declare {f.shares!r} as a categorical field or remove 'shares'")
                if owner.kind != "categorical" or owner.shares is not None:
                    raise SchemaError(f"can only share the table of a categorical field that owns its table; "
                                      f"{f.shares!r} is {owner.kind}", where=where)
                if f.hash_buckets is not None or f.min_count != 1:
                    raise SchemaError("a field that shares a table uses that table's vocabulary; drop "
                                      "hash_buckets/min_count here and set them on the owner", where=where)
        if not isinstance(self.label, str) or not self.label:
            raise SchemaError(f"the label column is not set or not a string ({self.label!r})", where="schema",
                              fix="add 'label: <column>'")
        mv = self.missing_values
        if not isinstance(mv, tuple) or not all(isinstance(t, str) for t in mv):
            raise SchemaError(f"missing_values must be a list of strings, got {mv!r}", where="schema",
                              fix='e.g. missing_values: ["?", "NA"] (numbers as strings: ["-1"])')
        if not isinstance(self.keys, dict):
            raise SchemaError("keys must map roles (user, item, time) to columns", where="schema keys")
        if self.label in by_name or self.label in {f.source for f in self.fields}:
            raise SchemaError(f"the label {self.label!r} is also declared as a feature", where="schema",
                              fix="remove it from 'fields:' (that would leak the label)")
        for role, col in self.keys.items():
            if not isinstance(role, str) or role not in KEY_ROLES:
                raise SchemaError(f"unknown key role {role!r}", where="schema keys", fix=f"use {list(KEY_ROLES)}")
            if not isinstance(col, str) or not col:
                raise SchemaError(f"key {role!r} must name a column", where="schema keys")

    # -------------------------------------------------------------- round-trip
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "Schema":
        """Build and validate a schema from a plain dict (as parsed from YAML)."""
        where = source or "schema"
        if not isinstance(data, dict):
            raise SchemaError("expected a mapping with 'fields', 'label' and optional 'keys'", where=where)
        unknown = set(data) - {"fields", "label", "keys", "missing_values"}
        if unknown:
            raise SchemaError(f"unknown top-level keys {sorted(unknown)}", where=where,
                              fix="allowed keys are 'fields', 'label', 'keys', 'missing_values'")
        raw_fields = data.get("fields")
        if not isinstance(raw_fields, list):
            raise SchemaError("'fields' must be a list of field mappings", where=where)
        specs = []
        for i, raw in enumerate(raw_fields):
            if not isinstance(raw, dict) or "name" not in raw or "kind" not in raw:
                raise SchemaError(f"field #{i} must be a mapping with at least 'name' and 'kind'", where=where)
            bad = set(raw) - _FIELD_ATTRS
            if bad:
                raise SchemaError(f"unknown attributes {sorted(bad)}", where=f"{where}: field {raw['name']!r}",
                                  fix=f"allowed attributes are {sorted(_FIELD_ATTRS)}")
            specs.append(FieldSpec(**raw))
        keys = data.get("keys") or {}
        if not isinstance(keys, dict):
            raise SchemaError("'keys' must map roles (user, item, time) to columns", where=where)
        try:
            return cls(fields=tuple(specs), label=data.get("label", "label"), keys=dict(keys),
                       missing_values=data.get("missing_values", ()))
        except SchemaError as e:
            if source:
                raise SchemaError(e.message, where=f"{source}: {e.where}" if e.where else source, fix=e.fix) from None
            raise

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Schema":
        """Load and validate a schema YAML file."""
        p = Path(path)
        if not p.is_file():
            raise SchemaError("schema file not found", where=str(p), fix="check the path")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise SchemaError(f"not valid YAML ({e})", where=str(p)) from None
        return cls.from_dict(data, source=str(p))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label}
        if self.keys:
            out["keys"] = dict(self.keys)
        if self.missing_values:
            out["missing_values"] = list(self.missing_values)
        out["fields"] = [f.to_dict() for f in self.fields]
        return out

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from recsys.utils import atomic_write_text

            atomic_write_text(path, text)
        return text

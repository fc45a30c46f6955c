"""Placeholders that stand for missing values (``missing_values:`` in the schema) -> null.

A schema may declare, globally or per field, raw values that mean "missing" (``"?"``,
``"NA"``, ``"-1"``...). :func:`replace_missing` turns them into nulls before anything else reads
the column, so the encoders give them the missing id (1) and the feature ranker counts them as
missing. Tokens are strings compared with the value's string form: in a string column the value
itself, in an integer / float column the tokens that parse as numbers, in a list column each
element. A numeric field whose column holds strings only because of such tokens (``"?"`` among
numbers in a CSV) becomes a Float64 column once they are gone.

>>> import polars as pl
>>> from recsys.schema import Schema
>>> s = Schema.from_dict({"label": "y", "missing_values": ["?"],
...                       "fields": [{"name": "w", "kind": "categorical"}, {"name": "x", "kind": "numeric"}]})
>>> df = pl.DataFrame({"w": ["a", "?", "b"], "x": ["1.5", "?", "2"], "y": [0, 1, 0]})
>>> replace_missing(df, s).rows()
[('a', 1.5, 0), (None, None, 1), ('b', 2.0, 0)]
"""

from __future__ import annotations

from typing import Any

import polars as pl

from recsys.errors import DataError
from recsys.schema import Schema

__all__ = ["missing_expr", "replace_missing", "PLACEHOLDERS"]

# tokens that often stand for "missing"; the data-quality report flags undeclared ones
PLACEHOLDERS: tuple[str, ...] = ("?", "", "NA", "N/A", "null", "none", "unknown", "-")


def _numbers(tokens: tuple[str, ...], integer: bool) -> list[Any]:
    out: list[Any] = []
    for t in tokens:
        try:
            v = float(t)
        except ValueError:
            continue
        if integer:
            if v.is_integer():
                out.append(int(v))
        elif v == v:  # NaN is missing already
            out.append(v)
    return out


def missing_expr(name: str, dtype: pl.DataType, tokens: tuple[str, ...], numeric: bool = False) -> pl.Expr | None:
    """An expression of column ``name`` (of ``dtype``) with ``tokens`` replaced by null (``None``:
    nothing to replace). ``numeric``: the column feeds a numeric field, so a string column is cast
    to Float64 afterwards (non-numbers then become null; :func:`replace_missing` reports them)."""
    if not tokens:
        return None
    col = pl.col(name)
    if isinstance(dtype, (pl.List, pl.Array)):
        inner = dtype.inner
        el = pl.element()
        if inner == pl.String or isinstance(inner, (pl.Categorical, pl.Enum)):
            hit = el.cast(pl.String).is_in(list(tokens))
        elif inner.is_numeric():
            vals = _numbers(tokens, inner.is_integer())
            if not vals:
                return None
            hit = el.is_in(vals)
        else:
            return None
        lst = col.arr.to_list() if isinstance(dtype, pl.Array) else col
        return lst.list.eval(pl.when(hit).then(None).otherwise(el)).alias(name)
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        s = col.cast(pl.String)
        out = pl.when(s.is_in(list(tokens))).then(None).otherwise(s if numeric else col)
        if numeric:
            out = out.str.strip_chars().cast(pl.Float64, strict=False)
        return out.alias(name)
    if dtype.is_numeric():
        vals = _numbers(tokens, dtype.is_integer())
        if not vals:
            return None
        return pl.when(col.is_in(vals)).then(None).otherwise(col).alias(name)
    return None


def replace_missing(frame: pl.DataFrame, schema: Schema, source: str = "data") -> pl.DataFrame:
    """``frame`` with every field's declared placeholders replaced by null (columns the schema does
    not read are untouched). A numeric field stored as strings must hold numbers once its
    placeholders are gone; otherwise :class:`DataError` names ``source``, the column and examples."""
    tokens: dict[str, list[str]] = {}
    numeric: dict[str, bool] = {}
    for f in schema.fields:
        t = schema.missing_of(f)
        if t and f.source in frame.columns:
            tokens.setdefault(f.source, [])
            tokens[f.source] += [x for x in t if x not in tokens[f.source]]
            numeric[f.source] = numeric.get(f.source, False) or f.kind == "numeric"
    exprs = []
    for c, t in tokens.items():
        e = missing_expr(c, frame.schema[c], tuple(t), numeric[c])
        if e is not None:
            exprs.append(e)
    if not exprs:
        return frame
    out = frame.with_columns(exprs)
    for c, is_num in numeric.items():
        if is_num and frame.schema[c] == pl.String:
            before = frame[c].str.strip_chars()
            bad = out[c].is_null() & before.is_not_null() & ~before.is_in(tokens[c]) & (before != "")
            if bad.any():
                ex = frame[c].filter(bad).unique(maintain_order=True).head(3).to_list()
                raise DataError(f"numeric column {c!r} holds {int(bad.sum())} values that are neither numbers nor "
                                f"declared missing_values {tokens[c]} (e.g. {ex})", where=f"{source}, column {c!r}",
                                fix="add them to the field's missing_values, or fix the data")
    return out

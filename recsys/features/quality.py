"""Data-quality report from the feature ranker's counting pass (no extra read of the data).

Per column: kind, cardinality (distinct non-missing values), missing share and coverage, the top
values with their shares, entropy, and flags:

* ``constant``: one category at most (missing counts as a category);
* ``near_constant``: the most frequent category covers ``>= near_constant`` of the rows (0.99);
* ``mostly_missing``: missing in ``>= mostly_missing`` of the rows (0.5);
* ``id_like``: distinct values ``>= id_like`` (0.5) x non-missing rows, with at least
  ``id_like_min_distinct`` (100) distinct values: keys, timestamps, hashes; their plain MI is
  large and meaningless;
* ``duplicate_of``: columns that induce the **same partition of the rows** up to relabelling
  (``"a"/"b"`` in one column where the other has ``1/2``, missing matched to a category like any
  value). Detected from a 128-bit fingerprint of each column's codes (values numbered in order of
  first appearance: equal row by row exactly for equal partitions): two random linear hashes of
  the code vector, equal for equal partitions, distinct otherwise with overwhelming probability;
* ``placeholder``: values that usually stand for "missing" (``"?"``, ``""``, ``"NA"``,
  ``"N/A"``, ``"null"``, ``"none"``, ``"unknown"``, ``"-"``; compared stripped and
  case-insensitively; each holding at least 0.1% of the rows) cover more than ``placeholder`` (5%)
  of a string column's rows and are
  *not* declared as ``missing_values`` in the schema, so they are counted as an ordinary value.
  The column's entry lists them (``placeholders``) with the ``fix``: declare them;
* ``suspected_leak``: corrected MI ``>= leak * H(label)`` (0.8): the column determines the label
  nearly completely; check it is known at prediction time.

>>> import polars as pl
>>> from recsys.features.ranking import FeatureRanker
>>> df = pl.DataFrame({"a": ["x", "y"] * 50, "b": [1, 2] * 50, "label": [0, 1] * 50})
>>> rep = FeatureRanker(label="label").fit(df).quality_
>>> rep["columns"]["a"]["duplicate_of"], rep["columns"]["a"]["suspected_leak"]
(['b'], True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from recsys.data.missing import PLACEHOLDERS

__all__ = ["QualityThresholds", "quality_report"]


@dataclass(frozen=True)
class QualityThresholds:
    """Flag thresholds of the data-quality report (shares of rows unless said otherwise)."""

    near_constant: float = 0.99
    mostly_missing: float = 0.5
    id_like: float = 0.5
    id_like_min_distinct: int = 100
    leak: float = 0.8
    top_values: int = 5
    placeholder: float = 0.05


def quality_report(ranker: Any, t: QualityThresholds) -> dict[str, Any]:
    """Build the report (a JSON-ready dict) from a fitted :class:`~recsys.features.ranking.FeatureRanker`'s
    per-column state (``_cols``: the counted :class:`~recsys.features.counting._Column`\ s, ``ranking_``,
    ``n_rows_``, ``label_entropy_``, ``label_name_``, ``classes_``, ``class_counts_``). This module
    imports neither: the ranker imports it."""
    n = ranker.n_rows_
    h_y = ranker.label_entropy_
    by_fp: dict[tuple[int, bytes], list[str]] = {}
    for name, c in ranker._cols.items():
        by_fp.setdefault((c.card, c.fingerprint), []).append(name)
    ranking = {r["feature"]: r for r in ranker.ranking_.iter_rows(named=True)}
    columns: dict[str, Any] = {}
    flagged: dict[str, list[str]] = {k: [] for k in ("constant", "near_constant", "mostly_missing", "id_like",
                                                     "duplicated", "suspected_leak", "placeholder")}
    for name, c in ranker._cols.items():
        a = c.n
        null = c.null_index
        n_missing = int(a[null]) if null is not None else 0
        distinct = c.card - (1 if null is not None else 0)
        top = _top(a, t.top_values)
        top_vals = c.decode(top) if top.size else []
        top_share = float(a[top[0]] / n) if top.size else 1.0
        non_missing = n - n_missing
        r = ranking[name]
        dup = [o for o in by_fp[(c.card, c.fingerprint)] if o != name]
        flags = {
            "constant": c.card <= 1,
            "near_constant": c.card > 1 and top_share >= t.near_constant,
            "mostly_missing": n_missing / n >= t.mostly_missing,
            "id_like": distinct >= t.id_like_min_distinct and non_missing > 0 and distinct >= t.id_like * non_missing,
            "suspected_leak": h_y > 0 and r["mi_corrected"] >= t.leak * h_y,
        }
        for k, v in flags.items():
            if v:
                flagged[k].append(name)
        if dup:
            flagged["duplicated"].append(name)
        ph = _placeholders(c, a, n)
        ph_share = sum(p["share"] for p in ph)
        if ph_share > t.placeholder:
            flagged["placeholder"].append(name)
        columns[name] = {
            "column": c.source, "kind": c.kind, "cardinality": distinct, "missing": n_missing,
            "missing_share": n_missing / n, "coverage": 1 - n_missing / n, "entropy": r["entropy"],
            "top_values": [{"value": _plain(v), "count": int(a[i]), "share": float(a[i] / n)}
                           for v, i in zip(top_vals, top.tolist())],
            "top_share": top_share, **flags, "duplicate_of": dup,
            "mi": r["mi"], "mi_corrected": r["mi_corrected"],
        }
        if c.kind == "numeric":
            columns[name]["bin_boundaries"] = [float(b) for b in c.boundaries]
        if ph:
            columns[name]["placeholders"] = ph
        if ph_share > t.placeholder:
            toks = ", ".join(f'"{p["value"]}"' for p in ph)
            columns[name]["placeholder"] = True
            what = "looks like a missing-value placeholder" if len(ph) == 1 else "look like missing-value placeholders"
            columns[name]["fix"] = (f"{toks} {what} ({ph_share:.1%} of the rows), counted as an ordinary value; "
                                    f"declare {'it' if len(ph) == 1 else 'them'} in the schema: missing_values: "
                                    f"[{toks}] on field {name!r} (or at the top for every field)")
    return {"n_rows": n, "label": {"column": ranker.label_name_, "entropy": h_y,
                                    "classes": {str(k): int(v) for k, v in zip(ranker.classes_, ranker.class_counts_)}},
            "thresholds": asdict(t), "flagged": flagged, "columns": columns}


def _placeholders(c: Any, a: np.ndarray, n: int) -> list[dict[str, Any]]:
    """A string column's values that look like missing-value placeholders, most frequent first."""
    v = getattr(c, "values", None)
    if c.kind != "categorical" or v is None or not len(v):
        return []
    if isinstance(v.dtype, (pl.Categorical, pl.Enum)):
        v = v.cast(pl.String)
    if v.dtype != pl.String:
        return []
    # only values holding >= 0.1% of the rows can matter (at most 1,000 of them): an id-like
    # column's 600k distinct strings are not lower-cased one by one
    cand = np.flatnonzero(a[:len(v)] * 1000 >= n)
    if not cand.size:
        return []
    vals = v.gather(pl.Series(cand, dtype=pl.Int64))
    hit = cand[vals.str.strip_chars().str.to_lowercase().is_in([p.lower() for p in PLACEHOLDERS])
               .fill_null(False).to_numpy()]
    out = [{"value": v[int(i)], "count": int(a[i]), "share": float(a[i] / n)} for i in hit]
    return sorted(out, key=lambda p: -p["count"])


def _top(a: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest counts, ties by index: ``np.argsort(-a, kind="stable")[:k]``
    without sorting everything."""
    if k <= 0 or a.size <= k:
        return np.argsort(-a, kind="stable")[:max(k, 0)]
    top = int(a.max())
    if top <= 4 * a.size + 1024:  # the k-th largest count from the counts' histogram (no partial sort)
        at_least = np.cumsum(np.bincount(a, minlength=top + 1)[::-1])  # at_least[j]: counts >= top - j
        kth = top - int(np.searchsorted(at_least, k))
    else:
        kth = np.partition(a, a.size - k)[a.size - k]  # the k-th largest count
    above = np.flatnonzero(a > kth)
    tied = np.flatnonzero(a == kth)[: k - above.size]
    cand = np.concatenate([above, tied])
    return cand[np.argsort(-a[cand], kind="stable")]


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    return str(v)

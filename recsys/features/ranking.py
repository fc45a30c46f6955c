"""Feature ranking by cardinality-normalized mutual information (OutRank), with 3MR and pairs.

Fit a :class:`FeatureRanker` on a polars DataFrame / LazyFrame or a parquet / CSV path and a label
column; ``fit`` returns the ranker and its ``ranking_`` is a polars DataFrame::

    >>> import polars as pl
    >>> df = pl.DataFrame({"a": [0, 0, 1, 1] * 50, "noise": list(range(200)), "label": [0, 0, 1, 1] * 50})
    >>> r = FeatureRanker(label="label", n_permutations=3).fit(df)
    >>> r.ranking_["feature"].to_list()
    ['a', 'noise']
    >>> round(r.ranking_["mi"][0], 4)   # = H(label) = ln 2
    0.6931

Heuristics (``heuristic=``):

* ``mi``: plain plug-in mutual information ``I(f; y)`` in nats, from exact counts. Biased upwards
  by about ``(|f| - 1)(|y| - 1) / 2N``: high-cardinality noise (ids) ranks first. For contrast.
* ``mi-cardinality`` (default): ``I(f; y)`` minus the MI that a column with the *same values and
  value counts* gets by chance, i.e. under a uniformly random relabelling of the rows (the
  permutation model; OutRank's "noise produced by features of the same cardinality"). Two
  estimates of that chance MI are computed on every fit:

  - ``chance_mi_mean`` / ``chance_mi_std``: the mean and standard deviation of ``I(f; y_pi)``
    over ``n_permutations`` seeded random permutations ``pi`` of the label (default 5);
  - ``emi``: the closed-form expectation under the same model (the hypergeometric "expected
    mutual information" of adjusted MI, Vinh et al. 2010), exact and deterministic, computed from
    the marginal counts only.

  ``correction="permutation"`` (default) subtracts the permutation mean; ``"expected"``
  subtracts ``emi``. **Why the permutation estimate is the default**: it is the definition OutRank
  uses (its randomized background), it comes with a spread, so every score has a z-score
  (``z = (mi - chance_mi_mean) / chance_mi_std``) and the default feature selection keeps the
  features whose MI is significant (``z >= 3``), and the same estimator serves all three 3MR terms
  (feature-feature redundancy included), where the closed form's cost grows with the product of
  the two columns' numbers of distinct value counts. ``emi`` is always reported next to it; the two
  agree to within about ``chance_mi_std / sqrt(n_permutations)`` (tested), so users who want a
  deterministic, noise-free correction pick ``"expected"``.
* ``3mr``: OutRank's extension of mRMR: greedy selection by
  ``relevance(f) - alpha * agg_{s in S} redundancy(s, f) + beta * agg_{s in S} relation(s, f)``
  with ``agg`` the median (``mean``/``sum`` configurable), where relevance is the corrected
  ``I(f; y)``, redundancy the corrected ``I(f; s)`` and relation the corrected ``I(f (+) s; y)``
  of the pair's combination; each of the three score sets is min-max normalized to ``[0, 1]``
  separately. Only the ``pair_top_k`` most relevant features take part (default 20); the rest
  follow in relevance order.

Pairs (``pairs=True`` or ``heuristic="3mr"``): for the ``pair_top_k`` most relevant features,
``pairs_`` holds every pair's combined MI with the label (plain and corrected) and the pair's
redundancy (plain and corrected ``I(a; b)``); ``redundancy_`` is the feature x feature matrix of the
corrected redundancy (diagonal: the feature's entropy). A pair's combination is the exact integer
``code_a * card_b + code_b`` of the two columns' dense codes: no collisions, unlike string
concatenation (``"1" + "23"`` vs ``"12" + "3"``). Pair terms always use the permutation correction
(``pair_permutations`` seeded permutations of the label / of the second column, default 1).

Counting and memory
-------------------
Counts are exact over **all rows** (or over an explicit ``sample`` of rows), streamed in batches
of ``batch_size`` rows. Per batch, each column's values become dense codes ``0, 1, ...`` (in order
of first appearance) through a running dictionary kept with numpy: a direct lookup table for
integers in a small range, else an open-addressing hash table keyed by the integer itself or,
for strings, multi-hot sets and other types, by two independent 64-bit hashes (a 128-bit key).
The codes are then counted with ``np.bincount`` against the label and its permutations: one
bincount over ``code x joint label pattern`` for columns with few values, otherwise bincounts whose
float64 weights pack the row count and the label indicators bit-field by bit-field (exact: every
packed sum stays below ``2**53``). The running per-value arrays (count, label counts, permuted
label counts, first row, sum of a 64-bit hash of its rows) grow as new values appear and are
added to in place. Memory grows with distinct values (about ``(3 + K (C - 1)) * 4 + 8`` bytes per
distinct value and column for the counts, plus the dictionary, ~50 bytes, and the value itself),
not with rows; the batch itself adds ``batch_size`` rows of the input columns (two batches while
the next one is read). Columns are counted in ``n_threads`` parallel threads.

The label permutations are exact *global* permutations generated while streaming: knowing the
class counts (a cheap pre-pass over the label column), each batch draws how many rows of each
class it receives from the multivariate hypergeometric distribution of what is left, then shuffles
them. That is exactly a uniformly random arrangement of the label multiset over all rows, so no
row-level label vector is kept. (Results depend on ``seed`` and on ``batch_size``; the same input,
seed and batch size give identical results, whether the data is a DataFrame, a LazyFrame or a
file, and with any ``n_threads``. Plain MI, ``emi`` and the quality report do not depend on
``batch_size``.)

The pair pass (only with pairs / 3MR) re-reads the ``pair_top_k`` candidate columns and keeps
their dense codes as int32 per row: ``pair_top_k * rows * 4`` bytes (80 MB for 20 features x 1M
rows), plus the label.

Column kinds
------------
Without a schema: floating-point and temporal columns are **numeric**, list columns
**multi-hot**, everything else (integers, strings, booleans, categoricals) **categorical**. With a
:class:`~recsys.schema.Schema` the fields' kinds apply (``numeric`` fields with
``transform: bucketize`` use their ``n_buckets``; ``sequence`` fields are treated as multi-hot).

* numeric: binned into ``n_bins`` quantile bins (boundaries: the distinct ``k / n_bins``
  quantiles of all rows, "nearest" interpolation; bin ``i`` holds ``(b[i-1], b[i]]``); NaN is
  missing. **Heavy values** -- a value holding at least ``1 / n_bins`` of the non-missing rows,
  e.g. the zeros of a zero-inflated column (capital gains: 92% zeros) -- get a bin of their own
  (boundaries ``nextafter(v, -inf)`` and ``v``), and the other values are cut into
  ``n_bins - (number of heavy values)`` quantile bins of their own. Plain quantiles would
  spend all but one or two boundaries on the heavy value and lump every non-zero together,
  losing the information in their size.
* multi-hot: the **set** of a row's distinct non-missing values (as strings) is one category, so
  ``[a, b]``, ``[b, a]`` and ``[a, b, a]`` are the same value and ``[]`` is a value of its own
  (reported as its sorted elements); a string column with a schema ``separator`` is split first.
* missing values (null) are a category of their own, never merged into another value.

The data-quality report of the same pass is :attr:`FeatureRanker.quality_` (see
:mod:`recsys.features.quality`).
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl

from recsys.errors import ConfigError, DataError
from recsys.features.significance import ADJUSTMENTS, benjamini_hochberg, g_test_p_value, holm
from recsys.schema import Schema

__all__ = [
    "FeatureRanker",
    "mutual_info_from_counts",
    "expected_mutual_info",
    "entropy_from_counts",
    "scan_table",
    "HEURISTICS",
]

HEURISTICS: tuple[str, ...] = ("mi", "mi-cardinality", "3mr")
CORRECTIONS: tuple[str, ...] = ("permutation", "expected")
AGGREGATIONS: tuple[str, ...] = ("median", "mean", "sum")
MAX_CLASSES = 100
_DENSE_LIMIT = 1 << 22  # pair keys below this are counted with bincount, above with a hash table


# ------------------------------------------------------------------------------------- the math
def _xlogx_sum(counts: np.ndarray) -> float:
    """``sum n log n`` over positive counts (``0 log 0 = 0``)."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    c = c[c > 0]
    return float(np.dot(c, np.log(c))) if c.size else 0.0


def entropy_from_counts(counts: np.ndarray) -> float:
    """Plug-in entropy in nats of a vector of counts."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    n = c.sum()
    if n <= 0:
        return 0.0
    return float(math.log(n) - _xlogx_sum(c) / n)


def _mi_from_sums(s_joint: float, s_a: float, s_b: float, n: int) -> float:
    """``I = (S(ab) - S(a) - S(b) + N log N) / N`` with ``S(x) = sum n log n``; clipped at 0."""
    return float(max(0.0, (s_joint - s_a - s_b + n * math.log(n)) / n)) if n > 0 else 0.0


def mutual_info_from_counts(table: np.ndarray) -> float:
    """Plug-in mutual information (nats) of a contingency table ``n[i, j]``.

    >>> round(mutual_info_from_counts(np.array([[2, 0], [0, 2]])), 6)   # ln 2
    0.693147
    """
    t = np.asarray(table, dtype=np.float64)
    n = t.sum()
    if n <= 0:
        return 0.0
    return _mi_from_sums(_xlogx_sum(t), _xlogx_sum(t.sum(1)), _xlogx_sum(t.sum(0)), n)


_LF_SMALL = np.array([math.lgamma(i + 1.0) for i in range(128)])


def _log_factorial(x: np.ndarray) -> np.ndarray:
    """``log(x!)`` for integer arrays: a table below 128, Stirling's series above (error < 1e-15)."""
    x = np.asarray(x, dtype=np.int64)
    out = np.empty(x.shape, dtype=np.float64)
    small = x < 128
    out[small] = _LF_SMALL[x[small]]
    z = x[~small].astype(np.float64) + 1.0
    iz = 1.0 / z
    iz2 = iz * iz
    out[~small] = ((z - 0.5) * np.log(z) - z + 0.5 * math.log(2 * math.pi)
                   + iz * (1 / 12 - iz2 * (1 / 360 - iz2 * (1 / 1260 - iz2 / 1680))))
    return out


def _unique_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_counts=True)`` of non-negative integers (a bincount when the range is small)."""
    top = int(x.max()) if x.size else 0
    if top <= 4 * x.size + 1024:
        c = np.bincount(x, minlength=top + 1)
        v = np.flatnonzero(c)
        return v.astype(x.dtype), c[v]
    return np.unique(x, return_counts=True)


def expected_mutual_info(a_counts: np.ndarray, b_counts: np.ndarray) -> float:
    """Expected plug-in MI (nats) of two partitions with these marginal counts under a uniformly
    random permutation (the hypergeometric model of adjusted MI; Vinh, Epps & Bailey 2010).

    Exact up to terms beyond 12 standard deviations of each hypergeometric (mass < 1e-30). The
    cost is the number of ``(a_i, b_j, n)`` terms after grouping equal counts; cheap when one side
    is a label with few classes.

    >>> round(expected_mutual_info(np.array([1, 1]), np.array([1, 1])), 6)   # any 2x2 permutation: ln 2
    0.693147
    """
    a = np.asarray(a_counts, dtype=np.int64)
    b = np.asarray(b_counts, dtype=np.int64)
    a, b = a[a > 0], b[b > 0]
    n = int(a.sum())
    if n == 0 or int(b.sum()) != n:
        if n and int(b.sum()) != n:
            raise ValueError("the two marginals must have the same total")
        return 0.0
    av, aw = _unique_counts(a)
    bv, bw = _unique_counts(b)
    lf_n = float(_log_factorial(np.array([n]))[0])
    lf_av, lf_nav = _log_factorial(av), _log_factorial(n - av)
    log_n = math.log(n)
    total = 0.0
    for bj, wb in zip(bv.tolist(), bw.tolist()):
        lo = np.maximum(1, av + bj - n)
        hi = np.minimum(av, bj)
        # the hypergeometric mass beyond 12 standard deviations is < 1e-30: skip those terms
        mean = av * (bj / n)
        sd = np.sqrt(av * (bj / n) * ((n - av) / n) * ((n - bj) / max(n - 1, 1)))
        lo = np.maximum(lo, np.floor(mean - 12 * sd - 2).astype(np.int64))
        hi = np.minimum(hi, np.ceil(mean + 12 * sd + 2).astype(np.int64))
        length = np.maximum(hi - lo + 1, 0)
        m = int(length.sum())
        if m == 0:
            continue
        idx = np.repeat(np.arange(av.size), length)
        start = np.cumsum(length) - length
        nij = (lo[idx] + np.arange(m) - start[idx]).astype(np.int64)
        ai = av[idx]
        log_p = (lf_av[idx] + lf_nav[idx] + float(_log_factorial(np.array([bj, n - bj])).sum()) - lf_n
                 - _log_factorial(nij) - _log_factorial(ai - nij) - _log_factorial(bj - nij)
                 - _log_factorial(n - ai - bj + nij))
        term = nij / n * (log_n + np.log(nij) - np.log(ai) - math.log(bj)) * np.exp(log_p)
        total += wb * float(np.dot(aw[idx], term))
    return max(total, 0.0)


# ------------------------------------------------------------------------------------ reading
def scan_table(path: str | Path) -> pl.LazyFrame:
    """A lazy scan of a parquet / CSV file (or a directory of parquet files), with clear errors
    (:func:`recsys.data.sources.read_table` with ``lazy=True``; importing it loads no torch)."""
    from recsys.data.sources import read_table

    return read_table(path, lazy=True)


# ---------------------------------------------------------------------------------- per column
def _row_hash(rows: np.ndarray) -> np.ndarray:
    """splitmix64 of the row numbers, top 31 bits (int64): sums over a value's rows fingerprint the partition."""
    z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(33)).astype(np.int64)


_EMPTY = -1  # hash table / lookup table: free slot
_CLAIMED = np.iinfo(np.int32).min  # taken in the current batch, code not yet assigned (< every -2 - position)
_FIB = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)
_LUT_MIN = 1 << 16  # a direct lookup table may always span this many integers...
_LUT_PER_VALUE = 4  # ...or this many per distinct value (+ per row of the batch being coded)
_CHUNK = 1 << 21  # rows per weighted bincount: sums of 31-bit row hashes stay below 2**53 (exact)
_PATTERN_MAX = 1 << 12  # joint label patterns counted in one bincount when C**(K+1) is at most this
_PATTERN_CELLS = 1 << 20  # ... and distinct values x patterns is at most this


class _HashTable:
    """Open addressing with linear probing, vectorized with numpy: keys of one or two int64 words,
    an int64 value per key (``_EMPTY``: free). Rows ``[k1, (k2), value]`` of one int64 array."""

    def __init__(self, words: int, cap: int):
        self.w = words
        self.cap = max(int(cap), 64)
        self.t = np.empty((self.cap, words + 1), np.int64)
        self.t[:, words] = _EMPTY
        self.used = 0

    def slots(self, k1: np.ndarray, k2: np.ndarray | None) -> np.ndarray:
        h = k1.view(np.uint64)
        if k2 is not None:
            h = h ^ (k2.view(np.uint64) * _MIX2)
        h = (h * _FIB) >> np.uint64(32)  # 32 well-mixed bits, then scaled to [0, cap)
        return ((h * np.uint64(self.cap)) >> np.uint64(32)).astype(np.int64)

    def probe(self, k1: np.ndarray, k2: np.ndarray | None,
              s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """From slots ``s``: (the key's slot, else the first free slot; found; the value where found)."""
        t, w, cap = self.t, self.w, self.cap
        if s is None:
            s = self.slots(k1, k2)
        r = np.take(t, s, axis=0)
        val = r[:, w]
        occ = val != _EMPTY
        found = occ & (r[:, 0] == k1)
        if w == 2:
            found &= r[:, 1] == k2
        go = np.flatnonzero(occ & ~found)
        if go.size:
            s = s.copy()
            val = val.copy()
        while go.size:
            sg = s[go] + 1
            sg[sg == cap] = 0
            s[go] = sg
            r = np.take(t, sg, axis=0)
            v = r[:, w]
            occ = v != _EMPTY
            e = occ & (r[:, 0] == k1[go])
            if w == 2:
                e &= r[:, 1] == k2[go]
            found[go[e]] = True
            val[go[e]] = v[e]
            go = go[occ & ~e]
        return s, found, val

    def insert(self, k1: np.ndarray, k2: np.ndarray | None, fill: np.ndarray | None = None,
               free: np.ndarray | None = None) -> np.ndarray:
        """Insert keys that are not in the table (repeats allowed); returns each row's slot. A new
        key's value is its (first) row's ``fill``, default ``_CLAIMED``. ``free``: where a probe
        of the current table ended for each key (its first free slot), if known."""
        out = np.empty(k1.size, np.int64)
        idx = np.arange(k1.size)
        s = self.slots(k1, k2) if free is None else free
        t, w = self.t, self.w
        col = t[:, w]
        first = free is not None
        while idx.size:
            if first:  # every key is at a free slot
                first = False
            else:
                s, found, _ = self.probe(k1, k2, s)
                f = np.flatnonzero(found)
                out[idx[f]] = s[f]
                todo = np.flatnonzero(~found)
                if not todo.size:
                    break
                idx, s, k1 = idx[todo], s[todo], k1[todo]
                k2 = k2[todo] if k2 is not None else None
                fill = fill[todo] if fill is not None else None
            # free slots wanted by several keys: the last such row wins, the others probe on
            rows = np.arange(idx.size)
            np.maximum.at(col, s, rows)
            win = np.flatnonzero(col[s] == rows)
            sw = s[win]
            t[sw, 0] = k1[win]
            if w == 2:
                t[sw, 1] = k2[win]
            col[sw] = _CLAIMED if fill is None else fill[win]
            self.used += win.size
        return out


class _Coder:
    """A column's running dictionary: value -> dense code ``0, 1, ...`` in order of first appearance.

    Keys are int64: the integer itself (integer, boolean, bin and float columns: exact), or for
    any other type (strings, multi-hot sets, ...) two independent 64-bit polars hashes compared
    together (a 128-bit key: two distinct values share a code with probability ~2**-128 per pair).
    Integer keys in a small range use a direct lookup table (at most ``_LUT_PER_VALUE`` slots per
    distinct value, or ``_LUT_MIN``); everything else a :class:`_HashTable` at load 1/3 to 1/2.
    Memory grows with distinct values, not rows. Missing values get a code of their own.
    """

    def __init__(self, two_keys: bool):
        self.w = 2 if two_keys else 1
        self.card = 0
        self.null_code: int | None = None
        self.lut: np.ndarray | None = None  # direct table (one-key integers): code of lo + i
        self.lo = 0
        self.table: _HashTable | None = None

    def _rehash(self, keys: int) -> None:
        """A table for ``keys`` keys at load 1/3, holding everything known so far."""
        new = _HashTable(self.w, 3 * keys)
        if self.table is not None:
            old = self.table.t
            occ = np.flatnonzero(old[:, self.w] != _EMPTY)
            new.insert(old[occ, 0], old[occ, 1] if self.w == 2 else None, old[occ, self.w])
        elif self.lut is not None:  # integers outgrew the direct table
            occ = np.flatnonzero(self.lut != _EMPTY)
            new.insert(occ.astype(np.int64) + self.lo, None, self.lut[occ].astype(np.int64))
            self.lut = None
        self.table = new

    # ------------------------------------------------------------------ coding
    def encode(self, k1: np.ndarray, k2: np.ndarray | None, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Codes of one batch (``k1``/``k2``: keys of every row, ignored where ``valid`` is False =
        missing) and the batch positions of the values first seen in it (ascending, one per new code)."""
        m = k1.size
        vi = None
        if valid is not None and not valid.all():
            vi = np.flatnonzero(valid)
            k1 = k1[vi]
            k2 = k2[vi] if k2 is not None else None
        if self.table is None and self.w == 1:
            codes, first = self._encode_lut(k1)
        else:
            codes, first = self._encode_hash(k1, k2)
        if vi is None:
            self.card += first.size
            return codes, first
        # missing values: a code of their own, ordered with the new values by first appearance
        full = np.empty(m, np.int64)
        full[vi] = codes
        nulls = np.flatnonzero(~valid)
        first = vi[first]
        if self.null_code is None:
            at = int(np.searchsorted(first, nulls[0]))
            first = np.insert(first, at, nulls[0])
            shift_from = self.card + at  # the values first seen after the first missing one move up
            if at < first.size - 1:
                full[full >= shift_from] += 1  # (only this batch's new codes are that high)
                if self.lut is not None:
                    self.lut[self.lut >= shift_from] += 1
                if self.table is not None:
                    v = self.table.t[:, self.w]
                    v[v >= shift_from] += 1
            self.null_code = shift_from
        full[nulls] = self.null_code
        self.card += first.size
        return full, first

    def _encode_lut(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not x.size:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        bmin, bmax = int(x.min()), int(x.max())
        if self.lut is None:
            lo, hi = bmin, bmax
        else:
            lo, hi = min(self.lo, bmin), max(self.lo + self.lut.size - 1, bmax)
        span = hi - lo + 1
        allowed = max(_LUT_MIN, _LUT_PER_VALUE * (self.card + x.size))
        if span > allowed:  # too sparse for a direct table: the hash table from now on
            self._rehash(max(self.card, 1024))
            return self._encode_hash(x, None)
        if self.lut is None or lo < self.lo or hi >= self.lo + self.lut.size:
            old, old_lo = self.lut, self.lo
            if old is not None:  # grow with room to spare on the side(s) that grew
                pad = max(0, min(span // 4, allowed - span))
                lo -= pad if lo < old_lo else 0
                hi += pad if hi >= old_lo + old.size else 0
            self.lut = np.full(hi - lo + 1, _EMPTY, np.int32)
            self.lo = lo
            if old is not None:
                self.lut[old_lo - lo:old_lo - lo + old.size] = old
        idx = x - self.lo
        lut = self.lut
        codes = np.take(lut, idx).astype(np.int64)
        miss = np.flatnonzero(codes < 0)
        if not miss.size:
            return codes, np.empty(0, np.int64)
        im = idx[miss]
        lut[im] = _CLAIMED
        np.maximum.at(lut, im, (-2 - miss).astype(np.int32))  # -2 - (first position of the value)
        first = miss[lut[im] == -2 - miss]
        lut[idx[first]] = np.arange(self.card, self.card + first.size, dtype=np.int32)
        codes[miss] = lut[im]
        return codes, first

    def _encode_hash(self, k1: np.ndarray, k2: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if not k1.size:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if self.table is None:
            self._rehash(1024)
        end, found, codes = self.table.probe(k1, k2)
        miss = np.flatnonzero(~found)
        if not miss.size:
            return codes, np.empty(0, np.int64)
        codes = codes.copy()
        mk1 = k1[miss]
        mk2 = k2[miss] if k2 is not None else None
        pos = -2 - np.arange(miss.size)
        table = self.table
        if 2 * (table.used + miss.size) <= table.cap:
            # room even if every missing row were a distinct value: claim them in the table itself
            ls = table.insert(mk1, mk2, free=end[miss])
            v = table.t[:, self.w]
            np.maximum.at(v, ls, pos)  # claimed slots: -2 - (first position)
            first = np.flatnonzero(v[ls] == pos)
            v[ls[first]] = np.arange(self.card, self.card + first.size)
            codes[miss] = v[ls]
            return codes, miss[first]
        # else: deduplicate the batch's new values in a table of their own first, then grow to fit
        local = _HashTable(self.w, 2 * miss.size)
        ls = local.insert(mk1, mk2)
        v = local.t[:, self.w]
        np.maximum.at(v, ls, pos)
        first = np.flatnonzero(v[ls] == pos)
        new = np.arange(self.card, self.card + first.size)
        v[ls[first]] = new
        codes[miss] = v[ls]
        del local, ls, v, pos
        if 2 * (table.used + first.size) > table.cap:  # expect as many new values again
            self._rehash(int(1.5 * (table.used + first.size)) + first.size)
        self.table.insert(mk1[first], mk2[first] if mk2 is not None else None, new)
        return codes, miss[first]


class _BatchLabels:
    """Per batch: the label and its permutations as codes, in the forms the counting needs (shared by
    every column): the joint label pattern, packed indicator weights, the row hashes."""

    def __init__(self, y: np.ndarray, y_perm: np.ndarray, n_classes: int, rows: np.ndarray):
        self.C = n_classes
        self.vecs = [y.astype(np.int64)] + [p for p in y_perm]  # K + 1 label vectors
        self.m = y.size
        self.n_fields = len(self.vecs) * (n_classes - 1)
        P = n_classes ** len(self.vecs)
        self.P = P if P <= _PATTERN_MAX else 0
        self._pat = None
        self._ind = None
        self._packed: dict[tuple[int, bool], list[tuple[np.ndarray, list[int]]]] = {}
        self._lock = threading.Lock()
        self.rh = _row_hash(rows).astype(np.float64)

    def prepare(self) -> None:
        """Compute what every column may use before the columns run in parallel."""
        if self.P:
            self.pattern, self.indicator  # noqa: B018

    @property
    def pattern(self) -> np.ndarray:
        """``sum_k y_k C**k``: the row's joint label pattern."""
        if self._pat is None:
            pat = np.zeros(self.m, np.int64)
            for v in reversed(self.vecs):
                pat *= self.C
                pat += v
            self._pat = pat
        return self._pat

    @property
    def indicator(self) -> np.ndarray:
        """P x F float matrix: pattern -> 1 where label vector k has class c (field k (C - 1) + c - 1)."""
        if self._ind is None:
            C, K1 = self.C, len(self.vecs)
            digits = (np.arange(self.P)[:, None] // (C ** np.arange(K1))[None, :]) % C  # P x (K + 1)
            ind = np.zeros((self.P, self.n_fields))
            for k in range(K1):
                for c in range(1, C):
                    ind[:, k * (C - 1) + c - 1] = digits[:, k] == c
            self._ind = ind
        return self._ind

    def packed(self, width: int, with_n: bool = False) -> list[tuple[np.ndarray, list[int]]]:
        """Float64 bincount weights packing ``53 // width`` fields each (exact while every count stays
        below ``2**width``): the label indicators (field ``k (C - 1) + c - 1``: label vector ``k`` has
        class ``c``), preceded by the row count (all ones) if ``with_n`` (then one vector holds all).
        Returns [(weights, fields)]."""
        key = (width, with_n)
        with self._lock:
            return self._packed_locked(key, width, with_n)

    def _packed_locked(self, key: tuple[int, bool], width: int, with_n: bool) -> list[tuple[np.ndarray, list[int]]]:
        if key not in self._packed:
            per = len(self.vecs) * (self.C - 1) + 1 if with_n else max(1, 53 // width)
            fields = [(k, c) for k in range(len(self.vecs)) for c in range(1, self.C)]
            out = []
            for g in range(0, len(fields), per - int(with_n)):
                w = np.ones(self.m) if with_n else np.zeros(self.m)
                for i, (k, c) in enumerate(fields[g:g + per - int(with_n)], start=int(with_n)):
                    w += (self.vecs[k] == c) * float(1 << (width * i))
                out.append((w, list(range(g, min(g + per - int(with_n), len(fields))))))
            self._packed[key] = out
        return self._packed[key]


def _bincount(codes: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    """Exact integer bincount (weighted sums in chunks of ``_CHUNK`` rows, each below 2**53)."""
    if weights is None:
        return np.bincount(codes, minlength=size)
    if codes.size <= _CHUNK:
        return np.bincount(codes, weights=weights, minlength=size).astype(np.int64)
    out = np.zeros(size, np.int64)
    for i in range(0, codes.size, _CHUNK):
        out += np.bincount(codes[i:i + _CHUNK], weights=weights[i:i + _CHUNK], minlength=size).astype(np.int64)
    return out


_SEED1, _SEED2 = 0x2545F4914F6CDD1D, 0x5851F42D4C957F2D  # the two polars hashes of a non-integer value
_SHORT_LIST = 16  # multi-hot rows up to this long are deduplicated by pairwise comparison


def _mix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer (uint64 -> uint64, a bijection)."""
    z = h ^ (h >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def _set_keys(lst: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Multi-hot keys: per row, the sums (mod 2**64) of two independent 64-bit hashes of the row's
    distinct non-missing elements (as strings), so the key depends on the set only (order and
    repeats do not matter, ``[]`` and ``[null]`` are the empty set); a missing list is missing."""
    if lst.dtype.inner != pl.String:
        lst = lst.list.eval(pl.element().cast(pl.String))
    m = lst.len()
    valid = lst.is_not_null().to_numpy() if lst.null_count() else None
    lens = lst.list.len().fill_null(0).to_numpy().astype(np.int64)
    e = lst.explode(empty_as_null=False, keep_nulls=False)  # the elements, row after row
    h1 = _mix64(e.hash(_SEED1).to_numpy())
    h2 = _mix64(e.hash(_SEED2).to_numpy())
    keep = e.is_not_null().to_numpy() if e.null_count() else np.ones(e.len(), bool)
    starts = np.cumsum(lens) - lens
    if e.len():
        j = np.arange(e.len()) - np.repeat(starts, lens)  # position within the row
        long_rows = lens > _SHORT_LIST
        for d in range(1, min(int(lens.max()), _SHORT_LIST)):  # an earlier equal element in the row
            i = np.flatnonzero(j >= d)
            keep[i[(h1[i] == h1[i - d]) & (h2[i] == h2[i - d])]] = False
        if long_rows.any():  # long rows: sort their elements by (row, hash) and drop repeats
            el = np.flatnonzero(np.repeat(long_rows, lens))
            row = np.repeat(np.arange(m), lens)[el]
            order = np.lexsort((h2[el], h1[el], row))
            o, ro = el[order], row[order]
            same = (ro[1:] == ro[:-1]) & (h1[o[1:]] == h1[o[:-1]]) & (h2[o[1:]] == h2[o[:-1]])
            keep[o[1:][same]] = False
    out = []
    for h in (h1, h2):
        c = np.zeros(h.size + 1, np.uint64)
        np.cumsum(np.where(keep, h, np.uint64(0)), out=c[1:])  # wraps mod 2**64
        out.append((c[starts + lens] - c[starts]).view(np.int64))
    return out[0], out[1], valid


@dataclass
class _Column:
    """Streaming state of one feature: a running dictionary of its values (:class:`_Coder`) and, per
    distinct value (by code, i.e. in order of first appearance): its row count, its label counts, its
    permuted label counts, its first row and the sum of its rows' hashes (growable numpy arrays)."""

    name: str  # feature name (schema field name or column)
    source: str  # raw column
    kind: str  # categorical | numeric | multi_hot
    n_classes: int
    n_perm: int
    n_bins: int = 10
    separator: str | None = None
    boundaries: np.ndarray | None = None

    def start(self, count_dtype: type) -> None:
        self.coder: _Coder | None = None
        self.dtype = count_dtype  # int32 while the data has < 2**31 rows
        self.card = 0
        self._cap = 0
        self._n = self._cnt = self._first = self._rh = None
        self._values: list[pl.Series] = []
        self._width = 0  # packing width that sufficed for the previous batch

    # values -> the series whose distinct values are the categories (pair pass)
    def prepare(self, s: pl.Series) -> pl.Series:
        if self.kind == "numeric":
            bins, valid = self._bins(s)
            b = bins.astype(np.float64)
            if valid is not None:
                b[~valid] = np.nan
            return pl.Series("v", b, nan_to_null=True).cast(pl.Int32)
        if self.kind == "multi_hot":
            s = self._lists(s) if self._lists(s) is not None else s
            if isinstance(s.dtype, pl.List):  # (as an expression on a frame: Series.list.sort is much slower)
                e = pl.col("v")
                if s.dtype.inner != pl.String:
                    e = e.list.eval(pl.element().cast(pl.String))
                return s.alias("v").to_frame().select(e.list.eval(pl.element().unique().sort()).list.join("\x1f")).to_series()
            return s
        return s

    def _bins(self, s: pl.Series) -> tuple[np.ndarray, np.ndarray | None]:
        """Numeric: bin index per row (``(b[i-1], b[i]]`` -> i) and the non-missing mask (NaN is missing)."""
        x = s.cast(pl.Float64, strict=False)
        v = x.to_numpy()  # nulls -> NaN
        bins = np.searchsorted(self.boundaries, v, side="left")
        nan = np.isnan(v)
        return bins, (~nan if nan.any() else None)

    def _lists(self, s: pl.Series) -> pl.Series | None:
        """Multi-hot: the column as a list series (None: not a list column, a plain categorical)."""
        if s.dtype == pl.String and self.separator:
            s = s.str.split(self.separator)
        if isinstance(s.dtype, pl.Array):
            s = s.arr.to_list()
        return s if isinstance(s.dtype, pl.List) else None

    def keys(self, s: pl.Series) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, pl.Series | None]:
        """``(k1, k2, valid, values)``: the coder's keys of every row, the non-missing mask (None: no
        missing) and the series the distinct values are taken from (None for numeric bins)."""
        if self.kind == "numeric":
            bins, valid = self._bins(s)
            return bins.astype(np.int64), None, valid, None
        if self.kind == "multi_hot":
            lst = self._lists(s)
            if lst is not None:
                k1, k2, valid = _set_keys(lst)
                return k1, k2, valid, s
        v = s
        valid = v.is_not_null().to_numpy() if v.null_count() else None
        dt = v.dtype
        if dt.is_integer() or dt == pl.Boolean:
            x = v.reinterpret(signed=True) if dt == pl.UInt64 else v.cast(pl.Int64)
            k1 = (x.fill_null(0) if valid is not None else x).to_numpy()
            return k1, None, valid, v
        if dt.is_float():
            f = v.cast(pl.Float64).fill_null(0.0).to_numpy() + 0.0  # -0.0 -> 0.0
            f[np.isnan(f)] = np.nan  # one NaN
            return f.view(np.int64), None, valid, v
        if isinstance(dt, (pl.Categorical, pl.Enum)):
            v = v.cast(pl.String)
        k1 = v.hash(_SEED1).to_numpy().view(np.int64)
        k2 = v.hash(_SEED2).to_numpy().view(np.int64)
        return k1, k2, valid, v

    def _ensure(self, card: int) -> None:
        """Room for ``card`` values in the per-value arrays (grown x1.5, new parts zero)."""
        if card <= self._cap:
            return
        cap = max(card, self._cap + self._cap // 2, 1024)
        F = (self.n_perm + 1) * (self.n_classes - 1)

        def grow(a, dtype, rows=None):
            b = np.zeros((rows, cap) if rows else cap, dtype)
            if a is not None:
                b[..., :self.card] = a[..., :self.card]
            return b

        self._n = grow(self._n, self.dtype)
        # field x value; field k (C - 1) + c - 1: label vector k has class c
        self._cnt = grow(self._cnt, self.dtype, F)
        self._first = grow(self._first, self.dtype)
        self._rh = grow(self._rh, np.int64)
        self._cap = cap

    def update(self, s: pl.Series, lab: _BatchLabels, row0: int) -> None:
        """Count one batch (``row0``: the row number of its first row)."""
        k1, k2, valid, values = self.keys(s)
        if self.coder is None:
            self.coder = _Coder(two_keys=k2 is not None)
        codes, new_pos = self.coder.encode(k1, k2, valid)
        card = self.coder.card
        self._ensure(card)
        if new_pos.size:
            self._first[self.card:card] = row0 + new_pos
            if values is not None:
                vals = values.gather(new_pos)
                self._values.append(self.prepare(vals) if self.kind == "multi_hot" else vals)
            else:  # numeric: the bin (missing: null)
                b = k1[new_pos].astype(np.float64)
                if valid is not None:
                    b[~valid[new_pos]] = np.nan
                self._values.append(pl.Series("v", b, nan_to_null=True).cast(pl.Int32))
        self.card = card
        n_acc, cnt = self._n[:card], self._cnt[:, :card]
        if lab.P and card * lab.P <= max(_PATTERN_CELLS, 4 * lab.m):
            # few values: one bincount over (value, joint label pattern), then patterns -> label counts
            t = np.bincount(codes * lab.P + lab.pattern, minlength=card * lab.P).reshape(card, lab.P)
            n_acc += t.sum(1)
            cnt += np.rint(lab.indicator.T @ t.T).astype(np.int64)
        elif lab.C == 2 or lab.n_fields <= 12:
            # many values: the row count and the label indicators packed into float64 bincount weights
            n = None
            w = self._width
            if w and (lab.n_fields + 1) * w <= 53:  # all in one pass if no value has >= 2**w rows here
                (wt, _), = lab.packed(w, with_n=True)
                f = (_bincount(codes, wt, card)[None, :] >> (w * np.arange(lab.n_fields + 1))[:, None]) & ((1 << w) - 1)
                if int(f[0].sum()) == codes.size:
                    n = f[0]
                    cnt += f[1:]
            if n is None:
                n = np.bincount(codes, minlength=card)
                w = max(1, int(n.max()).bit_length())
                for wt, idx in lab.packed(w):
                    f = (_bincount(codes, wt, card)[None, :] >> (w * np.arange(len(idx)))[:, None]) & ((1 << w) - 1)
                    cnt[idx[0]:idx[-1] + 1] += f
            n_acc += n
            w = int(n.max()).bit_length() + 1 if n.size else 1
            self._width = w if (lab.n_fields + 1) * w <= 53 else 0
        else:  # many classes: one bincount per label vector
            C = lab.C
            for k, v in enumerate(lab.vecs):
                t = np.bincount(codes * C + v, minlength=card * C).reshape(card, C)
                cnt[k * (C - 1):(k + 1) * (C - 1)] += t[:, 1:].T
                if k == 0:
                    n_acc += t.sum(1)
        self._rh[:card] += _bincount(codes, lab.rh, card)

    def finalize(self) -> None:
        """Expose numpy arrays (values already in order of first appearance)."""
        card, C = self.card, self.n_classes
        self.values = pl.concat(self._values) if self._values else pl.Series("v", [], dtype=pl.Int32)
        self._values = []
        self.n = self._n[:card].astype(np.int64)
        cnt = self._cnt[:, :card].T.astype(np.int64)
        ys = cnt[:, :C - 1]
        self.table = np.concatenate([(self.n - ys.sum(1))[:, None], ys], axis=1)
        self.perm = [np.ascontiguousarray(cnt[:, (k + 1) * (C - 1):(k + 2) * (C - 1)]) for k in range(self.n_perm)]
        h = hashlib.blake2b(digest_size=16)
        h.update(self._first[:card].astype(np.int64).tobytes())
        h.update(self._rh[:card].astype(np.int64).tobytes())
        self.fingerprint = h.digest()
        self.null_index = self.coder.null_code if self.coder is not None else None
        self._n = self._cnt = self._first = self._rh = None
        self.coder = None

    def decode(self, idx: np.ndarray) -> list[Any]:
        vals = self.values.gather(pl.Series(idx, dtype=pl.Int64))
        if self.kind == "numeric":
            b = self.boundaries
            out = []
            for v in vals.to_list():
                if v is None:
                    out.append(None)
                else:
                    if 0 < v < len(b) and b[v - 1] == np.nextafter(b[v], -np.inf):
                        out.append(f"{{{b[v]:.6g}}}")  # a heavy value's own bin
                        continue
                    lo = "-inf" if v == 0 else f"{b[v - 1]:.6g}"
                    hi = "inf" if v >= len(b) else f"{b[v]:.6g}"
                    out.append(f"({lo}, {hi}]")
            return out
        if self.kind == "multi_hot":
            return [None if v is None else ("[]" if v == "" else "[" + ", ".join(v.split("\x1f")) + "]")
                    for v in vals.to_list()]
        return vals.to_list()


class _PermutedStream:
    """Exact global random permutations of a label multiset, generated batch by batch.

    Each batch draws its class counts from the multivariate hypergeometric of what is left and
    shuffles them: the concatenation is a uniformly random arrangement of all the labels.
    """

    def __init__(self, class_counts: np.ndarray, n_perm: int, seed: int, salt: int = 0):
        self.remaining = np.tile(np.asarray(class_counts, np.int64), (n_perm, 1))
        self.rngs = [np.random.default_rng([int(seed), 0x5EED, salt, k]) for k in range(n_perm)]

    def next(self, m: int) -> np.ndarray:
        C = self.remaining.shape[1]
        out = np.empty((len(self.rngs), m), np.int64)
        for k, rng in enumerate(self.rngs):
            draw = rng.multivariate_hypergeometric(self.remaining[k], m)
            self.remaining[k] -= draw
            out[k] = rng.permutation(np.repeat(np.arange(C), draw))
        return out


# ------------------------------------------------------------------------------------ the ranker
class FeatureRanker:
    """Rank features by (cardinality-corrected) mutual information with a label; see the module doc.

    Args:
        label: the label column (binary or multi-class, at most 100 classes). ``None`` takes the
            schema's label, else ``"label"``.
        heuristic: ``mi``, ``mi-cardinality`` (default) or ``3mr``.
        correction: chance MI subtracted by ``mi-cardinality`` / ``3mr`` relevance:
            ``permutation`` (default, mean over ``n_permutations``) or ``expected`` (closed form).
        n_permutations: label permutations for the chance MI (>= 2 for a spread).
        seed: seed of every permutation (and of ``sample``).
        schema: a :class:`~recsys.schema.Schema` or a schema YAML path: which columns are
            features and of which kind. Default: every column except the label and ``exclude``.
        features: restrict to these features (names of schema fields, or columns).
        exclude: columns never to rank (e.g. ids of the split, oracle columns).
        n_bins: quantile bins of numeric columns.
        batch_size: rows per streamed batch.
        sample: rank on this many rows drawn uniformly at random without replacement (seeded);
            ``None`` (default) counts all rows.
        pairs: compute ``pairs_`` and ``redundancy_`` (always on for ``3mr``).
        pair_top_k: how many of the most relevant features take part in pairs / 3MR (``None``: all).
        pair_permutations: permutations for the chance MI of pair terms.
        alpha, beta, aggregation: 3MR's redundancy weight, relation weight and aggregate.
        quality: thresholds of the data-quality report
            (:class:`recsys.features.quality.QualityThresholds`).
        progress: show a tqdm progress bar.
        n_threads: columns counted in parallel threads (numpy releases the GIL in the heavy
            parts); default: polars' thread pool size (the number of cores, or
            ``POLARS_MAX_THREADS``). Results do not depend on it.

    Attributes (after ``fit``):
        ranking_: one row per feature, best first: ``rank``, ``feature``, ``kind``, ``score`` (the
            heuristic's), ``mi``, ``chance_mi_mean``, ``chance_mi_std``, ``emi``, ``mi_corrected``,
            ``z``, ``mi_norm`` (corrected MI / label entropy), ``cardinality``, ``coverage``
            (+ ``relevance_norm`` and ``mr_objective`` for 3MR).
        pairs_: pair table (or ``None``). redundancy_: matrix as a DataFrame (or ``None``).
        quality_: the data-quality report (dict). label_entropy_, n_rows_, classes_.
    """

    def __init__(
        self,
        label: str | None = None,
        heuristic: str = "mi-cardinality",
        correction: str = "permutation",
        n_permutations: int = 5,
        seed: int = 0,
        schema: Schema | str | Path | None = None,
        features: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        n_bins: int = 10,
        batch_size: int = 262_144,
        sample: int | None = None,
        pairs: bool = False,
        pair_top_k: int | None = 20,
        pair_permutations: int = 1,
        alpha: float = 1.0,
        beta: float = 1.0,
        aggregation: str = "median",
        quality: Any = None,
        progress: bool = False,
        n_threads: int | None = None,
        significance: float = 0.01,
        p_adjust: str = "holm",
        null_draws: int = 200,
    ):
        if heuristic not in HEURISTICS:
            raise ConfigError(f"unknown heuristic {heuristic!r}", where="heuristic", fix=f"use one of {list(HEURISTICS)}")
        if correction not in CORRECTIONS:
            raise ConfigError(f"unknown correction {correction!r}", where="correction", fix=f"use one of {list(CORRECTIONS)}")
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {aggregation!r}", where="aggregation",
                              fix=f"use one of {list(AGGREGATIONS)}")
        if not isinstance(n_permutations, int) or n_permutations < 1:
            raise ConfigError(f"n_permutations must be an integer >= 1, got {n_permutations!r}", where="n_permutations")
        if not isinstance(pair_permutations, int) or pair_permutations < 1:
            raise ConfigError(f"pair_permutations must be >= 1, got {pair_permutations!r}", where="pair_permutations")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", where="batch_size")
        if not isinstance(n_bins, int) or n_bins < 2:
            raise ConfigError(f"n_bins must be an integer >= 2, got {n_bins!r}", where="n_bins")
        if sample is not None and (not isinstance(sample, int) or sample < 1):
            raise ConfigError(f"sample must be a positive number of rows, got {sample!r}", where="sample")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ConfigError(f"n_threads must be a positive integer, got {n_threads!r}", where="n_threads")
        if isinstance(significance, bool) or not isinstance(significance, (int, float)) or not 0 < significance < 1:
            raise ConfigError(f"significance must be a level in (0, 1), got {significance!r}", where="significance")
        if p_adjust not in ADJUSTMENTS:
            raise ConfigError(f"unknown p_adjust {p_adjust!r}", where="p_adjust", fix=f"use one of {list(ADJUSTMENTS)}")
        if not isinstance(null_draws, int) or null_draws < 10:
            raise ConfigError(f"null_draws must be an integer >= 10, got {null_draws!r}", where="null_draws")
        if pair_top_k is not None and (not isinstance(pair_top_k, int) or pair_top_k < 2):
            raise ConfigError(f"pair_top_k must be >= 2 (or None for all), got {pair_top_k!r}", where="pair_top_k")
        self.label = label
        self.heuristic = heuristic
        self.correction = correction
        self.n_permutations = n_permutations
        self.seed = seed
        self.schema = schema
        self.features = list(features) if features is not None else None
        self.exclude = list(exclude)
        self.n_bins = n_bins
        self.batch_size = batch_size
        self.sample = sample
        self.pairs = pairs
        self.pair_top_k = pair_top_k
        self.pair_permutations = pair_permutations
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.aggregation = aggregation
        self.quality = quality
        self.progress = progress
        self.n_threads = n_threads
        self.significance = significance
        self.p_adjust = p_adjust
        self.null_draws = null_draws

    # ----------------------------------------------------------------------------- input
    def _frame(self, data: Any) -> tuple[pl.DataFrame | pl.LazyFrame, str]:
        if isinstance(data, pl.DataFrame):
            return data, "the data frame"
        if isinstance(data, pl.LazyFrame):
            return data, "the lazy frame"
        if isinstance(data, (str, Path)):
            return scan_table(data), str(data)
        raise ConfigError(f"cannot rank features of a {type(data).__name__}", where="FeatureRanker.fit",
                          fix="pass a polars DataFrame/LazyFrame or a parquet/CSV path")

    def _columns(self, names: list[str], dtypes: dict[str, pl.DataType], where: str, label: str,
                 n_classes: int) -> list[_Column]:
        schema = self.schema
        if isinstance(schema, (str, Path)):
            schema = Schema.from_yaml(schema)
        cols: list[_Column] = []
        if schema is not None:
            for f in schema.fields:
                if f.source not in dtypes:
                    raise DataError(f"schema field {f.name!r} reads column {f.source!r}, which the data lacks; "
                                    f"it has {names}", where=where, fix="fix the schema or the data")
                kind = {"numeric": "numeric", "multi_hot": "multi_hot", "sequence": "multi_hot"}.get(f.kind, "categorical")
                nb = f.n_buckets if (f.kind == "numeric" and f.transform == "bucketize") else self.n_bins
                cols.append(_Column(f.name, f.source, kind, n_classes, self.n_permutations, nb, f.separator))
        else:
            for c in names:
                if c == label:
                    continue
                dt = dtypes[c]
                if dt.is_float() or dt.is_temporal():
                    kind = "numeric"
                elif isinstance(dt, (pl.List, pl.Array)):
                    kind = "multi_hot"
                elif isinstance(dt, (pl.Struct, pl.Object)):
                    continue
                else:
                    kind = "categorical"
                cols.append(_Column(c, c, kind, n_classes, self.n_permutations, self.n_bins))
        if self.features is not None:
            known = {c.name for c in cols}
            missing = [f for f in self.features if f not in known]
            if missing:
                raise DataError(f"features {missing} are not in the data/schema (known: {sorted(known)})", where=where,
                                fix="check the feature names")
            cols = [c for c in cols if c.name in set(self.features)]
        excl = set(self.exclude)
        cols = [c for c in cols if c.name not in excl and c.source not in excl and c.source != label]
        if not cols:
            raise DataError("no feature columns to rank", where=where, fix="check --features/--exclude and the schema")
        return cols

    def _batches(self, frame: pl.DataFrame | pl.LazyFrame, columns: list[str]) -> Iterator[pl.DataFrame]:
        """Exact ``batch_size``-row batches (the sample mask applied after slicing)."""
        bs = self.batch_size
        if isinstance(frame, pl.DataFrame):
            sub = frame.select(columns)
            chunks: Iterator[pl.DataFrame] = (sub.slice(i, bs) for i in range(0, sub.height, bs))
        else:
            chunks = self._rebatch(frame.select(columns).collect_batches(chunk_size=bs, maintain_order=True), bs)
        offset = 0
        for chunk in chunks:
            n = chunk.height
            if self._sample_idx is not None:
                lo, hi = np.searchsorted(self._sample_idx, [offset, offset + n])
                chunk = chunk[self._sample_idx[lo:hi] - offset] if hi > lo else chunk.head(0)
            offset += n
            if chunk.height:
                yield chunk

    @staticmethod
    def _rebatch(stream: Iterator[pl.DataFrame], bs: int) -> Iterator[pl.DataFrame]:
        buf: list[pl.DataFrame] = []
        size = 0
        for df in stream:
            buf.append(df)
            size += df.height
            while size >= bs:
                whole = pl.concat(buf, rechunk=False) if len(buf) > 1 else buf[0]
                yield whole.slice(0, bs)
                rest = whole.slice(bs)
                buf, size = ([rest] if rest.height else []), rest.height
        if size:
            yield pl.concat(buf, rechunk=False) if len(buf) > 1 else buf[0]

    # ------------------------------------------------------------------------------- fit
    def fit(self, data: Any, label: str | None = None) -> "FeatureRanker":
        """Count over all rows (or the sample), score, rank; returns ``self``."""
        frame, where = self._frame(data)
        try:
            return self._fit(frame, where, label)
        except (pl.exceptions.PolarsError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise DataError(f"could not read the data ({type(e).__name__}: {first})", where=where,
                            fix="check that it is a valid parquet/CSV file with one type per column") from None

    def _fit(self, frame: pl.DataFrame | pl.LazyFrame, where: str, label: str | None) -> "FeatureRanker":
        from recsys.features.quality import QualityThresholds, quality_report

        schema_obj = Schema.from_yaml(self.schema) if isinstance(self.schema, (str, Path)) else self.schema
        if isinstance(self.schema, (str, Path)):
            self.schema = schema_obj
        label = label or self.label or (schema_obj.label if schema_obj is not None else "label")
        dtypes = dict(frame.collect_schema()) if isinstance(frame, pl.LazyFrame) else dict(frame.schema)
        if schema_obj is not None:  # declared placeholders ("?") are missing values
            frame, dtypes = _declared_missing(frame, dtypes, schema_obj)
        names = list(dtypes)
        if label not in dtypes:
            raise DataError(f"no label column {label!r}; columns are {names}", where=where,
                            fix="pass --label with the label's column name")
        lazy = frame.lazy() if isinstance(frame, pl.DataFrame) else frame
        n_total = int(lazy.select(pl.len()).collect().item())
        if n_total == 0:
            raise DataError("the data has no rows", where=where, fix="rank features on a non-empty file")
        self._sample_idx = None
        if self.sample is not None and self.sample < n_total:
            rng = np.random.default_rng([int(self.seed), 0xA11])
            self._sample_idx = np.sort(rng.choice(n_total, size=self.sample, replace=False)).astype(np.int64)

        # ---- pass 0: label classes and counts (label column only), numeric quantiles
        lab_dtype = dtypes[label]
        if isinstance(lab_dtype, (pl.List, pl.Array, pl.Struct)):
            raise DataError(f"the label {label!r} is a {lab_dtype} column", where=where,
                            fix="use a single-valued binary or multi-class label")
        lab_counts: dict[Any, int] = {}
        cols = self._columns(names, dtypes, where, label, 0)
        numeric = [c for c in cols if c.kind == "numeric"]
        numeric_frame = got = None
        if self._sample_idx is None:  # one scan: label counts and the numeric columns (for their quantiles)
            queries = [lazy.group_by(label).len()]
            if numeric:
                queries.append(self._numeric_query(lazy, numeric))
            got = pl.collect_all(queries)
            vc = got[0]
            numeric_frame = got[1] if numeric else None
            lab_counts = dict(zip(vc[label].to_list(), (int(c) for c in vc["len"].to_list())))
        else:
            for b in self._batches(frame, [label]):
                vc = b[label].value_counts()
                for v, c in zip(vc[label].to_list(), vc["count"].to_list()):
                    lab_counts[v] = lab_counts.get(v, 0) + int(c)
        if None in lab_counts:
            raise DataError(f"the label {label!r} has {lab_counts[None]} missing values", where=where,
                            fix="drop or fill the rows without a label")
        if any(isinstance(v, float) and math.isnan(v) for v in lab_counts):
            raise DataError(f"the label {label!r} has NaN values", where=where, fix="drop or fill them")
        classes = sorted(lab_counts)
        if len(classes) < 2:
            raise DataError(f"the label {label!r} has a single value {classes}; nothing to rank against", where=where,
                            fix="check the label column")
        if len(classes) > MAX_CLASSES:
            raise DataError(f"the label {label!r} has {len(classes)} distinct values: it looks continuous, not a "
                            f"class label (at most {MAX_CLASSES} classes)", where=where,
                            fix="bin it into classes, or rank against a binary/multi-class label")
        class_counts = np.array([lab_counts[c] for c in classes], np.int64)
        n = int(class_counts.sum())
        C = len(classes)
        for c in cols:
            c.n_classes = C
        self._boundaries(lazy, numeric, numeric_frame)
        del numeric_frame, got

        # ---- pass 1: per batch, each column's values -> dense codes (a running dictionary), counted with
        # numpy bincounts against the label and its permutations into running per-value arrays
        label_map = pl.DataFrame({"v": pl.Series(classes, dtype=lab_dtype), "y": np.arange(C, dtype=np.int8)})
        perm = _PermutedStream(class_counts, self.n_permutations, self.seed)
        count_dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
        for c in cols:
            c.start(count_dtype)
        sources = list(dict.fromkeys([c.source for c in cols] + [label]))
        bar = self._bar(n, "counting")
        n_threads = self.n_threads if self.n_threads is not None else pl.thread_pool_size()
        pool = ThreadPoolExecutor(min(n_threads, len(cols))) if n_threads > 1 and len(cols) > 1 else None
        order_of = {c.name: i for i, c in enumerate(cols)}

        def labels(b: pl.DataFrame | None, row0: int) -> _BatchLabels | None:
            if b is None:
                return None
            y = b.select(pl.col(label).alias("v")).join(label_map, on="v", how="left", maintain_order="left")["y"]
            lab = _BatchLabels(y.to_numpy(), perm.next(b.height), C, np.arange(row0, row0 + b.height))
            lab.prepare()
            return lab

        try:
            batches = iter(self._batches(frame, sources))
            b = next(batches, None)
            lab = labels(b, 0)
            row0 = 0
            while b is not None:
                m = b.height
                if pool is not None:  # columns in parallel, biggest first; meanwhile read the next batch
                    todo = [pool.submit(c.update, b[c.source], lab, row0)
                            for c in sorted(cols, key=lambda c: -c.card)]
                    nb = next(batches, None)
                    nlab = labels(nb, row0 + m)
                    for f in todo:
                        f.result()
                else:
                    for c in cols:
                        c.update(b[c.source], lab, row0)
                    nb = next(batches, None)
                    nlab = labels(nb, row0 + m)
                b, lab = nb, nlab
                row0 += m
                if bar is not None:
                    bar.update(m)
            if bar is not None:
                bar.close()
            # ---- scores (per column, in parallel too)
            h_y = entropy_from_counts(class_counts)
            s_y = _xlogx_sum(class_counts)

            def score(c: _Column) -> dict[str, Any]:
                c.finalize()
                t = c.table
                a = c.n
                s_a = _xlogx_sum(a)
                mi = _mi_from_sums(_xlogx_sum(t), s_a, s_y, n)
                chance = []
                for p in c.perm:
                    first = a - p.sum(1)
                    chance.append(_mi_from_sums(_xlogx_sum(first) + _xlogx_sum(p), s_a, s_y, n))
                cm = float(np.mean(chance))
                cs = float(np.std(chance, ddof=1)) if len(chance) > 1 else float("nan")
                emi = expected_mutual_info(a, class_counts)
                corr = mi - (cm if self.correction == "permutation" else emi)
                z = (mi - cm) / cs if cs > 0 else float("nan")
                null = c.null_index
                n_missing = int(a[null]) if null is not None else 0
                p_value, p_method = g_test_p_value(mi, a, class_counts, emi, self.null_draws, self.seed)
                return {
                    "feature": c.name, "column": c.source, "kind": c.kind, "mi": mi, "chance_mi_mean": cm,
                    "chance_mi_std": cs, "emi": emi, "mi_corrected": corr, "z": z,
                    "p_value": p_value, "p_method": p_method,
                    "mi_norm": corr / h_y if h_y > 0 else 0.0,
                    "cardinality": c.card - (1 if null is not None else 0),
                    "coverage": 1.0 - n_missing / n, "entropy": entropy_from_counts(a),
                }

            rows = list(pool.map(score, sorted(cols, key=lambda c: -c.card))) if pool is not None else \
                [score(c) for c in cols]
            rows.sort(key=lambda r: order_of[r["feature"]])
            adjusted = (holm if self.p_adjust == "holm" else benjamini_hochberg)(np.array([r["p_value"] for r in rows]))
            for r, pa in zip(rows, adjusted.tolist()):
                r["p_adjusted"] = pa
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.n_rows_ = n
        self.classes_ = classes
        self.class_counts_ = class_counts
        self.label_entropy_ = h_y
        self.label_name_ = label
        self._cols = {c.name: c for c in cols}
        relevance = {r["feature"]: (r["mi"] if self.heuristic == "mi" else r["mi_corrected"]) for r in rows}
        ranked = sorted(rows, key=lambda r: (-relevance[r["feature"]], r["feature"]))

        # ---- pairs / 3MR
        self.pairs_ = None
        self.redundancy_ = None
        extra: dict[str, dict[str, float]] = {}
        order = [r["feature"] for r in ranked]
        if self.pairs or self.heuristic == "3mr":
            k = len(order) if self.pair_top_k is None else min(self.pair_top_k, len(order))
            cand = order[:k]
            self._pair_pass(frame, cand, label, label_map, class_counts)
            if self.heuristic == "3mr":
                order3, extra = self._three_mr(cand, relevance)
                order = order3 + [f for f in order if f not in set(order3)]
        by_name = {r["feature"]: r for r in rows}
        out = []
        for i, f in enumerate(order):
            r = dict(by_name[f])
            r["rank"] = i + 1
            r["score"] = extra.get(f, {}).get("mr_objective", relevance[f]) if self.heuristic == "3mr" else relevance[f]
            if self.heuristic == "3mr":
                r["relevance_norm"] = extra.get(f, {}).get("relevance_norm")
                r["mr_objective"] = extra.get(f, {}).get("mr_objective")
            out.append(r)
        lead = ["rank", "feature", "kind", "score", "mi", "chance_mi_mean", "chance_mi_std", "emi", "mi_corrected", "z",
                "p_value", "p_adjusted", "p_method", "mi_norm", "cardinality", "coverage", "entropy", "column"]
        if self.heuristic == "3mr":
            lead += ["relevance_norm", "mr_objective"]
        self.ranking_ = pl.DataFrame(out, schema_overrides={k: pl.Float64 for k in
                                                            ("relevance_norm", "mr_objective")
                                                            if self.heuristic == "3mr"}).select(lead)
        thresholds = self.quality if self.quality is not None else QualityThresholds()
        self.quality_ = quality_report(self, thresholds)
        return self

    def _numeric_query(self, lazy: pl.LazyFrame, numeric: list[_Column]) -> pl.LazyFrame:
        """The numeric columns as floats (NaN -> missing), of all rows or the sample."""
        if self._sample_idx is not None:
            lazy = lazy.with_row_index("__row").filter(pl.col("__row").is_in(pl.Series(self._sample_idx)))
        return lazy.select([pl.col(c.source).cast(pl.Float64, strict=False).fill_nan(None).alias(f"__n{i}")
                            for i, c in enumerate(numeric)])

    def _boundaries(self, lazy: pl.LazyFrame, numeric: list[_Column], cols: pl.DataFrame | None = None) -> None:
        """Numeric columns' bin boundaries: the distinct ``k / n_bins`` quantiles ("nearest", as polars
        computes them: the non-missing value of sorted index ``round((n - 1) q)``) of all rows (or the
        sample), found by partial sorts of the materialized columns (``cols``, else read here)."""
        if not numeric:
            return
        if cols is None:
            cols = self._numeric_query(lazy, numeric).collect()
        for i, c in enumerate(numeric):
            s = cols.to_series(i)
            nulls = s.null_count()
            v = s.drop_nulls().to_numpy()
            if not v.size:
                c.boundaries = np.array([], np.float64)
                continue
            qs = np.linspace(0, 1, c.n_bins + 1)[1:-1]
            idx = [_round_half_away((v.size - 1.0) * float(q) + nulls) - nulls for q in qs]
            part = np.partition(v, sorted(set(idx)))
            bounds = {float(part[j]) for j in idx}
            # a value that fills a whole bin (>= 1 / n_bins of the rows) sits on one of these
            # quantiles: such heavy values get their own bin, the rest their own quantiles
            heavy = sorted(b for b in bounds if int(np.count_nonzero(v == b)) * c.n_bins >= v.size)
            if heavy:
                rest = v[~np.isin(v, heavy)]
                bounds = set()
                for h in heavy:
                    bounds |= {h, float(np.nextafter(h, -np.inf))}
                k = max(c.n_bins - len(heavy), 1)
                if rest.size and k > 1:
                    idx = [_round_half_away((rest.size - 1.0) * float(q)) for q in np.linspace(0, 1, k + 1)[1:-1]]
                    part = np.partition(rest, sorted(set(idx)))
                    bounds |= {float(part[j]) for j in idx}
                del rest
            c.boundaries = np.array(sorted(bounds), np.float64)
            del part, v, s
        del cols

    def _bar(self, total: int, desc: str):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="rows", unit_scale=True, leave=False)

    # ------------------------------------------------------------------------- pairs
    def _pair_pass(self, frame, cand: list[str], label: str, label_map: pl.DataFrame, class_counts: np.ndarray) -> None:
        cols = [self._cols[f] for f in cand]
        n = self.n_rows_
        C = len(class_counts)
        parts: dict[str, list[pl.Series]] = {c.name: [] for c in cols}
        ys = []
        sources = list(dict.fromkeys([c.source for c in cols] + [label]))
        bar = self._bar(n, "pairs")
        for b in self._batches(frame, sources):
            ys.append(b.select(pl.col(label).alias("v")).join(label_map, on="v", how="left",
                                                              maintain_order="left")["y"].to_numpy().astype(np.int64))
            for c in cols:
                parts[c.name].append(c.prepare(b[c.source]))
            if bar is not None:
                bar.update(b.height)
        if bar is not None:
            bar.close()
        y = np.concatenate(ys)
        codes: dict[str, np.ndarray] = {}
        card: dict[str, int] = {}
        for c in cols:  # dense codes over all rows at once (null -> 0)
            full = pl.concat(parts.pop(c.name), rechunk=True)
            codes[c.name] = full.rank("dense").fill_null(0).cast(pl.Int32).to_numpy()
            card[c.name] = int(codes[c.name].max()) + 1
            del full
        s_single = {c.name: _xlogx_sum(c.n) for c in cols}
        s_y = _xlogx_sum(class_counts)
        rng = np.random.default_rng([int(self.seed), 0xFA12])
        y_perms = [rng.permutation(y) for _ in range(self.pair_permutations)]
        row_perms = [rng.permutation(n) for _ in range(self.pair_permutations)]
        rows = []
        red = {f: {g: float("nan") for g in cand} for f in cand}
        for f in cand:
            red[f][f] = entropy_from_counts(self._cols[f].n)
        bar = self._bar(len(cand) * (len(cand) - 1) // 2, "pair scores")
        for i, fa in enumerate(cand):
            ca = codes[fa].astype(np.int64)
            for fb in cand[i + 1:]:
                cb = codes[fb]
                kb = card[fb]
                ab = ca * kb + cb
                size_ab = card[fa] * kb
                s_ab, n_ab = _count_sums(ab, size_ab)
                rel = _mi_from_sums(_count_sums(ab * C + y, size_ab * C)[0], s_ab, s_y, n)
                rel_ch = [_mi_from_sums(_count_sums(ab * C + yp, size_ab * C)[0], s_ab, s_y, n) for yp in y_perms]
                rd = _mi_from_sums(s_ab, s_single[fa], s_single[fb], n)
                rd_ch = [_mi_from_sums(_count_sums(ca * kb + cb[p], size_ab)[0], s_single[fa], s_single[fb], n)
                         for p in row_perms]
                rel_c = rel - float(np.mean(rel_ch)) if self.heuristic != "mi" else rel
                rd_c = rd - float(np.mean(rd_ch)) if self.heuristic != "mi" else rd
                red[fa][fb] = red[fb][fa] = rd_c
                rows.append({"feature_a": fa, "feature_b": fb, "pair_cardinality": n_ab,
                             "relation_mi": rel, "relation_chance": float(np.mean(rel_ch)), "relation": rel_c,
                             "redundancy_mi": rd, "redundancy_chance": float(np.mean(rd_ch)), "redundancy": rd_c})
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        self.pairs_ = pl.DataFrame(rows, schema={"feature_a": pl.String, "feature_b": pl.String,
                                                 "pair_cardinality": pl.Int64, "relation_mi": pl.Float64,
                                                 "relation_chance": pl.Float64, "relation": pl.Float64,
                                                 "redundancy_mi": pl.Float64, "redundancy_chance": pl.Float64,
                                                 "redundancy": pl.Float64}).sort("relation", descending=True)
        self.redundancy_ = pl.DataFrame({"feature": cand, **{g: [red[f][g] for f in cand] for g in cand}})

    def _three_mr(self, cand: list[str], relevance: dict[str, float]) -> tuple[list[str], dict[str, dict[str, float]]]:
        def minmax(vals: dict[Any, float]) -> dict[Any, float]:
            if not vals:
                return {}
            lo, hi = min(vals.values()), max(vals.values())
            return {k: ((v - lo) / (hi - lo) if hi > lo else 0.0) for k, v in vals.items()}

        rel = minmax({f: relevance[f] for f in cand})
        red_raw, relat_raw = {}, {}
        for r in self.pairs_.iter_rows(named=True):
            key = frozenset((r["feature_a"], r["feature_b"]))
            red_raw[key], relat_raw[key] = r["redundancy"], r["relation"]
        red, relat = minmax(red_raw), minmax(relat_raw)
        agg = {"median": statistics.median, "mean": statistics.fmean, "sum": math.fsum}[self.aggregation]
        first = max(cand, key=lambda f: (rel[f], f == cand[0]))
        chosen = [first]
        info = {first: {"relevance_norm": rel[first], "mr_objective": rel[first]}}
        left = [f for f in cand if f != first]
        while left:
            best, best_val = None, -math.inf
            for f in left:
                val = (rel[f] - self.alpha * agg([red[frozenset((s, f))] for s in chosen])
                       + self.beta * agg([relat[frozenset((s, f))] for s in chosen]))
                if val > best_val:
                    best, best_val = f, val
            chosen.append(best)
            info[best] = {"relevance_norm": rel[best], "mr_objective": best_val}
            left.remove(best)
        return chosen, info

    # ------------------------------------------------------------------------ helpers
    def selected(self, top_k: int | None = None, min_score: float | None = None, significance: float | None = None,
                 drop_flagged: tuple[str, ...] = ("suspected_leak", "constant")) -> list[str]:
        """Features to keep, in ranking order: the ``top_k`` best, or those with ``score > min_score``;
        by default those whose MI is significant: ``p_adjusted <= significance`` (the ranker's
        ``significance``, 0.01, unless given; see :mod:`recsys.features.significance`) and corrected
        MI > 0.

        Columns the data-quality report flags under ``drop_flagged`` are never selected (by
        default suspected label leaks and constant columns: a leak scores highest of all and would
        otherwise head the selection. ID-like columns are kept: the chance correction already
        discounts them, and one that stays significant carries signal); pass ``()`` to keep all.
        """
        r = self.ranking_
        flags = (self.quality_ or {}).get("flagged", {}) if drop_flagged else {}
        dropped = sorted({c for k in drop_flagged for c in flags.get(k, [])})
        if dropped:
            r = r.filter(~pl.col("feature").is_in(dropped) & ~pl.col("column").is_in(dropped))
        if top_k is not None:
            return r["feature"].head(top_k).to_list()
        if min_score is not None:
            return r.filter(pl.col("score") > min_score)["feature"].to_list()
        level = self.significance if significance is None else significance
        return r.filter((pl.col("p_adjusted") <= level) & (pl.col("mi_corrected") > 0))["feature"].to_list()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: settings, label, ranking, pairs."""
        return {
            "heuristic": self.heuristic, "correction": self.correction, "n_permutations": self.n_permutations,
            "seed": self.seed, "n_bins": self.n_bins, "batch_size": self.batch_size, "sample": self.sample,
            "alpha": self.alpha, "beta": self.beta, "aggregation": self.aggregation,
            "selection": {"significance": self.significance, "p_adjust": self.p_adjust, "null_draws": self.null_draws},
            "label": {"column": self.label_name_, "classes": [str(c) for c in self.classes_],
                      "counts": self.class_counts_.tolist(), "entropy": self.label_entropy_},
            "n_rows": self.n_rows_,
            "ranking": _jsonable(self.ranking_.to_dicts()),
            "pairs": _jsonable(self.pairs_.to_dicts()) if self.pairs_ is not None else None,
        }


def _declared_missing(frame: pl.DataFrame | pl.LazyFrame, dtypes: dict[str, pl.DataType], schema: Schema
                      ) -> tuple[pl.DataFrame | pl.LazyFrame, dict[str, pl.DataType]]:
    """The frame with each field's declared ``missing_values`` replaced by null (see
    :mod:`recsys.data.missing`; a numeric field's string column becomes Float64), and its dtypes."""
    from recsys.data.missing import missing_expr

    tokens: dict[str, list[str]] = {}
    numeric: dict[str, bool] = {}
    for f in schema.fields:
        t = schema.missing_of(f)
        if t and f.source in dtypes:
            tokens.setdefault(f.source, []).extend(x for x in t if x not in tokens[f.source])
            numeric[f.source] = numeric.get(f.source, False) or f.kind == "numeric"
    exprs = [e for c, t in tokens.items() if (e := missing_expr(c, dtypes[c], tuple(t), numeric[c])) is not None]
    if not exprs:
        return frame, dtypes
    frame = frame.with_columns(exprs)
    return frame, (dict(frame.collect_schema()) if isinstance(frame, pl.LazyFrame) else dict(frame.schema))


def _round_half_away(x: float) -> int:
    """Round to the nearest integer, halves away from zero (Rust's ``f64::round``, used by polars), x >= 0."""
    f = math.floor(x)
    return int(f) + 1 if x - f >= 0.5 else int(f)


def _count_sums(keys: np.ndarray, size: int) -> tuple[float, int]:
    """``(sum n log n, number of distinct keys)`` of integer keys in ``[0, size)``."""
    if size <= _DENSE_LIMIT:
        c = np.bincount(keys, minlength=size)
        c = c[c > 0]
    else:
        c = pl.Series(keys).value_counts(sort=False)["count"].to_numpy()
    return _xlogx_sum(c), int(c.size)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return _jsonable(float(obj))
    return obj

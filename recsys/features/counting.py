"""The counting engine of the feature ranker: exact per-value label counts over all rows, streamed.

Per batch, each column's values become dense codes ``0, 1, ...`` (in order of first appearance)
through a running dictionary kept with numpy (:class:`_Coder`): a direct lookup table for
integers in a small range, else an open-addressing hash table (:class:`_HashTable`) keyed by the
integer itself or, for strings, multi-hot sets and other types, by two independent 64-bit hashes
(a 128-bit key). The codes are then counted with ``np.bincount`` against the label and its
permutations (:class:`_BatchLabels`): one bincount over ``code x joint label pattern`` for columns
with few values, otherwise bincounts whose float64 weights pack the row count and the label
indicators bit-field by bit-field (exact: every packed sum stays below ``2**53``). The running
per-value arrays of a :class:`_Column` (count, label counts, permuted label counts) grow as new
values appear and are added to in place; two random linear hashes of the column's codes (row by
row) fingerprint its partition of the rows.

The label permutations are exact *global* permutations generated while streaming
(:class:`_PermutedStream`). :func:`count_batches` runs the pass: columns in parallel threads,
the next batch read meanwhile. Nothing here scores or ranks: that is
:mod:`recsys.features.ranking`; the data-quality report reads the finished :class:`_Column`\ s.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl

# ---------------------------------------------------------------------------------- per column
def _row_hashes(rows: np.ndarray) -> np.ndarray:
    """2 x rows uint64: two independent splitmix64 hashes of the row numbers. ``hashes @ codes``
    (mod 2**64), summed over the batches, fingerprints a column's partition of the rows: codes in
    order of first appearance are equal row by row exactly for equal partitions, and two different
    code vectors (differences below 2**31) give the same pair with probability below 2**-66."""
    r = rows.astype(np.uint64)
    return np.stack([_mix64(r + np.uint64(0x9E3779B97F4A7C15)), _mix64(r ^ np.uint64(0xD1B54A32D192ED03))])


_EMPTY = -1  # hash table / lookup table: free slot
_CLAIMED = np.iinfo(np.int32).min  # taken in the current batch, code not yet assigned (< every -2 - position)
_FIB = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xC2B2AE3D27D4EB4F)
_LUT_MIN = 1 << 16  # a direct lookup table may always span this many integers...
_LUT_PER_VALUE = 4  # ...or this many per distinct value (+ per row of the batch being coded)
_CHUNK = 1 << 21  # rows per weighted bincount of packed label counts (each partial sum cast to int64)
_PATTERN_MAX = 1 << 12  # joint label patterns counted in one bincount when C**(K+1) is at most this
_PATTERN_CELLS = 1 << 20  # ... and distinct values x patterns is at most this
_DISTINCT_SHARE = 1 / 64  # string batches without missing values and with at most this share of distinct
                          # values: polars dedupes first (measured: more distinct values or missing ones, slower)
_DISTINCT_PROBE = 4096  # (the first batch: judged by the distinct values among its first rows)
_DISTINCT_MIN_ROWS = 4096  # (smaller batches: the hash coder directly)
_GROW_FIRST_ROWS = 4096  # hash coder: at least this many new rows, at least 1/4 of them new values -> grow, then claim


def keep_rows(dest: np.ndarray, keep: np.ndarray, row0: int, batch: np.ndarray) -> None:
    """Copy into ``dest`` (one slot per kept row) the values of ``batch`` (rows ``row0..``) at the
    kept rows ``keep`` (ascending row numbers of the whole data) that fall in this batch."""
    lo, hi = np.searchsorted(keep, [row0, row0 + batch.size])
    dest[lo:hi] = batch[keep[lo:hi] - row0]


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
            won = col[s] == rows
            win = np.flatnonzero(won)
            sw = s[win]
            t[sw, 0] = k1[win]
            if w == 2:
                t[sw, 1] = k2[win]
            col[sw] = _CLAIMED if fill is None else fill[win]
            self.used += win.size
            out[idx[win]] = sw  # (a winner's probe would find its key right there: only the others probe on)
            todo = np.flatnonzero(~won)
            idx, s, k1 = idx[todo], s[todo], k1[todo]
            k2 = k2[todo] if k2 is not None else None
            fill = fill[todo] if fill is not None else None
        return out


def _estimated_distinct(k: np.ndarray) -> int:
    """How many distinct values ``k`` holds, estimated (polars' HyperLogLog: within a few %, ~1 ms per 262,144)."""
    return int(pl.Series(k).approx_n_unique())


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
        free = end[miss]
        if 2 * (table.used + miss.size) > table.cap and miss.size >= _GROW_FIRST_ROWS:
            new = _estimated_distinct(mk1)
            if 4 * new >= miss.size:  # mostly new values (e.g. the first batch of an id-like column): grow first,
                # to room for them as the other branch grows (and for every missing row), then claim in place
                self._rehash(max(int(1.5 * (table.used + new)) + new, (2 * (table.used + miss.size)) // 3 + 1))
                table, free = self.table, None
        if 2 * (table.used + miss.size) <= table.cap:
            # room even if every missing row were a distinct value: claim them in the table itself
            ls = table.insert(mk1, mk2, free=free)
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
        self.rh = _row_hashes(rows)

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


def _unpack_add(dest: np.ndarray, packed: np.ndarray, width: int, skip: int) -> None:
    """``dest[i] += field skip + i of packed`` (fields of ``width`` bits, the lowest first), row by
    row through one buffer (no fields x values temporaries)."""
    mask = (1 << width) - 1
    t = np.empty_like(packed)
    for i in range(dest.shape[0]):
        np.right_shift(packed, width * (skip + i), out=t)
        t &= mask
        dest[i] += t


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
    distinct value (by code, i.e. in order of first appearance): its row count, its label counts and
    its permuted label counts (growable numpy arrays); and the partition's fingerprint."""

    name: str  # feature name (schema field name or column)
    source: str  # raw column
    kind: str  # categorical | numeric | multi_hot
    n_classes: int
    n_perm: int
    n_bins: int = 10
    separator: str | None = None
    boundaries: np.ndarray | None = None

    def start(self, count_dtype: type, keep: np.ndarray | None = None) -> None:
        """Reset the counts; with ``keep`` (ascending row numbers) also keep those rows' dense codes
        (``codes``: int32, in row order; the redundancy step of ``mi-redundancy`` reads them)."""
        self.keep = keep
        self.codes: np.ndarray | None = np.empty(keep.size, np.int32) if keep is not None else None
        self.coder: _Coder | None = None
        self.dtype = count_dtype  # int32 while the data has < 2**31 rows
        self.card = 0
        self._cap = 0
        self._n = self._cnt = None
        self._fp = np.zeros(2, np.uint64)  # (see _row_hashes)
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

    def _encode_distinct(self, k1: np.ndarray, k2: np.ndarray, valid: np.ndarray | None,
                         values: pl.Series | None) -> tuple[np.ndarray, np.ndarray] | None:
        """A string column with few distinct values in this batch: the batch deduplicated by polars
        (first rows of its distinct values, batch-local categorical ids), then only those values
        coded by the running dictionary. The same codes as ``coder.encode`` of every row (values keep
        their order of first appearance). None: not a string batch without missing values, or too
        many distinct values (``_DISTINCT_SHARE``): then ``coder.encode`` of every row."""
        m = k1.size
        if (values is None or values.dtype != pl.String or self.kind == "multi_hot" or valid is not None
                or m < _DISTINCT_MIN_ROWS):
            return None
        if self.coder.card > m * _DISTINCT_SHARE or (
                self.coder.card == 0 and values.head(_DISTINCT_PROBE).n_unique() > _DISTINCT_PROBE // 4):
            return None  # many values: the full-batch hash coder is cheaper than deduplicating first
        first = values.arg_unique().to_numpy().astype(np.int64)  # ascending: first row of each distinct value
        if first.size > m * _DISTINCT_SHARE:
            return None
        loc = values.cast(pl.Categorical).to_physical().to_numpy()  # batch-local id of each row's value
        inv = np.empty(int(loc.max()) + 1, np.int64)
        inv[loc[first]] = np.arange(first.size)
        dcodes, dnew = self.coder.encode(k1[first], k2[first], None)
        return dcodes[inv[loc]], first[dnew]

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
        self._cap = cap

    def update(self, s: pl.Series, lab: _BatchLabels, row0: int) -> None:
        """Count one batch (``row0``: the row number of its first row)."""
        k1, k2, valid, values = self.keys(s)
        if self.coder is None:
            self.coder = _Coder(two_keys=k2 is not None)
        coded = self._encode_distinct(k1, k2, valid, values) if k2 is not None else None
        codes, new_pos = coded if coded is not None else self.coder.encode(k1, k2, valid)
        card = self.coder.card
        if self.codes is not None:  # (a batch's codes never change later: new values get new codes)
            keep_rows(self.codes, self.keep, row0, codes)
        self._ensure(card)
        if new_pos.size:
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
                packed = _bincount(codes, wt, card)
                n = packed & ((1 << w) - 1)
                if int(n.sum()) == codes.size:
                    _unpack_add(cnt, packed, w, 1)
                else:
                    n = None
            if n is None:
                n = np.bincount(codes, minlength=card)
                w = max(1, int(n.max()).bit_length())
                for wt, idx in lab.packed(w):
                    _unpack_add(cnt[idx[0]:idx[-1] + 1], _bincount(codes, wt, card), w, 0)
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
        self._fp += lab.rh @ (codes.view(np.uint64) if codes.dtype == np.int64 else codes.astype(np.uint64))  # (mod 2**64)

    def finalize(self) -> None:
        """Expose numpy arrays (values already in order of first appearance) and the fingerprint."""
        card, C = self.card, self.n_classes
        self.values = pl.concat(self._values) if self._values else pl.Series("v", [], dtype=pl.Int32)
        self._values = []
        self.n = self._n[:card].astype(np.int64)
        cnt = self._cnt[:, :card]  # field x value
        ys = cnt[:C - 1].T.astype(np.int64)
        self.table = np.concatenate([(self.n - ys.sum(1))[:, None], ys], axis=1)
        self.perm = [np.ascontiguousarray(cnt[(k + 1) * (C - 1):(k + 2) * (C - 1)].T.astype(np.int64))
                     for k in range(self.n_perm)]
        self.fingerprint = self._fp.tobytes()
        self.null_index = self.coder.null_code if self.coder is not None else None
        self._n = self._cnt = None
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


def count_batches(batches: Iterator[pl.DataFrame], cols: list[_Column], labels: Callable[[pl.DataFrame, int], _BatchLabels],
                  pool: Any = None, progress: Any = None, ready: dict[int, Any] | None = None) -> int:
    """The counting pass: each batch's columns counted (in ``pool``'s threads, biggest columns first,
    while the next batch and its labels are prepared), ``labels(batch, row0)`` giving the batch's
    label codes and permutations; returns the number of rows counted. ``ready``: ``{id(column):
    future}`` that column's first batch waits for (tasks submitted to ``pool`` before this pass, e.g.
    its bin boundaries: already taken up by a thread when the column's turn comes)."""
    ready = dict(ready or {})

    def update(c: _Column, s: pl.Series, lab: _BatchLabels, row0: int) -> None:
        if id(c) in ready:
            ready.pop(id(c)).result()
        c.update(s, lab, row0)

    it = iter(batches)
    b = next(it, None)
    lab = labels(b, 0) if b is not None else None
    row0 = 0
    while b is not None:
        m = b.height
        if pool is not None:
            # biggest first: by values so far; in the first batch list and string columns before the others
            first_cost = {c.source: 0 if isinstance(b[c.source].dtype, pl.List) else 1 if b[c.source].dtype == pl.String
                          else 2 for c in cols} if row0 == 0 else None
            todo = [pool.submit(update, c, b[c.source], lab, row0)
                    for c in sorted(cols, key=lambda c: (-c.card, first_cost[c.source] if first_cost else 0))]
            nb = next(it, None)
            nlab = labels(nb, row0 + m) if nb is not None else None
            for f in todo:
                f.result()
        else:
            for c in cols:
                update(c, b[c.source], lab, row0)
            nb = next(it, None)
            nlab = labels(nb, row0 + m) if nb is not None else None
        b, lab = nb, nlab
        row0 += m
        if progress is not None:
            progress.update(m)
    return row0

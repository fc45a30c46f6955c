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
* ``mi-cardinality``: ``I(f; y)`` minus the MI that a column with the *same values and
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
  (``z = (mi - chance_mi_mean) / chance_mi_std``, a rough guide: 5 permutations estimate the
  spread poorly), and the same estimator serves all three 3MR terms
  (feature-feature redundancy included), where the closed form's cost grows with the product of
  the two columns' numbers of distinct value counts. ``emi`` is always reported next to it; the two
  agree to within about ``chance_mi_std / sqrt(n_permutations)`` (tested), so users who want a
  deterministic, noise-free correction pick ``"expected"``. Relevance only: two copies of the
  best column rank first and second. (The default until issue 21.)
* ``mi-redundancy`` (default): the features that pass the selection test (below; at most
  ``pair_top_k``, most relevant first) in greedy order of what each *adds* to the features chosen
  before it, then the others in ``mi-cardinality`` order. The first is the most relevant; then
  each step picks the feature with the largest ``min(relevance(f), min_{s chosen} add(f, s))``,
  where ``add(f, s)`` is

  - the chance-corrected conditional MI ``I(f; y | s) = [I(f (+) s; y) - EMI(f (+) s)] -
    [I(s; y) - EMI(s)]`` (``f (+) s``: the pair's combination, ``EMI``: the closed-form chance MI)
    where it can be estimated: the pair's values average at least 5 rows of the rarest class, or
    at least 1 when the pair has at most twice the values of its finer column (one is about a
    function of the other: a copy, a coarsening). 0 for a copy or a function of ``s``;
  - else (a sparse pair, e.g. two ids whose combination is almost unique per row, where the
    plug-in conditional MI is meaningless) ``relevance(f) * (1 - share)``, with ``share = max(0,
    I(f; s) - EMI(f, s)) / H(f)`` the part of f's entropy that ``s`` determines beyond chance.

  ``ranking_`` gains ``redundancy`` (``1 - score / relevance``: the share of the feature's
  relevance the chosen features already carry) and ``redundant_with`` (the chosen feature that
  takes the most). Lazy greedy: a candidate's score only falls as the chosen set grows, so a pair
  is counted only when its candidate could be the next pick. The pair statistics use every row up
  to 262,144 rows, else a seeded sample of that many (the rows' codes are kept from the counting
  pass, no second read); a pair of two many-valued columns (more than 2**22 possible value pairs)
  is first counted on a seeded sub-sample of 65,536 of those rows and judged there when it is
  sparse. **Why it is the default** (issue 21, ``experiments/bench/
  feature_selection.py``: DeepFM on the top-k fields, 3 seeds): relevance alone picks redundant
  fields at small k -- on Adult its top 2 are relationship and marital_status, two views of
  "married" (test AUC 0.782, below a random pair); ``mi-redundancy`` picks relationship and
  education (0.865) and is >= OutRank at every k on ml100k-ctr, Adult and the wide table; the
  table is in ``experiments/bench/README.md``. On the 1M x 40 benchmark data the default fit
  costs 1.10x the CPU time of ``mi-cardinality`` (5.22 s vs 4.75 s, medians of 3 alternating
  fresh processes; peak RSS +6 MiB). Its worst case is many significant many-valued columns:
  20 informative id columns over 1M rows, 0.50 s -> 1.64 s CPU (``rank_features_compare.py
  --ids-worst-case``).
* ``3mr``: OutRank's extension of mRMR: greedy selection by
  ``relevance(f) - alpha * agg_{s in S} redundancy(s, f) + beta * agg_{s in S} relation(s, f)``
  with ``agg`` the median (``mean``/``sum`` configurable), where relevance is the corrected
  ``I(f; y)``, redundancy the corrected ``I(f; s)`` and relation the corrected ``I(f (+) s; y)``
  of the pair's combination; each of the three score sets is min-max normalized to ``[0, 1]``
  separately. Only the ``pair_top_k`` most relevant features take part (default 20); the rest
  follow in relevance order.

Selection: every column gets a p-value for "its MI is more than chance" (the G-test ``G = 2 N
mi`` under the same permutation model: chi-square where Cochran's rule holds, else a scaled
chi-square with the exact mean ``2 N emi`` and the permutation variance; see
:mod:`recsys.features.significance`), corrected for the number of columns (``p_adjust``: Holm,
default, or Benjamini-Hochberg): ``p_value``, ``p_adjusted`` and ``p_method`` in ``ranking_``.
:meth:`FeatureRanker.selected` keeps, by default, the columns with ``p_adjusted <=
significance`` (0.01) and positive corrected MI. Over 20 noise-only tables of 40 columns it keeps
a noise column in 1 (the former rule, ``z >= 3``, in 17); tested.

Pairs (``pairs=True`` or ``heuristic="3mr"``): for the ``pair_top_k`` most relevant features,
``pairs_`` holds every pair's combined MI with the label (plain and corrected) and the pair's
redundancy (plain and corrected ``I(a; b)``); ``redundancy_`` is the feature x feature matrix of the
corrected redundancy (diagonal: the feature's entropy). A pair's combination is the exact integer
``code_a * card_b + code_b`` of the two columns' dense codes: no collisions, unlike string
concatenation (``"1" + "23"`` vs ``"12" + "3"``). Pair terms always use the permutation correction
(``pair_permutations`` seeded permutations of the label / of the second column, default 1).

Counting and memory
-------------------
(The engine is :mod:`recsys.features.counting`; ``fit`` runs reading, counting, scoring and
ranking as separate steps.)
Counts are exact over **all rows** (or over an explicit ``sample`` of rows), streamed in batches
of ``batch_size`` rows. Per batch, each column's values become dense codes ``0, 1, ...`` (in order
of first appearance) through a running dictionary kept with numpy: a direct lookup table for
integers in a small range, else an open-addressing hash table keyed by the integer itself or,
for strings, multi-hot sets and other types, by two independent 64-bit hashes (a 128-bit key).
The codes are then counted with ``np.bincount`` against the label and its permutations: one
bincount over ``code x joint label pattern`` for columns with few values, otherwise bincounts whose
float64 weights pack the row count and the label indicators bit-field by bit-field (exact: every
packed sum stays below ``2**53``). The running per-value arrays (count, label counts, permuted
label counts) grow as new values appear and are added to in place. Memory grows with distinct
values (about ``(1 + (K + 1) (C - 1)) * 4`` bytes per distinct value and column for the counts,
plus the dictionary, ~50 bytes, and the value itself),
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

import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl

from recsys.errors import ConfigError, DataError
from recsys.features.counting import _BatchLabels, _Column, _PermutedStream, count_batches, keep_rows
from recsys.features.quality import QualityThresholds, quality_report
from recsys.features.significance import ADJUSTMENTS, _log_factorial, _log_factorial_upto, _unique_counts, benjamini_hochberg, g_test_p_value, holm
from recsys.schema import Schema

__all__ = [
    "FeatureRanker",
    "mutual_info_from_counts",
    "expected_mutual_info",
    "entropy_from_counts",
    "scan_table",
    "HEURISTICS",
]

HEURISTICS: tuple[str, ...] = ("mi", "mi-cardinality", "mi-redundancy", "3mr")
CORRECTIONS: tuple[str, ...] = ("permutation", "expected")
AGGREGATIONS: tuple[str, ...] = ("median", "mean", "sum")
MAX_CLASSES = 100
_DENSE_LIMIT = 1 << 22  # pair keys below this are counted with bincount, above with a hash table
_PAIR_CELL_ROWS = 5  # mi-redundancy: conditional MI where a pair's values average >= 5 rows of the rarest class
#                     (or >= 1 when the pair has at most twice the values of its finer column: see _estimable)
_REDUNDANCY_ROWS = 1 << 18  # mi-redundancy's pair statistics: all rows up to this many, else a seeded sample
_SPARSE_PAIR_ROWS = 1 << 16  # ... of which pairs of two many-valued columns use a seeded sub-sample of this many
_EMI_CHUNK = 1 << 16  # expected_mutual_info: terms evaluated together (several b_j's when each has few)
_KEEP_CODES_BYTES = 1 << 29  # mi-redundancy keeps those rows' codes from the counting pass up to this, else re-reads


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
    lf = _log_factorial_upto(n)  # every argument below is in [0, n]
    lf_a = lf(av) + lf(n - av)  # per a_i: log(a_i!) + log((n - a_i)!)
    log_av = np.log(av)
    log_n = math.log(n)
    # per (b_j, a_i), as nb x na arrays: the support of n_ij (the hypergeometric mass beyond 12
    # standard deviations is < 1e-30: those terms are skipped)
    p = (bv / n)[:, None]
    mean = av * p
    sd = np.sqrt(av * p * ((n - av) / n) * ((n - bv) / max(n - 1, 1))[:, None])
    lo = np.maximum(np.maximum(1, av + bv[:, None] - n), np.floor(mean - 12 * sd - 2).astype(np.int64))
    hi = np.minimum(np.minimum(av, bv[:, None]), np.ceil(mean + 12 * sd + 2).astype(np.int64))
    length = np.maximum(hi - lo + 1, 0)
    per_b = length.sum(1).tolist()
    base = (lf_a + (lf(bv) + lf(n - bv))[:, None]) - lf_n  # log(a_i! (n - a_i)! b_j! (n - b_j)! / n!)
    log_b = [math.log(x) for x in bv.tolist()]
    log_b_arr = np.array(log_b)
    b_list, w_list = bv.tolist(), bw.tolist()
    total = 0.0
    j = 0
    while j < bv.size:  # the terms of consecutive b_j together, ~_EMI_CHUNK at a time (one b_j: all of its)
        k, m = j + 1, per_b[j]
        while k < bv.size and m + per_b[k] <= _EMI_CHUNK:
            m += per_b[k]
            k += 1
        if m:
            ln = length[j:k].ravel()
            cell = np.repeat(np.arange(ln.size), ln)
            nij = lo[j:k].ravel()[cell] + np.arange(m) - (np.cumsum(ln) - ln)[cell]
            if k == j + 1:
                i, bj, lb = cell, b_list[j], log_b[j]
            else:
                i, r = cell % av.size, cell // av.size + j
                bj, lb = bv[r], log_b_arr[r]
            ai = av[i]
            # (term by term as the expected-MI sum reads, in the same order of operations)
            log_p = base[j:k].ravel()[cell] - lf(nij) - lf(ai - nij) - lf(bj - nij) - lf(n - ai - bj + nij)
            term = nij / n * (log_n + np.log(nij) - log_av[i] - lb) * np.exp(log_p)
            w = aw[i]
            e = 0
            for q in range(j, k):  # each b_j's sum, in order
                s_, e = e, e + per_b[q]
                if e > s_:
                    total += w_list[q] * float(np.dot(w[s_:e], term[s_:e]))
        j = k
    return max(total, 0.0)


# ------------------------------------------------------------------------------------ reading
def scan_table(path: str | Path) -> pl.LazyFrame:
    """A lazy scan of a parquet / CSV file (or a directory of parquet files), with clear errors
    (:func:`recsys.data.sources.read_table` with ``lazy=True``; importing it loads no torch)."""
    from recsys.data.sources import read_table

    return read_table(path, lazy=True)


# ------------------------------------------------------------------------------------ the ranker
@dataclass
class _Input:
    """What reading found: the (missing-value-cleaned) frame, the label, the columns to count,
    the label's classes and counts, and the value -> class-code map."""

    frame: pl.DataFrame | pl.LazyFrame
    where: str
    label: str
    cols: list[_Column]
    classes: list[Any]
    class_counts: np.ndarray
    n: int
    label_map: pl.DataFrame
    # for the counting pass, which takes (and drops) them: the numeric columns' boundary inputs
    # ``(lazy, numeric columns, their materialized frame or None)`` and their rows (or None)
    numeric: tuple | None = None
    numeric_rows: pl.DataFrame | None = None


def _check_column_kind(f, kind: str, dt: pl.DataType, where: str) -> None:
    """A schema field whose column cannot hold its kind is a DataError naming the column."""
    lists = isinstance(dt, (pl.List, pl.Array))
    text = dt in (pl.String, pl.Categorical) or isinstance(dt, (pl.Categorical, pl.Enum))
    at = f"{where}, column {f.source!r}"
    if isinstance(dt, (pl.Struct, pl.Object)) or (lists and isinstance(dt.inner, (pl.List, pl.Array, pl.Struct))):
        raise DataError(f"field {f.name!r} holds {dt} values, which cannot be ranked", where=at,
                        fix="flatten the column or leave it out of the schema")
    if kind == "multi_hot" and not (lists or (text and f.separator)):
        raise DataError(f"{f.kind} field {f.name!r} needs a list column" + (" or a delimited string" if f.separator else
                        "") + f", got {dt}", where=at,
                        fix="store lists (parquet), set 'separator:' for a delimited string column, or declare the "
                            "field categorical/numeric")
    if kind == "numeric" and not (dt.is_numeric() or dt == pl.Boolean or dt.is_temporal() or dt == pl.Null):
        raise DataError(f"numeric field {f.name!r} holds {dt}, not numbers", where=at,
                        fix="convert the column to numbers, or declare the field categorical")
    if kind == "categorical" and lists:
        raise DataError(f"categorical field {f.name!r} holds lists ({dt})", where=at,
                        fix="declare it multi_hot, or store one value per row")


class FeatureRanker:
    """Rank features by (cardinality-corrected) mutual information with a label; see the module doc.

    Args:
        label: the label column (binary or multi-class, at most 100 classes). ``None`` takes the
            schema's label, else ``"label"``.
        heuristic: ``mi-redundancy`` (default), ``mi-cardinality``, ``mi`` or ``3mr``.
        correction: chance MI subtracted by ``mi-cardinality`` / ``mi-redundancy`` / ``3mr`` relevance:
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
        pair_top_k: how many of the most relevant features take part in pairs / 3MR / the
            ``mi-redundancy`` reordering (``None``: all).
        pair_permutations: permutations for the chance MI of pair terms.
        alpha, beta, aggregation: 3MR's redundancy weight, relation weight and aggregate.
        quality: thresholds of the data-quality report
            (:class:`recsys.features.quality.QualityThresholds`).
        progress: show a tqdm progress bar.
        n_threads: columns counted in parallel threads (numpy releases the GIL in the heavy
            parts); default: polars' thread pool size (the number of cores, or
            ``POLARS_MAX_THREADS``). Results do not depend on it.
        significance: level of the default selection (adjusted p-value at most this; 0.01).
        p_adjust: ``holm`` (family-wise error, default) or ``bh`` (false discovery rate).
        null_draws: random tables for the p-value of sparse columns against a multi-class label.

    Parameters are stored as given (scikit-learn's estimator contract: ``get_params`` /
    ``set_params``); ``fit`` validates them and resolves the schema into ``schema_``.

    Attributes (after ``fit``):
        ranking_: one row per feature, best first: ``rank``, ``feature``, ``kind``, ``score`` (the
            heuristic's), ``mi``, ``chance_mi_mean``, ``chance_mi_std``, ``emi``, ``mi_corrected``,
            ``z``, ``p_value``, ``p_adjusted``, ``p_method``, ``mi_norm`` (corrected MI / label entropy), ``cardinality``, ``coverage``
            (+ ``relevance_norm`` and ``mr_objective`` for 3MR; + ``redundancy`` and
            ``redundant_with`` for ``mi-redundancy``, whose ``score`` is what the feature adds to
            the ones ranked above it).
        pairs_: pair table (or ``None``). redundancy_: matrix as a DataFrame (or ``None``).
        quality_: the data-quality report (dict). label_entropy_, n_rows_, classes_.
        schema_: the schema used (a :class:`~recsys.schema.Schema`, or ``None``).
    """

    def __init__(
        self,
        label: str | None = None,
        heuristic: str = "mi-redundancy",
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
        # scikit-learn's contract: parameters are stored exactly as given; fit validates them
        self.label = label
        self.heuristic = heuristic
        self.correction = correction
        self.n_permutations = n_permutations
        self.seed = seed
        self.schema = schema
        self.features = features
        self.exclude = exclude
        self.n_bins = n_bins
        self.batch_size = batch_size
        self.sample = sample
        self.pairs = pairs
        self.pair_top_k = pair_top_k
        self.pair_permutations = pair_permutations
        self.alpha = alpha
        self.beta = beta
        self.aggregation = aggregation
        self.quality = quality
        self.progress = progress
        self.n_threads = n_threads
        self.significance = significance
        self.p_adjust = p_adjust
        self.null_draws = null_draws

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, as given (scikit-learn's ``get_params``)."""
        import inspect

        return {k: getattr(self, k) for k in inspect.signature(type(self).__init__).parameters if k != "self"}

    def set_params(self, **params: Any) -> "FeatureRanker":
        """Set constructor parameters (validated at the next ``fit``)."""
        known = self.get_params()
        for k, v in params.items():
            if k not in known:
                raise ConfigError(f"unknown parameter {k!r}", where="FeatureRanker.set_params",
                                  fix=f"use one of {sorted(known)}")
            setattr(self, k, v)
        return self

    def _validate_params(self) -> None:
        def integer(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def number(v: Any) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        if self.heuristic not in HEURISTICS:
            raise ConfigError(f"unknown heuristic {self.heuristic!r}", where="heuristic",
                              fix=f"use one of {list(HEURISTICS)}")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"unknown correction {self.correction!r}", where="correction",
                              fix=f"use one of {list(CORRECTIONS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {self.aggregation!r}", where="aggregation",
                              fix=f"use one of {list(AGGREGATIONS)}")
        if not integer(self.n_permutations) or self.n_permutations < 1:
            raise ConfigError(f"n_permutations must be an integer >= 1, got {self.n_permutations!r}",
                              where="n_permutations")
        if not integer(self.pair_permutations) or self.pair_permutations < 1:
            raise ConfigError(f"pair_permutations must be >= 1, got {self.pair_permutations!r}", where="pair_permutations")
        if not integer(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}", where="batch_size")
        if not integer(self.n_bins) or self.n_bins < 2:
            raise ConfigError(f"n_bins must be an integer >= 2, got {self.n_bins!r}", where="n_bins")
        if self.sample is not None and (not integer(self.sample) or self.sample < 1):
            raise ConfigError(f"sample must be a positive number of rows, got {self.sample!r}", where="sample")
        if self.n_threads is not None and (not integer(self.n_threads) or self.n_threads < 1):
            raise ConfigError(f"n_threads must be a positive integer, got {self.n_threads!r}", where="n_threads")
        if self.pair_top_k is not None and (not integer(self.pair_top_k) or self.pair_top_k < 2):
            raise ConfigError(f"pair_top_k must be >= 2 (or None for all), got {self.pair_top_k!r}", where="pair_top_k")
        if not integer(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}", where="seed")
        for name in ("alpha", "beta"):
            if not number(getattr(self, name)):
                raise ConfigError(f"{name} must be a number, got {getattr(self, name)!r}", where=name)
        if not number(self.significance) or not 0 < self.significance < 1:
            raise ConfigError(f"significance must be a level in (0, 1), got {self.significance!r}", where="significance")
        if self.p_adjust not in ADJUSTMENTS:
            raise ConfigError(f"unknown p_adjust {self.p_adjust!r}", where="p_adjust", fix=f"use one of {list(ADJUSTMENTS)}")
        if not integer(self.null_draws) or self.null_draws < 10:
            raise ConfigError(f"null_draws must be an integer >= 10, got {self.null_draws!r}", where="null_draws")
        for name in ("features", "exclude"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, str) or not all(isinstance(x, str) for x in v)):
                raise ConfigError(f"{name} must be a list of column names, got {v!r}", where=name)

    def _resolve_schema(self) -> Schema | None:
        if self.schema is None or isinstance(self.schema, Schema):
            return self.schema
        if isinstance(self.schema, (str, Path)):
            return Schema.from_yaml(self.schema)
        raise ConfigError(f"schema must be a Schema or a schema YAML path, got {type(self.schema).__name__}",
                          where="schema")

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
        schema = self.schema_
        cols: list[_Column] = []
        if schema is not None:
            for f in schema.fields:
                if f.source not in dtypes:
                    raise DataError(f"schema field {f.name!r} reads column {f.source!r}, which the data lacks; "
                                    f"it has {names}", where=where, fix="fix the schema or the data")
                kind = {"numeric": "numeric", "multi_hot": "multi_hot", "sequence": "multi_hot"}.get(f.kind, "categorical")
                _check_column_kind(f, kind, dtypes[f.source], where)
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
        """Validate the parameters, resolve the schema (``schema_``), read, count over all rows
        (or the sample), score, rank; returns ``self``."""
        self._validate_params()
        self.schema_ = self._resolve_schema()
        frame, where = self._frame(data)
        try:
            inp = self._read(frame, where, label)
            self._count(inp)
            rows = self._score(inp)
            self._rank(rows, inp)
        except (pl.exceptions.PolarsError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise DataError(f"could not read the data ({type(e).__name__}: {first})", where=where,
                            fix="check that it is a valid parquet/CSV file with one type per column") from None
        return self

    def _pool(self, n_cols: int) -> ThreadPoolExecutor | None:
        n_threads = self.n_threads if self.n_threads is not None else pl.thread_pool_size()
        return ThreadPoolExecutor(min(n_threads, n_cols)) if n_threads > 1 and n_cols > 1 else None

    # ---- reading: schema, dtypes, declared missing values, the label's classes, the sample, numeric bins
    def _read(self, frame: pl.DataFrame | pl.LazyFrame, where: str, label: str | None) -> _Input:
        schema = self.schema_
        label = label or self.label or (schema.label if schema is not None else "label")
        dtypes = dict(frame.collect_schema()) if isinstance(frame, pl.LazyFrame) else dict(frame.schema)
        if schema is not None:  # declared placeholders ("?") are missing values
            frame, dtypes = _declared_missing(frame, dtypes, schema)
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

        # pass 0: label classes and counts (label column only), numeric quantiles
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
        C = len(classes)
        for c in cols:
            c.n_classes = C
        # the counting pass takes the numeric columns from here rather than decoding them again (those
        # that no categorical field reads as well: numbers, NaN as missing, are all a numeric field uses)
        other = {c.source for c in cols if c.kind != "numeric"}
        numeric_rows = None if numeric_frame is None else numeric_frame.select(
            pl.col(f"__n{i}").alias(c.source) for i, c in enumerate(numeric)
            if c.source not in other and c.source not in {d.source for d in numeric[:i]})
        del got
        label_map = pl.DataFrame({"v": pl.Series(classes, dtype=lab_dtype), "y": np.arange(C, dtype=np.int8)})
        # (the numeric columns' bin boundaries are computed by the counting pass's threads, while it
        # reads its first batch)
        return _Input(frame=frame, where=where, label=label, cols=cols, classes=classes, class_counts=class_counts,
                      n=int(class_counts.sum()), label_map=label_map, numeric=(lazy, numeric, numeric_frame),
                      numeric_rows=numeric_rows)

    # ---- counting: one pass over the rows (recsys.features.counting)
    def _count(self, inp: _Input) -> None:
        cols, C, n, label = inp.cols, len(inp.classes), inp.n, inp.label
        perm = _PermutedStream(inp.class_counts, self.n_permutations, self.seed)
        count_dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
        # mi-redundancy's pair statistics: on all rows, or a seeded sample of _REDUNDANCY_ROWS rows
        self._pair_rows = np.arange(n) if n <= _REDUNDANCY_ROWS else \
            np.sort(np.random.default_rng([int(self.seed), 0x12EE]).choice(n, _REDUNDANCY_ROWS, replace=False))
        keep = self._pair_rows if (self.heuristic == "mi-redundancy"
                                   and self._pair_rows.size * len(cols) * 4 <= _KEEP_CODES_BYTES) else None
        for c in cols:
            c.start(count_dtype, keep)
        self._y_kept = np.empty(keep.size, np.int8) if keep is not None else None
        pre, inp.numeric_rows = inp.numeric_rows, None  # (all rows of the numeric columns, or None)
        sources = list(dict.fromkeys([c.source for c in cols if pre is None or c.source not in pre.columns] + [label]))

        def labels(b: pl.DataFrame, row0: int) -> _BatchLabels:
            y = b.select(pl.col(label).alias("v")).join(inp.label_map, on="v", how="left", maintain_order="left")["y"]
            if self._y_kept is not None:
                keep_rows(self._y_kept, keep, row0, y.to_numpy())
            lab = _BatchLabels(y.to_numpy(), perm.next(b.height), C, np.arange(row0, row0 + b.height))
            lab.prepare()
            return lab

        bar = self._bar(n, "counting")
        pool = self._pool(len(cols))
        try:
            bounds = self._boundaries(*inp.numeric, pool=pool)
            inp.numeric = None
            if pool is not None:  # the scores' log-factorial table, while the first batch is read (else built there)
                pool.submit(_log_factorial, np.array([n]))
            batches = self._batches(inp.frame, sources)
            if pre is not None:
                batches = _with_rows(batches, pre)
            count_batches(batches, cols, labels, pool, bar, bounds)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    # ---- scoring: MI, chance MI, p-values per column; the multiple-testing correction
    def _score(self, inp: _Input) -> list[dict[str, Any]]:
        class_counts, n = inp.class_counts, inp.n
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

        pool = self._pool(len(inp.cols))
        try:
            rows = list(pool.map(score, sorted(inp.cols, key=lambda c: -c.card))) if pool is not None else \
                [score(c) for c in inp.cols]
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        order_of = {c.name: i for i, c in enumerate(inp.cols)}
        rows.sort(key=lambda r: order_of[r["feature"]])
        adjusted = (holm if self.p_adjust == "holm" else benjamini_hochberg)(np.array([r["p_value"] for r in rows]))
        for r, pa in zip(rows, adjusted.tolist()):
            r["p_adjusted"] = pa
        self.label_entropy_ = h_y
        return rows

    # ---- ranking: order by the heuristic (pairs / 3MR), the ranking table, the quality report
    def _rank(self, rows: list[dict[str, Any]], inp: _Input) -> None:
        self.n_rows_ = inp.n
        self.classes_ = inp.classes
        self.class_counts_ = inp.class_counts
        self.label_name_ = inp.label
        self._cols = {c.name: c for c in inp.cols}
        relevance = {r["feature"]: (r["mi"] if self.heuristic == "mi" else r["mi_corrected"]) for r in rows}
        ranked = sorted(rows, key=lambda r: (-relevance[r["feature"]], r["feature"]))
        self.pairs_ = None
        self.redundancy_ = None
        extra: dict[str, dict[str, float]] = {}
        order = [r["feature"] for r in ranked]
        if self.pairs or self.heuristic == "3mr":
            k = len(order) if self.pair_top_k is None else min(self.pair_top_k, len(order))
            cand = order[:k]
            self._pair_pass(inp.frame, cand, inp.label, inp.label_map, inp.class_counts)
            if self.heuristic == "3mr":
                order3, extra = self._three_mr(cand, relevance)
                order = order3 + [f for f in order if f not in set(order3)]
        if self.heuristic == "mi-redundancy":
            order, extra = self._redundancy_order(ranked, relevance, inp)
        for c in inp.cols:  # rows' codes kept by the counting pass: no longer needed
            c.codes = c.keep = None
        self._y_kept = self._pair_rows = None
        by_name = {r["feature"]: r for r in rows}
        out = []
        for i, f in enumerate(order):
            r = dict(by_name[f])
            r["rank"] = i + 1
            r["score"] = extra.get(f, {}).get("mr_objective", relevance[f]) if self.heuristic == "3mr" else \
                extra.get(f, {}).get("score", relevance[f])
            if self.heuristic == "mi-redundancy":
                r["redundancy"] = extra.get(f, {}).get("redundancy")
                r["redundant_with"] = extra.get(f, {}).get("redundant_with")
            if self.heuristic == "3mr":
                r["relevance_norm"] = extra.get(f, {}).get("relevance_norm")
                r["mr_objective"] = extra.get(f, {}).get("mr_objective")
            out.append(r)
        lead = ["rank", "feature", "kind", "score", "mi", "chance_mi_mean", "chance_mi_std", "emi", "mi_corrected", "z",
                "p_value", "p_adjusted", "p_method", "mi_norm", "cardinality", "coverage", "entropy", "column"]
        if self.heuristic == "3mr":
            lead += ["relevance_norm", "mr_objective"]
        if self.heuristic == "mi-redundancy":
            lead += ["redundancy", "redundant_with"]
        types = {"relevance_norm": pl.Float64, "mr_objective": pl.Float64, "redundancy": pl.Float64,
                 "redundant_with": pl.String}
        self.ranking_ = pl.DataFrame(out, schema_overrides={k: v for k, v in types.items() if k in lead}).select(lead)
        thresholds = self.quality if self.quality is not None else QualityThresholds()
        self.quality_ = quality_report(self, thresholds)

    def _numeric_query(self, lazy: pl.LazyFrame, numeric: list[_Column]) -> pl.LazyFrame:
        """The numeric columns as floats (NaN -> missing), of all rows or the sample."""
        if self._sample_idx is not None:
            lazy = lazy.with_row_index("__row").filter(pl.col("__row").is_in(pl.Series(self._sample_idx)))
        return lazy.select([pl.col(c.source).cast(pl.Float64, strict=False).fill_nan(None).alias(f"__n{i}")
                            for i, c in enumerate(numeric)])

    def _boundaries(self, lazy: pl.LazyFrame, numeric: list[_Column], cols: pl.DataFrame | None = None,
                    pool: ThreadPoolExecutor | None = None) -> dict[int, Any]:
        """Numeric columns' bin boundaries: the distinct ``k / n_bins`` quantiles ("nearest", as polars
        computes them: the non-missing value of sorted index ``round((n - 1) q)``) of all rows (or the
        sample), found by partial sorts of the materialized columns (``cols``, else read here). With a
        ``pool``: one task per column there (partial sorts release the GIL); returns ``{id(column):
        future}`` (empty when done here)."""
        if not numeric:
            return {}
        if cols is None:
            cols = self._numeric_query(lazy, numeric).collect()
        def one(i: int, c: _Column) -> None:
            s = cols.to_series(i)
            nulls = s.null_count()
            v = s.drop_nulls().to_numpy()
            if not v.size:
                c.boundaries = np.array([], np.float64)
                return
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
            c.boundaries = np.array(sorted(bounds), np.float64)

        if pool is not None:
            return {id(c): pool.submit(one, i, c) for i, c in enumerate(numeric)}
        for i, c in enumerate(numeric):
            one(i, c)
        return {}

    def _bar(self, total: int, desc: str, unit: str = "rows"):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False)

    # ------------------------------------------------------------------------- pairs
    def _dense_codes(self, frame, cols: list[_Column], label: str | None = None, label_map: pl.DataFrame | None = None
                     ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """Re-read ``cols`` (and the label): every row's dense code per column (int32, null -> 0; the
        same partition of the rows as the counting pass) and the label's class codes."""
        parts: dict[str, list[pl.Series]] = {c.name: [] for c in cols}
        ys = []
        sources = list(dict.fromkeys([c.source for c in cols] + ([label] if label is not None else [])))
        bar = self._bar(self.n_rows_, "pairs")
        for b in self._batches(frame, sources):
            if label is not None:
                ys.append(b.select(pl.col(label).alias("v")).join(label_map, on="v", how="left", maintain_order="left"
                                                                  )["y"].to_numpy().astype(np.int64))
            for c in cols:
                parts[c.name].append(c.prepare(b[c.source]))
            if bar is not None:
                bar.update(b.height)
        if bar is not None:
            bar.close()
        codes: dict[str, np.ndarray] = {}
        for c in cols:  # dense codes over all rows at once (null -> 0)
            full = pl.concat(parts.pop(c.name), rechunk=True)
            codes[c.name] = full.rank("dense").fill_null(0).cast(pl.Int32).to_numpy()
            del full
        return codes, (np.concatenate(ys) if label is not None else None)

    def _pair_pass(self, frame, cand: list[str], label: str, label_map: pl.DataFrame, class_counts: np.ndarray) -> None:
        cols = [self._cols[f] for f in cand]
        n = self.n_rows_
        C = len(class_counts)
        codes, y = self._dense_codes(frame, cols, label, label_map)
        card = {c.name: int(codes[c.name].max()) + 1 for c in cols}
        s_single = {c.name: _xlogx_sum(c.n) for c in cols}
        s_y = _xlogx_sum(class_counts)
        rng = np.random.default_rng([int(self.seed), 0xFA12])
        y_perms = [rng.permutation(y) for _ in range(self.pair_permutations)]
        row_perms = [rng.permutation(n) for _ in range(self.pair_permutations)]
        rows = []
        red = {f: {g: float("nan") for g in cand} for f in cand}
        for f in cand:
            red[f][f] = entropy_from_counts(self._cols[f].n)
        bar = self._bar(len(cand) * (len(cand) - 1) // 2, "pair scores", unit="pairs")
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

    def _redundancy_order(self, ranked: list[dict[str, Any]], relevance: dict[str, float], inp: _Input
                          ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """``mi-redundancy``: the significant features (at most ``pair_top_k``, most relevant first) in
        greedy order of what each adds to the features chosen before it, the rest after them in
        relevance order (see the module doc). Lazy: a candidate's score only falls as the chosen
        set grows, so pairs are counted only for candidates that could be the next pick (the exact
        greedy order, fewer pairs)."""
        order = [r["feature"] for r in ranked]
        cand = [r["feature"] for r in ranked if r["p_adjusted"] <= self.significance and r["mi_corrected"] > 0]
        if self.pair_top_k is not None:
            cand = cand[:self.pair_top_k]
        if len(cand) < 2:
            return order, {}
        cols = [self._cols[f] for f in cand]
        if self._y_kept is not None and all(c.codes is not None for c in cols):
            codes, y = {c.name: c.codes for c in cols}, self._y_kept.astype(np.int64)
        else:
            codes, y = self._dense_codes(inp.frame, cols, inp.label, inp.label_map)
            rows = self._pair_rows if self._pair_rows.size < self.n_rows_ else slice(None)
            codes, y = {f: v[rows] for f, v in codes.items()}, y[rows]
        n, C = y.size, len(inp.class_counts)
        if n < self.n_rows_:  # a sample of the rows: its own marginals, codes made dense again
            codes = {f: _dense_again(codes[f]) for f in cand}
        class_counts = np.bincount(y, minlength=C)
        s_y = _xlogx_sum(class_counts)
        dense_rows = _PAIR_CELL_ROWS / (float(class_counts[class_counts > 0].min()) / n)  # rows per pair value
        card = {f: int(codes[f].max()) + 1 for f in cand}
        marg = {f: np.bincount(codes[f], minlength=card[f]) for f in cand}
        s_one = {f: _xlogx_sum(marg[f]) for f in cand}
        # I(s; y) - EMI(s) on the same rows (on all rows: the ranking's own figures)
        by_name = {r["feature"]: r for r in ranked}
        rel_s: dict[str, float] = {}

        def own(s: str) -> float:
            if s not in rel_s:
                if n == self.n_rows_:
                    rel_s[s] = by_name[s]["mi"] - by_name[s]["emi"]
                else:
                    mi = _mi_from_sums(_xlogx_sum(np.bincount(codes[s].astype(np.int64) * C + y)), s_one[s], s_y, n)
                    rel_s[s] = mi - expected_mutual_info(marg[s], class_counts)
            return rel_s[s]

        # pairs whose key space needs a hash count (both columns many-valued) are first counted on a
        # seeded sub-sample of _SPARSE_PAIR_ROWS rows (a sort-speed count of ~12 ms per 262k rows)
        sub = None if n <= _SPARSE_PAIR_ROWS else \
            np.sort(np.random.default_rng([int(self.seed), 0x12ED]).choice(n, _SPARSE_PAIR_ROWS, replace=False))
        small: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def sub_codes(f: str) -> tuple[np.ndarray, np.ndarray]:
            """``f``'s codes on the sub-sample, made dense again, and their counts."""
            if f not in small:
                c = _dense_again(codes[f][sub])
                small[f] = (c, np.bincount(c))
            return small[f]

        def share(joint: np.ndarray, ma: np.ndarray, mb: np.ndarray, f_counts: np.ndarray) -> float:
            """The part of H(f) that s determines beyond chance: ``(I(f; s) - EMI(f, s)) / H(f)``
            (``joint``: the pair's counts, ``ma`` / ``mb``: f's and s's)."""
            rows = int(ma.sum())
            mi = _mi_from_sums(_xlogx_sum(joint), _xlogx_sum(ma), _xlogx_sum(mb), rows)
            hf = entropy_from_counts(f_counts)
            return min(1.0, max(0.0, mi - expected_mutual_info(ma, mb)) / hf) if hf > 0 else 0.0

        known: dict[tuple[str, str], float] = {}

        def adds(f: str, s: str) -> float:
            """What f adds to s about the label (nats): the chance-corrected conditional MI where the
            pair's table is dense, else ``relevance(f) * (1 - share of H(f) determined by s)``."""
            if (f, s) in known:
                return known[(f, s)]
            size = card[f] * card[s]
            if size > _DENSE_LIMIT and sub is not None:
                (cf, mf), (cs, ms) = sub_codes(f), sub_codes(s)
                key = cf.astype(np.int64) * ms.size + cs
                joint = _counts(key, mf.size * ms.size)
                if not _estimable(joint.size, sub.size, dense_rows, max(mf.size, ms.size)):  # sparse on the sub-sample
                    known[(f, s)] = relevance[f] * (1.0 - share(joint, mf, ms, mf))
                    return known[(f, s)]
            key = codes[f].astype(np.int64) * card[s] + codes[s]
            joint = _counts(key, size)
            if _estimable(joint.size, n, dense_rows, max(card[f], card[s])):
                s_joint = _xlogx_sum(joint)
                with_y = _mi_from_sums(_xlogx_sum(_counts(key * C + y, size * C)), s_joint, s_y, n)
                val = (with_y - expected_mutual_info(joint, class_counts)) - own(s)
            else:
                val = relevance[f] * (1.0 - share(joint, marg[f], marg[s], marg[f]))
            known[(f, s)] = val
            return val

        rank_of = {f: i for i, f in enumerate(cand)}
        score = {f: relevance[f] for f in cand}
        with_: dict[str, str | None] = {f: None for f in cand}
        chosen = [cand[0]]
        left = cand[1:]
        seen = {f: 0 for f in left}  # how many of the chosen features each candidate was compared with
        while left:
            while True:
                f = max(left, key=lambda g: (score[g], -rank_of[g]))
                if seen[f] == len(chosen):
                    break
                for s in chosen[seen[f]:]:
                    v = adds(f, s)
                    if v < score[f]:
                        score[f], with_[f] = v, s
                seen[f] = len(chosen)
            chosen.append(f)
            left.remove(f)
        info = {f: {"score": score[f], "redundant_with": with_[f],
                    "redundancy": 1.0 - score[f] / relevance[f]} for f in chosen}
        return chosen + [f for f in order if f not in info], info

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


def _with_rows(batches: Iterator[pl.DataFrame], rows: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """Each batch with the same rows of ``rows`` (a frame of all rows) appended as columns."""
    row0 = 0
    for b in batches:
        yield b.hstack(rows.slice(row0, b.height).get_columns())
        row0 += b.height


def _estimable(pair_values: int, rows: int, dense_rows: float, finer: int) -> bool:
    """mi-redundancy: can the pair's conditional MI be estimated? Its values average at least
    ``dense_rows`` rows (5 of the rarest class), or -- when the pair has at most twice the values of
    its finer column (one is about a function of the other: a copy, a coarsening) -- at least a fifth
    of that (1 row of the rarest class; a pair that is almost unique per row never qualifies)."""
    per_value = rows / max(pair_values, 1)
    return per_value >= dense_rows or (pair_values <= 2 * finer and per_value >= dense_rows / _PAIR_CELL_ROWS)


def _dense_again(codes: np.ndarray) -> np.ndarray:
    """Codes of a subset of the rows renumbered ``0..k-1`` over the values present (order kept), int32."""
    present = np.bincount(codes) > 0
    return (np.cumsum(present) - 1).astype(np.int32)[codes]


def _counts(keys: np.ndarray, size: int) -> np.ndarray:
    """The positive counts of integer keys in ``[0, size)``, in the order of the keys.

    Large key spaces go through a hash table (polars), whose output order varies from run to
    run; it is sorted by key, so sums over the counts (``_xlogx_sum``) are the same bits on every
    run and on both paths."""
    if size <= _DENSE_LIMIT:
        c = np.bincount(keys, minlength=size)
        return c[c > 0]
    vc = pl.Series("k", keys).value_counts(sort=False, name="n").sort("k")
    return vc["n"].to_numpy()


def _count_sums(keys: np.ndarray, size: int) -> tuple[float, int]:
    """``(sum n log n, number of distinct keys)`` of integer keys in ``[0, size)``."""
    c = _counts(keys, size)
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

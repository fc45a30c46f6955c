"""Is a column's mutual information with the label more than chance? p-values and their correction.

Under the null hypothesis the column and the label are independent; conditionally on both
marginals (the column's value counts ``a_i``, the class counts ``b_j``) every arrangement of the
labels over the rows is equally likely: the **permutation model** of the chance correction. The
statistic is the G-test's ``G = 2 N I`` (``I``: plug-in MI in nats). Its p-value comes from:

* ``chi2`` -- the G-test's chi-square with ``(r - 1)(C - 1)`` degrees of freedom (``r`` values
  with rows, ``C`` classes) where its approximation holds: Cochran's rule, every expected cell
  count ``a_i b_j / N >= 1`` and at least 80% of them ``>= 5``. ``G`` is first divided by
  ``q = max(1, 2 N EMI / df)``: the ratio of its exact mean under the permutation model to the
  chi-square's (Williams' correction, with the exact mean in place of his series). With many
  values of modest counts the plain G-test is liberal: its mean exceeds ``df`` by about
  ``df (sum_j N / b_j - 1) / (6 n)`` (``n`` rows per value), 3% at 20 rows per value and a 30/70
  label -- 8 standard deviations for a 50,000-value noise column over 1M rows, which the plain
  test "selected" with p = 6e-17.
* ``moments`` -- elsewhere (sparse tables: many values with few rows each) for binary labels: a
  scaled chi-square ``c * chi2(nu)`` with the permutation distribution's mean and variance. The
  mean is exact: ``2 N EMI`` (the expected mutual information). The variance treats the values'
  positive counts as independent binomials ``n_i ~ Bin(a_i, p)`` (``p = b_1 / N``) -- exact per
  value -- *conditioned on their total* ``sum n_i = b_1`` (which turns them into exactly the
  permutation model) by a second-order regression on the total ``S``::

      Var(G | S) ~= sum_i Var(g_i) - (sum_i Cov(g_i, n_i))^2 / Var(S) - (sum_i Cov(g_i, d_i^2))^2 / Var(S^2)

  with ``g_i`` value ``i``'s share of ``G`` and ``d_i = n_i - a_i p``. In the dense limit this
  is ``2 (r - 1)``, the chi-square's variance; for an id column (one row per value) ``G`` is fixed
  and it is ~0. Checked against brute-force label permutations in the tests.
* ``permutation`` -- elsewhere for multi-class labels: the same scaled chi-square with the mean
  ``2 N EMI`` and the variance of ``G`` over tables drawn from the permutation model (random
  contingency tables with the two marginals, seeded; ``null_draws`` of them, fewer -- at least 30 --
  where one draw is expensive, see :func:`_permutation_null_variance`).

The per-column p-values are corrected for the number of columns tested: Holm's step-down
(default; controls the family-wise error, the chance of selecting *any* pure-noise column, at
``alpha``) or Benjamini-Hochberg (controls the expected share of noise among the selected).

>>> round(chi2_sf(3.841458820694124, 1), 6)   # the 5% point of chi2(1)
0.05
>>> holm([0.01, 0.04, 0.03, 0.5]).tolist()
[0.04, 0.09, 0.09, 0.5]
"""

from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["chi2_sf", "gamma_q", "holm", "benjamini_hochberg", "g_test_p_value", "ADJUSTMENTS"]

ADJUSTMENTS: tuple[str, ...] = ("holm", "bh")


# ------------------------------------------------------------------------- chi-square tail
def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma ``Q(a, x) = Gamma(a, x) / Gamma(a)`` (a > 0)."""
    if x <= 0:
        return 1.0
    if a > 5000:  # Wilson-Hilferty: chi2(2a) at 2x, relative error far below what selection needs
        k = 2.0 * a
        z = ((x / a) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
        return 0.5 * math.erfc(z / math.sqrt(2))
    log_pre = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(100_000):
            ap += 1
            term *= x / ap
            total += term
            if term < total * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_pre))
    # continued fraction for Q(a, x) (modified Lentz)
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_pre) * h)


def chi2_sf(x: float, df: float) -> float:
    """``P(chi2(df) >= x)``."""
    if df <= 0:
        return 1.0 if x <= 0 else 0.0
    return gamma_q(df / 2.0, x / 2.0)


def _scaled_chi2_sf(g: float, mean: float, var: float) -> float:
    """Tail of ``c chi2(nu)`` with this mean and variance (``c = var / 2 mean``, ``nu = 2 mean^2 / var``)."""
    if mean <= 0:
        return 1.0 if g <= 0 else 0.0
    if var <= 0:  # a fixed statistic: nothing is significant
        return 1.0
    c = var / (2 * mean)
    return chi2_sf(g / c, 2 * mean * mean / var)


# ------------------------------------------------------------------------- null moments
_LF_SMALL = np.array([math.lgamma(i + 1.0) for i in range(128)])
_LF_TABLE_MAX = 1 << 22  # log(x!) for every x below this is kept in a table once an argument needs it (32 MiB at most)
_lf_table = _LF_SMALL
_lf_lock = threading.Lock()


def _log_factorial_formula(x: np.ndarray) -> np.ndarray:
    """``log(x!)``: ``_LF_SMALL`` below 128, Stirling's series above (error < 1e-15)."""
    out = np.empty(x.shape, dtype=np.float64)
    small = x < 128
    out[small] = _LF_SMALL[x[small]]
    z = x[~small].astype(np.float64) + 1.0
    iz = 1.0 / z
    iz2 = iz * iz
    out[~small] = ((z - 0.5) * np.log(z) - z + 0.5 * math.log(2 * math.pi)
                   + iz * (1 / 12 - iz2 * (1 / 360 - iz2 * (1 / 1260 - iz2 / 1680))))
    return out


def _log_factorial(x: np.ndarray) -> np.ndarray:
    """``log(x!)`` for integer arrays: a table below 128, Stirling's series above (error < 1e-15).

    Arguments below ``_LF_TABLE_MAX`` are looked up in a table of the same values (built once, up
    to the next power of two above the largest argument seen: the hypergeometric sums evaluate it
    millions of times, ~1 ns a lookup against ~20 ns a series)."""
    global _lf_table
    x = np.asarray(x, dtype=np.int64)
    top = int(x.max()) if x.size else 0
    if top >= _LF_TABLE_MAX:
        return _log_factorial_formula(x)
    tab = _lf_table
    if top >= tab.size:
        with _lf_lock:
            if top >= _lf_table.size:  # (elementwise: the same values as the formula gives)
                _lf_table = _log_factorial_formula(np.arange(min(1 << top.bit_length(), _LF_TABLE_MAX), dtype=np.int64))
            tab = _lf_table
    return tab[x]


def _log_factorial_upto(n: int):
    """``_log_factorial`` for arguments known to lie in ``[0, n]``: the table itself where it
    covers ``n`` (no range check per call)."""
    _log_factorial(np.array([n]))
    tab = _lf_table
    return tab.__getitem__ if n < tab.size else _log_factorial


def _xlogy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(x, y).shape)
    pos = np.broadcast_to(x > 0, out.shape)
    xb, yb = np.broadcast_to(x, out.shape), np.broadcast_to(y, out.shape)
    out[pos] = xb[pos] * np.log(yb[pos])
    return out


def _unique_counts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_counts=True)`` of non-negative integers, by bincount when their range is small."""
    top = int(x.max()) if x.size else 0
    if top <= 4 * x.size + 1024:
        c = np.bincount(x, minlength=top + 1)
        v = np.flatnonzero(c)
        return v.astype(np.int64), c[v]
    return np.unique(x, return_counts=True)


def _binary_null_variance(a: np.ndarray, n_pos: int, n: int) -> float:
    """The conditioned-binomial variance of ``G`` (module doc) for value counts ``a`` and ``n_pos``
    positives among ``n`` rows."""
    p = n_pos / n
    q = 1.0 - p
    av, aw = _unique_counts(a[a > 0])
    # per distinct count: n_i over the binomial's support within 12 standard deviations
    mean = av * p
    sd = np.sqrt(av * p * q)
    lo = np.maximum(0, np.floor(mean - 12 * sd - 2)).astype(np.int64)
    hi = np.minimum(av, np.ceil(mean + 12 * sd + 2)).astype(np.int64)
    length = hi - lo + 1
    idx = np.repeat(np.arange(av.size), length)
    start = np.cumsum(length) - length
    k = lo[idx] + np.arange(int(length.sum())) - start[idx]
    A = av[idx]
    log_pmf = (_log_factorial(A) - _log_factorial(k) - _log_factorial(A - k)
               + _xlogy(k, np.full(k.shape, p)) + _xlogy(A - k, np.full(k.shape, q)))
    w = np.exp(log_pmf)
    kf, Af = k.astype(np.float64), A.astype(np.float64)
    g = 2.0 * (_xlogy(kf, kf / np.maximum(Af * p, 1e-300)) + _xlogy(Af - kf, (Af - kf) / np.maximum(Af * q, 1e-300)))
    d = kf - Af * p

    def per_count(v: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=w * v, minlength=av.size)

    norm = per_count(np.ones_like(g))
    e_g = per_count(g) / norm
    var_g = per_count((g - e_g[idx]) ** 2) / norm
    cov_d = per_count((g - e_g[idx]) * d) / norm
    var_d = av * p * q
    cov_d2 = per_count((g - e_g[idx]) * (d * d - var_d[idx])) / norm
    v_s = float(n) * p * q
    total = float(np.dot(aw, var_g))
    total -= float(np.dot(aw, cov_d)) ** 2 / v_s
    total -= float(np.dot(aw, cov_d2)) ** 2 / (2 * v_s * v_s)
    return max(total, 0.0)


def _permutation_null_variance(a: np.ndarray, b: np.ndarray, draws: int, seed: int) -> float:
    """Variance of ``G`` over ``draws`` random tables with value counts ``a`` and class counts ``b``.

    A table is drawn either class by class from the multivariate hypergeometric (cost ~ values x
    classes, ~0.4 us each) or by shuffling the labels over the rows and counting (cost ~ rows,
    ~15 ns each), whichever is cheaper; ``draws`` is lowered (to no fewer than 30) so that all
    draws together stay near 3e8 row-equivalents (a few seconds)."""
    rng = np.random.default_rng([int(seed), 0x51C])
    a = a[a > 0].astype(np.int64)
    n = int(a.sum())
    C = int(b.size)
    s_a = float(_xlogx(a))
    s_b = float(_xlogx(b))
    per_mvh = a.size * (C - 1) * 0.4e-6
    per_shuffle = n * 15e-9
    per = min(per_mvh, per_shuffle)
    draws = max(30, min(int(draws), int(3.0 / max(per, 1e-12))))
    gs = []
    if per_shuffle < per_mvh:
        codes = np.repeat(np.arange(a.size, dtype=np.int64) * C, a)
        y = np.repeat(np.arange(C, dtype=np.int64), b)
        for _ in range(draws):
            t = np.bincount(codes + rng.permutation(y), minlength=a.size * C)
            gs.append(2.0 * (_xlogx(t) - s_a - s_b + n * math.log(n)))
    else:
        for _ in range(draws):
            left = a.copy()
            s_t = 0.0
            for bj in b[:-1]:
                col = rng.multivariate_hypergeometric(left, int(bj), method="marginals")
                s_t += _xlogx(col)
                left -= col
            s_t += _xlogx(left)
            gs.append(2.0 * (s_t - s_a - s_b + n * math.log(n)))
    return float(np.var(gs, ddof=1))


def _xlogx(c: np.ndarray) -> float:
    c = np.asarray(c, dtype=np.float64)
    c = c[c > 0]
    return float(np.dot(c, np.log(c))) if c.size else 0.0


def cochran_holds(a: np.ndarray, b: np.ndarray) -> bool:
    """Every expected count ``a_i b_j / N >= 1`` and at least 80% of them ``>= 5``."""
    a = a[a > 0].astype(np.float64)
    b = b[b > 0].astype(np.float64)
    n = a.sum()
    if a.size < 2 or b.size < 2:
        return True
    if a.min() * b.min() / n < 1:
        return False
    # share of cells with expected count < 5, from the sorted column counts (no r x C matrix)
    bs = np.sort(b)
    small = np.searchsorted(bs, 5 * n / a, side="left")  # per value: classes with a b / n < 5
    return float(small.sum()) <= 0.2 * a.size * b.size


def g_test_p_value(mi: float, a: np.ndarray, b: np.ndarray, emi: float,
                   draws: int = 200, seed: int = 0) -> tuple[float, str]:
    """p-value of ``G = 2 N mi`` for a column with value counts ``a`` against class counts ``b``
    (``emi``: their expected MI); returns ``(p, method)`` with ``method`` as in the module doc."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    a = a[a > 0]
    b = b[b > 0]
    n = int(b.sum())
    if a.size < 2 or b.size < 2:
        return 1.0, "chi2"
    g = 2.0 * n * mi
    mean = 2.0 * n * emi
    if cochran_holds(a, b):
        df = (a.size - 1) * (b.size - 1)
        return chi2_sf(g / max(1.0, mean / df), df), "chi2"
    if b.size == 2:
        return _scaled_chi2_sf(g, mean, _binary_null_variance(a, int(b[1]), n)), "moments"
    return _scaled_chi2_sf(g, mean, _permutation_null_variance(a, b, draws, seed)), "permutation"


# ------------------------------------------------------------------------ corrections
def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (reject where ``<= alpha``: family-wise error <= alpha)."""
    p = np.asarray(p, np.float64)
    m = p.size
    if not m:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (reject where ``<= q``: false discovery rate <= q)."""
    p = np.asarray(p, np.float64)
    m = p.size
    if not m:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adj = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(adj[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out

"""Offline metrics of binary scores: exact AUC, logloss, GAUC, calibration, bootstrap CIs, DeLong.

Everything here is plain numpy on 1-d arrays (``labels`` 0/1, ``scores`` probabilities in [0, 1])
and is the canonical implementation the report uses. Conventions, stated once:

* **AUC** is exact: the Mann-Whitney statistic with tied scores counted 1/2 (average ranks), the
  same number as scikit-learn's ``roc_auc_score`` and torchmetrics' ``BinaryAUROC(thresholds=None)``.
  NaN when a class is absent.
* **Logloss** is the mean binary cross-entropy with probabilities clipped to ``[1e-15, 1 - 1e-15]``
  (natural log), as scikit-learn's ``log_loss``.
* **GAUC** is the *impression-weighted* mean of per-user AUC: ``sum_u n_u AUC_u / sum_u n_u`` over
  the users that have both a positive and a negative row; users with a single class are skipped
  (their AUC is undefined) and counted in :class:`GroupedAUC`. (TorchRec's GAUC is the unweighted
  mean over users; the two differ when heavy users rank differently from light ones.)
* **ECE** (expected calibration error) uses ``n_bins`` equal-width bins of the predicted
  probability over ``[0, 1]``: bin ``k`` holds ``k/n <= p < (k+1)/n`` (the last bin includes 1);
  ``ECE = sum_k (n_k / N) |mean(p in k) - mean(y in k)|``.
* **Calibration ratio** = mean predicted probability / observed positive rate (1 is calibrated,
  above 1 over-predicts).
* **Confidence intervals** are 95% percentile bootstrap intervals: ``n_boot`` resamples of the
  rows with replacement (a seeded ``numpy`` generator, so reruns give the same interval); GAUC
  resamples *users* (rows of one user are correlated), the other metrics resample rows.
  Resamples are drawn as multiplicity weights, so no resample re-sorts the scores.
* **Paired AUC test** for two models scored on the same rows: DeLong, DeLong & Clarke-Pearson
  (1988), the variance of the AUC difference from the structural components (computed with the
  midrank algorithm of Sun & Xu, 2014), two-sided normal p-value. The report also gives the paired
  bootstrap interval of the difference (the same row resamples for both models).

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
>>> roc_auc(y, s)
0.75
>>> gauc(np.array([0, 1, 0, 1, 1]), np.array([.1, .9, .8, .2, .5]), np.array([0, 0, 1, 1, 2])).value
0.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

EPS = 1e-15


# ------------------------------------------------------------------------------------- helpers
def _as_arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return y, s


def tie_groups(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense rank (0-based) of each score: equal scores share an id, ids increase with the score."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    new = np.r_[True, s_sorted[1:] != s_sorted[:-1]] if s.size else np.zeros(0, bool)
    ids = np.empty(s.size, dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, int(new.sum())


def _weighted_auc(groups: np.ndarray, n_groups: int, y: np.ndarray, w: np.ndarray) -> float:
    """AUC of rows weighted by ``w`` (multiplicities), from precomputed tie-group ids."""
    pos = np.bincount(groups, weights=w * y, minlength=n_groups)
    neg = np.bincount(groups, weights=w * (1.0 - y), minlength=n_groups)
    P, N = pos.sum(), neg.sum()
    if P <= 0 or N <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (P * N))


# ------------------------------------------------------------------------------- point metrics
def roc_auc(labels, scores) -> float:
    """Exact ROC AUC; ties count 1/2; NaN if a class is absent."""
    y, s = _as_arrays(labels, scores)
    g, k = tie_groups(s)
    return _weighted_auc(g, k, y, np.ones_like(y))


def log_loss(labels, probs, eps: float = EPS) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to ``[eps, 1 - eps]``."""
    y, p = _as_arrays(labels, probs)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean()) if y.size else float("nan")


def average_precision(labels, scores) -> float:
    """Area under the precision-recall curve as a step sum, ``sum_k (R_k - R_{k-1}) P_k`` over
    distinct score thresholds (scikit-learn's ``average_precision_score``)."""
    y, s = _as_arrays(labels, scores)
    if y.sum() == 0:
        return float("nan")
    _, tp, fp = _threshold_counts(y, s)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _threshold_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) and the true/false positives at ``score >= threshold``."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True] if s.size else np.zeros(0, bool)
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(1.0 - y_sorted)[last]
    return s_sorted[last], tp, fp


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _as_arrays(labels, scores)
    _, tp, fp = _threshold_counts(y, s)
    P, N = max(tp[-1], 1e-300), max(fp[-1], 1e-300)
    return np.r_[0.0, fp / N], np.r_[0.0, tp / P]


def pr_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, highest threshold first."""
    y, s = _as_arrays(labels, scores)
    _, tp, fp = _threshold_counts(y, s)
    return tp / max(tp[-1], 1e-300), tp / (tp + fp)


@dataclass(frozen=True)
class GroupedAUC:
    """GAUC and what it was computed over.

    Attributes:
        value: impression-weighted mean of per-group AUC (NaN when no group has both classes).
        groups_used / groups_skipped: groups with both classes / with a single class (skipped).
        rows_used / rows_skipped: rows in those groups.
        per_group_auc / per_group_rows: of the used groups, for resampling.
    """

    value: float
    groups_used: int
    groups_skipped: int
    rows_used: int
    rows_skipped: int
    per_group_auc: np.ndarray
    per_group_rows: np.ndarray


def gauc(labels, scores, groups) -> GroupedAUC:
    """Impression-weighted mean per-group (per-user) AUC; single-class groups skipped.

    Vectorized: one lexsort by (group, score); average ranks within each group handle ties.
    """
    y, s = _as_arrays(labels, scores)
    g = np.asarray(groups).ravel()
    if g.shape != y.shape:
        raise ValueError("groups and labels differ in length")
    _, g = np.unique(g, return_inverse=True)
    g = g.ravel().astype(np.int64)
    n = y.size
    if n == 0:
        return GroupedAUC(float("nan"), 0, 0, 0, 0, np.zeros(0), np.zeros(0))
    order = np.lexsort((s, g))
    gs, ss, ys = g[order], s[order], y[order]
    pos_idx = np.arange(n)
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    new_run = new_group | np.r_[True, ss[1:] != ss[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, pos_idx, 0))
    run_id = np.cumsum(new_run) - 1
    run_start = pos_idx[new_run]
    run_end = np.r_[run_start[1:], n]  # exclusive
    avg_rank = (run_start + run_end + 1) / 2.0  # 1-based over the whole sorted array
    rank_in_group = avg_rank[run_id] - group_start
    k = int(gs[-1]) + 1
    rows = np.bincount(gs, minlength=k).astype(np.float64)
    n_pos = np.bincount(gs, weights=ys, minlength=k)
    n_neg = rows - n_pos
    rank_sum = np.bincount(gs, weights=rank_in_group * ys, minlength=k)
    ok = (n_pos > 0) & (n_neg > 0)
    auc = np.full(k, np.nan)
    auc[ok] = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    used_rows = rows[ok]
    value = float((auc[ok] * used_rows).sum() / used_rows.sum()) if ok.any() else float("nan")
    return GroupedAUC(value, int(ok.sum()), int((~ok).sum()), int(used_rows.sum()), int(rows[~ok].sum()),
                      auc[ok], used_rows)


@dataclass(frozen=True)
class CalibrationBins:
    """Reliability table: equal-width bins over [0, 1] (empty bins have count 0 and NaN means)."""

    edges: np.ndarray       # [n_bins + 1]
    count: np.ndarray       # [n_bins] rows per bin
    mean_pred: np.ndarray   # [n_bins] mean predicted probability
    frac_pos: np.ndarray    # [n_bins] observed positive rate


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)


def calibration_bins(labels, probs, n_bins: int = 10) -> CalibrationBins:
    y, p = _as_arrays(labels, probs)
    b = _bin_index(p, n_bins)
    cnt = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = np.bincount(b, weights=p, minlength=n_bins) / cnt
        fp = np.bincount(b, weights=y, minlength=n_bins) / cnt
    return CalibrationBins(np.linspace(0.0, 1.0, n_bins + 1), cnt, mp, fp)


def _weighted_ece(bins: np.ndarray, n_bins: int, y: np.ndarray, p: np.ndarray, w: np.ndarray) -> float:
    W = w.sum()
    if W <= 0:
        return float("nan")
    py = np.bincount(bins, weights=w * (p - y), minlength=n_bins)  # per bin: n_k (mean p - mean y)
    return float(np.abs(py).sum() / W)


def expected_calibration_error(labels, probs, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width probability bins (see the module docstring)."""
    y, p = _as_arrays(labels, probs)
    return _weighted_ece(_bin_index(p, n_bins), n_bins, y, p, np.ones_like(y))


def calibration_ratio(labels, probs) -> float:
    """Mean predicted probability / observed positive rate (NaN without positives)."""
    y, p = _as_arrays(labels, probs)
    return float(p.mean() / y.mean()) if y.size and y.sum() > 0 else float("nan")


# ----------------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% (by default) percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"value": _num(self.value), "ci95": [_num(self.low), _num(self.high)]}


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def bootstrap_weights(n: int, n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``n_boot`` multiplicity vectors ``[n]`` (each a resample of ``n`` items with
    replacement), seeded: the same ``seed`` always yields the same resamples."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def _percentile(values: list[float], point: float, alpha: float) -> Interval:
    v = np.asarray([x for x in values if math.isfinite(x)])
    if v.size == 0:
        return Interval(point, float("nan"), float("nan"))
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return Interval(point, float(lo), float(hi))


def bootstrap_metrics(labels, probs, n_boot: int = 200, seed: int = 0, n_bins: int = 10,
                      alpha: float = 0.05) -> dict[str, Interval]:
    """Point value + percentile bootstrap interval of ``auc``, ``logloss``, ``ece`` and
    ``calibration_ratio`` from the same ``n_boot`` row resamples."""
    y, p = _as_arrays(labels, probs)
    groups, k = tie_groups(p)
    bins = _bin_index(p, n_bins)
    ll = -(y * np.log(np.clip(p, EPS, 1 - EPS)) + (1 - y) * np.log1p(-np.clip(p, EPS, 1 - EPS)))
    ones = np.ones_like(y)

    def all_metrics(w: np.ndarray) -> dict[str, float]:
        W, Wy = w.sum(), (w * y).sum()
        return {"auc": _weighted_auc(groups, k, y, w),
                "logloss": float((w * ll).sum() / W) if W > 0 else float("nan"),
                "ece": _weighted_ece(bins, n_bins, y, p, w),
                "calibration_ratio": float((w * p).sum() / Wy) if Wy > 0 else float("nan")}

    point = all_metrics(ones)
    draws: dict[str, list[float]] = {m: [] for m in point}
    if y.size:
        for w in bootstrap_weights(y.size, n_boot, seed):
            for m, v in all_metrics(w).items():
                draws[m].append(v)
    return {m: _percentile(draws[m], point[m], alpha) for m in point}


def bootstrap_gauc(g: GroupedAUC, n_boot: int = 200, seed: int = 0, alpha: float = 0.05) -> Interval:
    """GAUC interval by resampling users (the used groups) with replacement; per-user AUCs are
    kept fixed, so each resample is an impression-weighted mean over a resampled set of users."""
    n = g.per_group_auc.size
    draws = []
    if n:
        for c in bootstrap_weights(n, n_boot, seed):
            w = c * g.per_group_rows
            draws.append(float((w * g.per_group_auc).sum() / w.sum()))
    return _percentile(draws, g.value, alpha)


def paired_bootstrap_auc_diff(labels, scores_a, scores_b, n_boot: int = 200, seed: int = 0,
                              alpha: float = 0.05) -> Interval:
    """AUC(b) - AUC(a) with a paired percentile bootstrap interval (same row resamples for both)."""
    y, a = _as_arrays(labels, scores_a)
    _, b = _as_arrays(labels, scores_b)
    ga, ka = tie_groups(a)
    gb, kb = tie_groups(b)
    ones = np.ones_like(y)
    point = _weighted_auc(gb, kb, y, ones) - _weighted_auc(ga, ka, y, ones)
    draws = [_weighted_auc(gb, kb, y, w) - _weighted_auc(ga, ka, y, w)
             for w in bootstrap_weights(y.size, n_boot, seed)]
    return _percentile(draws, point, alpha)


# -------------------------------------------------------------------------------------- DeLong
def _midrank(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    g, k = tie_groups(x)
    counts = np.bincount(g, minlength=k)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[g]


@dataclass(frozen=True)
class DeLongResult:
    """DeLong's paired test of AUC(b) - AUC(a) on the same rows.

    Attributes:
        auc_a, auc_b: the two AUCs.
        delta: ``auc_b - auc_a``.
        se: standard error of ``delta``; ``z = delta / se``; ``p_value`` two-sided (normal).
        ci95: ``delta +- 1.96 se``.
        var_a, var_b, cov: DeLong's variance/covariance estimates of the two AUCs.
    """

    auc_a: float
    auc_b: float
    delta: float
    se: float
    z: float
    p_value: float
    ci95: tuple[float, float]
    var_a: float
    var_b: float
    cov: float


def delong_components(labels, scores) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components: ``V10`` [m positives] and ``V01`` [n negatives]
    (``V10_i`` = share of negatives ranked below positive ``i``, ties 1/2)."""
    y, s = _as_arrays(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both classes")
    r_all = _midrank(np.r_[pos, neg])
    r_pos, r_neg = _midrank(pos), _midrank(neg)
    v10 = (r_all[:m] - r_pos) / n
    v01 = 1.0 - (r_all[m:] - r_neg) / m
    return float(v10.mean()), v10, v01


def delong_test(labels, scores_a, scores_b) -> DeLongResult:
    """DeLong et al. (1988) test of two correlated AUCs (two models scored on the same rows)."""
    y = np.asarray(labels).astype(np.float64).ravel()
    auc_a, v10a, v01a = delong_components(y, scores_a)
    auc_b, v10b, v01b = delong_components(y, scores_b)
    m, n = v10a.size, v01a.size
    s10 = np.cov(np.vstack([v10a, v10b])) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([v01a, v01b])) if n > 1 else np.zeros((2, 2))
    S = s10 / m + s01 / n
    var = float(S[0, 0] + S[1, 1] - 2 * S[0, 1])
    delta = auc_b - auc_a
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = delta / se
        p = math.erfc(abs(z) / math.sqrt(2.0))
    else:
        z = 0.0 if delta == 0 else math.copysign(math.inf, delta)
        p = 1.0 if delta == 0 else 0.0
    return DeLongResult(auc_a, auc_b, delta, se, z, p, (delta - 1.959963984540054 * se, delta + 1.959963984540054 * se),
                        float(S[0, 0]), float(S[1, 1]), float(S[0, 1]))


# ------------------------------------------------------------------------------------ segments
def segment_metrics(labels, probs, segments, order: list | None = None) -> list[dict]:
    """Per segment value: rows, positives, positive rate, AUC (None when one class), logloss,
    calibration ratio. ``order`` fixes the output order (default: sorted segment values)."""
    y, p = _as_arrays(labels, probs)
    seg = np.asarray(segments, dtype=object).ravel()
    values = order if order is not None else sorted(set(seg.tolist()), key=str)
    out = []
    for v in values:
        mask = seg == v
        n = int(mask.sum())
        if n == 0:
            continue
        ym, pm = y[mask], p[mask]
        out.append({"segment": str(v), "rows": n, "positives": int(ym.sum()), "positive_rate": float(ym.mean()),
                    "auc": _num(roc_auc(ym, pm)), "logloss": _num(log_loss(ym, pm)),
                    "calibration_ratio": _num(calibration_ratio(ym, pm))})
    return out

"""Report figures as PNG bytes (matplotlib, Agg backend; no display, no files).

Each function takes plain arrays and returns the PNG as ``bytes`` (``render`` inlines them as
base64 in ``report.html`` and writes them under ``plots/`` for ``report.md``). PNG metadata is
stripped, so the same inputs give the same bytes.

* :func:`roc_plot`, :func:`pr_plot`: curves of every model on one axis.
* :func:`reliability_plot`: mean predicted vs observed positive rate per probability bin.
* :func:`score_histograms`: score distribution of positives and negatives, one panel per model.
* :func:`segment_bars`: AUC per segment (grouped bars, one colour per model), rows annotated.
* :func:`history_cap_lines`: AUC against the history cap K, one line per model.
* :func:`attention_heatmap`: a field x field attention map (models exposing ``attention_weights()``).
"""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from recsys import metrics as M  # noqa: E402

_MAX_POINTS = 2000  # curve points kept per model (evenly spaced over the thresholds)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _thin(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    n = arrays[0].size
    if n <= _MAX_POINTS:
        return arrays
    idx = np.unique(np.r_[np.linspace(0, n - 1, _MAX_POINTS).astype(np.int64), n - 1])
    return tuple(a[idx] for a in arrays)


def roc_plot(labels: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    """ROC curves; ``scores`` maps a model name to its scores."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, s in scores.items():
        fpr, tpr = _thin(*M.roc_curve(labels, s))
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {M.roc_auc(labels, s):.4f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def pr_plot(labels: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    """Precision-recall curves with the positive rate as the chance line."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, s in scores.items():
        recall, precision = _thin(*M.pr_curve(labels, s))
        ax.plot(recall, precision, lw=1.6, label=f"{name} (AP {M.average_precision(labels, s):.4f})")
    rate = float(np.mean(labels)) if len(labels) else 0.0
    ax.axhline(rate, ls="--", c="grey", lw=0.8, label=f"positive rate {rate:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def reliability_plot(bins: dict[str, M.CalibrationBins]) -> bytes:
    """Observed positive rate vs mean prediction per (non-empty) bin; marker area ~ rows."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfectly calibrated")
    for name, b in bins.items():
        ok = b.count > 0
        size = 10 + 190 * b.count[ok] / max(b.count.max(), 1)
        line, = ax.plot(b.mean_pred[ok], b.frac_pos[ok], lw=1.2, label=name)
        ax.scatter(b.mean_pred[ok], b.frac_pos[ok], s=size, color=line.get_color(), alpha=0.6)
    n_bins = len(next(iter(bins.values())).count) if bins else 0
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate",
           title=f"Reliability ({n_bins} equal-width bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def score_histograms(labels: np.ndarray, scores: dict[str, np.ndarray], bins: int = 50) -> bytes:
    """Score histograms of negatives and positives (densities), one panel per model."""
    k = max(len(scores), 1)
    fig, axes = plt.subplots(1, k, figsize=(4.6 * k, 3.6), squeeze=False)
    y = np.asarray(labels).astype(bool)
    edges = np.linspace(0, 1, bins + 1)
    for ax, (name, s) in zip(axes[0], scores.items()):
        ax.hist(s[~y], bins=edges, density=True, alpha=0.55, label=f"label 0 ({int((~y).sum())})", color="tab:blue")
        ax.hist(s[y], bins=edges, density=True, alpha=0.55, label=f"label 1 ({int(y.sum())})", color="tab:orange")
        ax.set(xlabel="predicted probability", ylabel="density", title=name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def segment_bars(title: str, segments: Sequence[str], auc: dict[str, Sequence[float | None]],
                 rows: Sequence[int], overall: dict[str, float] | None = None) -> bytes:
    """AUC per segment (x) for each model (bar colour); rows per segment under the labels.
    Segments whose AUC is undefined (one class) show no bar."""
    n, k = len(segments), max(len(auc), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * n * (0.6 + 0.4 * k) + 1.5), 3.8))
    x = np.arange(n)
    width = 0.8 / k
    lows = []
    for i, (name, vals) in enumerate(auc.items()):
        v = np.array([np.nan if a is None else a for a in vals], dtype=np.float64)
        lows.extend(v[np.isfinite(v)].tolist())
        bars = ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(v, nan=0.0), width, label=name)
        if overall and name in overall:
            ax.axhline(overall[name], ls=":", lw=1, color=bars.patches[0].get_facecolor() if bars.patches else None)
    ax.set_xticks(x, [f"{s}\n(n={r})" for s, r in zip(segments, rows)], fontsize=8)
    lo = min(lows + [0.5]) if lows else 0.5
    ax.set_ylim(max(0.0, lo - 0.05), 1.0)
    ax.set(ylabel="AUC", title=title)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def history_cap_lines(caps: Sequence[int], auc: dict[str, Sequence[float | None]],
                      full: dict[str, float] | None = None) -> bytes:
    """AUC (y) at each history cap K (x, evenly spaced, labelled by K), one line per model;
    ``full``: each model's AUC with the whole history, drawn dotted in the line's colour."""
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(caps) + 2.5), 3.6))
    x = np.arange(len(caps))
    for name, vals in auc.items():
        v = np.array([np.nan if a is None else a for a in vals], dtype=np.float64)
        (line,) = ax.plot(x, v, marker="o", label=name)
        if full and name in full and np.isfinite(full[name]):
            ax.axhline(full[name], ls=":", lw=1, color=line.get_color())
    ax.set_xticks(x, [str(k) for k in caps])
    ax.set(xlabel="history cap K (last K behaviours kept)", ylabel="AUC", title="AUC by history cap")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def attention_heatmap(weights: np.ndarray, fields: Sequence[str], title: str) -> bytes:
    """A [F, F] attention map: row = query field, column = key field."""
    f = len(fields)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * f + 1.5, 1.0 + 0.45 * f))
    im = ax.imshow(weights, cmap="viridis")
    ax.set_xticks(range(f), fields, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(f), fields, fontsize=8)
    ax.set(xlabel="attended field (key)", ylabel="field (query)", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _png(fig)

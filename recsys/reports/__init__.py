"""Offline AUC reports: metrics, segments, plots, HTML + Markdown + metrics.json.

Entry points:

* :func:`build_report` (``recsys report``): score checkpoints, write ``report.html``,
  ``report.md``, ``metrics.json`` and ``plots/`` atomically, return the metrics dict.
* :mod:`recsys.metrics` (the floor module every layer uses): the canonical exact AUC, logloss, GAUC, ECE, calibration ratio,
  bootstrap intervals and DeLong test, on numpy arrays.

``metrics.json`` (``"format": "recsys-report/1"``) has these keys, always present:
``format``, ``created``, ``data`` {source, rows, positives, positive_rate}, ``settings``
{bootstrap_resamples, seed, ece_bins, confidence}, ``conventions`` (metric -> how it is
computed), ``models`` [{name, model_class, class_path, checkpoint, rows, positives,
same_rows_as_first, metrics {auc, gauc, logloss, ece, calibration_ratio, average_precision,
mean_prediction, positive_rate: {value, ci95}}, gauc_detail, calibration_bins, attention}],
``segments`` [{key, title, method, buckets [{segment, rows, positives, positive_rate,
metrics [{model, auc, logloss, calibration_ratio}]}]}], ``comparisons`` [{a, b, auc_a, auc_b,
delta (= auc_b - auc_a), delong {se, z, p_value, ci95}, paired_bootstrap {ci95}}],
``other_sections``, ``figures`` (key -> caption), ``notes``. Undefined numbers are ``null``.
"""

from recsys.reports.build import TASK_SECTIONS, build_report, compute_report
from recsys.metrics import (
    GroupedAUC,
    Interval,
    average_precision,
    bootstrap_gauc,
    bootstrap_metrics,
    calibration_bins,
    calibration_ratio,
    delong_test,
    expected_calibration_error,
    gauc,
    log_loss,
    paired_bootstrap_auc_diff,
    roc_auc,
    segment_metrics,
)

__all__ = ["build_report", "compute_report", "TASK_SECTIONS", "GroupedAUC", "Interval", "average_precision",
           "bootstrap_gauc", "bootstrap_metrics", "calibration_bins", "calibration_ratio", "delong_test",
           "expected_calibration_error", "gauc", "log_loss", "paired_bootstrap_auc_diff", "roc_auc",
           "segment_metrics"]

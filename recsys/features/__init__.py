"""Decisions about features: ranking (cardinality-normalized MI, 3MR, pairs), data-quality report,
embedding-dimension search (DNIS soft selection, pruning to a parameter budget)."""

from recsys.features.quality import QualityThresholds, quality_report
from recsys.features.ranking import (
    FeatureRanker,
    entropy_from_counts,
    expected_mutual_info,
    mutual_info_from_counts,
)

__all__ = ["FeatureRanker", "QualityThresholds", "quality_report", "entropy_from_counts", "expected_mutual_info",
           "mutual_info_from_counts"]
__all__ += ["DimsResult", "SoftSelection", "prune_to_budget"]


def __getattr__(name: str):
    # the dimension search needs torch/TorchRec: imported on first use, so that importing the
    # feature ranking (numpy/polars only) stays fast
    if name in ("DimsResult", "SoftSelection", "prune_to_budget"):
        from recsys.features import dims

        return getattr(dims, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

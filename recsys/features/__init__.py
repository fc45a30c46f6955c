"""Decisions about features: ranking (cardinality-normalized MI, 3MR, pairs), data-quality report."""

from recsys.features.quality import QualityThresholds, quality_report
from recsys.features.ranking import (
    FeatureRanker,
    entropy_from_counts,
    expected_mutual_info,
    mutual_info_from_counts,
)

__all__ = ["FeatureRanker", "QualityThresholds", "quality_report", "entropy_from_counts", "expected_mutual_info",
           "mutual_info_from_counts"]

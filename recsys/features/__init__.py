"""Decisions about columns, data-level only: ranking (cardinality-normalized MI, 3MR, pairs) and
the data-quality report. (The embedding-dimension search, DNIS, wraps models: recsys.models.dnis.)"""

from recsys.features.quality import QualityThresholds, quality_report
from recsys.features.ranking import (
    FeatureRanker,
    entropy_from_counts,
    expected_mutual_info,
    mutual_info_from_counts,
)

__all__ = ["FeatureRanker", "QualityThresholds", "quality_report", "entropy_from_counts", "expected_mutual_info",
           "mutual_info_from_counts"]

"""LightningModules: ranking, embedding-dimension search (and, later, retrieval)."""

from recsys.tasks.callbacks import PredictionWriter
from recsys.tasks.ranking import RankingTask, load_checkpoint, load_datamodule
from recsys.tasks.dims import DimensionSearchTask

__all__ = ["RankingTask", "load_checkpoint", "load_datamodule", "PredictionWriter", "DimensionSearchTask"]

"""LightningModules: ranking (and, later, retrieval and dimension search)."""

from recsys.tasks.callbacks import PredictionWriter
from recsys.tasks.ranking import RankingTask, load_checkpoint, load_datamodule

__all__ = ["RankingTask", "load_checkpoint", "load_datamodule", "PredictionWriter"]

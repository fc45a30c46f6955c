"""LightningModules: ranking, embedding-dimension search, retrieval."""

from recsys.tasks.callbacks import PredictionWriter
from recsys.tasks.ranking import RankingTask, load_checkpoint, load_datamodule
from recsys.tasks.dims import DimensionSearchTask
from recsys.tasks.retrieval import RetrievalTask

__all__ = ["RankingTask", "load_checkpoint", "load_datamodule", "PredictionWriter", "DimensionSearchTask", "RetrievalTask"]

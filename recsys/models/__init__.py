"""Models: plain nn.Modules ``(Batch) -> ModelOutput`` built from the fitted features."""

from recsys.models.base import ModelOutput, RankingModel, build_model
from recsys.models.baselines import DNN, DeepFM, LogisticRegression
from recsys.models.embedding import EmbeddingOutput, FeatureEmbedding

__all__ = ["ModelOutput", "RankingModel", "build_model", "DNN", "DeepFM", "LogisticRegression",
           "EmbeddingOutput", "FeatureEmbedding"]

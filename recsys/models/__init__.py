"""Models: plain nn.Modules ``(Batch) -> ModelOutput`` built from the fitted features."""

from recsys.models.base import ModelOutput, RankingModel, build_model
from recsys.models.baselines import DNN, DeepFM, LogisticRegression
from recsys.models.embedding import EmbeddingOutput, FeatureEmbedding
from recsys.models.moe import AWMoE, MoE
from recsys.models.autoint import AutoInt, AutoIntPlus
from recsys.models.sdim import DIN, SDIM
from recsys.models.dcn import DCNv2

__all__ = ["ModelOutput", "RankingModel", "build_model", "DNN", "DeepFM", "LogisticRegression",
           "EmbeddingOutput", "FeatureEmbedding"]
__all__ += ["AutoInt", "AutoIntPlus"]
__all__ += ["AWMoE", "MoE"]
__all__ += ["DIN", "SDIM"]
__all__ += ["DCNv2"]

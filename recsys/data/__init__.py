"""Data: readers, encoders, Batch, DataModules, built-in data sets."""

from recsys.data.batch import Batch, BatchIndexSampler, SplitDataset, gather_jagged
from recsys.data.datamodule import CTRDataModule
from recsys.data.preprocess import EncodedSplit, FeatureEncoder
from recsys.data.sources import BUILTIN, read_table, register_dataset

__all__ = ["Batch", "BatchIndexSampler", "SplitDataset", "gather_jagged", "CTRDataModule", "EncodedSplit",
           "FeatureEncoder", "BUILTIN", "read_table", "register_dataset"]

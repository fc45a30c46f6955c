"""Data: readers, encoders, Batch, DataModules, built-in data sets.

Names are imported on first use (PEP 562), so ``import recsys.data.sources`` (readers, used by
the feature ranker) does not pull in torch, TorchRec and Lightning, which only the batching and
DataModule parts need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Batch": "recsys.data.batch",
    "BatchIndexSampler": "recsys.data.batch",
    "SplitDataset": "recsys.data.batch",
    "gather_jagged": "recsys.data.batch",
    "CTRDataModule": "recsys.data.datamodule",
    "StreamingCTRDataModule": "recsys.data.streaming",
    "RetrievalDataModule": "recsys.data.retrieval",
    "EncodedSplit": "recsys.data.preprocess",
    "FeatureEncoder": "recsys.data.preprocess",
    "BUILTIN": "recsys.data.sources",
    "read_table": "recsys.data.sources",
    "register_dataset": "recsys.data.sources",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'recsys.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

"""Callbacks used by the CLI: writing predictions."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from recsys.utils import atomic_path


class PredictionWriter(BasePredictionWriter):
    """Writes ``recsys predict`` scores as parquet: the predict rows' key columns + ``score``.

    Rows keep the order of the input file. The file is written atomically at the end of the
    predict epoch, so an interrupted run leaves nothing behind.

    Args:
        output: parquet path to write.
    """

    def __init__(self, output: str | Path):
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions, batch_indices) -> None:
        preds = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        rows = torch.cat([p["rows"] for p in preds]).cpu().numpy()
        scores = torch.cat([p["score"] for p in preds]).float().cpu().numpy()
        keys = trainer.datamodule.predict_keys()
        frame = keys[rows].with_columns(pl.Series("score", scores))
        with atomic_path(self.output) as tmp:
            frame.write_parquet(tmp)
        print(f"recsys: wrote {len(frame)} predictions to {self.output}")

"""Callbacks used by the CLI: writing predictions, stopping cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytorch_lightning as L
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from recsys.data.preprocess import data_warnings
from recsys.data.sources import BUILTIN
from recsys.utils import atomic_path


class PredictionWriter(BasePredictionWriter):
    """Writes ``recsys predict`` scores as parquet: the predict rows' key columns + ``score``.

    The file's key-value metadata ``recsys`` holds, as JSON, the per-field ``missing_rate`` and
    ``oov_rate`` (values unseen in training) of the scored rows; a field above 1% missing or 5%
    unseen also gets a one-line warning on stderr.

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
        # per-field shares of missing and of unseen (OOV) values of the scored rows, in the file's
        # key-value metadata under "recsys" (pl.read_parquet_metadata(path)["recsys"])
        meta = {}
        encoded = getattr(trainer.datamodule, "encoded", None)
        if callable(encoded):
            enc = encoded("predict")
            meta = {"recsys": json.dumps({"rows": len(enc), "missing_rate": enc.missing_rate,
                                          "oov_rate": enc.oov_rate})}
            source = getattr(trainer.datamodule, "predict_path", None)
            if source or getattr(trainer.datamodule, "dataset", None) not in BUILTIN:  # built-in: nothing to fix
                for line in data_warnings(enc, f"{source or 'the test split'} [predict]"):
                    print(line, file=sys.stderr)
        with atomic_path(self.output) as tmp:
            frame.write_parquet(tmp, metadata=meta or None)
        print(f"recsys: wrote {len(frame)} predictions to {self.output}")


class StopRequested(Exception):
    """Raised on every rank of a run stopped by SIGTERM/SIGINT (see :class:`GracefulStop`).

    Attributes:
        signum: the signal received.
        checkpoint: the resumable checkpoint written before stopping (``None`` if none).
    """

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum, self.checkpoint = int(signum), checkpoint
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        where = f"; resumable checkpoint {checkpoint} (continue with --ckpt_path last)" if checkpoint else ""
        super().__init__(f"stopped by {name}{where}")


class GracefulStop(L.Callback):
    """Stop a training run cleanly on SIGTERM or SIGINT, on one process or several.

    The signal handler only records the signal (no collective may run inside a handler: the other
    ranks are elsewhere). At the end of every training step all ranks agree on it with one small
    all-reduce (any rank signalled = all stop), then every rank takes part in writing
    ``<checkpoint dir>/last.ckpt`` (a directory for sharded runs) and raises
    :class:`StopRequested`; ``recsys`` prints one line and exits with ``128 + signal``.
    ``recsys fit ... --ckpt_path last`` continues the run from that step. A signal during
    validation takes effect at the next training step. A second signal exits at once (exit code
    ``128 + signal``, no checkpoint), killing the launcher's child processes.
    ``recsys`` trainers add this callback to every run.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received = 0
        self._trainer: L.Trainer | None = None
        self._installed = False

    # ----------------------------------------------------------------- signals
    def _handler(self, signum: int, frame) -> None:
        if self.received:  # second signal: no more waiting
            for proc in _children(self._trainer):
                with contextlib.suppress(OSError):
                    proc.kill()
            os._exit(128 + signum)
        self.received = signum
        if self._trainer is not None and self._trainer.is_global_zero:
            os.write(2, f"\nrecsys: {signal.Signals(signum).name} received: stopping after this step and saving "
                        f"a checkpoint (send it again to quit at once)\n".encode())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its own SIGTERM handler (which runs a collective inside the
        # handler, and so can hang); Lightning restores the previous handlers when the run ends
        if threading.current_thread() is not threading.main_thread():
            return
        self._trainer, self.received = trainer, 0
        for s in self.SIGNALS:
            signal.signal(s, self._handler)
        self._installed = True

    # ------------------------------------------------------------------ checks
    def _agreed(self, pl_module: L.LightningModule) -> int:
        from recsys.tasks.distributed import all_reduce_max, process_group_ready

        flag = torch.tensor([self.received], dtype=torch.int64, device=pl_module.device)
        if process_group_ready():
            all_reduce_max(flag)
        return int(flag.item())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self._installed:
            return
        signum = self._agreed(pl_module)  # every rank, every step, same place: one tiny collective
        if not signum:
            return
        path = _last_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part (a sharded run writes its shards)
        raise StopRequested(signum, str(path))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, StopRequested):
            # any other failure of the launcher (e.g. a peer died or hung: a collective timed out):
            # its children may wait in a collective that never completes; end them
            procs = _children(trainer)
            deadline = time.monotonic() + 5
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            return
        # the launcher (rank 0 of Lightning's own launcher) waits for its children, which stop at
        # the same step; Lightning's child observer would SIGKILL this process on a child's
        # non-zero exit, so it is handed an empty list first
        procs = _children(trainer)
        launcher = getattr(trainer.strategy, "launcher", None)
        if procs and isinstance(getattr(launcher, "procs", None), list):
            launcher.procs.clear()
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def _children(trainer: L.Trainer | None) -> list:
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None) if trainer is not None else None
    return list(getattr(launcher, "procs", None) or [])


def _last_path(trainer: L.Trainer) -> Path:
    """Where ``--ckpt_path last`` looks: the ModelCheckpoint's directory, else ``<log dir>/checkpoints``."""
    cb = trainer.checkpoint_callback
    folder = getattr(cb, "dirpath", None) or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    return Path(folder) / "last.ckpt"

"""Optuna pruning for ``pytorch_lightning`` (the Lightning package recsys uses).

optuna-integration's ``PyTorchLightningPruningCallback`` imports ``lightning.pytorch``; a callback
is a few lines, so recsys has its own, written against ``pytorch_lightning.Callback``.
"""

from __future__ import annotations

import math

import optuna
import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn


class OptunaPruning(pl.Callback):
    """Report ``monitor`` to ``trial`` after every validation epoch; stop the trial when the pruner says so.

    The pruning decision raises :class:`optuna.TrialPruned` out of ``Trainer.fit`` (after Lightning's
    own teardown), so the caller records the trial as pruned. The sanity-check validation is skipped.

    Attributes:
        epochs: training epochs run (the trial's cost in epochs), the pruned one included.
        values: the reported value of each epoch.
        pruned_at: the epoch at which the trial was pruned, or ``None``.

    Example::

        cb = OptunaPruning(trial, "val/auc")
        recsys.tasks.experiment.fit(config_dict, callbacks=[cb])
    """

    def __init__(self, trial: optuna.trial.Trial, monitor: str = "val/auc"):
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.epochs = 0
        self.values: list[float] = []
        self.pruned_at: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self.epochs = max(self.epochs, trainer.current_epoch + 1)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # only the validation epochs of fit: not the sanity check, nor the trainer.validate()
        # that `recsys fit` runs on the best checkpoint afterwards
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"the pruning metric {self.monitor!r} was not logged; logged: "
                           f"{sorted(trainer.callback_metrics)}")
        value = float(value)
        epoch = trainer.current_epoch
        self.epochs = max(self.epochs, epoch + 1)
        self.values.append(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.monitor} is {value} at epoch {epoch}")
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.monitor} = {value:.4f})")

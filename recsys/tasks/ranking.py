"""RankingTask: the LightningModule that trains any ``RankingModel`` on binary labels.

Loss = BCE(logits, labels) + sum of the model's ``aux_losses`` (each already weighted by the
model). Logged per split (``train/``, ``val/``, ``test/``): ``loss`` (BCE + aux), ``logloss``
(BCE alone), ``auc`` (exact ROC AUC over the whole epoch, recsys.metrics.roc_auc, the reports' implementation) and, for
training, ``samples_per_s``.

The model is given as a *factory* in YAML (jsonargparse turns ``class_path`` + ``init_args``
into a callable that still needs the fitted features), so the data module can fit the encoders
first and pass them in::

    model:
      class_path: recsys.tasks.RankingTask
      init_args:
        model:
          class_path: recsys.models.DeepFM
          init_args: {embedding_dim: 16, hidden_units: [256, 128]}
        lr: 0.001

Checkpoints carry the schema, the fitted encoders and the model's class path + arguments as
JSON under ``checkpoint["recsys"]``: :func:`load_checkpoint` rebuilds the task from the file
alone, loading it with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import inspect
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torchrec import EmbeddingBagCollection, EmbeddingCollection

from recsys.data.preprocess import FeatureEncoder
from recsys.errors import RecsysError
from recsys.metrics import roc_auc
from recsys.models.base import RankingModel, build_model
from recsys.tasks.distributed import all_gather_rows, all_reduce_max, all_reduce_sum, process_group_ready

ModelFactory = Callable[[FeatureEncoder], RankingModel]

# recsys's tasks log epoch values that are already reduced over all ranks (see RankingTask._epoch_end)
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/")

_DENSE_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                     "adagrad": torch.optim.Adagrad}


class RankingTask(L.LightningModule):
    """Train/evaluate a CTR model with BCE, exact AUC and logloss.

    Args:
        model: factory ``features -> RankingModel`` (a ``class_path`` in YAML).
        features: the fitted FeatureEncoder; linked from ``data.features`` by the CLI.
        optimizer: optimizer of the dense (non-table) parameters, and of the tables unless
            ``embedding_optimizer`` is set: ``adam``, ``adamw``, ``sgd`` or ``adagrad``.
        lr: learning rate of ``optimizer``.
        weight_decay: weight decay of ``optimizer`` (dense parameters only when the tables
            have their own optimizer).
        embedding_optimizer: a sparse-friendly optimizer for the embedding tables, applied
            inside the backward pass with TorchRec's fused in-backward mechanism (only touched
            rows are updated; the same setting DistributedModelParallel uses for sharded
            tables): ``rowwise_adagrad``, ``adagrad``, ``adam`` or ``sgd``. ``None`` (default)
            trains the tables with ``optimizer``.
        embedding_lr: learning rate of ``embedding_optimizer`` (default: ``lr``).
        plateau_factor: multiply the learning rate by this factor after every validation
            epoch whose AUC does not improve (ReduceLROnPlateau, patience 0; FuxiCTR's default
            recipe uses 0.1). ``None`` keeps the rate constant.
        plateau_threshold: the smallest gain of valid AUC that counts as an improvement for
            ``plateau_factor``, absolute (FuxiCTR: 1e-6, the same margin as its early
            stopping). ``None`` (default): ReduceLROnPlateau's own, a gain of 1e-4 relative
            (~9e-5 AUC at 0.9).
    """

    def __init__(
        self,
        model: ModelFactory,
        features: FeatureEncoder | None = None,
        optimizer: Literal["adam", "adamw", "sgd", "adagrad"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        embedding_optimizer: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"] | None = None,
        embedding_lr: float | None = None,
        plateau_factor: float | None = None,
        plateau_threshold: float | None = None,
    ):
        super().__init__()
        if features is None:
            raise RecsysError("RankingTask needs the fitted features", where="model.features",
                              fix="run through `recsys fit` (which links data.features) or pass features=")
        self.save_hyperparameters(ignore=["model", "features"])
        self.features = features
        self.model = model(features) if not isinstance(model, RankingModel) else model
        if not isinstance(self.model, RankingModel):
            raise RecsysError(f"model factory returned {type(self.model).__name__}, not a RankingModel",
                              where="model.init_args.model")
        if optimizer not in _DENSE_OPTIMIZERS:
            raise RecsysError(f"unknown optimizer {optimizer!r}", where="model.optimizer",
                              fix=f"use one of {sorted(_DENSE_OPTIMIZERS)}")
        self._in_backward = False
        if embedding_optimizer is not None:
            self._apply_embedding_optimizer(embedding_optimizer, embedding_lr or lr)
        # this rank's epoch state per split: metric name -> [sum of value * rows, rows] (float64),
        # and the [rows, 2] (logit, label) blocks of the exact AUC
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._scores: dict[str, list[torch.Tensor]] = {}
        self._epoch_start = 0.0
        self._epoch_samples = 0
        self.throughput: list[float] = []  # train samples/s of each epoch, end to end

    # ------------------------------------------------------------ optimizers
    def table_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of every TorchRec table in the model."""
        from torchrec.distributed.types import ShardedModule

        params = []
        for m in self.model.modules():
            if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection, ShardedModule)):
                params.extend(m.parameters())
        return params

    def _apply_embedding_optimizer(self, name: str, lr: float) -> None:
        import torchrec.optim as topt
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        classes = {"rowwise_adagrad": topt.RowWiseAdagrad, "adagrad": torch.optim.Adagrad,
                   "adam": torch.optim.Adam, "sgd": torch.optim.SGD}
        if name not in classes:
            raise RecsysError(f"unknown embedding_optimizer {name!r}", where="model.embedding_optimizer",
                              fix=f"use one of {sorted(classes)}")
        # eps as FBGEMM's fused kernels use it, so replicated and sharded tables train alike
        kwargs = {"lr": lr, "eps": 1e-8} if name in ("rowwise_adagrad", "adagrad", "adam") else {"lr": lr}
        apply_optimizer_in_backward(classes[name], self.table_parameters(), kwargs)
        self._in_backward = True

    def configure_optimizers(self):
        from torchrec.distributed.types import ShardedModule

        # tables with an in-backward optimizer, and sharded tables (fused optimizer), are not the
        # dense optimizer's
        skip = {id(p) for p in self.parameters() if hasattr(p, "_in_backward_optimizers")}
        for m in self.model.modules():
            if isinstance(m, ShardedModule):
                skip |= {id(p) for p in m.parameters()}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in skip]
        cls = _DENSE_OPTIMIZERS[self.hparams.optimizer]
        opt = cls(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.plateau_factor is None:
            return opt
        threshold = self.hparams.get("plateau_threshold")
        more = {} if threshold is None else {"threshold": threshold, "threshold_mode": "abs"}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=self.hparams.plateau_factor,
                                                           patience=0, **more)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/auc", "interval": "epoch"}}

    # -------------------------------------------------------------- steps
    def forward(self, batch):
        return self.model(batch)

    def _shared_step(self, batch, split: str) -> torch.Tensor:
        out = self.model(batch)
        logits = out.logits
        bce = F.binary_cross_entropy_with_logits(logits, batch.labels)
        loss = bce
        n = len(batch)
        for name, aux in out.aux_losses.items():
            loss = loss + aux
            self._accumulate(split, f"aux_{name}", aux, n)
        if not torch.isfinite(loss):
            raise RecsysError(f"the {split} loss is {loss.item()} (not finite)", where=f"{split} step {self.global_step}",
                              fix="lower the learning rate or check the numeric inputs")
        self._scores.setdefault(split, []).append(
            torch.stack([logits.detach().float(), batch.labels.detach().float()], dim=1))
        self._accumulate(split, "loss", loss, n)
        self._accumulate(split, "logloss", bce, n)
        if split == "train":
            # this rank's value of the step, for the progress bar and the step log: no collective
            self.log("train/loss_step", loss.detach(), batch_size=n, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def _accumulate(self, split: str, name: str, value: torch.Tensor, n: int) -> None:
        """Add ``value`` (a batch mean over ``n`` rows) to this rank's epoch sums of ``split``."""
        sums = self._sums.setdefault(split, {})
        add = torch.stack([value.detach().double() * n, torch.tensor(float(n), dtype=torch.float64, device=value.device)])
        sums[name] = sums[name] + add if name in sums else add

    def _distributed(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1 and process_group_ready()

    def training_step(self, batch, batch_idx):
        self._epoch_samples += len(batch)
        return self._shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return {"rows": batch.rows, "score": torch.sigmoid(self.model(batch).logits)}

    # -------------------------------------------------------------- epochs
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_samples = 0
        self._sums["train"], self._scores["train"] = {}, []

    def _epoch_end(self, split: str, extra: dict[str, float] | None = None) -> dict[str, float]:
        """The epoch's metrics of ``split`` over every rank's rows, logged as already-global values.

        Every collective of the epoch runs here, on every rank, in a fixed order (the epoch-end
        hooks of a LightningModule run on all ranks): one all-reduce of the loss sums, one
        all-gather of the scores for the exact AUC. Nothing is left for Lightning to reduce later:
        a callback that only rank 0 runs (the progress bar) reads finished numbers.
        """
        sums, self._sums[split] = self._sums.get(split, {}), {}
        scores, self._scores[split] = self._scores.get(split, []), []
        dist = self._distributed()
        names = sorted(sums)
        out: dict[str, float] = {}
        if names:
            vec = torch.stack([sums[k] for k in names])  # [K, 2]: (sum of value * rows, rows)
            if dist:
                vec = all_reduce_sum(vec)
            for k, (total, rows) in zip(names, vec.tolist()):
                if rows > 0:
                    out[k] = total / rows
        local = torch.cat(scores) if scores else torch.zeros(0, 2, device=self.device)
        both = all_gather_rows(local) if dist else local  # [N, 2]: logit, label of every rank's rows
        if len(both):
            # recsys.metrics' exact AUC, the one the reports use (NaN when the rows hold one class)
            rows = both.detach().double().cpu().numpy()
            out["auc"] = roc_auc(rows[:, 1], rows[:, 0])
        out.update(extra or {})
        prefix = split
        for k, v in out.items():
            key = f"{prefix}/{k}" if not (split == "train" and k == "loss") else "train/loss_epoch"
            self.log(key, v, prog_bar=(split == "val" and k == "auc"), sync_dist=False)
        return out

    def on_train_epoch_end(self) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        extra = {}
        samples = torch.tensor([float(self._epoch_samples), elapsed], dtype=torch.float64, device=self.device)
        if self._distributed():
            # every rank trains its slice of each global batch in lockstep: the run's throughput is
            # all ranks' rows over the slowest rank's time
            samples = torch.stack([all_reduce_sum(samples[:1].clone())[0], all_reduce_max(samples[1:].clone())[0]])
        rows, seconds = samples.tolist()
        if seconds > 0 and rows:
            rate = rows / seconds
            self.throughput.append(rate)
            extra["samples_per_s"] = rate
        self._epoch_end("train", extra)

    def on_validation_epoch_start(self) -> None:
        self._sums["val"], self._scores["val"] = {}, []

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._sums["test"], self._scores["test"] = {}, []

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # ---------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["recsys"] = {
            "features": self.features.to_dict(),
            "model": _jsonable(self.model.config),
            "task": {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                     "init_args": _jsonable(dict(self.hparams))},
        }
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        if dm is not None:
            checkpoint["recsys"]["datamodule"] = f"{type(dm).__module__}.{type(dm).__qualname__}"
        # random state (dropout, ...) so a resumed run continues exactly where it stopped
        checkpoint["recsys_rng"] = {"torch": torch.get_rng_state(),
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        # the tables' in-backward optimizers are not Lightning's: their state travels here
        state = {name: opt.state_dict() for name, opt in self._in_backward_optimizers().items()}
        if state:
            checkpoint["recsys_in_backward_optimizers"] = state

    def _in_backward_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Parameter name -> its in-backward optimizer (unsharded tables only; sharded tables'
        fused optimizers are saved by the strategy)."""
        from torchrec.optim.keyed import KeyedOptimizer

        out = {}
        for name, p in self.named_parameters():
            opts = getattr(p, "_in_backward_optimizers", None)
            if opts and isinstance(opts[0], torch.optim.Optimizer) and not isinstance(opts[0], KeyedOptimizer):
                out[name] = opts[0]
        return out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied when training restarts (on_train_start): Lightning creates the data iterator
        # between here and there, which draws from the global generator
        self._resume_rng = checkpoint.get("recsys_rng")
        saved = checkpoint.get("recsys_in_backward_optimizers") or {}
        if saved:
            for name, opt in self._in_backward_optimizers().items():
                if name in saved:
                    opt.load_state_dict(saved[name])

    def on_train_start(self) -> None:
        rng, self._resume_rng = getattr(self, "_resume_rng", None), None
        if not rng:
            return
        torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively (checkpoints hold plain JSON types only)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _check_model_class(meta: dict, where: str) -> None:
    """A checkpoint names its model class; build only a RankingModel from an allowed package
    (the file is data: it must not pick what code runs)."""
    import importlib

    from recsys.utils import check_class_allowed

    cp = (meta.get("model") or {}).get("class_path") if isinstance(meta.get("model"), dict) else None
    check_class_allowed(cp, f"{where} (model.class_path)")
    module, _, name = cp.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise RecsysError(f"the checkpoint's model class {cp!r} does not exist here", where=where,
                          fix="install the recsys version (or plugin) that trained it") from None
    if not (isinstance(cls, type) and issubclass(cls, RankingModel)):
        raise RecsysError(f"the checkpoint's model class {cp!r} is not a RankingModel", where=where)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> RankingTask:
    """Rebuild a trained task from a checkpoint file alone (no YAML), in eval mode.

    The file is read with ``weights_only=True``: schema, encoders and model arguments are JSON.
    """
    from recsys.checkpoint import read_checkpoint

    p = Path(path)
    ckpt = read_checkpoint(p, map_location=map_location)  # weights_only=True; a sharded (DCP) run's directory too
    meta = ckpt.get("recsys")
    if meta is None or "state_dict" not in ckpt:
        raise RecsysError("not a recsys checkpoint (no 'recsys' section or no weights)", where=str(p))
    _check_model_class(meta, str(p))
    try:
        features = FeatureEncoder.from_dict(meta["features"])
        model = build_model(meta["model"], features)
        accepted = set(inspect.signature(RankingTask.__init__).parameters) - {"self", "model", "features"}
        task_args = {k: v for k, v in meta["task"]["init_args"].items() if k in accepted}
        task_args.pop("embedding_optimizer", None)  # in-backward optimizers are for training only
        task = RankingTask(model=model, features=features, **task_args)
        task.load_state_dict(ckpt["state_dict"])
    except RecsysError:
        raise
    except Exception as e:  # noqa: BLE001 - damaged metadata or weights that do not fit the model
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise RecsysError(f"the checkpoint does not rebuild its model ({type(e).__name__}: {msg})", where=str(p),
                          fix="the file is damaged or from an incompatible recsys version; retrain") from None
    task.eval()
    return task


def load_datamodule(path: str | Path, **overrides: Any):
    """The data module a checkpoint was trained with (its class and saved arguments), using the
    checkpoint's fitted encoders; ``overrides`` replace saved arguments (e.g. ``predict_path``).

    The class is the one recorded in the checkpoint when it is one of recsys's data modules
    (:class:`~recsys.data.CTRDataModule` or :class:`~recsys.data.streaming.StreamingCTRDataModule`),
    else (older checkpoints) CTRDataModule."""
    from recsys.data.datamodule import CTRDataModule
    from recsys.data.streaming import StreamingCTRDataModule

    from recsys.checkpoint import read_checkpoint

    p = Path(path)
    ckpt = read_checkpoint(p, keys=())  # metadata only
    saved = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if not saved:
        raise RecsysError("the checkpoint does not record its data module", where=str(p),
                          fix="pass the data explicitly (e.g. --data PATH), or retrain with this recsys version")
    known = {f"{c.__module__}.{c.__qualname__}": c for c in (CTRDataModule, StreamingCTRDataModule)}
    cls = known.get(str((ckpt.get("recsys") or {}).get("datamodule")), CTRDataModule)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    args = {k: v for k, v in saved.items() if k in accepted}
    args.update(overrides)
    args["features_from"] = str(p)
    return cls(**args)

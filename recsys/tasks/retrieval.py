"""RetrievalTask: trains a two-tower model with in-batch sampled softmax and the log-Q correction.

For a batch of B (user, item) interactions with query vectors ``u [B, D]`` and item vectors
``v [B, D]`` (unit norm), the logits are ``s_ij = u_i . v_j / temperature - log Q(item_j)``
``[B, B]`` and the loss is the cross-entropy of row ``i`` against column ``i``. The other rows'
items are the negatives; since they are drawn in proportion to their popularity, subtracting
``log Q`` (``Q`` = the item's share of the training interactions, counted at the start of fit)
corrects the sampling bias (Yi et al., RecSys 2019), so popular items are not under-scored.
*Accidental hits* (column ``j != i`` holding row ``i``'s own item) are masked out of row ``i``.
The correction applies to training only: validation/test loss is the plain in-batch softmax.

Validation/test (with a :class:`~recsys.data.retrieval.RetrievalDataModule`): the whole
catalogue is embedded once per epoch, each held-out row's query scores every item, the user's
seen items are excluded, and ``recall@K``, ``ndcg@K`` (K in ``ks``) and ``loss`` are logged
under ``val/`` and ``test/`` (with one held-out item per row, recall@K is the hit rate).

YAML::

    model:
      class_path: recsys.tasks.RetrievalTask
      init_args:
        model:
          class_path: recsys.retrieval.TwoTower
          init_args: {item_fields: [item_id, genres], out_dim: 64}
        temperature: 0.05

Checkpoints carry the schema, encoders and model config as JSON (``checkpoint["recsys"]``);
:func:`load_retrieval_checkpoint` rebuilds the task from the file alone (``weights_only=True``).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from recsys.data.preprocess import FeatureEncoder
from recsys.errors import RecsysError
from recsys.retrieval.two_tower import RetrievalModel, build_retrieval_model
from recsys.tasks.distributed import all_reduce_max, all_reduce_sum, process_group_ready
from recsys.tasks.ranking import _DENSE_OPTIMIZERS, RankingTask

ModelFactory = Callable[[FeatureEncoder], RetrievalModel]

_OPTIMIZERS = _DENSE_OPTIMIZERS  # the same dense optimizers as RankingTask

__all__ = ["RetrievalTask", "load_retrieval_checkpoint"]


class RetrievalTask(L.LightningModule):
    """Train/evaluate a two-tower retrieval model.

    Args:
        model: factory ``features -> RetrievalModel`` (a ``class_path`` in YAML).
        features: the fitted FeatureEncoder; linked from ``data.features`` by the CLI.
        optimizer: ``adam``, ``adamw``, ``sgd`` or ``adagrad``.
        lr: learning rate.
        weight_decay: weight decay.
        temperature: softmax temperature of the cosine scores.
        logq_correction: subtract ``log Q(item)`` from the training logits.
        ks: cut-offs of the validation/test metrics.
        item_field: the field holding the item id (for ``log Q`` and accidental hits); default
            the schema's ``item`` key.
        embedding_optimizer: as :class:`~recsys.tasks.RankingTask`'s: a sparse optimizer of the
            embedding tables run inside the backward pass (``rowwise_adagrad``, ``adagrad``,
            ``adam``, ``sgd``); needed for TorchRec-sharded tables (``recsys_ddp``). ``None``
            (default): the tables train with ``optimizer``.
        embedding_lr: its learning rate (default ``lr``).
    """

    def __init__(
        self,
        model: ModelFactory,
        features: FeatureEncoder | None = None,
        optimizer: Literal["adam", "adamw", "sgd", "adagrad"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        temperature: float = 0.05,
        logq_correction: bool = True,
        ks: Sequence[int] = (10, 50, 100),
        item_field: str | None = None,
        embedding_optimizer: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"] | None = None,
        embedding_lr: float | None = None,
    ):
        super().__init__()
        if features is None:
            raise RecsysError("RetrievalTask needs the fitted features", where="model.features",
                              fix="run through `recsys fit` (which links data.features) or pass features=")
        self.save_hyperparameters(ignore=["model", "features"])
        self.features = features
        self.model = model if isinstance(model, RetrievalModel) else model(features)
        if not isinstance(self.model, RetrievalModel):
            raise RecsysError(f"model factory returned {type(self.model).__name__}, not a RetrievalModel",
                              where="model.init_args.model", fix="use recsys.retrieval.TwoTower")
        if optimizer not in _OPTIMIZERS:
            raise RecsysError(f"unknown optimizer {optimizer!r}", where="model.optimizer",
                              fix=f"use one of {sorted(_OPTIMIZERS)}")
        if temperature <= 0:
            raise RecsysError(f"temperature must be > 0, got {temperature}", where="model.temperature")
        ks = sorted({int(k) for k in ks})
        if not ks or ks[0] < 1:
            raise RecsysError(f"ks must be positive integers, got {ks}", where="model.ks")
        self.ks = ks
        schema = features.schema
        self.item_field = item_field or schema.keys.get("item")
        if self.item_field is not None and self.item_field not in [f.name for f in schema.id_fields]:
            raise RecsysError(f"item field {self.item_field!r} is not an id field of the schema",
                              where="model.item_field", fix=f"use one of {[f.name for f in schema.id_fields]}")
        n_ids = features.table_sizes[schema.field(self.item_field).table] if self.item_field else 1
        self.register_buffer("log_q", torch.zeros(n_ids))
        self._in_backward = False
        if embedding_optimizer is not None:
            self._apply_embedding_optimizer(embedding_optimizer, embedding_lr or lr)
        self._eval: dict[str, Any] = {}
        self._epoch_start, self._epoch_samples = 0.0, 0
        self._train_sum = torch.zeros(2, dtype=torch.float64)
        self.throughput: list[float] = []

    # --------------------------------------------------------------- setup
    # the tables' optimizers work as RankingTask's (in-backward, or fused when sharded)
    table_parameters = RankingTask.table_parameters
    _apply_embedding_optimizer = RankingTask._apply_embedding_optimizer
    _in_backward_optimizers = RankingTask._in_backward_optimizers

    def configure_optimizers(self):
        from torchrec.distributed.types import ShardedModule

        skip = {id(p) for p in self.parameters() if hasattr(p, "_in_backward_optimizers")}
        for m in self.model.modules():
            if isinstance(m, ShardedModule):
                skip |= {id(p) for p in m.parameters()}
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in skip]
        cls = _OPTIMIZERS[self.hparams.optimizer]
        return cls(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if self.item_field is None or dm is None or not hasattr(dm, "encoded"):
            return
        ids = torch.tensor(dm.encoded("train").ids[self.item_field][0], dtype=torch.int64)
        counts = torch.bincount(ids, minlength=self.log_q.numel())[:self.log_q.numel()].double()
        q = (counts + 1.0) / (counts.sum() + counts.numel())  # add-one: unseen ids get a finite log Q
        self.log_q.copy_(q.log().float().to(self.log_q.device))

    def _item_ids(self, batch) -> torch.Tensor | None:
        if self.item_field is None:
            return None
        return batch.sparse[self.item_field].values()

    # -------------------------------------------------------------- steps
    def _loss(self, batch, correct: bool) -> torch.Tensor:
        out = self.model(batch)
        logits = out.user @ out.item.T / self.hparams.temperature
        ids = self._item_ids(batch)
        if ids is not None and ids.numel() == logits.shape[0]:
            if correct and self.hparams.logq_correction:
                logits = logits - self.log_q[ids][None, :]
            same = ids[:, None] == ids[None, :]
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, float("-inf"))
        loss = F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
        if not torch.isfinite(loss):
            raise RecsysError(f"the loss is {loss.item()} (not finite)", where=f"step {self.global_step}",
                              fix="lower the learning rate or raise the temperature")
        return loss

    def training_step(self, batch, batch_idx):
        self._epoch_samples += len(batch)
        loss = self._loss(batch, correct=True)
        # this rank's step value (progress bar, step log); the epoch mean is reduced over ranks
        # in on_train_epoch_end
        self.log("train/loss_step", loss.detach(), batch_size=len(batch), on_step=True, on_epoch=False, prog_bar=True)
        self._train_sum += torch.stack([loss.detach().double() * len(batch),
                                        torch.tensor(float(len(batch)), dtype=torch.float64, device=loss.device)])
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_samples = time.perf_counter(), 0
        self._train_sum = torch.zeros(2, dtype=torch.float64, device=self.device)

    def on_train_epoch_end(self) -> None:
        # every collective of the epoch, on every rank, in this order (nothing is left for a
        # rank-0-only reader such as the progress bar to reduce lazily)
        elapsed = time.perf_counter() - self._epoch_start
        vec = torch.cat([self._train_sum.to(self.device),
                         torch.tensor([float(self._epoch_samples)], dtype=torch.float64, device=self.device)])
        seconds = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
        if self._distributed():
            all_reduce_sum(vec)
            all_reduce_max(seconds)
        total, rows, samples = vec.tolist()
        if rows > 0:
            self.log("train/loss_epoch", total / rows, sync_dist=False)
        if seconds.item() > 0 and samples:
            rate = samples / seconds.item()  # all ranks' rows over the slowest rank's time
            self.throughput.append(rate)
            self.log("train/samples_per_s", rate, sync_dist=False)

    def _distributed(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1 and process_group_ready()

    # ---------------------------------------------------------- evaluation
    @torch.no_grad()
    def item_vectors(self, catalogue) -> torch.Tensor:
        """Item vectors ``[N, D]`` of a :class:`~recsys.data.retrieval.Catalogue`."""
        parts = [self.model.item_embedding(b.to(self.device)) for b in catalogue.batches()]
        return torch.cat(parts)

    def _eval_start(self, split: str) -> None:
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "catalogue"):
            raise RecsysError("RetrievalTask evaluates against an item catalogue, which this data module lacks",
                              where="data.class_path", fix="use recsys.data.RetrievalDataModule")
        values, offsets = dm.seen(split)
        self._eval = {"split": split, "items": self.item_vectors(dm.catalogue()),
                      "seen_v": torch.as_tensor(values), "seen_o": torch.as_tensor(offsets),
                      "targets": torch.as_tensor(dm.targets(split)),
                      "hits": {k: 0.0 for k in self.ks}, "ndcg": {k: 0.0 for k in self.ks}, "n": 0,
                      "loss": [0.0, 0.0]}

    def _eval_step(self, batch, prefix: str) -> None:
        from recsys.data.batch import gather_jagged

        ev = self._eval
        loss = self._loss(batch, correct=False) if len(batch) > 1 else None
        if loss is not None:
            ev["loss"][0] += float(loss) * len(batch)
            ev["loss"][1] += len(batch)
        u = self.model.user_embedding(batch)
        scores = u @ ev["items"].T
        rows = batch.rows.cpu()
        vals, lens = gather_jagged(ev["seen_v"], ev["seen_o"], rows)
        r = torch.repeat_interleave(torch.arange(len(rows)), lens)
        scores[r.to(scores.device), vals.to(scores.device)] = float("-inf")
        kmax = min(max(self.ks), scores.shape[1])
        top = torch.topk(scores, kmax, dim=1).indices.cpu()
        target = ev["targets"][rows]
        match = top == target[:, None]
        for k in self.ks:
            m = match[:, :k]
            ev["hits"][k] += float(m.any(1).sum())
            pos = torch.nonzero(m)
            ev["ndcg"][k] += float((1.0 / torch.log2(pos[:, 1].double() + 2)).sum())
        ev["n"] += len(rows)

    def _eval_end(self, prefix: str) -> None:
        """Log the split's metrics over every rank's rows: one all-reduce, on every rank."""
        ev, self._eval = self._eval, {}
        if not ev:
            return
        vec = torch.tensor([ev["n"], *ev["loss"], *(ev["hits"][k] for k in self.ks), *(ev["ndcg"][k] for k in self.ks)],
                           dtype=torch.float64, device=self.device)
        if self._distributed():
            all_reduce_sum(vec)
        n, loss_sum, loss_rows, *rest = vec.tolist()
        hits, ndcg = rest[:len(self.ks)], rest[len(self.ks):]
        if loss_rows > 0:
            self.log(f"{prefix}/loss", loss_sum / loss_rows, sync_dist=False)
        if n:
            for k, h, g in zip(self.ks, hits, ndcg):
                self.log(f"{prefix}/recall@{k}", h / n, prog_bar=k == max(self.ks), sync_dist=False)
                self.log(f"{prefix}/ndcg@{k}", g / n, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._eval_start("valid")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start("test")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def forward(self, batch):
        return self.model(batch)

    # ---------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["recsys"] = {
            "features": self.features.to_dict(),
            "model": _jsonable(self.model.config),
            "task": {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                     "init_args": _jsonable(dict(self.hparams))},
        }
        state = {name: opt.state_dict() for name, opt in self._in_backward_optimizers().items()}
        if state:
            checkpoint["recsys_in_backward_optimizers"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("recsys_in_backward_optimizers") or {}
        for name, opt in self._in_backward_optimizers().items():
            if name in saved:
                opt.load_state_dict(saved[name])


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def load_retrieval_checkpoint(path: str | Path, map_location: str = "cpu") -> RetrievalTask:
    """Rebuild a trained :class:`RetrievalTask` from a checkpoint file alone, in eval mode."""
    from recsys.checkpoint import read_checkpoint

    p = Path(path)
    # a file, or the directory of a sharded (DCP) run, its tables gathered whole; weights_only=True
    ckpt = read_checkpoint(p, map_location=map_location)
    meta = ckpt.get("recsys")
    if meta is None:
        raise RecsysError("not a recsys checkpoint (no 'recsys' section)", where=str(p))
    kind = meta.get("task", {}).get("class_path", "")
    if not kind.endswith("RetrievalTask"):
        raise RecsysError(f"not a retrieval checkpoint (its task is {kind or 'unknown'})", where=str(p),
                          fix="pass a checkpoint written by `recsys fit` with a RetrievalTask config")
    features = FeatureEncoder.from_dict(meta["features"])
    model = build_retrieval_model(meta["model"], features)
    accepted = set(inspect.signature(RetrievalTask.__init__).parameters) - {"self", "model", "features"}
    args = {k: v for k, v in meta["task"]["init_args"].items() if k in accepted}
    args.pop("embedding_optimizer", None)  # in-backward optimizers are for training only
    task = RetrievalTask(model=model, features=features, **args)
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    return task

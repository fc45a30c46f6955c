"""DimensionSearchTask: DNIS's bi-level search of the soft-selection alpha (first order, DARTS style).

As the official code (``SJTU-DMTai/AutoSrh`` ``main_nas.py``; ``specs/PAPERS.md`` 1.2 step 5) does:

1. **Warm start** (``warm_start_epochs``): train the whole model normally (alpha not applied,
   i.e. all ones) with Adam; the weights with the best validation loss are kept and the search
   starts from them with alpha reset to 1.
2. **Search** (the remaining epochs): for every training batch
   (a) a weight step on the *train* split through the masked model (``W * alpha``): Adam on the
   embeddings (TorchRec tables + numeric vectors) and, with ``train_network=True`` (default,
   as the issue asks; the official code freezes the backbone: ``False``), the network;
   (b) an alpha step on a *validation* batch (cycled, its own shuffle):
   ``L = BCE + aux losses + l1 * sum|alpha|``, ``g = dL/dalpha``; with ``grad_norm`` each
   frequency-block row of ``g`` is divided by its mean absolute value (+1e-8); plain SGD with
   ``alpha_lr``; alpha clipped to [0, 1].
   The state (weights + alpha) with the best validation loss over the search epochs is
   restored at the end (``restore_best``).

Not implemented (documented deviations): the second-order hypergradient (the scripts use
first order), ReduceLROnPlateau inside the search (epochs are fixed; configure them).

Lightning manual optimization; use with a :class:`~recsys.data.CTRDataModule`
(``trainer.fit(task, datamodule=dm)``; the alpha batches come from ``dm``'s valid split at the
train batch size) or call :meth:`DimensionSearchTask.set_alpha_loader` first.

>>> import pytorch_lightning as L
>>> from recsys.data import CTRDataModule
>>> from recsys.models import DNN
>>> dm = CTRDataModule(dataset_options={"n_rows": 2000}, batch_size=256)
>>> task = DimensionSearchTask(DNN(dm.features, embedding_dim=4, hidden_units=[8]), dm.features,
...                            warm_start_epochs=1)
>>> L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
...           enable_model_summary=False).fit(task, datamodule=dm)
>>> result = task.prune(budget=0.5)
>>> result.params_kept <= 0.5 * result.params_full
True
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Callable, Iterator, Sequence

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torchrec import EmbeddingBagCollection, EmbeddingCollection

from recsys.data.preprocess import FeatureEncoder
from recsys.errors import RecsysError
from recsys.metrics import roc_auc
from recsys.models.dnis import DimsResult, SoftSelection, find_embedding, prune_to_budget
from recsys.models.base import RankingModel
from recsys.tasks.distributed import all_gather_rows
from recsys.models.embedding import NumericEmbedding

__all__ = ["DimensionSearchTask"]


class DimensionSearchTask(L.LightningModule):
    """DNIS search over the widths of a ranking model's embedding tables.

    Args:
        model: factory ``features -> RankingModel`` (a ``class_path`` in YAML) or a built model,
            at full width; it must take ``dims`` (every model on ``FeatureEmbedding`` does).
        features: the fitted FeatureEncoder.
        warm_start_epochs: epochs of plain training before the search.
        lr: Adam learning rate of the weights (warm start and search; official ``lr_w`` 1e-3).
        weight_decay: Adam weight decay of the weights.
        alpha_lr: SGD learning rate of alpha (official scripts 1e-2).
        l1: L1 coefficient on alpha (official 1e-5).
        grad_norm: divide each frequency-block row of alpha's gradient by its mean |g|.
        train_network: also train the network (not only the embeddings) during the search.
        freq_blocks: frequency blocks per table (int S, or fractions of the vocabulary);
            see :func:`recsys.models.dnis.frequency_blocks`.
        dim_block: dims per dimension block (1 = each dim its own alpha).
        alpha_batch_size: batch size of the validation batches of the alpha step (default:
            the datamodule's train batch size).
        restore_best: restore the search state with the best validation loss at the end.
    """

    def __init__(
        self,
        model: Callable[[FeatureEncoder], RankingModel] | RankingModel,
        features: FeatureEncoder | None = None,
        warm_start_epochs: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        alpha_lr: float = 1e-2,
        l1: float = 1e-5,
        grad_norm: bool = True,
        train_network: bool = True,
        freq_blocks: int | Sequence[float] = 4,
        dim_block: int = 1,
        alpha_batch_size: int | None = None,
        restore_best: bool = True,
    ):
        super().__init__()
        if features is None:
            raise RecsysError("DimensionSearchTask needs the fitted features", where="features")
        if warm_start_epochs < 0:
            raise RecsysError(f"warm_start_epochs must be >= 0, got {warm_start_epochs}", where="warm_start_epochs")
        self.save_hyperparameters(ignore=["model", "features"])
        self.automatic_optimization = False
        self.features = features
        self.model = model if isinstance(model, RankingModel) else model(features)
        if not isinstance(self.model, RankingModel):
            raise RecsysError(f"model factory returned {type(self.model).__name__}, not a RankingModel", where="model")
        if "dims" not in self.model.config.get("init_args", {}):
            raise RecsysError(f"{type(self.model).__name__} takes no `dims` argument, so searched widths cannot be "
                              "retrained", where="model", fix="search a model built on FeatureEmbedding with `dims`")
        self.embedding_path, embedding = find_embedding(self.model)
        self.selection = SoftSelection(embedding, self.embedding_path, features, freq_blocks=freq_blocks,
                                       dim_block=dim_block)
        self._val_rows: list[torch.Tensor] = []  # [n, 2] (logit, label) blocks of this epoch
        self.history: list[dict[str, Any]] = []  # one entry per validation epoch
        self._alpha_loader = None
        self._alpha_iter: Iterator | None = None
        self._val_sum = torch.zeros(2, dtype=torch.float64)
        self._best_warm: tuple[float, dict] | None = None
        self._best_search: tuple[float, dict] | None = None

    # ------------------------------------------------------------ parameters
    def embedding_parameters(self) -> list[torch.nn.Parameter]:
        """The "feature" parameters (official code: names containing "feature"): every TorchRec
        table of the model (first-order weights included) and the numeric ``x * v`` vectors."""
        params = []
        for m in self.model.modules():
            if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection, NumericEmbedding)):
                params.extend(m.parameters())
        return params

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -------------------------------------------------------------- phases
    @property
    def searching(self) -> bool:
        return self.current_epoch >= self.hparams.warm_start_epochs

    def set_alpha_loader(self, loader) -> None:
        """Validation batches for the alpha step (cycled), when not fitting with a CTRDataModule."""
        self._alpha_loader = loader
        self._alpha_iter = None

    def _default_alpha_loader(self):
        from torch.utils.data import DataLoader

        from recsys.data.batch import BatchIndexSampler

        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "dataset_for"):
            raise RecsysError("the alpha step needs validation batches", where="DimensionSearchTask",
                              fix="fit with datamodule=CTRDataModule(...) or call set_alpha_loader(loader)")
        ds = dm.dataset_for("valid")
        bs = self.hparams.alpha_batch_size or dm.batch_size
        return DataLoader(ds, sampler=BatchIndexSampler(len(ds), bs, shuffle=True, seed=dm.seed + 1),
                          batch_size=None, num_workers=0)

    def _next_alpha_batch(self):
        if self._alpha_iter is None:
            if self._alpha_loader is None:
                self._alpha_loader = self._default_alpha_loader()
            loader = self._alpha_loader
            self._alpha_iter = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())
        return next(self._alpha_iter).to(self.device)

    # -------------------------------------------------------------- forward
    def forward(self, batch, masked: bool | None = None):
        """Model output; through the masked tables (``W * alpha``) when searching (or ``masked``)."""
        masked = self.searching if masked is None else masked
        if not masked:
            return self.model(batch)
        return functional_call(self.model, self.selection.masked_weights(self.model), (batch,), strict=False)

    def _loss(self, out, batch) -> tuple[torch.Tensor, torch.Tensor]:
        bce = F.binary_cross_entropy_with_logits(out.logits, batch.labels)
        loss = bce + sum(out.aux_losses.values()) if out.aux_losses else bce
        if not torch.isfinite(loss):
            raise RecsysError(f"the loss is {loss.item()} (not finite)", where=f"step {self.global_step}",
                              fix="lower lr / alpha_lr")
        return loss, bce

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        searching = self.searching
        # (a) weights on the train batch
        loss, bce = self._loss(self(batch, masked=searching), batch)
        opt.zero_grad()
        self.manual_backward(loss)
        for a in self.selection.alpha.values():
            a.grad = None
        if searching and not self.hparams.train_network:
            keep = {id(p) for p in self.embedding_parameters()}
            for p in self.model.parameters():
                if id(p) not in keep:
                    p.grad = None
        opt.step()
        self.log("train/loss", bce, batch_size=len(batch), on_step=False, on_epoch=True)
        if not searching:
            return
        # (b) alpha on a validation batch
        vb = self._next_alpha_batch()
        alphas = list(self.selection.alpha.values())
        vloss, _ = self._loss(self(vb, masked=True), vb)
        vloss = vloss + self.hparams.l1 * self.selection.l1()
        grads = torch.autograd.grad(vloss, alphas)
        with torch.no_grad():
            for a, g in zip(alphas, grads):
                if self.hparams.grad_norm:
                    g = g / (g.abs().mean(dim=1, keepdim=True) + 1e-8)
                a.sub_(self.hparams.alpha_lr * g)
            self.selection.clip_()
        self.log("search/alpha_loss", vloss.detach(), batch_size=len(vb), on_step=False, on_epoch=True)

    # ------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_sum.zero_()
        self._val_rows = []

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        _, bce = self._loss(out, batch)
        self._val_sum += torch.tensor([bce.item() * len(batch), len(batch)], dtype=torch.float64)
        self._val_rows.append(torch.stack([out.logits.detach().double(), batch.labels.double()], dim=1))

    def _state(self) -> dict:
        return copy.deepcopy({k: v.detach().cpu() for k, v in self.state_dict().items()})

    def on_validation_epoch_end(self) -> None:
        loss = float(self._val_sum[0] / max(float(self._val_sum[1]), 1.0))
        rows, self._val_rows = self._val_rows, []
        # every rank's rows (one all_gather in DDP, on every rank), AUC from recsys.metrics
        both = all_gather_rows(torch.cat(rows)) if rows else None
        auc = roc_auc(both[:, 1].cpu().numpy(), both[:, 0].cpu().numpy()) if both is not None and len(both) else float("nan")
        self.log("val/loss", loss)
        self.log("val/auc", auc)
        if self.trainer.sanity_checking:
            return
        phase = "search" if self.searching else "warm"
        alpha_mean = float(torch.cat([a.detach().flatten() for a in self.selection.alpha.values()]).mean())
        self.history.append({"epoch": self.current_epoch, "phase": phase, "val_logloss": loss, "val_auc": auc,
                             "alpha_mean": alpha_mean})
        slot = "_best_search" if phase == "search" else "_best_warm"
        best = getattr(self, slot)
        if best is None or loss < best[0]:
            setattr(self, slot, (loss, self._state()))

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == self.hparams.warm_start_epochs and self.current_epoch > 0:
            if self._best_warm is not None:  # search from the best warm-start weights
                self.load_state_dict(self._best_warm[1])
            self.selection.reset_(1.0)

    def on_train_end(self) -> None:
        if self.hparams.restore_best and self._best_search is not None:
            self.load_state_dict(self._best_search[1])

    # ---------------------------------------------------------------- result
    def prune(self, budget: float, criterion: str = "magnitude", min_width: int = 1) -> DimsResult:
        """Per-table widths under ``budget`` (see :func:`recsys.models.dnis.prune_to_budget`)."""
        return prune_to_budget(self.selection, dict(self.model.named_parameters()), budget,
                               criterion=criterion, min_width=min_width)

    def searched_model_config(self, result: DimsResult) -> dict[str, Any]:
        """The model's ``{"class_path", "init_args"}`` with ``dims`` set to the searched widths."""
        config = copy.deepcopy(self.model.config)
        config["init_args"]["dims"] = {**(config["init_args"].get("dims") or {}), **result.widths}
        return config

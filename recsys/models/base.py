"""The model contract: ``RankingModel(features, **hparams)``, ``forward(Batch) -> ModelOutput``.

A model is a plain ``nn.Module`` built from the fitted :class:`~recsys.data.FeatureEncoder`
(schema + vocabulary sizes) and its own hyperparameters. It returns logits plus named auxiliary
losses; the task owns the loss sum, optimizers and metrics.

Every subclass records its constructor arguments (minus ``features``) in ``self.config`` as
``{"class_path": ..., "init_args": {...}}``, so a checkpoint can rebuild the model from JSON
without the experiment YAML (see :func:`recsys.tasks.ranking.load_checkpoint`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModelOutput:
    """``logits``: float ``[B]``; ``aux_losses``: name -> scalar, added to the loss by the task
    (each weighted by the model's own coefficient); ``extras``: optional tensors for inspection."""

    logits: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class ConfigRecorder(nn.Module):
    """Records each subclass's constructor arguments (minus the first, ``features``) in
    ``self.config = {"class_path", "init_args"}`` after construction, so a checkpoint rebuilds
    the module from JSON. Base of :class:`RankingModel` and the retrieval models."""

    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        original = cls.__dict__.get("__init__")
        if original is None:
            return
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            outermost = "_recording" not in self.__dict__
            if outermost:
                object.__setattr__(self, "_recording", True)
            original(self, *args, **kw)
            if outermost:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                init_args = {k: v for k, v in list(bound.arguments.items())[2:]}
                object.__setattr__(self, "config", {
                    "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                    "init_args": init_args,
                })
                del self.__dict__["_recording"]

        cls.__init__ = __init__  # type: ignore[method-assign]


def instantiate(config: dict[str, Any], features: Any, what: str = "model") -> Any:
    """``cls(features, **init_args)`` for ``config = {"class_path", "init_args"}`` after checking
    that the class comes from an allowed package (:func:`recsys.utils.check_class_allowed`:
    recsys, torch, torchrec, Lightning, or one opted in with ``--allow_classes`` /
    ``$RECSYS_ALLOW_CLASSES``), since configs and checkpoints name it. A class's
    ``legacy_defaults`` (argument -> value) fill arguments missing from ``config``."""
    from recsys.utils import check_class_allowed

    check_class_allowed(config["class_path"], f"{what} config (class_path)")
    module, _, name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    init_args = {**getattr(cls, "legacy_defaults", {}), **config.get("init_args", {})}
    return cls(features, **init_args)


class RankingModel(ConfigRecorder):
    """Base class of CTR models. Subclasses take ``features`` as their first argument."""

    def forward(self, batch: Any) -> ModelOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def build_model(config: dict[str, Any], features: Any) -> RankingModel:
    """Instantiate ``config`` (``{"class_path", "init_args"}``) with the fitted ``features``.

    The class must come from an allowed package (see :func:`instantiate`). A class's
    ``legacy_defaults`` (argument -> value) fill arguments missing from ``config``: a config
    saved before an argument existed rebuilds the model it was trained as, even where the
    argument's default has changed since.
    """
    return instantiate(config, features, "model")

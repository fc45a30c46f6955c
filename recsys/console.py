"""What the ``recsys`` command prints: one flag style, progress bars where they help, no noise.

* :class:`ArgumentParser`: ``argparse`` where every long option answers to both spellings,
  ``--n-trials`` and ``--n_trials`` (the help shows the declared one).
* :func:`progress_default`: progress bars on a terminal, off in logs and CI (``$CI`` set, or
  stderr not a TTY); ``$RECSYS_PROGRESS=1`` / ``0`` forces them on / off.
* :func:`quiet_libraries`: silences the lines Lightning, torch and TorchRec print that a user
  cannot act on (tips, deprecations of their own internals, GPU/TPU availability, "Restoring
  states ..."); ``recsys fit --verbose`` leaves them on.
* :func:`canonical_flags`: ``--save-every-n-steps`` -> ``--save_every_n_steps`` for the trainer
  commands (Lightning's CLI spells every option with underscores).

Nothing here imports torch or Lightning, so ``recsys --help`` stays fast.

>>> p = ArgumentParser(prog="x"); _ = p.add_argument("--n-trials", type=int)
>>> p.parse_args(["--n_trials", "3"]).n_trials, p.parse_args(["--n-trials=4"]).n_trials
(3, 4)
>>> canonical_flags(["fit", "--save-every-n-steps", "5", "--model.init_args.lr=0.1", "a-b"])
['fit', '--save_every_n_steps', '5', '--model.init_args.lr=0.1', 'a-b']
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Any, Sequence

PROGRESS_ENV = "RECSYS_PROGRESS"


def progress_default(stream=None) -> bool:
    """True when a progress bar helps: ``stream`` (default stderr) is a terminal and ``$CI`` is
    unset; ``$RECSYS_PROGRESS`` = ``1``/``0`` overrides both."""
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (default: :func:`progress_default`), into ``args.progress``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show progress bars (default: on a terminal, off in logs and CI)")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def resolve_progress(value: bool | None, stream=None) -> bool:
    """An explicit ``--progress`` / ``--no-progress``, else :func:`progress_default` of ``stream``
    (stderr; Lightning's training bar writes to stdout)."""
    return progress_default(stream) if value is None else bool(value)


def _other_spelling(flag: str) -> str:
    body = flag[2:]
    return "--" + (body.replace("_", "-") if "_" in body else body.replace("-", "_"))


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that accepts ``--a-b`` and ``--a_b`` for every long option.

    Abbreviations stay off (``allow_abbrev=False``): a prefix of an option is an error, not a guess.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _canonical(self, args: Sequence[str]) -> list[str]:
        known = self._option_string_actions

        def declared(key: str) -> str:
            return _other_spelling(key) if key not in known and _other_spelling(key) in known else key

        return _rename_options(args, declared)

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._canonical(args), namespace)


def canonical_flags(argv: Sequence[str]) -> list[str]:
    """Lightning-CLI argv with ``-`` in option names written ``_`` (values untouched)."""
    return _rename_options(argv, lambda key: "--" + key[2:].replace("-", "_"))


def _rename_options(args: Sequence[str], rename) -> list[str]:
    """``args`` with every long option's name (``--key`` or ``--key=value``) passed through
    ``rename``; values and everything after a bare ``--`` untouched."""
    out: list[str] = []
    for i, a in enumerate(args):
        if a == "--":
            out += list(args[i:])
            break
        if a.startswith("--") and len(a) > 2:
            key, eq, value = a.partition("=")
            a = rename(key) + eq + value
        out.append(a)
    return out


def pop_flag(argv: list[str], *names: str) -> tuple[list[str], bool]:
    """Remove a boolean flag (any of ``names``) from ``argv``; return (argv, whether it was there)."""
    found = False
    out = []
    for a in argv:
        if a in names:
            found = True
        else:
            out.append(a)
    return out, found


# Lines printed by the libraries under the trainer commands that a recsys user cannot act on.
_NOISE_WARNINGS = (
    # Lightning's own pytree helper builds a LeafSpec, which torch deprecated
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    # recsys's data loaders run in the main process by design (batches are prebuilt columnar slices)
    r".*does not have many workers which may be a bottleneck",
    r".*The number of training batches .* is smaller than the logging interval",
    # scoring a checkpoint: its ModelCheckpoint state names the training run's folder
    r"The dirpath has changed from .* therefore `best_model_score`",
    # predict: recsys's PredictionWriter keeps row order itself and needs no batch indices
    r"Couldn't infer the batch indices fetched from your dataloader",
    # Lightning's CLI, given argv explicitly by `recsys`, warns that sys.argv is not empty
    r"LightningCLI's args parameter is intended to run from within Python",
)
_NOISE_LOGGERS = (
    # GPU/TPU availability, the litlogger tip, "Restoring states ...", "Loaded model weights ...",
    # "`Trainer.fit` stopped: ...": Lightning's rank_zero_info. Importing pytorch_lightning resets
    # the level of its package logger, not of these children, so setting them holds whatever
    # is imported later.
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_fabric.utilities.seed",     # "Seed set to N"
    "pytorch_lightning",
    "lightning_fabric",
    "lightning.pytorch",
    "lightning.fabric",
)
_QUIET_ALWAYS = (
    # "is_fx_tracing will return true for both fx.symbolic_trace and torch.export": printed once
    # per process when TorchRec asks whether it is being traced; nothing to do for a user
    "torch.fx._symbolic_trace",
)


def quiet_libraries(verbose: bool = False) -> None:
    """Silence the libraries' informational lines and internal deprecations for this process.

    Warnings about the user's own setup still show. ``verbose=True`` leaves Lightning's INFO
    lines (GPU/TPU, checkpoint restores, seed) as they are.
    """
    for message in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in _QUIET_ALWAYS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if verbose:
        return
    for name in _NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

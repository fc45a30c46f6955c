"""The ``recsys`` command: the top floor, the only one that parses argv.

Trainer subcommands go through Lightning's CLI (``recsys fit|validate|test|predict --config
experiments/<x>.yaml``, ``--print_config``, dotted overrides such as ``--model.init_args.lr 3e-4``;
:mod:`recsys.commands.fit`, built on :mod:`recsys.tasks.experiment`). After ``fit``, recsys
evaluates the best checkpoint on the valid and test splits and writes ``metrics.json`` next to the
run's logs. ``predict`` writes a parquet of key columns + scores (``--predict_out FILE``, default
``predictions.parquet`` in the checkpoint's run folder; no new log folder). ``validate``, ``test``
and ``predict`` refuse to run without ``--ckpt_path``.

Other subcommands, one module each here (``rank-features``, ``search-dims``, ``tune``, ``report``,
``retrieve``), and any registered with :func:`register_command`; ``recsys --help`` lists them.
Modules are imported only when their command runs, so ``recsys --help`` stays fast.

User errors (:class:`~recsys.errors.RecsysError`) print one line and exit with status 2.

Safety: a config may only instantiate classes from the packages in
:data:`~recsys.utils.ALLOWED_PACKAGES` (recsys, torch, torchrec, pytorch_lightning/lightning);
others need an explicit opt-in on the command line (``--allow_classes mypkg[,otherpkg]``) or in
the environment (``RECSYS_ALLOW_CLASSES=mypkg``), never in the YAML itself. Checkpoints are read
with ``weights_only=True`` everywhere (resume included) and written atomically.

Resume: ``recsys fit --config X.yaml --ckpt_path last`` continues from the newest ``last*.ckpt``
of the config's log directory, in the same ``version_N`` directory; with
``--save_every_n_steps N`` a run writes ``last.ckpt`` every N training steps, so a run killed
mid-epoch resumes mid-epoch and ends with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from recsys.errors import RecsysError
from recsys.utils import ALLOW_ENV, ALLOWED_PACKAGES, check_class_allowed, tune_allocator  # noqa: F401

TRAINER_COMMANDS = {
    "fit": "train a model from a YAML config (then test the best checkpoint, write metrics.json)",
    "validate": "evaluate a checkpoint on the valid split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "score the predict file (or the test split) and write a parquet of keys + scores",
}

# Subcommands beyond the trainer's: name -> (one-line help, "module:function"). The function
# takes the remaining argv and returns an exit code. A command whose module is absent is not listed.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "rank-features": ("rank features by cardinality-normalized mutual information; data-quality report",
                      "recsys.commands.rank_features:main"),
    "report": ("offline AUC report for one or more checkpoints (HTML, Markdown, metrics.json)",
               "recsys.commands.report:main"),
    "search-dims": ("search per-field embedding widths (DNIS) under a parameter budget",
                    "recsys.commands.search_dims:main"),
    "tune": ("Optuna study over a config and a search space", "recsys.commands.tune:main"),
    "retrieve": ("candidate retrieval (single vector or kNN-Embed) from a trained two-tower checkpoint",
                 "recsys.commands.retrieve:main"),
}


def register_command(name: str, help: str, target: str) -> None:
    """Add ``recsys NAME`` implemented by ``target`` = ``"module:function"`` (``fn(argv) -> int``)."""
    EXTRA_COMMANDS[name] = (help, target)


def _available(target: str) -> bool:
    """Whether ``target``'s module exists, found on disk without importing it or its packages
    (``find_spec("a.b.c")`` would import ``a.b``, and recsys's packages import torch)."""
    parts = target.split(":")[0].split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if len(parts) == 1:
        return True
    locations = list(spec.submodule_search_locations or [])
    for i, part in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        found = []
        for loc in locations:
            pkg = Path(loc) / part
            if (pkg / "__init__.py").is_file():
                found.append(str(pkg))
            elif last and (Path(loc) / f"{part}.py").is_file():
                return True
        if not found:
            return False
        if last:
            return True
        locations = found
    return False


def _run_extra(name: str, argv: list[str]) -> int:
    module, _, func = EXTRA_COMMANDS[name][1].partition(":")
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def _usage() -> str:
    lines = ["usage: recsys <command> [options]", "", "commands:"]
    for name, help in TRAINER_COMMANDS.items():
        lines.append(f"  {name:<14}{help}")
    for name, (help, target) in EXTRA_COMMANDS.items():
        if _available(target):
            lines.append(f"  {name:<14}{help}")
    lines += ["", "`recsys <command> --help` shows a command's options; trainer commands take",
              "`--config experiments/<x>.yaml` (see experiments/), `--print_config`, and `--verbose`",
              "(Lightning's own info lines). Options may be written --a-b or --a_b."]
    return "\n".join(lines)


def run_trainer_cli(argv: list[str], callbacks: list | None = None, allow_classes: list[str] | None = None):
    """Run a Lightning trainer subcommand from argv (``["fit", "--config", X, ...]``); returns the
    CLI object. See :func:`recsys.commands.fit.run_trainer_cli`."""
    from recsys.commands.fit import run_trainer_cli as run

    return run(argv, callbacks=callbacks, allow_classes=allow_classes)


def main(argv: list[str] | None = None) -> int:
    """Run one ``recsys`` command; its exit code. From the command line (``argv`` None) a rank of
    a multi-process run ends its process here, after its exit hooks (see
    :func:`recsys.tasks.distributed.end_distributed_process`: gloo can abort the interpreter's
    teardown)."""
    code = _main(argv)
    if argv is None and "recsys.tasks.distributed" in sys.modules:
        sys.modules["recsys.tasks.distributed"].end_distributed_process(code)
    return code


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    from recsys.console import quiet_libraries

    quiet_libraries(verbose="--verbose" in argv)  # every command; trainer commands pop --verbose later
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    # before anything imports torch (its hugepage switch is read at its first allocation); the
    # feature ranking's arrays are numpy's, which it pages itself (rank_features._tune_process)
    tune_allocator(torch_hugepages=argv[0] != "rank-features")
    try:
        if argv[0] in TRAINER_COMMANDS:
            run_trainer_cli(argv)
            return 0
        if argv[0] in EXTRA_COMMANDS and _available(EXTRA_COMMANDS[argv[0]][1]):
            return _run_extra(argv[0], argv[1:])
        print(f"recsys: error: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    except RecsysError as e:
        print(f"recsys: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsys: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - stop signals and lost ranks end a run with one line
        from recsys.tasks.callbacks import StopRequested
        from recsys.tasks.distributed import is_peer_failure
        from recsys.tasks.experiment import _launcher_rank

        if isinstance(e, StopRequested):
            if _launcher_rank() == 0:
                print(f"recsys: {e}", file=sys.stderr)
            return 128 + e.signum
        if is_peer_failure(e):
            first = str(e).splitlines()[0][:200] if str(e) else ""
            print(f"recsys: error: rank {_launcher_rank()}: a collective with the other training processes failed "
                  f"({type(e).__name__}: {first}); a process died, hung or was stopped, so this one stops too "
                  "(resume from the newest checkpoint with --ckpt_path last)", file=sys.stderr)
            return 1
        raise

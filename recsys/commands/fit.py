"""``recsys fit|validate|test|predict``: the trainer subcommands, argv in.

The experiment machinery (config parsing, resume, checkpoints, ``metrics.json``) is
:mod:`recsys.tasks.experiment`; this module adds what only the command does: ``--allow_classes``
taken from argv and the offline report (``--report true``), which lives on a floor above tasks.
"""

from __future__ import annotations

import sys
from pathlib import Path

from recsys.tasks.experiment import ExperimentCLI, make_cli
from recsys.utils import split_names


def pop_allow_classes(argv: list[str]) -> tuple[list[str], list[str]]:
    """Remove ``--allow_classes X`` / ``--allow_classes=X`` from ``argv``; return (argv, packages).
    A command-line flag only: a YAML config cannot widen what it may instantiate."""
    out, allowed = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--allow_classes":
            if i + 1 >= len(argv):
                from recsys.errors import ConfigError

                raise ConfigError("--allow_classes needs a value", where="--allow_classes",
                                  fix="e.g. --allow_classes mypkg,otherpkg.models")
            allowed += split_names(argv[i + 1])
            i += 2
            continue
        if a.startswith("--allow_classes="):
            allowed += split_names(a.split("=", 1)[1])
        else:
            out.append(a)
        i += 1
    return out, allowed


def write_report(ckpt: str, split: str, out: Path) -> None:
    """The offline AUC report of ``ckpt`` on ``split`` into ``out`` (``--report true``)."""
    from recsys.reports import build_report

    build_report([ckpt], data=split, out_dir=out)
    print(f"recsys: report written to {out / 'report.html'}")


class RecsysCLI(ExperimentCLI):
    """The experiment CLI of the ``recsys`` command: writes the report when asked."""

    report_writer = staticmethod(write_report)


def run_trainer_cli(argv: list[str], callbacks: list | None = None, allow_classes: list[str] | None = None):
    """Run a Lightning trainer subcommand; returns the LightningCLI object.

    ``callbacks`` are extra Lightning callbacks added to those of the config (for programmatic
    callers, which cannot put them in YAML). ``allow_classes``: packages beyond
    :data:`~recsys.utils.ALLOWED_PACKAGES` whose classes the config may instantiate (also
    ``--allow_classes`` in ``argv``). Python callers without argv use
    :func:`recsys.tasks.experiment.fit` / :func:`~recsys.tasks.experiment.build`.
    """
    import pytorch_lightning  # noqa: F401 - its import sets its loggers' levels; quiet them after

    from recsys.console import canonical_flags, pop_flag, progress_default, quiet_libraries

    argv, verbose = pop_flag(canonical_flags(list(argv)), "--verbose")
    quiet_libraries(verbose=verbose)  # --verbose keeps Lightning's INFO lines
    argv, allowed = pop_allow_classes(argv)
    # a config or `--trainer.enable_progress_bar` decides; otherwise a bar on a terminal only
    return make_cli(argv, callbacks=callbacks or (), allow_classes=[*(allow_classes or []), *allowed],
                    cli_class=RecsysCLI, trainer_defaults={"enable_progress_bar": progress_default(sys.stdout)})

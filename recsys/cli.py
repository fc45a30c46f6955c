"""The ``recsys`` console entry point (``recsys = recsys.cli:main``; ``python -m recsys.cli``).

A thin alias of :mod:`recsys.commands`, where every subcommand lives; the Python API of an
experiment (build a config, run a fit) is :mod:`recsys.tasks.experiment`.
"""

from __future__ import annotations

import sys

from recsys.commands import EXTRA_COMMANDS, TRAINER_COMMANDS, main, register_command, run_trainer_cli  # noqa: F401
from recsys.utils import ALLOW_ENV, ALLOWED_PACKAGES, check_class_allowed  # noqa: F401


def __getattr__(name: str):
    # imported on first use: `recsys --help` does not load Lightning
    if name in ("check_class_paths", "class_paths"):
        from recsys.tasks import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'recsys.cli' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())

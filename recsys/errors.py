"""Errors that recsys raises for bad input.

Every user-facing problem (a missing file, a column the schema names but the data lacks, a label
that is not 0/1, ...) is a :class:`RecsysError` whose message says *where* (file, field, column)
and *what to do*. The CLI prints these as one line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Bad input or configuration, explained for the person who supplied it.

    Args:
        message: what is wrong.
        where: the file, field or column concerned (printed first).
        fix: what the user should do about it.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.message = message
        self.where = where
        self.fix = fix
        parts = []
        if where:
            parts.append(f"{where}: ")
        parts.append(message)
        if fix:
            parts.append(f" Fix: {fix}")
        super().__init__("".join(parts))


class SchemaError(RecsysError):
    """The schema YAML is malformed or inconsistent."""


class DataError(RecsysError):
    """The data does not match the schema (missing column, wrong type, bad label, NaN, ...)."""


class ConfigError(RecsysError, ValueError):
    """An experiment config or command-line option is invalid.

    Also a ``ValueError``: a model built from mismatched arguments raises it at construction,
    where Python code expects ``ValueError`` (TorchRec's and PyTorch's own convention)."""

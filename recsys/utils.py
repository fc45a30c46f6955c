"""Small shared helpers: atomic file writes, cache directory, the process's allocator settings."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator


def cache_dir(sub: str = "") -> Path:
    """recsys's download/derived-data cache: ``$RECSYS_CACHE`` or ``~/.cache/recsys``.

    ``sub`` is a relative folder inside it; one that would lead outside the cache (absolute,
    ``..``) raises :class:`~recsys.errors.RecsysError`, so fetch code never writes elsewhere.
    """
    root = Path(os.environ.get("RECSYS_CACHE") or Path.home() / ".cache" / "recsys").expanduser()
    path = within(root, sub) if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


def within(root: str | Path, relative: str | Path) -> Path:
    """``root / relative``, refusing a ``relative`` that is absolute or climbs out of ``root``."""
    from recsys.errors import RecsysError

    rel = Path(relative)
    root = Path(root)
    target = (root / rel).resolve()
    if rel.is_absolute() or ".." in rel.parts or not target.is_relative_to(root.resolve()):
        raise RecsysError(f"{str(relative)!r} leads outside {root}", where=str(root),
                          fix="cache entries are plain relative names")
    return root / rel


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves no partial output behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# packages whose classes configs and checkpoints may name without an explicit opt-in
ALLOWED_PACKAGES = ("recsys", "torch", "torchrec", "pytorch_lightning", "lightning", "lightning_fabric")
ALLOW_ENV = "RECSYS_ALLOW_CLASSES"


def split_names(value: str | None) -> list[str]:
    """``"a, b;c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in (value or "").replace(";", ",").split(",") if v.strip()]


def allowed_packages(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """:data:`ALLOWED_PACKAGES`, then ``extra``, then ``$RECSYS_ALLOW_CLASSES``."""
    return list(ALLOWED_PACKAGES) + list(extra) + split_names(os.environ.get(ALLOW_ENV))


def check_class_allowed(class_path: str, where: str, extra: list[str] | tuple[str, ...] = ()) -> None:
    """Raise :class:`~recsys.errors.ConfigError` unless ``class_path`` lies in an allowed package
    (a whole package name: ``torchevil.X`` is not ``torch``)."""
    from recsys.errors import ConfigError

    allowed = allowed_packages(extra)
    if not isinstance(class_path, str) or not any(class_path == a or class_path.startswith(a + ".") for a in allowed):
        top = str(class_path).split(".")[0]
        raise ConfigError(f"asks to instantiate {class_path!r}, which is not from an allowed package "
                          f"({', '.join(allowed)})", where=where,
                          fix=f"if you trust it, allow its package on the command line: --allow_classes {top} "
                              f"(or {ALLOW_ENV}={top})")


ALLOCATOR_ENV = "RECSYS_ALLOCATOR"
# glibc variables that, when the user has set them, leave glibc's malloc to the user
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 256 << 20  # blocks up to 256 MB come from the heap, not from a fresh mmap each time
TRIM_THRESHOLD = 512 << 20  # keep up to 512 MB of freed heap instead of returning it to the OS
_applied: dict[str, bool] = {}


def tune_allocator(torch_hugepages: bool = True) -> dict[str, bool]:
    """Allocator settings for training and counting on CPU; what was applied, by name.

    A training step on CPU allocates and frees the same few large tensors (activations of a
    ``[B, F, 3*H*d]`` projection: ~31 MB at batch 4,096) every step. glibc serves blocks above
    its mmap threshold with a fresh ``mmap`` and returns them on ``free``, and trims the heap
    top, so the next step faults every page in again: on a one-thread AutoInt+ step (ml100k-ctr,
    batch 4,096) about 7% of the time went to page faults. Two settings remove it:

    * ``glibc``: ``mallopt(M_MMAP_THRESHOLD, 256 MB)`` and ``mallopt(M_TRIM_THRESHOLD, 512 MB)``:
      freed blocks stay in the heap and are reused. The process keeps up to 512 MB of freed
      memory after its peak, and the peak can grow: within the run-to-run spread on ml100k-ctr
      and Adult, +0.4-0.5 GiB (1.8-2.0 vs 1.3-1.4 GiB) for AutoInt on the 40-field wide table.
    * ``torch_hugepages``: ``THP_MEM_ALLOC_ENABLE=1``, PyTorch's own switch for 2 MB pages
      (``madvise(MADV_HUGEPAGE)``) on tensors of 2 MB and more, fewer page faults and TLB
      misses. PyTorch reads it at its first allocation, so it only takes effect when this runs
      before ``import torch`` (as the ``recsys`` command does); the result says whether it did.

    Measured in ``experiments/bench/step_ab.py`` (one thread, arms alternated in one run). The
    ``recsys`` command calls this before anything imports torch. Settings the user made win:
    glibc is left alone when ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_TOP_PAD_`` or ``GLIBC_TUNABLES`` is set, and ``THP_MEM_ALLOC_ENABLE`` when set;
    ``RECSYS_ALLOCATOR=default`` turns both off. Linux (glibc) only; elsewhere nothing is done.
    Calling it again does nothing more.

    >>> sorted(tune_allocator())
    ['glibc', 'torch_hugepages']
    """
    if _applied:
        return dict(_applied)
    glibc = hugepages = False
    if os.environ.get(ALLOCATOR_ENV, "").strip().lower() not in ("default", "0", "off", "false", "no") \
            and sys.platform.startswith("linux"):
        if not any(k in os.environ for k in _GLIBC_ENV):
            try:
                import ctypes

                libc = ctypes.CDLL("libc.so.6")
                glibc = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                    bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):  # not glibc: nothing to tune
                glibc = False
        if torch_hugepages and "THP_MEM_ALLOC_ENABLE" not in os.environ and "torch" not in sys.modules:
            os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
            hugepages = True
    _applied.update(glibc=glibc, torch_hugepages=hugepages)
    return dict(_applied)

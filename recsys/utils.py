"""Small shared helpers: atomic file writes, cache directory."""

from __future__ import annotations

import contextlib
import os
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


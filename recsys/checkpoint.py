"""Checkpoints, read safely: the floor every layer (data, tasks, commands) reads them through.

* :func:`read_checkpoint` returns a checkpoint as one dict, always with ``torch.load(weights_only=True)``:
  a ``.ckpt`` file, or the ``torch.distributed.checkpoint`` (DCP) directory of a sharded run, whose
  shards it gathers into whole tables in one process. ``keys=()`` reads the metadata only (loops,
  callbacks, ``checkpoint["recsys"]``: schema, fitted encoders, model class path and arguments as
  JSON), without any tensor shard.
* DCP's own ``.metadata`` is a pickle; :class:`_MetadataUnpickler` admits only the classes DCP
  metadata is made of, and the reader refuses non-tensor entries (DCP would unpickle those with
  ``weights_only=False``).
* :class:`RecsysCheckpointIO` is Lightning's checkpoint I/O for every recsys trainer: atomic writes
  (temporary name + fsync + rename), ``weights_only=True`` reads, :class:`~recsys.errors.RecsysError`
  for a corrupt or truncated file.

Which classes a *config* may instantiate (the allowlist) is :func:`recsys.utils.check_class_allowed`;
the model class a checkpoint names is checked with it before it is imported
(:func:`recsys.tasks.ranking.load_checkpoint`).

This module imports nothing of recsys above :mod:`recsys.errors` and :mod:`recsys.utils`.

>>> import tempfile, torch
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "x.ckpt"
>>> RecsysCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}, "recsys": {"v": 1}}, path)
>>> read_checkpoint(path)["state_dict"]["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from recsys.errors import RecsysError
from recsys.utils import atomic_path

META_FILE = "recsys_meta.pt"
STATE_KEY = "state_dict"
FUSED_KEY = "fused_optimizer"


# ---------------------------------------------------------------------------- reading
def _short(e: BaseException) -> str:
    failures = getattr(e, "failures", None)  # DCP's CheckpointException: {rank: (exception, trace)}
    if failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) else inner
        if isinstance(inner, BaseException):
            e = inner
    text = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu",
                    keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A checkpoint as one dict, read with ``weights_only=True``: a ``.ckpt`` file, or the DCP
    directory of a sharded run (its tables gathered whole). ``keys``: read only these top-level
    entries of a DCP directory's tensors (``state_dict``, ``fused_optimizer``); default all.

    Raises :class:`RecsysError` naming the file for a missing, truncated or corrupt checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        keys = (STATE_KEY,) if keys is None else tuple(keys)
        meta_path = p / META_FILE
        if not meta_path.is_file():
            raise RecsysError(f"not a recsys checkpoint directory (no {META_FILE})", where=str(p),
                              fix="pass a checkpoint written by recsys fit; an interrupted save leaves none")
        ckpt = _torch_load(meta_path, map_location)
        if not keys:
            return ckpt
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        try:
            tensors = _read_dcp_local(p, set(keys))
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - missing/truncated shard files raise various errors
            raise RecsysError(f"cannot read the sharded checkpoint ({_short(e)})", where=str(p),
                              fix="the directory is incomplete or corrupt; retrain or pick another checkpoint") from None
        for key, value in tensors.items():
            if map_location is not None:
                value = _to(value, map_location)
            ckpt[key] = value
        return ckpt
    if not p.is_file():
        raise RecsysError("checkpoint not found", where=str(p), fix="check the path")
    return _torch_load(p, map_location)


class _MetadataUnpickler(pickle.Unpickler):
    """DCP writes its ``.metadata`` with pickle and reads it back with a plain ``pickle.load``:
    any code could run. This reader admits only the classes DCP metadata is made of."""

    MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem",
               "torch.distributed.checkpoint.planner")

    def find_class(self, module: str, name: str):
        if module in self.MODULES and not name.startswith("__"):
            return super().find_class(module, name)
        if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        if (module, name) in {("torch.serialization", "_get_layout"), ("torch", "strided"),
                              ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"),
                              ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in checkpoint metadata")


def _safe_reader(path: Path):
    """A DCP ``FileSystemReader`` whose metadata is unpickled with :class:`_MetadataUnpickler`
    and that refuses checkpoints with non-tensor entries (DCP would unpickle those with
    ``weights_only=False``; recsys never writes any)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            for key, md in getattr(metadata, "state_dict_metadata", {}).items():
                if not isinstance(md, TensorStorageMetadata):
                    raise pickle.UnpicklingError(f"non-tensor entry {key!r}")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def _read_dcp_local(path: Path, keys: set[str]) -> dict[str, Any]:
    """The entries ``keys`` of a DCP checkpoint as whole tensors, read by this process alone
    (even inside a process group: no collective is run)."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    sd: dict[str, Any] = {}
    _load_state_dict(state_dict=sd, storage_reader=_safe_reader(path), no_dist=True,
                     planner=_EmptyStateDictLoadPlanner(keys=keys))
    return sd


def _to(value: Any, device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _torch_load(p: Path, map_location) -> dict[str, Any]:
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated/corrupt file raises various errors
        raise RecsysError(f"cannot read the checkpoint ({_short(e)})", where=str(p),
                          fix="the file is corrupt, truncated or not a recsys checkpoint; retrain or pick another") from None
    if not isinstance(ckpt, dict):
        raise RecsysError(f"not a checkpoint (a {type(ckpt).__name__}, not a dict)", where=str(p))
    return ckpt


def remove_path(path: str | Path) -> None:
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


class RecsysCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O of recsys: atomic writes (temporary file + fsync + rename, so a
    kill during a save leaves the previous checkpoint intact), ``weights_only=True`` reads
    whatever Lightning asks (resume, ``--ckpt_path``), DCP directories readable in one process,
    and :class:`RecsysError` for a corrupt or truncated file. ``recsys`` trainers use it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location or "cpu", keys=(STATE_KEY,))

    def remove_checkpoint(self, path) -> None:
        remove_path(path)

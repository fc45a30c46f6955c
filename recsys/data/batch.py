"""Batch: the one input type of every model, and vectorized batching out of an EncodedSplit.

A ``Batch`` holds, for B rows:

* ``dense``: float32 ``[B, Dn]``, the standardized numeric fields (``schema.dense_fields`` order);
* ``sparse``: a TorchRec ``KeyedJaggedTensor`` with one key per id field (``schema.id_fields``
  order): single categoricals (length 1 per row), multi-hot lists, bucketized numerics and
  sequences (ids oldest -> newest, the last ``max_len`` kept);
* ``labels``: float32 ``[B]``;
* ``user_ids``: int64 ``[B]`` for grouped metrics (or ``None``);
* ``rows``: int64 ``[B]``, row positions in the split (so predictions map back to raw keys).

Collation gathers whole batches with tensor ops (offsets and lengths from arrays); there is no
per-row Python. The DataLoader therefore runs with ``batch_size=None`` over a sampler that yields
index tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.preprocess import EncodedSplit


@dataclass
class Batch:
    """B rows of model input. See the module docstring for the fields."""

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    user_ids: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Batch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self.sparse.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            user_ids=mv(self.user_ids),
            rows=mv(self.rows),
        )

    def pin_memory(self) -> "Batch":
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels=self.labels.pin_memory(),
            user_ids=None if self.user_ids is None else self.user_ids.pin_memory(),
            rows=None if self.rows is None else self.rows.pin_memory(),
        )


def gather_jagged(values: torch.Tensor, offsets: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of a CSR (values, offsets) array, as (values, lengths), without a Python loop.

    >>> v, o = torch.tensor([5, 6, 7, 8]), torch.tensor([0, 1, 1, 4])
    >>> gather_jagged(v, o, torch.tensor([2, 0]))
    (tensor([6, 7, 8, 5]), tensor([3, 1]))
    """
    starts = offsets[idx]
    lengths = offsets[idx + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return values[:0], lengths
    out_starts = torch.cumsum(lengths, 0) - lengths
    shift = torch.repeat_interleave(starts - out_starts, lengths, output_size=total)
    pos = torch.arange(total, dtype=torch.int64) + shift
    return values[pos], lengths


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory; read-only arrays (zero-copy views of polars data) are
    copied first, since torch tensors over read-only memory are undefined behaviour when written."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class SplitDataset(Dataset):
    """An encoded split held as tensors; ``ds[idx_tensor]`` returns a whole :class:`Batch`."""

    def __init__(self, split: EncodedSplit, keys: list[str]):
        self.keys = list(keys)
        self.n = len(split)
        self.values = {k: _tensor(split.ids[k][0]) for k in self.keys}
        self.offsets = {k: _tensor(split.ids[k][1]) for k in self.keys}
        # single-id fields (every row has exactly one id) take a faster gather
        self.single = {k: bool(len(split.ids[k][0]) == self.n and np.array_equal(split.ids[k][1], np.arange(self.n + 1)))
                       for k in self.keys}
        self.dense = _tensor(split.dense)
        self.labels = _tensor(split.labels)
        self.users = None if split.users is None else _tensor(split.users)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: torch.Tensor) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        vals, lens = [], []
        ones = None
        for k in self.keys:
            if self.single[k]:
                vals.append(self.values[k][idx])
                if ones is None:
                    ones = torch.ones(idx.shape[0], dtype=torch.int64)
                lens.append(ones)
            else:
                v, l = gather_jagged(self.values[k], self.offsets[k], idx)
                vals.append(v)
                lens.append(l)
        sparse = KeyedJaggedTensor(
            keys=self.keys,
            values=torch.cat(vals) if vals else torch.zeros(0, dtype=torch.int64),
            lengths=torch.cat(lens) if lens else torch.zeros(0, dtype=torch.int64),
        )
        return Batch(
            dense=self.dense[idx],
            sparse=sparse,
            labels=self.labels[idx],
            user_ids=None if self.users is None else self.users[idx],
            rows=idx,
        )


class BatchIndexSampler(DistributedSampler):
    """Yields index tensors of ``batch_size`` rows; shuffled with ``seed + epoch`` when asked.

    The same seed gives the same order in every run; each ``__iter__`` is a new epoch.

    Several processes (``world_size > 1``): every rank walks the same *global* batches of
    ``batch_size`` rows and keeps its ``rank``-th contiguous slice (sizes differ by at most one
    row), so every rank runs the same number of steps, the data of one step is the same global
    batch whatever the number of processes, and a run on N processes matches one process with
    the same ``batch_size`` (gradients are averaged over ranks). A final global batch with fewer
    than ``world_size`` rows is merged into the batch before it (no rank ever gets an empty batch).

    Resumable: :meth:`state_dict` records the epoch and how many batches of it were yielded;
    after :meth:`load_state_dict` the next ``__iter__`` of that epoch skips those batches, so a
    run resumed from a mid-epoch checkpoint sees exactly the rows it would have seen. (The class
    derives from ``DistributedSampler`` only so that Lightning leaves it in place under DDP.)
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        Sampler.__init__(self)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._iter_epoch = 0  # epoch of the iteration in progress
        self._yielded = 0  # batches yielded so far in it
        self._resume: dict | None = None

    def _bounds(self) -> list[int]:
        """Start offsets of the global batches, plus the end."""
        full, rest = divmod(self.n, self.batch_size)
        starts = [i * self.batch_size for i in range(full)]
        if rest and not self.drop_last:
            if full and self.world_size > 1 and rest < self.world_size:
                pass  # merge the short tail into the last full batch
            else:
                starts.append(full * self.batch_size)
        return starts + [self.n if (rest and not self.drop_last) else full * self.batch_size]

    def __len__(self) -> int:
        return len(self._bounds()) - 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        """Where the iteration in progress stands: ``epoch`` and ``batches`` yielded in it."""
        return {"epoch": self._iter_epoch, "batches": self._yielded, "n": self.n, "batch_size": self.batch_size,
                "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Make the next iteration of ``state['epoch']`` skip the ``state['batches']`` batches
        already trained. The data and batch size must be those of the saved run (the number of
        processes may differ: global batches do not depend on it)."""
        for key in ("n", "batch_size", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                from recsys.errors import RecsysError

                raise RecsysError(f"cannot resume mid-epoch: the checkpoint's sampler had {key}={state[key]!r}, "
                                  f"this run has {getattr(self, key)!r}", where="data",
                                  fix="resume with the data and batch size of the interrupted run")
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self.epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g)
            self.epoch += 1
        else:
            order = torch.arange(self.n)
        start = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            start = self._resume["batches"]
        self._resume = None
        self._iter_epoch, self._yielded = epoch, start
        bounds = self._bounds()
        for i in range(start, len(bounds) - 1):
            idx = order[bounds[i]:bounds[i + 1]]
            if self.world_size > 1:
                idx = torch.tensor_split(idx, self.world_size)[self.rank]
            self._yielded = i + 1
            yield idx


class ResumableDataLoader(DataLoader):
    """A DataLoader whose ``state_dict``/``load_state_dict`` are its sampler's, so Lightning
    stores the position inside the epoch in every checkpoint and restores it on resume."""

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

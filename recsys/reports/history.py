"""History caps: score the same rows as if each user had only their last ``K`` behaviours.

:func:`cap_sequences` cuts every sequence field of a :class:`~recsys.data.Batch` to the last
``K`` ids of each row (ids are stored oldest -> newest, so these are the most recent ones);
every other id field and the dense features are left as they are. ``K = 0`` empties the
sequences: the rows look like new users. Because it works on the batch, it applies to every
model that reads a sequence field, whether it attends over it (SDIM, DIN, AW-MoE) or pools it
(MoE, DeepFM: the pooled mean of fewer ids).

``recsys report --history-cap 0,1,3,5,10`` uses it to measure how a model does on long-tail
users without needing long-tail users in the data (see :mod:`recsys.reports.build`).

>>> import torch
>>> from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
>>> from recsys.data.batch import Batch
>>> kjt = KeyedJaggedTensor(keys=["item", "hist"], values=torch.tensor([7, 8, 1, 2, 3, 4, 5]),
...                         lengths=torch.tensor([1, 1, 3, 2]))
>>> b = Batch(dense=torch.zeros(2, 0), sparse=kjt, labels=torch.zeros(2))
>>> capped = cap_sequences(b, ["hist"], 2).sparse
>>> capped["hist"].values().tolist(), capped["hist"].lengths().tolist(), capped["item"].values().tolist()
([2, 3, 4, 5], [2, 2], [7, 8])
>>> cap_sequences(b, ["hist"], 0).sparse["hist"].lengths().tolist()
[0, 0]
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

__all__ = ["cap_sequences", "parse_caps"]


def cap_sequences(batch, fields: Sequence[str], k: int):
    """A copy of ``batch`` whose id fields ``fields`` keep at most the last ``k`` ids per row.

    Shapes: ``batch.sparse`` values ``[nnz]`` / lengths ``[K_keys * B]`` -> values ``[nnz']``,
    lengths ``min(length, k)``; every other tensor of the batch is shared, not copied.
    Fields not among the batch's keys are ignored. ``k < 0`` raises ``ValueError``.
    """
    if k < 0:
        raise ValueError(f"a history cap must be >= 0, got {k}")
    kjt: KeyedJaggedTensor = batch.sparse
    keys = list(kjt.keys())
    capped = [i for i, key in enumerate(keys) if key in set(fields)]
    if not capped:
        return batch
    lengths = kjt.lengths().long()
    rows = kjt.stride()
    limit = torch.full((len(keys),), torch.iinfo(torch.int64).max, dtype=torch.int64, device=lengths.device)
    limit[capped] = k
    new_lengths = torch.minimum(lengths, limit.repeat_interleave(rows))        # [K_keys * B]
    values = kjt.values()
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # [nnz]
    starts = torch.cumsum(lengths, 0) - lengths                                  # first id of each row
    position = torch.arange(len(values), device=values.device) - starts[segment]  # 0 = oldest
    keep = position >= (lengths - new_lengths)[segment]                          # the last new_length ids
    weights = kjt.weights_or_none()
    sparse = KeyedJaggedTensor(keys=keys, values=values[keep], lengths=new_lengths.to(kjt.lengths().dtype),
                               weights=None if weights is None else weights[keep])
    return dataclasses.replace(batch, sparse=sparse)


def parse_caps(text: str) -> list[int]:
    """``"0,1,3"`` -> ``[0, 1, 3]`` (sorted, unique); ``ValueError`` naming the bad entry otherwise.

    >>> parse_caps("10, 0,3,3")
    [0, 3, 10]
    """
    caps = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"history cap {part!r} is not a whole number >= 0")
        caps.append(int(part))
    return sorted(set(caps))

"""Batch / KeyedJaggedTensor collation, gather_jagged and BatchIndexSampler, checked against plain Python."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from recsys.data.batch import Batch, BatchIndexSampler, SplitDataset, gather_jagged
from recsys.data.encoders import HashEncoder, QuantileBucketizer, Vocabulary
from recsys.data.preprocess import FeatureEncoder


# ------------------------------------------------------------------ plain-Python reference encoding
def _raw_list(value, f) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        value = [t for t in value.split(f.separator) if t != ""]
    value = list(value)
    if f.kind == "sequence":
        return value[-f.max_len:]
    return value[: f.max_len] if f.max_len else value


def _id(value, enc) -> int:
    if value is None:
        return 1
    if isinstance(enc, Vocabulary):
        return {v: i + 2 for i, v in enumerate(enc.values_)}.get(value, 0)
    if isinstance(enc, HashEncoder):
        digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
        return 2 + int.from_bytes(digest, "little") % enc.n_buckets
    if isinstance(enc, QuantileBucketizer):
        return 2 + sum(value > b for b in enc.boundaries_)
    raise AssertionError(enc)


def expected_rows(frame, enc: FeatureEncoder, rows: list[int]) -> dict[str, list[list[int]]]:
    """Field -> per chosen row, its ids, computed row by row from the raw frame."""
    out = {}
    for f in enc.schema.id_fields:
        e = enc.encoder_of(f)
        col = frame[f.source].to_list()
        if f.is_list:
            out[f.name] = [[_id(v, e) for v in _raw_list(col[r], f)] for r in rows]
        else:
            out[f.name] = [[_id(col[r], e)] for r in rows]
    return out


@pytest.fixture
def encoded(tiny_schema, make_frame):
    frame = make_frame(120, seed=7)
    enc = FeatureEncoder(tiny_schema).fit(frame)
    return frame, enc, enc.transform(frame)


@pytest.mark.parametrize("rows", [[0], [5, 3, 3, 119, 0, 42], list(range(120))[::-1]],
                         ids=["one", "repeats", "all-reversed"])
def test_kjt_matches_plain_python(encoded, rows):
    frame, enc, split = encoded
    keys = [f.name for f in enc.schema.id_fields]
    ds = SplitDataset(split, keys)
    batch = ds[torch.tensor(rows, dtype=torch.int64)]
    kjt = batch.sparse
    assert kjt.keys() == keys == ["user_id", "item_id", "zip", "genres", "tags", "price", "history"]
    assert len(batch) == len(rows)
    expected = expected_rows(frame, enc, rows)
    jts = kjt.to_dict()
    all_lengths = []
    for k in keys:
        lengths = [len(ids) for ids in expected[k]]
        assert jts[k].lengths().tolist() == lengths, k
        assert jts[k].values().tolist() == [i for ids in expected[k] for i in ids], k
        all_lengths += lengths
    assert kjt.lengths().tolist() == all_lengths
    assert kjt.offsets().tolist() == np.concatenate([[0], np.cumsum(all_lengths, dtype=np.int64)]).tolist()
    assert kjt.values().dtype == torch.int64
    # dense, labels, users and row positions
    st = enc.encoders_["age"]
    ages = frame["age"].to_list()
    dense = [[0.0 if ages[r] is None else (ages[r] - st.mean_) / st.std_] for r in rows]
    assert batch.dense.shape == (len(rows), 1) and batch.dense.dtype == torch.float32
    np.testing.assert_allclose(batch.dense.numpy(), np.array(dense, dtype=np.float32).reshape(len(rows), 1),
                               rtol=1e-5, atol=1e-6)
    labels = frame["label"].to_list()
    assert batch.labels.tolist() == [float(labels[r]) for r in rows]
    users = frame["user_id"].to_list()
    rank = {u: i + 1 for i, u in enumerate(sorted(set(users)))}
    assert batch.user_ids.tolist() == [rank[users[r]] for r in rows]
    assert batch.rows.tolist() == rows


def test_every_kind_has_a_list_and_a_single_path(encoded):
    """The fixture exercises both gathers: single-id fields and jagged fields (with empty rows)."""
    frame, enc, split = encoded
    ds = SplitDataset(split, [f.name for f in enc.schema.id_fields])
    assert {k for k, single in ds.single.items() if single} == {"user_id", "item_id", "zip", "price"}
    lengths = {k: np.diff(split.ids[k][1]) for k in ("genres", "tags", "history")}
    for k, lens in lengths.items():
        assert (lens == 0).any() and (lens > 1).any(), k


@pytest.mark.parametrize("seed", range(5))
def test_gather_jagged_equals_naive_slicing(seed):
    g = torch.Generator().manual_seed(seed)
    n = 50
    lengths = torch.randint(0, 5, (n,), generator=g)
    lengths[torch.randint(0, n, (10,), generator=g)] = 0  # plenty of empty rows
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    values = torch.randint(0, 1000, (int(offsets[-1]),), generator=g)
    for idx in (torch.randint(0, n, (30,), generator=g), torch.arange(n), torch.tensor([], dtype=torch.int64),
                torch.nonzero(lengths == 0).flatten()):
        v, l = gather_jagged(values, offsets, idx)
        rows = [values[offsets[i]:offsets[i + 1]] for i in idx.tolist()]
        naive = torch.cat(rows) if rows else values[:0]
        assert torch.equal(v, naive)
        assert l.tolist() == [len(r) for r in rows]


def test_batch_to_device_keeps_values(encoded):
    _, enc, split = encoded
    ds = SplitDataset(split, [f.name for f in enc.schema.id_fields])
    batch = ds[torch.tensor([4, 1, 7])]
    for device in ("cpu", torch.device("cpu")):
        moved = batch.to(device)
        assert isinstance(moved, Batch)
        for name in ("dense", "labels", "user_ids", "rows"):
            t = getattr(moved, name)
            assert t.device.type == "cpu"
            assert torch.equal(t, getattr(batch, name))
        assert moved.sparse.values().device.type == "cpu"
        assert moved.sparse.keys() == batch.sparse.keys()
        assert torch.equal(moved.sparse.values(), batch.sparse.values())
        assert torch.equal(moved.sparse.lengths(), batch.sparse.lengths())
    no_users = Batch(dense=batch.dense, sparse=batch.sparse, labels=batch.labels).to("cpu")
    assert no_users.user_ids is None and no_users.rows is None


# --------------------------------------------------------------------------------------- sampler
def _epoch(sampler) -> list[torch.Tensor]:
    return list(iter(sampler))


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_every_row_once(shuffle):
    s = BatchIndexSampler(103, 10, shuffle=shuffle, seed=3)
    for _ in range(3):
        batches = _epoch(s)
        assert len(batches) == len(s) == 11
        assert [len(b) for b in batches] == [10] * 10 + [3]
        assert sorted(torch.cat(batches).tolist()) == list(range(103))


def test_sampler_drop_last():
    s = BatchIndexSampler(103, 10, shuffle=True, seed=0, drop_last=True)
    batches = _epoch(s)
    assert len(s) == len(batches) == 10 and all(len(b) == 10 for b in batches)
    assert len(set(torch.cat(batches).tolist())) == 100


def test_sampler_seed_and_epochs():
    a, b, c = (BatchIndexSampler(64, 16, shuffle=True, seed=s) for s in (1, 1, 2))
    a0, a1 = torch.cat(_epoch(a)), torch.cat(_epoch(a))
    b0 = torch.cat(_epoch(b))
    assert torch.equal(a0, b0)  # same seed, same order
    assert not torch.equal(a0, a1)  # the next epoch is reshuffled
    assert not torch.equal(a0, torch.cat(_epoch(c)))  # another seed, another order
    assert not torch.equal(a0, torch.arange(64))
    a.set_epoch(1)
    assert torch.equal(torch.cat(_epoch(a)), a1)  # epoch e is reproducible
    a.set_epoch(0)
    assert torch.equal(torch.cat(_epoch(a)), a0)


def test_sampler_no_shuffle_is_sorted():
    s = BatchIndexSampler(25, 7, shuffle=False)
    batches = _epoch(s)
    assert [b.tolist() for b in batches] == [list(range(i, min(i + 7, 25))) for i in range(0, 25, 7)]
    assert [b.tolist() for b in _epoch(s)] == [b.tolist() for b in batches]

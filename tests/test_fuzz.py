"""Fuzzing (hypothesis): bad input to the schema loader and the encoders raises RecsysError and
nothing else; valid input round-trips.

Examples are few (``max_examples`` 60-300) and seeded (``derandomize``), so the suite is fast and
the same on every run; raise ``FUZZ_EXAMPLES`` to search longer locally::

    FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py
"""

from __future__ import annotations

import math
import os

import numpy as np
import polars as pl
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from recsys.data.encoders import HashEncoder, QuantileBucketizer, Standardizer, Vocabulary, encoder_from_dict  # noqa: E402
from recsys.data.preprocess import FeatureEncoder  # noqa: E402
from recsys.errors import RecsysError  # noqa: E402
from recsys.schema import KINDS, Schema  # noqa: E402

N = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def fuzz(n: int):
    return settings(max_examples=N or n, deadline=None, derandomize=not N,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------ yaml values
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["", "name", "label", "x", "item_id"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), c, max_size=3)),
                      max_leaves=8)
names = st.sampled_from(["a", "b", "c", "item_id", "label", "", "y"]) | st.text(max_size=5)
attr_values = {
    "name": names,
    "kind": st.sampled_from(list(KINDS) + ["dense", "", "CATEGORICAL"]) | scalars,
    "column": st.none() | names,
    "embedding_dim": st.none() | st.integers(-2, 64) | scalars,
    "min_count": st.integers(-1, 5) | scalars,
    "hash_buckets": st.none() | st.integers(-1, 50) | scalars,
    "max_len": st.none() | st.integers(-1, 10) | scalars,
    "shares": st.none() | names,
    "separator": st.none() | st.sampled_from(["|", ",", ""]) | scalars,
    "transform": st.sampled_from(["standardize", "bucketize", "log"]) | scalars,
    "n_buckets": st.integers(-1, 20) | scalars,
    "pooling": st.sampled_from(["mean", "sum", "max"]) | scalars,
    "bogus": scalars,
}
# every attribute: plausible values most of the time, anything YAML can hold otherwise
attr_values = {k: v | values for k, v in attr_values.items()}
field_dicts = st.fixed_dictionaries(
    {"name": attr_values["name"], "kind": attr_values["kind"]},
    optional={k: v for k, v in attr_values.items() if k not in ("name", "kind")})
schema_dicts = st.fixed_dictionaries(
    {"fields": st.lists(field_dicts | values, max_size=5) | values},
    optional={"label": names | scalars, "keys": st.dictionaries(st.sampled_from(["user", "item", "time", "shop"]),
                                                                 names | scalars, max_size=3) | values,
              "extra": values})


@fuzz(200)
@given(schema_dicts | values)
def test_schema_from_dict_raises_only_recsys_errors_and_round_trips(data):
    try:
        schema = Schema.from_dict(data, source="fuzz.yaml")
    except RecsysError as e:
        assert str(e)  # a message, naming where
        return
    # valid: dict and YAML round-trips give the same schema
    assert Schema.from_dict(schema.to_dict()) == schema
    assert Schema.from_dict(yaml.safe_load(schema.to_yaml())) == schema
    for f in schema.fields:
        assert isinstance(f.name, str) and f.name and f.kind in KINDS


@fuzz(150)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_schema_from_yaml_text_raises_only_recsys_errors(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz_schema.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        Schema.from_yaml(path)
    except RecsysError as e:
        assert str(path) in str(e)


# ---------------------------------------------------------------------------- encoder state
encoder_dicts = st.fixed_dictionaries(
    {"kind": st.sampled_from(["vocabulary", "hash", "standardize", "bucketize", "nope"]) | scalars},
    optional={"min_count": st.integers(-1, 3) | scalars, "values": st.lists(scalars, max_size=4) | scalars,
              "counts": st.lists(st.integers(0, 5), max_size=4) | scalars, "n_buckets": st.integers(-2, 9) | scalars,
              "mean": st.floats() | scalars, "std": st.floats() | scalars,
              "boundaries": st.lists(st.floats(), max_size=4) | scalars})


@fuzz(300)
@given(encoder_dicts | values)
def test_encoder_state_from_a_corrupt_file_raises_only_recsys_errors(d):
    try:
        enc = encoder_from_dict(d)
    except RecsysError:
        return
    # a loaded encoder encodes without crashing, ids inside its table, and saves back identically
    assert encoder_from_dict(enc.to_dict()).to_dict() == enc.to_dict()
    col = pl.Series("v", [1, 2, None], dtype=pl.Int64)
    out = pl.DataFrame({"v": col}).select(enc.expr(pl.col("v").cast(pl.Float64 if enc.kind in ("standardize", "bucketize")
                                                                       else pl.Int64))).to_series()
    if hasattr(enc, "size"):
        assert out.min() >= 0 and out.max() < enc.size
    else:
        assert out.is_finite().all()


@fuzz(100)
@given(st.dictionaries(st.sampled_from(["schema", "dtypes", "encoders", "x"]), values, max_size=3)
       | st.fixed_dictionaries({"schema": st.just({"label": "y", "fields": [{"name": "a", "kind": "categorical"}]}),
                                "encoders": st.dictionaries(st.sampled_from(["a", "b"]), encoder_dicts | values,
                                                            max_size=2)},
                               optional={"dtypes": values}))
def test_feature_encoder_from_a_corrupt_checkpoint_raises_only_recsys_errors(d):
    try:
        enc = FeatureEncoder.from_dict(d)
    except RecsysError:
        return
    frame = pl.DataFrame({"a": ["u", None, "v"], "y": [0, 1, 0]})
    try:
        split = enc.transform(frame)
    except RecsysError:
        return
    assert split.ids["a"][0].max() < enc.table_sizes["a"]


# ----------------------------------------------------------------------------- fitting data
FUZZ_SCHEMA = Schema.from_dict({"label": "y", "keys": {"user": "u"}, "fields": [
    {"name": "u", "kind": "categorical", "min_count": 2},
    {"name": "h", "kind": "categorical", "hash_buckets": 5},
    {"name": "x", "kind": "numeric"},
    {"name": "p", "kind": "numeric", "transform": "bucketize", "n_buckets": 3},
    {"name": "tags", "kind": "multi_hot", "max_len": 2},
    {"name": "s", "kind": "multi_hot", "separator": "|"},
    {"name": "seq", "kind": "sequence", "shares": "u", "max_len": 3},
]})

ints = st.integers(-3, 3)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
extreme = st.sampled_from([1e308, -1e308, 1.7e308, -1.7e308, 5e-324, 0.0, -0.0, 1e-300])
texts = st.text(alphabet="ab|, \x00é", max_size=4)
uint64 = st.integers(0, 2**64 - 1)


def _of(n: int, elem):
    return st.lists(st.none() | elem, min_size=n, max_size=n)


def anything(n: int):
    """A column of ``n`` rows of a random type, nulls allowed."""
    return st.one_of(_of(n, ints), _of(n, floats), _of(n, extreme), _of(n, texts), _of(n, st.booleans()),
                     _of(n, st.lists(st.none() | ints, max_size=4)), _of(n, st.lists(st.none() | texts, max_size=4)),
                     _of(n, st.lists(st.lists(ints, max_size=2), max_size=2)),  # nested lists
                     _of(n, st.dates()), _of(n, st.fixed_dictionaries({"k": ints})),  # dates, structs
                     st.just([None] * n))


def plausible(kind: str, n: int):
    """Mostly the right type for the field kind (with nulls, extremes, odd values), sometimes anything."""
    right = {
        "categorical": st.one_of(_of(n, ints), _of(n, texts), _of(n, st.booleans()), _of(n, st.dates())),
        "numeric": st.one_of(_of(n, floats), _of(n, extreme), _of(n, ints), _of(n, st.floats(-5, 5))),
        "list": st.one_of(_of(n, st.lists(st.none() | ints, max_size=4)), _of(n, st.lists(texts, max_size=4))),
        "string": _of(n, texts),
        "label": st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n),
    }[kind]
    return right | right | right | anything(n)


FRAME_KINDS = {"u": "categorical", "h": "categorical", "x": "numeric", "p": "numeric", "tags": "list",
               "s": "string", "seq": "list", "y": "label"}


@st.composite
def frames(draw):
    n = draw(st.integers(0, 6))
    cols = {}
    for name, kind in FRAME_KINDS.items():
        if draw(st.integers(0, 19)) == 0:
            continue  # a missing column
        cols[name] = draw(plausible(kind, n))
    if "u" in cols and draw(st.integers(0, 9)) == 0:
        cols["u"] = draw(_of(n, uint64))
    try:
        return pl.DataFrame(cols, strict=False)
    except Exception:  # noqa: BLE001 - a shape polars itself rejects is not an input we can get
        return pl.DataFrame()


def _check_split(enc: FeatureEncoder, split, n: int) -> None:
    sizes = enc.table_sizes
    for f in enc.schema.id_fields:
        values, offsets = split.ids[f.name]
        assert offsets.shape == (n + 1,) and offsets[0] == 0 and (np.diff(offsets) >= 0).all()
        assert offsets[-1] == len(values)
        if len(values):
            assert values.min() >= 0 and values.max() < sizes[f.table]
    assert split.dense.shape == (n, len(enc.schema.dense_fields))
    assert np.isfinite(split.dense).all()


def _valid_frame(**cols) -> pl.DataFrame:
    base = {"u": ["a", "b"], "h": [1, 2], "x": [1.0, 2.0], "p": [1.0, 2.0], "tags": [[1], [2]], "s": ["a|b", "b"],
            "seq": [["a"], ["b"]], "y": [0, 1]}
    base.update(cols)
    return pl.DataFrame(base, strict=False)


# inputs that crashed (or gave non-finite features) before the fixes, found while fuzzing
@pytest.mark.slow
@example(_valid_frame(x=[1e308, 1.7e308]), pl.DataFrame())                        # mean overflowed: -inf
@example(_valid_frame(x=[-1.7e308, 1.7e308], p=[-1.7e308, 1.7e308]), pl.DataFrame())
@example(_valid_frame(tags=[[[1]], [[2, 3]]]), pl.DataFrame())                   # list of lists: cast crash
@example(_valid_frame(u=pl.Series([2**64 - 1, 0], dtype=pl.UInt64), seq=[[1], [2]]), pl.DataFrame())  # Int64 cast
@example(_valid_frame(), _valid_frame(x=[-1e300, 1e300]))                         # transform beyond float32
@fuzz(60)
@given(frames(), frames())
def test_feature_encoder_on_random_frames_raises_only_recsys_errors(train, other):
    enc = FeatureEncoder(FUZZ_SCHEMA)
    try:
        enc.fit(train, source="fuzz-train")
    except RecsysError as e:
        assert "fuzz-train" in str(e)
        return
    _check_split(enc, enc.transform(train), len(train))
    # saved and loaded encoders give the same ids
    again = FeatureEncoder.from_dict(enc.to_dict())
    a, b = enc.transform(train), again.transform(train)
    for k in a.ids:
        assert np.array_equal(a.ids[k][0], b.ids[k][0])
    # any other frame: encoded, or a RecsysError naming it
    try:
        split = enc.transform(other, source="fuzz-other", require_label=False)
    except RecsysError as e:
        assert "fuzz-other" in str(e)
        return
    _check_split(enc, split, len(other))


@fuzz(150)
@given(st.lists(st.none() | ints, max_size=12) | st.lists(st.none() | texts, max_size=12),
       st.integers(1, 3), st.lists(st.none() | ints | texts.map(str), max_size=6))
def test_vocabulary_ids_are_in_range_and_frequency_ordered(train, min_count, probe):
    if any(isinstance(v, str) for v in probe) and any(isinstance(v, int) for v in train):
        probe = [None if v is None else str(v) for v in probe]
    series = pl.Series("v", train, strict=False)
    v = Vocabulary(min_count).fit(series)
    assert encoder_from_dict(v.to_dict()).to_dict() == v.to_dict()
    counts = [series.drop_nulls().to_list().count(x) for x in v.values_]
    assert counts == sorted(counts, reverse=True) and all(c >= min_count for c in counts)
    probe_s = pl.Series("v", probe, dtype=series.dtype if len(series.drop_nulls()) else None, strict=False)
    ids = pl.DataFrame({"v": probe_s}).select(v.expr(pl.col("v"))).to_series().to_list()
    for x, i in zip(probe_s.to_list(), ids):
        assert i == (1 if x is None else (v.values_.index(x) + 2 if x in v.values_ else 0))


@fuzz(150)
@given(st.lists(st.none() | st.floats(-1e6, 1e6), max_size=20), st.integers(2, 6))
def test_numeric_encoders_give_finite_in_range_output(xs, n_buckets):
    s = pl.Series("x", xs, dtype=pl.Float64)
    std = Standardizer().fit(s)
    q = QuantileBucketizer(n_buckets).fit(s)
    frame = pl.DataFrame({"x": s})
    z = frame.select(std.expr(pl.col("x"))).to_series()
    assert z.is_finite().all() and z.null_count() == 0
    b = frame.select(q.expr(pl.col("x"))).to_series()
    assert b.min() is None or (b.min() >= 1 and b.max() < q.size)
    assert math.isfinite(std.mean_) and std.std_ > 0
    h = HashEncoder(n_buckets)
    hb = frame.select(h.expr(pl.col("x"))).to_series()
    assert hb.min() is None or (hb.min() >= 1 and hb.max() < h.size)

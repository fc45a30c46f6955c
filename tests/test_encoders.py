"""Encoders and FeatureEncoder: ids by hand, stable hashing, round-trips, and DataErrors."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter

import numpy as np
import polars as pl
import pytest

from recsys.data.encoders import (
    MISSING,
    OOV,
    HashEncoder,
    QuantileBucketizer,
    Standardizer,
    Vocabulary,
    encoder_from_dict,
    stable_hash,
)
from recsys.data.preprocess import FeatureEncoder
from recsys.data.sources import read_table
from recsys.errors import DataError, RecsysError
from recsys.schema import Schema


def apply(enc, values: list, dtype=None) -> list:
    """Run an encoder's polars expression over a list of values."""
    s = pl.Series("v", values, dtype=dtype)
    return pl.DataFrame({"v": s}).select(enc.expr(pl.col("v"))).to_series().to_list()


def blake(value: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little") % n


# ------------------------------------------------------------------------------- vocabulary
def test_vocabulary_ids_by_frequency_then_string():
    v = Vocabulary().fit(pl.Series(["c", "b", "a", "b", "a", "d", None, None, None]))
    # a and b (2 each) tie -> by string; c and d (1 each) tie -> by string; nulls are not counted
    assert v.values_ == ["a", "b", "c", "d"] and v.counts_ == [2, 2, 1, 1]
    assert v.size == 6
    assert apply(v, ["a", "b", "c", "d", None, "zzz"]) == [2, 3, 4, 5, MISSING, OOV]
    assert (OOV, MISSING) == (0, 1)


def test_vocabulary_ties_by_string_form_of_integers():
    v = Vocabulary().fit(pl.Series([9, 10, 9, 10, 7, 7, 7]))
    assert v.values_ == [7, 10, 9]  # 7 is most frequent; "10" < "9" as strings
    assert apply(v, [9, 10, 7, 8, None]) == [4, 3, 2, OOV, MISSING]


def test_vocabulary_min_count_maps_rare_values_to_oov():
    v = Vocabulary(min_count=2).fit(pl.Series(["a", "b", "a", "c", "b", "a"]))
    assert v.values_ == ["a", "b"] and v.size == 4
    assert apply(v, ["a", "b", "c", None]) == [2, 3, OOV, MISSING]


@pytest.mark.parametrize("name", ["n", "_key", "value"])
def test_vocabulary_any_series_name(name):
    """The series name is the raw column's name; it must not collide with internal columns."""
    v = Vocabulary().fit(pl.Series(name, [5, 6, 6]))
    assert v.values_ == [6, 5] and v.counts_ == [2, 1]


def test_vocabulary_all_null_fit():
    v = Vocabulary().fit(pl.Series([None, None], dtype=pl.String))
    assert v.values_ == [] and v.size == 2
    assert apply(v, ["a", None]) == [OOV, MISSING]


# ---------------------------------------------------------------------------------- hashing
def test_stable_hash_is_blake2b_64_little_endian():
    for value, n in [("17", 1000), ("hello", 7), ("é", 2**31 - 1), ("", 10)]:
        assert stable_hash(value, n) == blake(value, n)
    assert stable_hash(17, 1000) == blake("17", 1000)


def test_hash_encoder_ints_and_strings_alike():
    h = HashEncoder(1000).fit(pl.Series(["ignored"]))
    ints = apply(h, [17, 123456789, None], dtype=pl.Int64)
    strs = apply(h, ["17", "123456789", None])
    assert ints == strs
    assert ints == [2 + blake("17", 1000), 2 + blake("123456789", 1000), MISSING]


def test_hash_encoder_buckets_in_range():
    h = HashEncoder(7)
    values = [f"v{i}" for i in range(500)]
    out = apply(h, values)
    assert out == [2 + blake(v, 7) for v in values]
    assert set(out) == set(range(2, 9))  # every bucket used, nothing outside [2, 2 + n)
    assert h.size == 9


# ----------------------------------------------------------------------------------- numerics
def test_standardizer():
    xs = [1.0, 2.0, 4.0, 9.0]
    s = Standardizer().fit(pl.Series(xs + [None]))
    mean, std = statistics.fmean(xs), statistics.stdev(xs)
    assert s.mean_ == pytest.approx(mean) and s.std_ == pytest.approx(std)
    got = apply(s, [1.0, 9.0, None, 4])
    assert got == pytest.approx([(1 - mean) / std, (9 - mean) / std, 0.0, (4 - mean) / std], rel=1e-6)


def test_standardizer_constant_column_keeps_scale_one():
    s = Standardizer().fit(pl.Series([3.0, 3.0, 3.0]))
    assert (s.mean_, s.std_) == (3.0, 1.0)
    assert apply(s, [3.0, 5.0]) == [0.0, 2.0]


def test_quantile_bucketizer_by_hand():
    b = QuantileBucketizer(n_buckets=4).fit(pl.Series([8, 1, 2, 3, 4, 5, 6, 7, None]))
    # numpy's linear quantiles of 1..8 at 1/4, 1/2, 3/4: positions 1.75, 3.5, 5.25
    assert b.boundaries_ == [2.75, 4.5, 6.25]
    assert b.size == 2 + 4
    # bucket k holds (b[k-1], b[k]]; id = 2 + k; null -> 1
    assert apply(b, [-5.0, 1.0, 2.75, 2.8, 4.5, 5.0, 6.25, 7.0, 100.0, None]) == [2, 2, 2, 3, 3, 4, 4, 5, 5, MISSING]


def test_quantile_bucketizer_collapses_repeated_boundaries():
    b = QuantileBucketizer(n_buckets=4).fit(pl.Series([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]))
    assert b.boundaries_ == [0.0]
    assert apply(b, [0.0, -1.0, 0.5, 1.0]) == [2, 2, 3, 3]


# -------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "enc, fit_values, test_values",
    [
        (Vocabulary(min_count=2), ["a", "b", "a", "c", "b", "a", None], ["a", "b", "c", "zz", None]),
        (Vocabulary(), [3, 1, 3, 2], [1, 2, 3, 4, None]),
        (HashEncoder(13), ["x"], ["x", "y", None, "17"]),
        (Standardizer(), [1.5, 2.5, 10.0], [1.5, None, -3.0]),
        (QuantileBucketizer(3), [0.1, 0.5, 0.2, 0.9, 0.7, 0.3], [0.0, 0.25, 0.5, 1.0, None]),
    ],
    ids=["vocab-str", "vocab-int", "hash", "standardize", "bucketize"],
)
def test_encoder_dict_round_trip(enc, fit_values, test_values):
    enc.fit(pl.Series(fit_values))
    back = encoder_from_dict(json.loads(json.dumps(enc.to_dict())))
    assert type(back) is type(enc)
    assert back.to_dict() == enc.to_dict()
    assert apply(back, test_values) == apply(enc, test_values)


def test_encoder_from_dict_unknown_kind():
    with pytest.raises(DataError, match="unknown encoder kind 'nope'"):
        encoder_from_dict({"kind": "nope"})


# ------------------------------------------------------------------------------ FeatureEncoder
def test_feature_encoder_save_load_round_trip(tiny_schema, tiny_frame, make_frame, tmp_path):
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    path = tmp_path / "enc.json"
    enc.save(path)
    back = FeatureEncoder.load(path)
    assert back.schema == tiny_schema
    assert back.table_sizes == enc.table_sizes
    other = make_frame(50, seed=3)  # mostly unseen values
    for frame in (tiny_frame, other):
        a, b = enc.transform(frame), back.transform(frame)
        assert a.ids.keys() == b.ids.keys()
        for k in a.ids:
            np.testing.assert_array_equal(a.ids[k][0], b.ids[k][0])
            np.testing.assert_array_equal(a.ids[k][1], b.ids[k][1])
        np.testing.assert_array_equal(a.dense, b.dense)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.users, b.users)
    with pytest.raises(DataError, match="not found"):
        FeatureEncoder.load(tmp_path / "missing.json")


def test_feature_encoder_tiny_by_hand(tiny_schema, tiny_frame):
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    split = enc.transform(tiny_frame)
    assert len(split) == 8 and split.has_labels
    # user_id: u1 x3, u2 x3 (tie -> by string), u3/u4 once -> OOV under min_count=2
    assert split.ids["user_id"][0].tolist() == [2, 2, 3, 3, 0, 2, 3, 0]
    np.testing.assert_array_equal(split.ids["user_id"][1], np.arange(9))
    # genres: first 2 of each list; counts x4 y3 w1 z1 (z's second count was cut by max_len)
    # -> x=2, y=3, then the w/z tie by string: w=4, z=5
    vals, offs = split.ids["genres"]
    assert offs.tolist() == [0, 2, 3, 3, 3, 5, 6, 8, 9]
    assert vals.tolist() == [2, 3, 3, 5, 2, 2, 3, 2, 4]
    # age: standardized with the train mean/std (sample std); null -> 0
    ages = [20.0, 30.0, 40.0, 25.0, 35.0, 50.0, 60.0]
    mean, std = statistics.fmean(ages), statistics.stdev(ages)
    expected = [(a - mean) / std if a is not None else 0.0 for a in tiny_frame["age"].to_list()]
    assert split.dense.shape == (8, 1)
    np.testing.assert_allclose(split.dense[:, 0], expected, rtol=1e-6)
    assert split.labels.tolist() == [1, 0, 0, 1, 1, 0, 1, 0]
    # users: dense rank of the user key within the split
    assert split.users.tolist() == [1, 1, 2, 2, 3, 1, 2, 4]


def test_user_key_with_nulls_stays_integer(tiny_schema, tiny_frame):
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    frame = tiny_frame.with_columns(pl.Series("user_id", ["u1", None, "u2", "u1", "u3", "u1", None, "u4"]))
    users = enc.transform(frame).users
    assert users.dtype == np.int64
    assert users.tolist() == [1, 0, 2, 1, 3, 1, 0, 4]  # dense ranks; rows without a user share group 0


def test_shared_table_one_vocabulary_counting_both_fields(tiny_schema, tiny_frame):
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    assert "history" not in enc.encoders_ and "history" not in enc.table_sizes
    vocab = enc.encoders_["item_id"]
    assert enc.encoder_of(tiny_schema.field("history")) is vocab
    counts = Counter(tiny_frame["item_id"].to_list())
    for h in tiny_frame["history"].to_list():
        counts.update((h or [])[-3:])  # the sequence's last max_len=3 ids are what is kept
    expected = sorted(counts, key=lambda v: (-counts[v], str(v)))
    assert vocab.values_ == expected == [10, 11, 14, 12, 13]
    assert vocab.counts_ == [counts[v] for v in expected] == [9, 4, 3, 2, 2]
    split = enc.transform(tiny_frame)
    ids = {v: i + 2 for i, v in enumerate(expected)}
    assert split.ids["item_id"][0].tolist() == [ids[v] for v in tiny_frame["item_id"].to_list()]
    # same value, same id in both fields
    hv, ho = split.ids["history"]
    assert ho.tolist() == [0, 0, 1, 3, 6, 6, 9, 10, 12]
    assert hv.tolist() == [ids[v] for h in tiny_frame["history"].to_list() for v in (h or [])[-3:]]


def test_sequence_keeps_last_and_multi_hot_keeps_first():
    schema = Schema.from_dict({"label": "y", "fields": [
        {"name": "seq", "kind": "sequence", "max_len": 2},
        {"name": "mh", "kind": "multi_hot", "max_len": 2},
    ]})
    df = pl.DataFrame({"seq": [["a", "b", "c", "d"], ["a"], ["d", "c", "b"]],
                       "mh": [["a", "b", "c", "d"], ["a"], ["d", "c", "b"]], "y": [0, 1, 0]})
    enc = FeatureEncoder(schema).fit(df)
    split = enc.transform(df)

    def decode(name):
        values = enc.encoder_of(schema.field(name)).values_
        v, o = split.ids[name]
        return [[values[i - 2] for i in v[o[r]:o[r + 1]]] for r in range(len(o) - 1)]

    assert decode("seq") == [["c", "d"], ["a"], ["c", "b"]]
    assert decode("mh") == [["a", "b"], ["a"], ["d", "c"]]


def test_separator_column_equals_list_column():
    rows = [["a", "b"], ["b"], [], None, ["c", "a", "b"], ["a"]]
    strs = ["a|b", "b", "", None, "c|a|b", "a"]
    lists = Schema.from_dict({"label": "y", "fields": [{"name": "t", "kind": "multi_hot", "max_len": 2}]})
    seps = Schema.from_dict({"label": "y", "fields": [{"name": "t", "kind": "multi_hot", "max_len": 2,
                                                        "separator": "|"}]})
    y = [0, 1, 0, 1, 0, 1]
    df_list = pl.DataFrame({"t": rows, "y": y}, schema_overrides={"t": pl.List(pl.String)})
    df_str = pl.DataFrame({"t": strs, "y": y})
    a = FeatureEncoder(lists).fit(df_list)
    b = FeatureEncoder(seps).fit(df_str)
    assert a.encoders_["t"].to_dict() == b.encoders_["t"].to_dict()
    sa, sb = a.transform(df_list), b.transform(df_str)
    assert sa.ids["t"][1].tolist() == sb.ids["t"][1].tolist() == [0, 2, 3, 3, 3, 5, 6]
    assert sa.ids["t"][0].tolist() == sb.ids["t"][0].tolist()


def test_separator_on_categorical_dtype_column():
    """A dictionary-encoded string column (polars Categorical, e.g. from pandas) splits like a String one."""
    schema = Schema.from_dict({"label": "y", "fields": [{"name": "t", "kind": "multi_hot", "separator": "|"},
                                                        {"name": "c", "kind": "categorical"}]})
    plain = pl.DataFrame({"t": ["a|b", "b", None], "c": ["x", "y", "x"], "y": [0, 1, 0]})
    cat = plain.with_columns(pl.col("t", "c").cast(pl.Categorical))
    a, b = FeatureEncoder(schema).fit(plain), FeatureEncoder(schema).fit(cat)
    sa, sb = a.transform(plain), b.transform(cat)
    for k in ("t", "c"):
        assert sa.ids[k][0].tolist() == sb.ids[k][0].tolist() and sa.ids[k][1].tolist() == sb.ids[k][1].tolist()
    assert sb.ids["t"][0].tolist() == [3, 2, 2]  # b x2 -> 2, a -> 3
    assert a.transform(cat).ids["c"][0].tolist() == [2, 3, 2]  # fitted on String, applied to Categorical


def test_separator_sequence_shares_integer_table():
    """A delimited string history (as CSV stores it) sharing an integer item table."""
    schema = Schema.from_dict({"label": "y", "fields": [
        {"name": "item", "kind": "categorical"},
        {"name": "hist", "kind": "sequence", "shares": "item", "max_len": 3, "separator": "|"}]})
    df = pl.DataFrame({"item": [1, 2, 3, 2], "hist": ["1|2", "2|3|1|2", "", None], "y": [0, 1, 0, 1]})
    enc = FeatureEncoder(schema).fit(df)
    assert enc.encoders_["item"].values_ == [2, 1, 3]  # 2: 1+3 (tail 3: 3,1,2), 1: 1+2, 3: 1+1 -> tie by str
    split = enc.transform(df)
    v, o = split.ids["hist"]
    assert o.tolist() == [0, 2, 5, 5, 5]
    assert v.tolist() == [3, 2, 4, 3, 2]
    unseen = enc.transform(pl.DataFrame({"item": [9], "hist": ["9|x|1"], "y": [1]}))
    assert unseen.ids["hist"][0].tolist() == [0, 0, 3] and unseen.ids["item"][0].tolist() == [0]


# ------------------------------------------------------------------------------------- errors
def _err(fn) -> DataError:
    with pytest.raises(DataError) as info:
        fn()
    assert isinstance(info.value, RecsysError)
    return info.value


def test_missing_column_names_file_and_column(tiny_schema, tiny_frame):
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(tiny_frame.drop("price"), source="train.parquet"))
    assert "train.parquet" in str(e) and "'price'" in str(e)
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(tiny_frame.drop("label"), source="train.parquet"))
    assert "'label'" in str(e)
    # at predict time the label may be absent, but features may not
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    out = enc.transform(tiny_frame.drop("label"), require_label=False)
    assert not out.has_labels and out.labels.tolist() == [0.0] * 8
    e = _err(lambda: enc.transform(tiny_frame.drop("genres"), source="new.csv", require_label=False))
    assert "new.csv" in str(e) and "'genres'" in str(e)


@pytest.mark.parametrize("bad", [2, None, -1])
def test_label_not_binary(tiny_schema, tiny_frame, bad):
    labels = tiny_frame["label"].to_list()
    labels[3] = bad
    frame = tiny_frame.with_columns(pl.Series("label", labels, dtype=pl.Int64))
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(frame, source="data.parquet"))
    assert "data.parquet" in str(e) and "'label'" in str(e) and "0/1" in str(e)


def test_label_of_strings(tiny_schema, tiny_frame):
    frame = tiny_frame.with_columns(pl.col("label").cast(pl.String))
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(frame))
    assert "'label'" in str(e)


def test_empty_split(tiny_schema, tiny_frame):
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(tiny_frame.head(0), source="train split"))
    assert "no rows" in str(e) and "train split" in str(e)
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    e = _err(lambda: enc.transform(tiny_frame.head(0), source="valid split"))
    assert "no rows" in str(e) and "valid split" in str(e)


def test_type_mismatch_at_transform(tiny_schema, tiny_frame):
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    frame = tiny_frame.with_columns(pl.col("item_id").cast(pl.String))
    e = _err(lambda: enc.transform(frame, source="test.parquet"))
    assert "test.parquet" in str(e) and "'item_id'" in str(e) and "int" in str(e)
    frame = tiny_frame.with_columns(pl.col("history").cast(pl.List(pl.String)))
    e = _err(lambda: enc.transform(frame, source="test.parquet"))
    assert "'history'" in str(e)
    # an integer column of another width is fine
    same = enc.transform(tiny_frame.with_columns(pl.col("item_id").cast(pl.Int32)))
    assert same.ids["item_id"][0].tolist() == enc.transform(tiny_frame).ids["item_id"][0].tolist()


def test_all_null_columns_at_transform(tiny_schema, tiny_frame):
    """A column with no values at all (polars dtype Null / List(Null)) is not a type mismatch."""
    enc = FeatureEncoder(tiny_schema).fit(tiny_frame)
    frame = tiny_frame.with_columns(pl.Series("item_id", [None] * 8), pl.Series("zip", [None] * 8),
                                    pl.Series("history", [[]] * 8), pl.Series("genres", [[]] * 8))
    assert frame["item_id"].dtype == pl.Null and frame["history"].dtype == pl.List(pl.Null)
    split = enc.transform(frame)
    assert split.ids["item_id"][0].tolist() == split.ids["zip"][0].tolist() == [1] * 8
    assert split.ids["history"][1].tolist() == split.ids["genres"][1].tolist() == [0] * 9


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_in_numerics(tiny_schema, tiny_frame, bad):
    for col in ("age", "price"):
        values = tiny_frame[col].to_list()
        values[1] = bad
        frame = tiny_frame.with_columns(pl.Series(col, values, dtype=pl.Float64))
        e = _err(lambda: FeatureEncoder(tiny_schema).fit(frame, source="f.parquet"))
        assert "f.parquet" in str(e) and repr(col) in str(e) and "NaN/inf" in str(e)


def test_numeric_of_strings(tiny_schema, tiny_frame):
    frame = tiny_frame.with_columns(pl.col("age").cast(pl.String))
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(frame))
    assert "'age'" in str(e)


def test_list_field_given_scalars_without_separator(tiny_schema, tiny_frame):
    frame = tiny_frame.with_columns(pl.col("genres").list.join(","))
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(frame, source="f.csv"))
    assert "f.csv" in str(e) and "'genres'" in str(e) and "separator" in str(e)
    frame = tiny_frame.with_columns(pl.col("item_id").alias("history"))
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(frame, source="f.csv"))
    assert "'history'" in str(e)


def test_categorical_given_lists(tiny_schema, tiny_frame):
    frame = tiny_frame.with_columns(pl.col("genres").alias("zip"))
    e = _err(lambda: FeatureEncoder(tiny_schema).fit(frame, source="f.parquet"))
    assert "f.parquet" in str(e) and "'zip'" in str(e) and "multi_hot" in str(e)


def test_transform_before_fit(tiny_schema, tiny_frame):
    e = _err(lambda: FeatureEncoder(tiny_schema).transform(tiny_frame))
    assert "not fitted" in str(e)


def test_read_table_errors(tmp_path):
    missing = tmp_path / "nope.parquet"
    e = _err(lambda: read_table(missing))
    assert str(missing) in str(e) and "not found" in str(e)
    odd = tmp_path / "data.json"
    odd.write_text("{}")
    e = _err(lambda: read_table(odd))
    assert str(odd) in str(e) and "'.json'" in str(e)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    e = _err(lambda: read_table(broken))
    assert str(broken) in str(e)
    good = tmp_path / "good.csv"
    pl.DataFrame({"a": [1, 2], "b": ["x", "y"]}).write_csv(good)
    e = _err(lambda: read_table(good, ["a", "c"]))
    assert str(good) in str(e) and "'c'" in str(e)
    assert read_table(good, ["b"]).to_dict(as_series=False) == {"b": ["x", "y"]}


def test_ids_within_table_sizes(tiny_schema, make_frame):
    train, other = make_frame(200, seed=1), make_frame(100, seed=2, n_users=60, n_items=80)
    enc = FeatureEncoder(tiny_schema).fit(train)
    sizes = enc.table_sizes
    for frame in (train, other):
        split = enc.transform(frame)
        assert np.isfinite(split.dense).all()
        for f in tiny_schema.id_fields:
            v, o = split.ids[f.name]
            assert o[0] == 0 and o[-1] == len(v) and (np.diff(o) >= 0).all(), f.name
            assert v.min() >= 0 and v.max() < sizes[f.table], f.name

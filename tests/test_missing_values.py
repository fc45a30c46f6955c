"""Schema ``missing_values``: declared placeholders are missing for the encoders and the ranking;
undeclared ones are flagged by the data-quality report."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.encoders import MISSING
from recsys.data.missing import replace_missing
from recsys.data.preprocess import FeatureEncoder
from recsys.errors import DataError, SchemaError
from recsys.features.ranking import FeatureRanker
from recsys.schema import Schema


def _schema(**top):
    return Schema.from_dict({"label": "y", **top, "fields": [
        {"name": "w", "kind": "categorical"},
        {"name": "x", "kind": "numeric"},
        {"name": "b", "kind": "numeric", "transform": "bucketize", "n_buckets": 2},
        {"name": "tags", "kind": "multi_hot", "missing_values": ["-1"]},
    ]})


def _frame():
    return pl.DataFrame({"w": ["a", "?", "b", "a"], "x": ["1", "?", "3", " 5"], "b": [1, -1, 2, 3],
                         "tags": [[1, -1], [2], [-1], []], "y": [1, 0, 1, 0]})


def test_schema_missing_values_global_and_per_field_round_trip(tmp_path):
    s = _schema(missing_values=["?", -1])
    assert s.missing_values == ("?", "-1")
    assert s.missing_of(s.field("w")) == ("?", "-1")
    assert s.missing_of(s.field("tags")) == ("-1",)  # its own list wins
    path = tmp_path / "s.yaml"
    s.to_yaml(path)
    assert Schema.from_yaml(path) == s
    with pytest.raises(SchemaError, match="missing_values"):
        Schema.from_dict({"label": "y", "missing_values": "?", "fields": [{"name": "w", "kind": "categorical"}]})
    with pytest.raises(SchemaError, match="missing_values"):
        Schema.from_dict({"label": "y", "fields": [{"name": "w", "kind": "categorical", "missing_values": [["?"]]}]})


def test_encoders_map_declared_placeholders_to_the_missing_id():
    s = _schema(missing_values=["?", "-1"])
    enc = FeatureEncoder(s).fit(_frame())
    out = enc.transform(_frame())
    w = out.ids["w"][0].tolist()
    assert w[1] == MISSING and w[0] == w[3] != MISSING
    assert "?" not in enc.encoders_["w"].values_  # the placeholder is no vocabulary entry
    # numeric strings with "?" are numbers once "?" is gone: standardized with mean/std of 1, 3, 5
    assert enc.encoders_["x"].mean_ == pytest.approx(3.0) and enc.encoders_["x"].std_ == pytest.approx(2.0)
    assert out.dense[:, 0].tolist() == pytest.approx([-1.0, 0.0, 0.0, 1.0])  # missing -> 0 (the mean)
    assert out.ids["b"][0][1] == MISSING  # integer -1 declared missing
    vals, offsets = out.ids["tags"]
    assert vals.tolist()[1] == MISSING and vals.tolist()[3] == MISSING  # -1 elements of the lists
    # the declaration travels with the fitted encoders (checkpoints): the reloaded ones encode alike
    again = FeatureEncoder.from_dict(enc.to_dict()).transform(_frame())
    assert again.ids["w"][0].tolist() == w and np.array_equal(again.dense, out.dense)
    # without the declaration "?" is an ordinary category and x cannot be read as numbers
    plain = _schema()
    with pytest.raises(DataError, match="column 'x'"):
        FeatureEncoder(plain).fit(_frame())


def test_numeric_strings_that_are_not_placeholders_are_refused():
    s = _schema(missing_values=["?", "-1"])
    bad = _frame().with_columns(pl.Series("x", ["1", "?", "oops", "2"]))
    with pytest.raises(DataError, match=r"'oops'.*missing_values") as e:
        FeatureEncoder(s).fit(bad)
    assert "column 'x'" in str(e.value)
    same = replace_missing(_frame(), _schema())  # only tags declares placeholders: the rest is untouched
    assert same.drop("tags").equals(_frame().drop("tags"))
    assert same["tags"].to_list() == [[1, None], [2], [None], []]


def test_ranking_treats_declared_placeholders_as_missing():
    rng = np.random.default_rng(0)
    n = 4000
    y = rng.integers(0, 2, n)
    # "?" in 40% of the rows, independent of the label; the rest equals the label
    w = np.where(rng.random(n) < 0.4, "?", np.where(y == 1, "p", "q"))
    df = pl.DataFrame({"w": w, "y": y})
    s = Schema.from_dict({"label": "y", "fields": [{"name": "w", "kind": "categorical", "missing_values": ["?"]}]})
    r = FeatureRanker(schema=s).fit(df)
    row = r.ranking_.row(0, named=True)
    assert row["coverage"] == pytest.approx(1 - (w == "?").mean())
    assert row["cardinality"] == 2  # "?" is missing, not a third value
    q = r.quality_["columns"]["w"]
    assert q["missing"] == int((w == "?").sum())
    assert not r.quality_["flagged"]["placeholder"]
    # undeclared, the quality report names the token and the fix
    r2 = FeatureRanker(label="y").fit(df)
    assert r2.ranking_.row(0, named=True)["cardinality"] == 3
    assert r2.quality_["flagged"]["placeholder"] == ["w"]
    ph = r2.quality_["columns"]["w"]["placeholders"]
    assert ph[0]["value"] == "?" and ph[0]["share"] == pytest.approx((w == "?").mean())
    assert "missing_values" in r2.quality_["columns"]["w"]["fix"]


def test_quality_flags_placeholders_only_above_five_percent():
    n = 1000
    df = pl.DataFrame({
        "few": ["NA"] * 40 + ["a", "b"] * 480,  # 4%: not flagged
        "many": ["unknown"] * 60 + ["a", "b"] * 470,  # 6%: flagged
        "empty": [""] * 100 + ["a"] * 900,
        "num": [-1] * 500 + list(range(500)),  # numbers are not placeholders
        "y": [0, 1] * (n // 2),
    })
    rep = FeatureRanker(label="y").fit(df).quality_
    assert sorted(rep["flagged"]["placeholder"]) == ["empty", "many"]
    assert rep["columns"]["many"]["placeholders"] == [{"value": "unknown", "count": 60, "share": 0.06}]

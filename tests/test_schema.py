"""Schema: YAML round-trip, views, and validation errors that name the offending field."""

from __future__ import annotations

import copy

import pytest
import yaml

from recsys.errors import RecsysError, SchemaError
from recsys.schema import FieldSpec, Schema

from conftest import TINY_SCHEMA


def test_yaml_round_trip(tiny_schema, tmp_path):
    path = tmp_path / "schema.yaml"
    text = tiny_schema.to_yaml(path)
    assert path.read_text() == text
    back = Schema.from_yaml(path)
    assert back == tiny_schema
    assert back.to_yaml() == text
    # the YAML is compact: only non-default attributes are written
    fields = yaml.safe_load(text)["fields"]
    assert fields[0] == {"name": "user_id", "kind": "categorical", "min_count": 2}
    assert fields[1] == {"name": "item_id", "kind": "categorical"}


def test_yaml_round_trip_every_attribute(tmp_path):
    spec = FieldSpec(name="f", kind="multi_hot", column="raw_f", embedding_dim=12, min_count=3, max_len=7,
                     separator=";", pooling="sum")
    num = FieldSpec(name="x", kind="numeric", transform="bucketize", n_buckets=5, embedding_dim=4)
    hashed = FieldSpec(name="h", kind="categorical", hash_buckets=100)
    seq = FieldSpec(name="s", kind="sequence", shares="h", max_len=9)
    schema = Schema(fields=(spec, num, hashed, seq), label="click", keys={"user": "u", "time": "t"})
    schema.to_yaml(tmp_path / "s.yaml")
    back = Schema.from_yaml(tmp_path / "s.yaml")
    assert back == schema
    assert back.fields[0].source == "raw_f" and back.fields[0].pooling == "sum"
    assert back.keys == {"user": "u", "time": "t"}


def test_views(tiny_schema):
    assert [f.name for f in tiny_schema.dense_fields] == ["age"]
    assert [f.name for f in tiny_schema.id_fields] == ["user_id", "item_id", "zip", "genres", "tags", "price", "history"]
    assert [f.name for f in tiny_schema.sequence_fields] == ["history"]
    # the shared table appears once, under its owner's name
    assert tiny_schema.tables == ["user_id", "item_id", "zip", "genres", "tags", "price"]
    assert [f.name for f in tiny_schema.fields_of_table("item_id")] == ["item_id", "history"]
    assert tiny_schema.source_columns == ["user_id", "item_id", "zip", "genres", "tags", "age", "price",
                                          "history", "label", "ts"]


def test_select_keeps_shared_owner(tiny_schema):
    sub = tiny_schema.select(["history", "age"])
    assert sub.names == ["item_id", "age", "history"]  # original order, owner added
    assert sub.label == tiny_schema.label and sub.keys == tiny_schema.keys
    with pytest.raises(SchemaError, match="'nope'"):
        tiny_schema.select(["nope"])


def _with_field(extra: dict | None = None, replace: dict | None = None, **top) -> dict:
    d = copy.deepcopy(TINY_SCHEMA)
    if replace:
        d["fields"] = [replace.get(f["name"], f) for f in d["fields"]]
    if extra:
        d["fields"].append(extra)
    d.update(top)
    return d


@pytest.mark.parametrize(
    "data, names, fragment",
    [
        (_with_field({"name": "bad_kind", "kind": "categorial"}), ["bad_kind"], "unknown kind"),
        (_with_field({"name": "zip", "kind": "categorical"}), ["zip"], "declared twice"),
        (_with_field({"name": "seq", "kind": "sequence", "shares": "item_id"}), ["seq"], "max_len"),
        (_with_field({"name": "seq", "kind": "sequence", "shares": "items", "max_len": 5}), ["seq", "items"],
         "not a field"),
        (_with_field({"name": "seq", "kind": "sequence", "shares": "age", "max_len": 5}), ["seq", "age"],
         "categorical"),
        (_with_field({"name": "seq", "kind": "sequence", "shares": "history", "max_len": 5}), ["seq", "history"],
         "categorical"),
        (_with_field({"name": "odd", "kind": "categorical", "min_cnt": 2}), ["odd", "min_cnt"], "unknown attributes"),
        (_with_field(label="age"), ["age"], "also declared as a feature"),
        (_with_field(keys={"user": "user_id", "shop": "shop_id"}), ["shop"], "unknown key role"),
        (_with_field(replace={"age": {"name": "age", "kind": "numeric", "transform": "log"}}), ["age"],
         "unknown transform"),
        (_with_field(replace={"zip": {"name": "zip", "kind": "categorical", "hash_buckets": 1}}), ["zip"],
         "hash_buckets"),
    ],
    ids=["unknown-kind", "duplicate", "sequence-no-max_len", "shares-missing", "shares-numeric",
         "shares-a-sharer", "unknown-attribute", "label-is-feature", "unknown-key-role", "bad-transform",
         "hash_buckets-1"],
)
def test_validation_errors_name_the_field(data, names, fragment, tmp_path):
    with pytest.raises(SchemaError) as info:
        Schema.from_dict(data)
    msg = str(info.value)
    assert fragment in msg
    for name in names:
        assert repr(name) in msg, (name, msg)
    # loading the same thing from a file also names the file
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SchemaError) as info:
        Schema.from_yaml(path)
    assert str(path) in str(info.value) and repr(names[0]) in str(info.value)


def test_label_as_column_of_a_feature_is_rejected():
    data = _with_field(replace={"age": {"name": "age", "kind": "numeric", "column": "label"}})
    with pytest.raises(SchemaError, match="'label'"):
        Schema.from_dict(data)


def test_unknown_top_level_key_and_bad_files(tmp_path):
    with pytest.raises(SchemaError, match="featurs"):
        Schema.from_dict({**TINY_SCHEMA, "featurs": []})
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SchemaError, match="not found") as info:
        Schema.from_yaml(missing)
    assert str(missing) in str(info.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("fields: [unclosed\n")
    with pytest.raises(SchemaError, match="not valid YAML"):
        Schema.from_yaml(broken)


def test_schema_error_is_a_recsys_error():
    assert issubclass(SchemaError, RecsysError)
    with pytest.raises(RecsysError) as info:
        Schema.from_dict({"label": "y", "fields": [{"name": "a", "kind": "what"}]})
    err = info.value
    assert isinstance(err, SchemaError)
    assert err.where == "schema field 'a'" and err.fix and err.fix in str(err)

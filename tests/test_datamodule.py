"""CTRDataModule end to end: built-in synthetic data, files with a split column or per-split paths,
field subsets, predict files with unseen values, and seeded shuffling."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys.data.datamodule import CTRDataModule
from recsys.errors import DataError
from recsys.schema import Schema

SYNTH = {"n_rows": 3000, "n_users": 200, "n_items": 100}


def _rows(loader) -> list[torch.Tensor]:
    return [b.rows for b in loader]


def _check_covers(dm: CTRDataModule, split: str, loader, batch_size: int) -> None:
    frame = dm.frame(split)
    batches = list(loader)
    assert len(batches) == -(-len(frame) // batch_size)
    assert all(len(b) == batch_size for b in batches[:-1])
    rows = torch.cat([b.rows for b in batches])
    assert sorted(rows.tolist()) == list(range(len(frame)))  # every row exactly once
    labels = torch.cat([b.labels for b in batches])
    assert labels.tolist() == frame["label"].cast(pl.Float32).to_numpy()[rows.numpy()].tolist()
    for b in batches:
        assert b.sparse.keys() == [f.name for f in dm.features.schema.id_fields]


@pytest.fixture(scope="module")
def synth_dm():
    dm = CTRDataModule(dataset="synthetic", dataset_options=SYNTH, batch_size=256, eval_batch_size=500, seed=1)
    dm.setup("fit")
    return dm


def test_synthetic_end_to_end(synth_dm):
    dm = synth_dm
    assert [len(dm.frame(s)) for s in ("train", "valid", "test")] == [2400, 300, 300]
    _check_covers(dm, "train", dm.train_dataloader(), 256)
    _check_covers(dm, "valid", dm.val_dataloader(), 500)
    _check_covers(dm, "test", dm.test_dataloader(), 500)
    # eval loaders keep row order; the train loader shuffles
    assert torch.cat(_rows(dm.val_dataloader())).tolist() == list(range(300))
    assert torch.cat(_rows(dm.train_dataloader())).tolist() != list(range(2400))
    # the encoders were fitted on the train split only: an item seen only after train is OOV
    train_items = set(dm.frame("train")["item_id"].to_list())
    later = [i for i, it in enumerate(dm.frame("test")["item_id"].to_list()) if it not in train_items]
    test_ids = dm.encoded("test").ids["item_id"][0]
    assert all(test_ids[i] == 0 for i in later)
    assert (test_ids[[i for i in range(300) if i not in set(later)]] >= 2).all()
    sizes = dm.features.table_sizes
    assert sizes["item_id"] == 2 + len(dm.features.encoders_["item_id"].values_)
    assert "history" not in sizes


def test_same_seed_same_first_batch():
    def first(seed):
        dm = CTRDataModule(dataset="synthetic", dataset_options=SYNTH, batch_size=128, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))

    a, b, c = first(5), first(5), first(6)
    assert torch.equal(a.rows, b.rows) and not torch.equal(a.rows, c.rows)
    assert torch.equal(a.dense, b.dense) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.sparse.values(), b.sparse.values())
    assert torch.equal(a.sparse.lengths(), b.sparse.lengths())


def test_fields_subset_keeps_shared_owner():
    dm = CTRDataModule(dataset="synthetic", dataset_options=SYNTH, fields=["history", "num_inf"], batch_size=64)
    dm.setup("fit")
    assert dm.features.schema.names == ["item_id", "num_inf", "history"]
    assert dm.features.schema.tables == ["item_id"]
    batch = next(iter(dm.train_dataloader()))
    assert batch.sparse.keys() == ["item_id", "history"]
    assert batch.dense.shape == (64, 1)
    # history ids are looked up in item_id's vocabulary
    vocab = dm.features.encoders_["item_id"].values_
    hist = dm.frame("train")["history"].to_list()
    first_row = int(batch.rows[0])
    got = batch.sparse["history"].to_dense()[0].tolist()
    assert got == [vocab.index(v) + 2 for v in hist[first_row]]


# ------------------------------------------------------------------------------------- files
@pytest.fixture
def files(tmp_path, tiny_schema, make_frame):
    frame = make_frame(150, seed=11)
    split = ["train"] * 100 + ["valid"] * 30 + ["test"] * 20
    frame = frame.with_columns(pl.Series("split", split), pl.lit("extra").alias("unused"))
    schema_path = tmp_path / "schema.yaml"
    tiny_schema.to_yaml(schema_path)
    data = tmp_path / "all.parquet"
    frame.write_parquet(data)
    paths = {}
    for name in ("train", "valid", "test"):
        paths[name] = tmp_path / f"{name}.parquet"
        frame.filter(pl.col("split") == name).drop("split").write_parquet(paths[name])
    return frame, schema_path, data, paths


def test_file_dataset_with_split_column(files, tiny_schema):
    frame, schema_path, data, _ = files
    dm = CTRDataModule(dataset=str(data), schema=str(schema_path), batch_size=32, eval_batch_size=16)
    dm.setup("fit")
    assert dm.features.schema == tiny_schema
    assert [len(dm.frame(s)) for s in ("train", "valid", "test")] == [100, 30, 20]
    _check_covers(dm, "train", dm.train_dataloader(), 32)
    _check_covers(dm, "valid", dm.val_dataloader(), 16)
    dm.setup("test")
    _check_covers(dm, "test", dm.test_dataloader(), 16)
    # only the schema's columns (and the split) were read
    assert "unused" not in dm.frame("train").columns


def test_file_dataset_with_split_paths(files):
    _, schema_path, data, paths = files
    by_column = CTRDataModule(dataset=str(data), schema=str(schema_path), batch_size=32)
    by_path = CTRDataModule(dataset=str(paths["train"]), schema=str(schema_path), valid_path=str(paths["valid"]),
                            test_path=str(paths["test"]), batch_size=32)
    assert by_path.features.to_dict() == by_column.features.to_dict()
    for split in ("valid", "test"):
        a, b = by_column.encoded(split), by_path.encoded(split)
        assert len(a) == len(b)
        for k in a.ids:
            np.testing.assert_array_equal(a.ids[k][0], b.ids[k][0])
            np.testing.assert_array_equal(a.ids[k][1], b.ids[k][1])
        np.testing.assert_array_equal(a.dense, b.dense)
        np.testing.assert_array_equal(a.labels, b.labels)
    _check_covers(by_path, "test", by_path.test_dataloader(), 4 * 32)


def test_predict_file_with_unseen_values(files, tmp_path):
    frame, schema_path, data, _ = files
    pred = frame.head(4).drop("label", "split").with_columns(
        pl.Series("user_id", ["new_user", "u1", "new_user", None]),
        pl.Series("item_id", [999, 998, 999, 997]),
        pl.Series("genres", [["g_new"], [], None, ["g_new", "g_other"]], dtype=pl.List(pl.String)),
        pl.Series("history", [[999, 998], [], None, [996]], dtype=pl.List(pl.Int64)),
    ).select("ts", "item_id", "user_id", "zip", "genres", "tags", "age", "price", "history")
    pred_path = tmp_path / "predict.parquet"
    pred.write_parquet(pred_path)
    dm = CTRDataModule(dataset=str(data), schema=str(schema_path), predict_path=str(pred_path), batch_size=8)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert len(batches) == 1
    b = batches[0]
    assert b.rows.tolist() == [0, 1, 2, 3]
    sp = b.sparse.to_dict()
    assert sp["item_id"].values().tolist() == [0, 0, 0, 0]
    assert sp["history"].values().tolist() == [0, 0, 0] and sp["history"].lengths().tolist() == [2, 0, 0, 1]
    assert sp["genres"].values().tolist() == [0, 0, 0]
    user_vocab = dm.features.encoders_["user_id"].values_
    assert sp["user_id"].values().tolist() == [0, user_vocab.index("u1") + 2 if "u1" in user_vocab else 0, 0, 1]
    assert b.labels.tolist() == [0.0] * 4
    keys = dm.predict_keys()
    assert keys.columns == ["user_id", "item_id", "ts"]  # the schema's key order: user, item, time
    assert keys.to_dict(as_series=False) == pred.select("user_id", "item_id", "ts").to_dict(as_series=False)


def test_file_dataset_errors(files, tmp_path):
    frame, schema_path, data, _ = files
    with pytest.raises(DataError, match="needs a schema") as info:
        CTRDataModule(dataset=str(data)).setup("fit")
    assert str(data) in str(info.value)
    with pytest.raises(DataError, match="not found") as info:
        CTRDataModule(dataset=str(tmp_path / "missing.parquet"), schema=str(schema_path)).setup("fit")
    assert "missing.parquet" in str(info.value)
    no_valid = tmp_path / "no_valid.parquet"
    frame.filter(pl.col("split") != "valid").write_parquet(no_valid)
    with pytest.raises(DataError, match="valid split is empty"):
        CTRDataModule(dataset=str(no_valid), schema=str(schema_path)).setup("fit")
    no_col = tmp_path / "no_col.parquet"
    frame.drop("split").write_parquet(no_col)
    with pytest.raises(DataError, match="'split'"):
        CTRDataModule(dataset=str(no_col), schema=str(schema_path)).setup("fit")
    with pytest.raises(DataError, match="dataset_options"):
        CTRDataModule(dataset=str(data), schema=str(schema_path), dataset_options={"n_rows": 5}).setup("fit")
    with pytest.raises(DataError, match="batch_size"):
        CTRDataModule(batch_size=0)


def test_builtin_with_schema_override(tmp_path):
    base = CTRDataModule(dataset="synthetic", dataset_options=SYNTH)
    base_schema = base.features.schema
    sub = Schema(fields=tuple(f for f in base_schema.fields if f.name in ("user_id", "item_id", "tags")),
                 label=base_schema.label, keys=base_schema.keys)
    path = tmp_path / "s.yaml"
    sub.to_yaml(path)
    dm = CTRDataModule(dataset="synthetic", dataset_options=SYNTH, schema=str(path), batch_size=100)
    dm.setup("fit")
    assert dm.features.schema == sub
    assert next(iter(dm.train_dataloader())).sparse.keys() == ["user_id", "item_id", "tags"]


def test_csv_dataset_with_delimited_lists(tmp_path, make_frame):
    """CSV has no list type: lists are stored as delimited strings and split by 'separator:'."""
    frame = make_frame(80, seed=5)
    csv = frame.with_columns(
        pl.col("history").list.eval(pl.element().cast(pl.String)).list.join(" "),
        pl.col("genres").list.join(";"),
        pl.Series("split", ["train"] * 60 + ["valid"] * 20),
    )
    csv.write_csv(tmp_path / "data.csv")
    schema = Schema.from_dict({
        "label": "label", "keys": {"user": "user_id"},
        "fields": [{"name": "user_id", "kind": "categorical"}, {"name": "item_id", "kind": "categorical"},
                   {"name": "genres", "kind": "multi_hot", "separator": ";"},
                   {"name": "history", "kind": "sequence", "shares": "item_id", "max_len": 3, "separator": " "}]})
    schema.to_yaml(tmp_path / "schema.yaml")
    lists = Schema.from_dict({**schema.to_dict(), "fields": [
        {k: v for k, v in f.to_dict().items() if k != "separator"} for f in schema.fields]})
    lists.to_yaml(tmp_path / "lists.yaml")
    frame.with_columns(pl.Series("split", ["train"] * 60 + ["valid"] * 20)).write_parquet(tmp_path / "data.parquet")
    from_csv = CTRDataModule(dataset=str(tmp_path / "data.csv"), schema=str(tmp_path / "schema.yaml"), batch_size=16)
    from_pq = CTRDataModule(dataset=str(tmp_path / "data.parquet"), schema=str(tmp_path / "lists.yaml"), batch_size=16)
    # the same ids whether the lists come as delimited CSV strings or parquet lists
    assert from_csv.features.table_sizes == from_pq.features.table_sizes
    for split in ("train", "valid"):
        a, b = from_csv.encoded(split), from_pq.encoded(split)
        for k in ("user_id", "item_id", "genres", "history"):
            np.testing.assert_array_equal(a.ids[k][1], b.ids[k][1])
            np.testing.assert_array_equal(a.ids[k][0], b.ids[k][0])
    _check_covers(from_csv, "train", from_csv.train_dataloader(), 16)

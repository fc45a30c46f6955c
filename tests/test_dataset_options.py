"""Typed options of the built-in data sets: one name for the sequence length, bad keys and values
as a ConfigError naming the key and the closest valid one (not a TypeError from a loader)."""

from __future__ import annotations

import pytest

from recsys.data import CTRDataModule
from recsys.data.datasets.options import (
    AdultOptions,
    MovieLensOptions,
    SyntheticRetrievalOptions,
    parse_options,
)
from recsys.data.sources import BUILTIN
from recsys.errors import ConfigError


@pytest.mark.parametrize("dataset, key, closest", [
    ("synthetic", "history_lenn", "history_len"),
    ("synthetic-wide", "n_rowz", "n_rows"),
    ("synthetic-retrieval", "n_userz", "n_users"),
    ("movielens-100k", "max_len", "history_len"),
    ("ml100k-retrieval", "history_length", "history_len"),
    ("adult", "splitseed", "split_seed"),
])
def test_a_misspelled_option_names_the_key_and_the_closest_valid_one(dataset, key, closest):
    with pytest.raises(ConfigError) as e:
        BUILTIN[dataset](**{key: 5})  # what the data module calls: refused before any download
    assert e.value.where == f"data.dataset_options.{key}"
    assert f"did you mean {closest!r}" in e.value.fix and dataset in e.value.message


@pytest.mark.parametrize("dataset, options, key", [
    ("synthetic", {"n_rows": 0}, "n_rows"),
    ("synthetic", {"history_len": -1}, "history_len"),
    ("synthetic-retrieval", {"interactions": [5]}, "interactions"),
    ("synthetic-retrieval", {"n_genres": 2.5}, "n_genres"),
    ("movielens-100k", {"history_len": "50"}, "history_len"),
    ("adult", {"split_seed": True}, "split_seed"),
])
def test_a_bad_value_is_a_config_error_naming_its_key(dataset, options, key):
    with pytest.raises(ConfigError) as e:
        parse_options(dataset, options)
    assert e.value.where == f"data.dataset_options.{key}"


def test_every_sequence_length_is_called_history_len():
    for cls in (MovieLensOptions, SyntheticRetrievalOptions, parse_options("synthetic", {}).__class__):
        assert "history_len" in cls.__dataclass_fields__
        assert not {"max_history", "history_max_len", "max_len"} & set(cls.__dataclass_fields__)
    assert AdultOptions().split_seed == 0  # Adult has no sequence


@pytest.mark.parametrize("dataset, options", [
    ("synthetic", {"n_rows": 600, "n_users": 40, "history_len": 3}),
    ("synthetic-retrieval", {"n_users": 40, "n_items": 50, "history_len": 3}),
])
def test_history_len_is_the_sequence_fields_max_len(dataset, options):
    frame, schema = BUILTIN[dataset](**options)
    history = [f for f in schema.fields if f.kind == "sequence"]
    assert [f.max_len for f in history] == [3]
    assert frame[history[0].name].list.len().max() <= 3


def test_the_data_module_reports_a_typo_before_loading():
    dm = CTRDataModule(dataset="synthetic", dataset_options={"n_row": 500})
    with pytest.raises(ConfigError, match="did you mean 'n_rows'"):
        dm.setup("fit")

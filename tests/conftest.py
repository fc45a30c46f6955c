"""Shared small fixtures: a schema with every field kind and frames that match it.

``tiny_frame`` is 8 hand-written rows (nulls, empty lists, rare values, long lists), small enough
to check results by hand. ``make_frame(n, seed)`` draws ``n`` random rows of the same layout for
tests that need more rows (batching, splits, files).
"""

from __future__ import annotations

import os
from pathlib import Path
import random

os.environ.setdefault("OMP_NUM_THREADS", "1")

import polars as pl
import pytest

from recsys.schema import Schema

TINY_SCHEMA = {
    "label": "label",
    "keys": {"user": "user_id", "item": "item_id", "time": "ts"},
    "fields": [
        {"name": "user_id", "kind": "categorical", "min_count": 2},   # string vocabulary + min_count
        {"name": "item_id", "kind": "categorical"},                   # int vocabulary, owns a shared table
        {"name": "zip", "kind": "categorical", "hash_buckets": 7},    # hashed
        {"name": "genres", "kind": "multi_hot", "max_len": 2},        # list column, first 2 kept
        {"name": "tags", "kind": "multi_hot", "separator": "|"},      # delimited string column
        {"name": "age", "kind": "numeric"},                           # standardized -> dense
        {"name": "price", "kind": "numeric", "transform": "bucketize", "n_buckets": 3},  # -> ids
        {"name": "history", "kind": "sequence", "shares": "item_id", "max_len": 3},       # last 3 kept
    ],
}


def tiny_frame_data() -> dict:
    return {
        "user_id": ["u1", "u1", "u2", "u2", "u3", "u1", "u2", "u4"],
        "item_id": [10, 11, 10, 12, 13, 10, 11, 14],
        "zip": ["a", "b", None, "a", "c", "d", "e", "b"],
        "genres": [["x", "y", "z"], ["y"], [], None, ["z", "x"], ["x"], ["y", "x"], ["w"]],
        "tags": ["p|q", "q", None, "p|p", "p", "r|p|q", "q", "p"],
        "age": [20.0, 30.0, None, 40.0, 25.0, 35.0, 50.0, 60.0],
        "price": [1.0, 2.0, 3.0, None, 5.0, 6.0, 7.0, 8.0],
        "history": [[], [10], [10, 11], [11, 10, 12, 13], None, [12, 13, 10, 11, 14], [14], [10, 10]],
        "label": pl.Series([1, 0, 0, 1, 1, 0, 1, 0], dtype=pl.Int8),
        "ts": list(range(1, 9)),
    }


@pytest.fixture
def tiny_schema() -> Schema:
    return Schema.from_dict(TINY_SCHEMA)


@pytest.fixture
def tiny_frame() -> pl.DataFrame:
    return pl.DataFrame(tiny_frame_data(), schema_overrides={"history": pl.List(pl.Int64)})


def random_frame(n: int, seed: int = 0, n_users: int = 30, n_items: int = 40) -> pl.DataFrame:
    """``n`` random rows with the tiny schema's columns (plus ``ts``), including nulls and empty lists."""
    rng = random.Random(seed)

    def maybe(v, p=0.1):
        return None if rng.random() < p else v

    items = [rng.randrange(n_items) for _ in range(n)]
    return pl.DataFrame(
        {
            "user_id": [f"u{rng.randrange(n_users)}" for _ in range(n)],
            "item_id": items,
            "zip": [maybe(f"z{rng.randrange(50)}") for _ in range(n)],
            "genres": [maybe([f"g{rng.randrange(8)}" for _ in range(rng.randrange(5))]) for _ in range(n)],
            "tags": [maybe("|".join(f"t{rng.randrange(6)}" for _ in range(1 + rng.randrange(3)))) for _ in range(n)],
            "age": [maybe(rng.gauss(40, 10)) for _ in range(n)],
            "price": [maybe(rng.expovariate(0.1)) for _ in range(n)],
            "history": [maybe([rng.randrange(n_items) for _ in range(rng.randrange(6))]) for _ in range(n)],
            "label": pl.Series([rng.randrange(2) for _ in range(n)], dtype=pl.Int8),
            "ts": list(range(n)),
        },
        schema_overrides={"history": pl.List(pl.Int64), "genres": pl.List(pl.String)},
    )


@pytest.fixture
def make_frame():
    return random_frame


@pytest.fixture(scope="session")
def dm():
    """Small synthetic data module (every field kind, history of up to 6 items), fitted once."""
    from recsys.data import CTRDataModule

    d = CTRDataModule(dataset_options={"n_rows": 3000, "seed": 0, "history_len": 6}, batch_size=128)
    d.setup("fit")
    return d


@pytest.fixture(scope="session")
def batch(dm):
    """The first training batch of ``dm`` (128 rows)."""
    return next(iter(dm.train_dataloader()))


def small_synthetic_config(tmp_path, name: str, model_args: dict, dataset_options: dict,
                           epochs: int = 4, lr: float = 0.003, batch_size: int = 512):
    """The shipped ``experiments/<name>_synthetic.yaml`` shrunk for a test fit (rows, epochs, widths),
    logging under ``tmp_path/name``; the raised learning rate lets a few epochs suffice."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "experiments" / f"{name}_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": epochs, "default_root_dir": str(tmp_path / name), "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    cfg["model"]["init_args"]["model"]["init_args"].update(model_args)
    cfg["model"]["init_args"]["lr"] = lr
    cfg["data"]["init_args"]["dataset_options"] = dict(dataset_options)
    cfg["data"]["init_args"]["batch_size"] = batch_size
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_metrics(root: Path, name: str) -> dict:
    """The ``metrics.json`` of the newest ``version_*`` run that ``recsys fit`` wrote under ``root/name``."""
    import json

    files = sorted((root / name).glob("version_*/metrics.json"))
    assert files, f"no metrics.json under {root / name}"
    return json.loads(files[-1].read_text())


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server on 127.0.0.1 for the whole session (tests/pgserver.py): a fresh
    cluster in a temp dir, the role ``tuner`` (with a password) owning the database ``optuna``; stopped
    and removed at the end. ``.url`` is its SQLAlchemy URL.

    Missing server binaries FAIL the test (CI installs them: .ci/run); set RECSYS_TEST_POSTGRES=skip
    to skip the PostgreSQL tests on a machine without them."""
    import pgserver

    if os.environ.get("RECSYS_TEST_POSTGRES", "").lower() in ("skip", "0", "no", "false"):
        pytest.skip("RECSYS_TEST_POSTGRES=skip: PostgreSQL tests not run")
    try:
        server = pgserver.start()
    except pgserver.ServerUnavailable as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()

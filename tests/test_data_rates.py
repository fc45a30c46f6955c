"""Missing and unseen values are reported, not silent (issue 17 item 3), through the `recsys` command.

A file data set whose numeric column is 10% null and whose test split holds item ids never seen
in training: fit warns about the nulls (one line) and records the per-field missing rates in
metrics.json; test, predict and report warn about the unseen ids (one line) and record the
per-field OOV rates in their output files.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from recsys.data.preprocess import FeatureEncoder
from recsys.schema import Schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"label": "label", "keys": {"item": "item_id"},
          "fields": [{"name": "item_id", "kind": "categorical"}, {"name": "color", "kind": "categorical"},
                     {"name": "tags", "kind": "multi_hot"}, {"name": "x", "kind": "numeric"}]}


def _frame(n: int, seed: int, new_items: float = 0.0, x_null: float = 0.1) -> pl.DataFrame:
    rng = random.Random(seed)
    items = [1000 + rng.randrange(50) if rng.random() < new_items else rng.randrange(50) for _ in range(n)]
    return pl.DataFrame({
        "item_id": items,
        "color": [rng.choice(["red", "green", "blue"]) for _ in range(n)],
        "tags": [[f"t{rng.randrange(5)}" for _ in range(rng.randrange(3))] for _ in range(n)],
        "x": [None if rng.random() < x_null else rng.gauss(0, 1) for _ in range(n)],
        "label": [int(i % 3 == 0) for i in items],
    }, schema_overrides={"tags": pl.List(pl.String)})


def test_encoded_split_counts_missing_and_unseen_values():
    schema = Schema.from_dict(SCHEMA)
    train = _frame(400, 0, x_null=0.25)
    enc = FeatureEncoder(schema).fit(train)
    split = enc.transform(_frame(200, 1, new_items=1.0, x_null=0.0).with_columns(
        pl.when(pl.int_range(pl.len()) < 50).then(None).otherwise(pl.col("color")).alias("color")))
    assert split.oov_rate["item_id"] == 1.0 and split.oov_rate["color"] == 0.0
    assert split.missing_rate["color"] == 50 / 200 and split.missing_rate["x"] == 0.0
    assert "x" not in split.oov_rate  # a standardized numeric has no vocabulary
    train_split = enc.transform(train)
    assert train_split.missing_rate["x"] == pytest.approx(train["x"].null_count() / 400)
    assert train_split.oov_rate["item_id"] == 0.0


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in ("CI", "RECSYS_PROGRESS")},
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def recsys(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One fit on the file data set; returns (folder, config, checkpoint, fit output)."""
    tmp = tmp_path_factory.mktemp("rates")
    frame = pl.concat([
        _frame(3000, 0).with_columns(pl.lit("train").alias("split")),
        _frame(500, 1).with_columns(pl.lit("valid").alias("split")),
        _frame(500, 2, new_items=0.5).with_columns(pl.lit("test").alias("split")),
    ])
    frame.write_parquet(tmp / "data.parquet")
    _frame(300, 3, new_items=1.0).drop("label").write_parquet(tmp / "new_items.parquet")
    _frame(300, 4, new_items=1.0).write_parquet(tmp / "new_items_labelled.parquet")
    (tmp / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    cfg = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                    "default_root_dir": str(tmp), "enable_model_summary": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp), "name": "run"}},
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"monitor": "val/auc", "mode": "max", "filename": "best"}}]},
        "model": {"class_path": "recsys.tasks.RankingTask",
                  "init_args": {"model": {"class_path": "recsys.models.LogisticRegression"}, "lr": 0.01}},
        "data": {"class_path": "recsys.data.CTRDataModule",
                 "init_args": {"dataset": str(tmp / "data.parquet"), "schema": str(tmp / "schema.yaml"),
                               "batch_size": 256}},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = recsys("fit", "--config", "cfg.yaml", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp / "run" / "version_0" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    return tmp, ckpt, proc


@pytest.mark.slow
def test_fit_warns_once_about_nulls_and_records_missing_rates(run):
    tmp, _, proc = run
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1, proc.stderr
    assert "missing values" in warnings[0] and "[train]" in warnings[0] and " x 1" in warnings[0]
    assert "mean" in warnings[0]  # says what happened to them
    metrics = json.loads((tmp / "run" / "version_0" / "metrics.json").read_text())
    frame = pl.read_parquet(tmp / "data.parquet")
    for split in ("train", "valid", "test"):
        part = frame.filter(pl.col("split") == split)
        assert metrics["data"][split]["rows"] == part.height
        assert metrics["data"][split]["missing_rate"]["x"] == pytest.approx(part["x"].null_count() / part.height)
    assert metrics["data"]["test"]["oov_rate"]["item_id"] == pytest.approx(
        frame.filter(pl.col("split") == "test")["item_id"].ge(1000).mean())
    assert metrics["data"]["train"]["oov_rate"]["item_id"] == 0.0


@pytest.mark.slow
def test_predict_on_unseen_ids_warns_and_writes_the_rates_into_the_file(run):
    tmp, ckpt, _ = run
    proc = recsys("predict", "--config", "cfg.yaml", "--ckpt_path", str(ckpt),
                  "--data.init_args.predict_path", "new_items.parquet", "--predict_out", "scores.parquet", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, proc.stderr  # nothing but the two warnings: x is 10% null there too
    assert "missing values in new_items.parquet [predict]" in lines[0] and " x " in lines[0]
    assert "unseen in training in new_items.parquet [predict]" in lines[1] and lines[1].endswith(": item_id 100.0%")
    meta = json.loads(pl.read_parquet_metadata(tmp / "scores.parquet")["recsys"])
    assert meta["oov_rate"]["item_id"] == 1.0 and meta["oov_rate"]["color"] == 0.0 and meta["rows"] == 300


@pytest.mark.slow
def test_test_and_report_record_oov_rates(run):
    tmp, ckpt, _ = run
    proc = recsys("test", "--config", "cfg.yaml", "--ckpt_path", str(ckpt), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any("unseen in training" in ln and "item_id" in ln for ln in proc.stderr.splitlines()), proc.stderr
    written = sorted((tmp / "run").glob("version_*/metrics.json"))[-1]
    test_metrics = json.loads(written.read_text())
    assert 0.4 < test_metrics["data"]["test"]["oov_rate"]["item_id"] < 0.6 and "auc" in test_metrics["test"]
    proc = recsys("report", "--ckpt", str(ckpt), "--data", "new_items_labelled.parquet", "--out", "rep",
                  "--bootstrap", "5", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any("unseen in training" in ln and "item_id 100.0%" in ln for ln in proc.stderr.splitlines()), proc.stderr
    report = json.loads((tmp / "rep" / "metrics.json").read_text())
    assert report["models"][0]["data"]["oov_rate"]["item_id"] == 1.0
    assert any("unseen in training" in n for n in report["notes"])
    assert np.isclose(report["models"][0]["data"]["missing_rate"]["x"],
                      pl.read_parquet(tmp / "new_items_labelled.parquet")["x"].null_count() / 300)

"""End-to-end: `recsys fit/predict` on synthetic data, checkpoints, determinism, user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from conftest import run_metrics
from recsys.cli import main
from recsys.data import CTRDataModule
from recsys.data.datasets.synthetic import make_synthetic
from recsys.errors import RecsysError
from recsys.tasks import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 20_000


def _config(tmp_path: Path, name: str = "run", n_rows: int = N_ROWS, epochs: int = 3, **data_extra) -> Path:
    """A small DeepFM config on synthetic data, writing under tmp_path."""
    cfg = yaml.safe_load((ROOT / "experiments" / "deepfm_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": epochs,
        "default_root_dir": str(tmp_path / name),
        "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    cfg["model"]["init_args"]["model"]["init_args"].update({"embedding_dim": 8, "hidden_units": [64, 32]})
    cfg["data"]["init_args"]["dataset_options"] = {"n_rows": n_rows, "seed": 0}
    cfg["data"]["init_args"]["batch_size"] = 512
    cfg["data"]["init_args"].update(data_extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    cfg = _config(tmp, "run")
    assert main(["fit", "--config", str(cfg), "--report", "true"]) == 0
    return tmp, cfg, run_metrics(tmp, "run")


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("fit", "validate", "test", "predict"):
        assert f"  {cmd} " in out


@pytest.mark.slow
def test_fit_learns_planted_signal(fitted):
    """The generator's Bayes-optimal (oracle) test AUC bounds what is learnable. A model that
    captures at least 60% of the oracle's lift over chance on 16k training rows has clearly
    learned the planted effects; a model that learned nothing scores 0.5 +- 0.01 on 2k rows."""
    _, _, metrics = fitted
    oracle = make_synthetic(n_rows=N_ROWS, seed=0).oracle_auc["test"]
    floor = 0.5 + 0.6 * (oracle - 0.5)
    assert metrics["test"]["auc"] > floor, (metrics["test"], oracle)
    assert metrics["test"]["auc"] <= oracle + 0.02  # cannot beat the oracle beyond noise
    assert metrics["train"]["samples_per_s_median"] > 0
    assert Path(metrics["best_checkpoint"]).is_file()


@pytest.mark.slow
def test_fit_report_matches_fit_metrics(fitted):
    tmp, _, metrics = fitted
    report_dir = Path(metrics["best_checkpoint"]).parents[1] / "report"
    assert (report_dir / "report.html").is_file()
    report = json.loads((report_dir / "metrics.json").read_text())
    auc = report["models"][0]["metrics"]["auc"]["value"]
    assert auc == pytest.approx(metrics["test"]["auc"], abs=1e-5)


@pytest.mark.slow
def test_checkpoint_predict_reproduces_scores(fitted, tmp_path):
    tmp, cfg, metrics = fitted
    ckpt = metrics["best_checkpoint"]
    out = tmp_path / "scores.parquet"
    assert main(["predict", "--config", str(cfg), "--ckpt_path", ckpt, "--predict_out", str(out)]) == 0
    scores = pl.read_parquet(out)
    test_frame = make_synthetic(n_rows=N_ROWS, seed=0).frame.filter(pl.col("split") == "test")
    assert scores.columns == ["user_id", "item_id", "timestamp", "score"]
    assert scores.select(["user_id", "item_id", "timestamp"]).equals(
        test_frame.select(["user_id", "item_id", "timestamp"]))
    # the checkpoint alone (no YAML) rebuilds the model, and scores the same rows identically
    task = load_checkpoint(ckpt)
    dm = CTRDataModule(dataset_options={"n_rows": N_ROWS, "seed": 0}, batch_size=512, features_from=ckpt)
    with torch.no_grad():
        ours = torch.cat([torch.sigmoid(task(b).logits) for b in dm.test_dataloader()]).numpy()
    np.testing.assert_allclose(scores["score"].to_numpy(), ours, rtol=1e-5, atol=1e-6)
    # test AUC of these scores equals the metric logged by fit
    from torchmetrics.functional.classification import binary_auroc
    auc = binary_auroc(torch.from_numpy(ours), torch.from_numpy(test_frame["label"].to_numpy()).long()).item()
    assert auc == pytest.approx(metrics["test"]["auc"], abs=1e-5)


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path):
    a = _config(tmp_path, "a", n_rows=6000, epochs=2)
    b = _config(tmp_path, "b", n_rows=6000, epochs=2)
    assert main(["fit", "--config", str(a)]) == 0
    assert main(["fit", "--config", str(b)]) == 0
    ma, mb = run_metrics(tmp_path, "a"), run_metrics(tmp_path, "b")
    assert ma["valid"] == mb["valid"] and ma["test"] == mb["test"]
    c = _config(tmp_path, "c", n_rows=6000, epochs=2, seed=1)  # other shuffling seed
    assert main(["fit", "--config", str(c)]) == 0
    assert run_metrics(tmp_path, "c")["valid"] != ma["valid"]


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, fitted):
    _, _, metrics = fitted
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(Path(metrics["best_checkpoint"]).read_bytes()[:1000])
    with pytest.raises(RecsysError, match="bad.ckpt"):
        load_checkpoint(bad)


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_missing_data_file_exits_cleanly(tmp_path):
    schema = tmp_path / "schema.yaml"
    schema.write_text("label: y\nfields:\n  - {name: a, kind: categorical}\n")
    cfg = _config(tmp_path, "missing", dataset=str(tmp_path / "nope.parquet"), schema=str(schema))
    cfg_data = yaml.safe_load(cfg.read_text())
    cfg_data["data"]["init_args"].pop("dataset_options")
    cfg.write_text(yaml.safe_dump(cfg_data))
    res = _run_cli(["fit", "--config", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert "nope.parquet" in res.stderr and "file not found" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "missing").exists()  # nothing written


@pytest.mark.slow
def test_bad_label_names_file_and_column(tmp_path):
    data = tmp_path / "d.csv"
    pl.DataFrame({"a": ["x", "y", "x", "y"], "y": [0, 1, 2, 1],
                  "split": ["train", "train", "valid", "test"]}).write_csv(data)
    schema = tmp_path / "schema.yaml"
    schema.write_text("label: y\nfields:\n  - {name: a, kind: categorical}\n")
    cfg = _config(tmp_path, "badlabel", dataset=str(data), schema=str(schema))
    cfg_data = yaml.safe_load(cfg.read_text())
    cfg_data["data"]["init_args"].pop("dataset_options")
    cfg.write_text(yaml.safe_dump(cfg_data))
    res = _run_cli(["fit", "--config", str(cfg)], tmp_path)
    assert res.returncode == 2
    assert "d.csv" in res.stderr and "'y'" in res.stderr and "0/1" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_unknown_config_key_is_a_parse_error(tmp_path):
    cfg = _config(tmp_path, "unknown")
    data = yaml.safe_load(cfg.read_text())
    data["model"]["init_args"]["model"]["init_args"]["embeding_dim"] = 4  # typo
    cfg.write_text(yaml.safe_dump(data))
    res = _run_cli(["fit", "--config", str(cfg)], tmp_path)
    assert res.returncode != 0
    assert "embeding_dim" in res.stderr
    assert not (tmp_path / "unknown").exists()

"""The experiment API (recsys.tasks.experiment): a fit from a config dict, no argv, no YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recsys.tasks.experiment import build, check_config, fit

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, name: str = "api") -> dict:
    cfg = yaml.safe_load((ROOT / "experiments" / "deepfm_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": 2, "default_root_dir": str(tmp_path / name), "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    cfg["model"]["init_args"]["model"]["init_args"].update({"embedding_dim": 8, "hidden_units": [64, 32]})
    cfg["data"]["init_args"]["dataset_options"] = {"n_rows": 20000, "seed": 0}
    cfg["data"]["init_args"]["batch_size"] = 512
    return cfg


def test_fit_from_a_dict_returns_the_metrics_it_wrote(tmp_path):
    cfg = _cfg(tmp_path)
    before = json.dumps(cfg, sort_keys=True)
    result = fit(cfg)
    assert json.dumps(cfg, sort_keys=True) == before  # the caller's dict is not modified
    written = json.loads((tmp_path / "api" / "version_0" / "metrics.json").read_text())
    assert result.metrics["valid"] == written["valid"]
    assert 0.5 < result.metrics["valid"]["auc"] <= 1.0  # planted signal is learnt in 2 epochs
    assert result.trainer.current_epoch == 2 and type(result.task).__name__ == "RankingTask"
    assert not list(tmp_path.glob("*.yaml"))  # no config file written to run it


def test_build_instantiates_without_training(tmp_path):
    cli = build(_cfg(tmp_path, "built"))
    assert cli.trainer.global_step == 0
    assert type(cli.model.model).__name__ == "DeepFM"
    assert not (tmp_path / "built").exists()  # nothing ran, nothing logged


def test_check_config_names_the_bad_key(tmp_path):
    cfg = _cfg(tmp_path)
    assert check_config(cfg) is None
    cfg["model"]["init_args"]["lrr"] = 0.1
    err = check_config(cfg)
    assert err is not None and "lrr" in err


def test_deepfm_numeric_init_xavier_builds_from_a_config(tmp_path):
    """``numeric_init: xavier`` in a DeepFM config parses and reaches the model's numeric vectors
    (std sqrt(2 / (1 + D)) instead of ``init_std``); a misspelt key is still named."""
    cfg = _cfg(tmp_path, "xavier")
    cfg["data"]["init_args"]["dataset_options"] = {"n_rows": 2000, "seed": 0}
    model_args = cfg["model"]["init_args"]["model"]["init_args"]
    model_args.update({"embedding_dim": 32, "numeric_init": "xavier"})
    assert check_config(cfg) is None
    model = build(cfg).model.model
    assert model.config["init_args"]["numeric_init"] == "xavier"
    v = model.embedding.numeric.weight
    assert v.numel() >= 64 and v.std().item() == pytest.approx((2 / 33) ** 0.5, rel=0.3)
    del model_args["numeric_init"]
    model_args["numeric_intt"] = "xavier"
    err = check_config(cfg)
    assert err is not None and "numeric_intt" in err

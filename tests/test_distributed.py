"""Two real processes (Lightning DDP, gloo on CPU) with TorchRec-sharded tables vs one process.

DIN has both kinds of TorchRec collection (pooled fields in an EmbeddingBagCollection, the
target item + behaviour sequence in an EmbeddingCollection), so one run shards both. The
sharded run saves torch.distributed.checkpoint directories; one process reads them back.
"""

from __future__ import annotations

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
from recsys.tasks import load_checkpoint, load_datamodule
from recsys.tasks.distributed import META_FILE

ROOT = Path(__file__).resolve().parents[1]


def din_config(tmp_path: Path, name: str) -> Path:
    cfg = yaml.safe_load((ROOT / "experiments" / "din_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": 2, "default_root_dir": str(tmp_path / name), "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    cfg["model"]["init_args"]["model"]["init_args"].update(
        {"embedding_dim": 8, "hidden_units": [32], "attention_units": [16]})
    # sharded tables on CPU train with FBGEMM's fused row-wise Adagrad; the one-process run uses
    # the same optimizer (TorchRec's in-backward RowWiseAdagrad on the unsharded tables)
    cfg["model"]["init_args"].update({"embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.05})
    cfg["data"]["init_args"]["dataset_options"] = {"n_rows": 4000, "n_users": 100, "history_max_len": 32, "seed": 0}
    cfg["data"]["init_args"]["batch_size"] = 256
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    one = din_config(tmp, "one")
    assert main(["fit", "--config", str(one)]) == 0
    two = din_config(tmp, "two")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "fit", "--config", str(two),
         "--trainer.strategy", "recsys_ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, one, two, proc.stdout + proc.stderr


def test_two_processes_with_sharded_tables_match_one_process(runs):
    tmp, _, _, log = runs
    one, two = run_metrics(tmp, "one"), run_metrics(tmp, "two")
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    assert one["world_size"] == 1 and two["world_size"] == 2
    # same global batches, gradients averaged over ranks, tables started from the same init:
    # the two runs differ by float summation order only
    for split in ("valid", "test"):
        for key in ("auc", "logloss"):
            assert abs(one[split][key] - two[split][key]) < 1e-4, (split, key, one[split], two[split])
    assert two["valid"]["auc"] > 0.6  # and it learned something


def test_sharded_checkpoint_is_a_dcp_directory_loadable_in_one_process(runs):
    tmp, _, _, _ = runs
    two = run_metrics(tmp, "two")
    ckpt = Path(two["best_checkpoint"])
    assert ckpt.is_dir() and (ckpt / META_FILE).is_file() and (ckpt / ".metadata").is_file()
    assert len(list(ckpt.glob("*.distcp"))) == 2  # one shard file per rank
    # one process, no process group: the shards are gathered into whole tables
    task = load_checkpoint(ckpt)
    dm = load_datamodule(ckpt)
    dm.setup("test")
    scores, labels = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            scores.append(torch.sigmoid(task(batch).logits))
            labels.append(batch.labels)
    s, y = torch.cat(scores).double(), torch.cat(labels).double()
    from torchmetrics.functional.classification import binary_auroc

    auc = float(binary_auroc(s, y.long()))
    logloss = float(torch.nn.functional.binary_cross_entropy(s, y))
    # the distributed run evaluated this checkpoint on the test split (sharded, 2 ranks)
    assert abs(auc - two["test"]["auc"]) < 1e-6
    assert abs(logloss - two["test"]["logloss"]) < 1e-5


def test_predict_from_sharded_checkpoint_in_one_process(runs, tmp_path):
    tmp, _, two_cfg, _ = runs
    ckpt = Path(run_metrics(tmp, "two")["best_checkpoint"])
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--config", str(two_cfg), "--ckpt_path", str(ckpt), "--predict_out", str(out),
                 "--trainer.logger", "false"]) == 0
    pred = pl.read_parquet(out)
    task = load_checkpoint(ckpt)
    dm = load_datamodule(ckpt)
    dm.setup("test")
    with torch.no_grad():
        ref = torch.cat([torch.sigmoid(task(b).logits) for b in dm.test_dataloader()]).numpy()
    assert len(pred) == len(ref)
    np.testing.assert_allclose(pred["score"].to_numpy(), ref, rtol=1e-5, atol=1e-6)

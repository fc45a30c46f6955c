"""Resumable training: a run SIGKILLed mid-epoch resumes with ``--ckpt_path last`` and ends where
an uninterrupted run ends; the sampler's position inside an epoch is part of the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from recsys.cli import main
from recsys.data.batch import BatchIndexSampler
from recsys.errors import RecsysError
from recsys.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EVERY = 5  # checkpoint every 5 steps; 25 steps per epoch, so most checkpoints are mid-epoch


def _config(tmp_path: Path, name: str) -> Path:
    """DeepFM with dropout (so the random state matters) and row-wise Adagrad tables on 8k
    synthetic rows, 3 epochs."""
    cfg = yaml.safe_load((ROOT / "experiments" / "deepfm_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": 3, "default_root_dir": str(tmp_path / name), "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    cfg["model"]["init_args"]["model"]["init_args"].update(
        {"embedding_dim": 8, "hidden_units": [32, 16], "dropout": 0.2})
    # tables with their own in-backward optimizer, whose state is not Lightning's to save
    cfg["model"]["init_args"].update({"embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.05})
    cfg["data"]["init_args"]["dataset_options"] = {"n_rows": 8000, "seed": 0}
    cfg["data"]["init_args"]["batch_size"] = 256
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(tmp_path: Path, name: str) -> dict:
    files = sorted((tmp_path / name).glob("version_*/metrics.json"))
    assert len(files) == 1, files  # the resumed run continued in the interrupted run's directory
    return json.loads(files[0].read_text())


def _kill_after_checkpoints(cfg: Path, last: Path, n_writes: int) -> int:
    """Start `recsys fit` in a subprocess; SIGKILL it once ``last`` has been (re)written
    ``n_writes`` times. Returns the exit code (-9 when killed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "fit", "--config", str(cfg),
                             "--save_every_n_steps", str(EVERY)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = set()
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                st = last.stat()
                seen.add((st.st_ino, st.st_mtime_ns))  # every save is a rename onto `last`
            except FileNotFoundError:
                pass
            if len(seen) >= n_writes:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
    return proc.wait()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    full = _config(tmp_path, "full")
    assert main(["fit", "--config", str(full), "--save_every_n_steps", str(EVERY)]) == 0
    expected = _metrics(tmp_path, "full")

    cfg = _config(tmp_path, "killed")
    last = tmp_path / "killed" / "version_0" / "checkpoints" / "last.ckpt"
    rc = _kill_after_checkpoints(cfg, last, n_writes=7)  # after step 35: epoch 1, batch 10 of 25
    assert rc == -signal.SIGKILL, f"the run was not killed (exit {rc}); it finished too fast"
    ckpt = read_checkpoint(last)  # the kill never leaves a half-written `last`
    step, epoch = ckpt["global_step"], ckpt["epoch"]
    assert step % 25 != 0 and epoch >= 1, (step, epoch)  # a mid-epoch checkpoint
    assert not (tmp_path / "killed" / "version_0" / "metrics.json").exists()

    assert main(["fit", "--config", str(cfg), "--save_every_n_steps", str(EVERY), "--ckpt_path", "last"]) == 0
    resumed = _metrics(tmp_path, "killed")
    assert resumed["epochs_trained"] == expected["epochs_trained"]
    for split in ("valid", "test"):
        for key in ("auc", "logloss"):
            assert abs(resumed[split][key] - expected[split][key]) < 1e-6, (split, key, resumed, expected)
    # the interrupted run's logged rows are kept beside the resumed run's
    assert (tmp_path / "killed" / "version_0" / "metrics.part-1.csv").is_file()


def test_resume_last_without_checkpoint_trains_from_scratch(tmp_path):
    cfg = _config(tmp_path, "fresh")
    data = yaml.safe_load(cfg.read_text())
    data["trainer"]["max_epochs"] = 1
    data["data"]["init_args"]["dataset_options"]["n_rows"] = 2000
    cfg.write_text(yaml.safe_dump(data))
    assert main(["fit", "--config", str(cfg), "--ckpt_path", "last"]) == 0
    assert _metrics(tmp_path, "fresh")["epochs_trained"] == 1


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sampler_resumes_mid_epoch_and_splits_global_batches(world_size):
    n, bs = 103, 10
    # uninterrupted: the global batches of epoch 4
    ref = BatchIndexSampler(n, bs, shuffle=True, seed=7)
    ref.set_epoch(4)
    batches = list(ref)
    assert torch.equal(torch.sort(torch.cat(batches)).values, torch.arange(n))

    a = BatchIndexSampler(n, bs, shuffle=True, seed=7)
    a.set_epoch(4)
    it = iter(a)
    head = [next(it) for _ in range(6)]
    state = a.state_dict()
    assert state["epoch"] == 4 and state["batches"] == 6

    # a fresh process (possibly another number of ranks) resumes at batch 6 of epoch 4
    for rank in range(world_size):
        b = BatchIndexSampler(n, bs, shuffle=True, seed=7, rank=rank, world_size=world_size)
        b.load_state_dict(state)
        b.set_epoch(4)
        rest = list(b)
        assert len(rest) == len(batches) - 6
        for got, want in zip(rest, batches[6:]):
            assert torch.equal(got, torch.tensor_split(want, world_size)[rank])
        b.set_epoch(5)  # the skip applies to the interrupted epoch only
        assert len(list(b)) == len(b)
    for got, want in zip(head, batches):
        assert torch.equal(got, want)


def test_sampler_ranks_get_equal_step_counts_and_no_empty_batch():
    n, bs, world = 41, 10, 3  # tail of 1 row < 3 ranks: merged into the batch before it
    parts = [list(BatchIndexSampler(n, bs, shuffle=True, seed=1, rank=r, world_size=world)) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 == len({len(BatchIndexSampler(n, bs, True, rank=r, world_size=world))
                                                     for r in range(world)})
    assert all(len(b) > 0 for p in parts for b in p)
    assert torch.equal(torch.sort(torch.cat([b for p in parts for b in p])).values, torch.arange(n))


def test_sampler_refuses_a_state_from_other_data():
    s = BatchIndexSampler(100, 10, shuffle=True)
    state = BatchIndexSampler(90, 10, shuffle=True).state_dict()
    with pytest.raises(RecsysError, match="cannot resume mid-epoch"):
        s.load_state_dict(state)

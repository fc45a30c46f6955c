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
        "max_epochs": 2, "default_root_dir": str(tmp_path / name),  # default progress bar: on
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    cfg["model"]["init_args"]["model"]["init_args"].update(
        {"embedding_dim": 8, "hidden_units": [32], "attention_units": [16]})
    # sharded tables on CPU train with FBGEMM's fused row-wise Adagrad; the one-process run uses
    # the same optimizer (TorchRec's in-backward RowWiseAdagrad on the unsharded tables)
    cfg["model"]["init_args"].update({"embedding_optimizer": "rowwise_adagrad", "embedding_lr": 0.05})
    cfg["data"]["init_args"]["dataset_options"] = {"n_rows": 4000, "n_users": 100, "history_len": 32, "seed": 0}
    cfg["data"]["init_args"]["batch_size"] = 256
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


PROBE = """import atexit, os
atexit.register(lambda: os.write(2, f"[probe] exit hooks done in {os.getpid()}\\n".encode()))
class _Teardown:
    def __del__(self):
        os.write(2, f"[probe] interpreter teardown in {os.getpid()}\\n".encode())
_probe = _Teardown()
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    one = din_config(tmp, "one")
    assert main(["fit", "--config", str(one)]) == 0
    two = din_config(tmp, "two")
    # a probe in every rank: a line when the exit hooks are done (its hook is registered first, so
    # it runs last) and a line if the interpreter's teardown runs (see test_each_rank_ends_...)
    probe = tmp / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(probe), os.environ.get("PYTHONPATH")) if p))
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli", "fit", "--config", str(two),
         "--trainer.strategy", "recsys_ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
         "--verbose"],  # Lightning's own lines (backend, processes) are quiet without it
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp, one, two, proc.stdout + proc.stderr


@pytest.mark.slow
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


@pytest.mark.slow
def test_each_rank_ends_after_its_exit_hooks_without_the_interpreter_teardown(runs):
    """A rank that exits right after a collective can abort in the interpreter's teardown (gloo's
    worker thread frees the collective's tensors and asks for the GIL as finalization starts:
    "terminate called without an active exception", exit -6, after a finished run; seen in CI,
    and on this machine in 2 of 21 runs of this fixture's command under load). Every rank of a
    command-line run runs all its exit hooks and then ends without that teardown."""
    log = runs[3]
    assert len(set(re.findall(r"\[probe\] exit hooks done in (\d+)", log))) == 2, log[-3000:]  # both ranks
    assert "[probe] interpreter teardown" not in log, log[-3000:]


@pytest.mark.slow
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


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------------------
# The README's multi-process command as users run it: default progress bar, default callbacks of
# the config, Lightning's own launcher (2 processes, gloo on CPU). Small data via overrides only.
# Every run is a new session: a hung run is killed as a whole process group, never left behind.
import json
import re
import shlex
import signal
import socket
import time

READ_TIMEOUT = 420  # seconds for one run; a deadlock would otherwise hang the suite


def _recsys() -> list[str]:
    exe = Path(sys.executable).parent / "recsys"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "recsys.cli"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    for k in ("MASTER_PORT", "MASTER_ADDR", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(k, None)
    return env


def readme_ddp_command() -> list[str]:
    """The README's multi-process command, with the experiment paths made absolute."""
    text = (ROOT / "README.md").read_text()
    lines = [ln for ln in text.splitlines() if re.search(r"recsys fit .*--config experiments/sharded_ddp\.yaml\s*$", ln)]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0])
    assert argv[0].endswith("recsys") and argv[1] == "fit", argv
    return _recsys() + [str(ROOT / a) if a.startswith("experiments/") else a for a in argv[1:]]


class Run:
    """A `recsys` command in its own session (process group), output to a file."""

    def __init__(self, argv: list[str], cwd: Path, name: str):
        self.log = cwd / f"{name}.log"
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=_env(), stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> list[int]:
        """Pids of this run's process group that still run (not zombies or stopped)."""
        out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
        return [int(p) for p, g, st in (ln.split()[:3] for ln in out.splitlines() if len(ln.split()) >= 3)
                if int(g) == self.proc.pid and not st.startswith(("Z", "T"))]

    def kill_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = READ_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            self.proc.wait()
            pytest.fail(f"hung for {timeout} s (process group killed); log tail:\n{self.text()[-3000:]}")
        finally:
            self._out.close()
        return rc


def _fit(tmp: Path, name: str, overrides: list[str], configs: list[str] = ()) -> Run:
    argv = readme_ddp_command()
    if configs:  # another experiment with the same overlay: swap the first --config
        argv[argv.index("--config") + 1] = str(ROOT / configs[0])
    # the bar is on by default on a terminal; the test's output is a file, so ask for it as a terminal gets it
    return Run(argv + ["--trainer.enable_progress_bar", "true", "--trainer.logger.init_args.name", name, "--trainer.default_root_dir", str(tmp / "runs" / name),
                       "--trainer.logger.init_args.save_dir", str(tmp / "runs"), *overrides], tmp, name)


def _finished(run: Run, tmp: Path, name: str) -> dict:
    rc = run.wait()
    assert rc == 0, run.text()[-4000:]
    text = run.text()
    assert re.search(r"Epoch 0[:/]", text) and re.search(r"it/s|s/it", text)  # the bar was drawn (TQDM, or rich)
    metrics = run_metrics(tmp / "runs", name)
    assert metrics["world_size"] == 2
    return metrics


DEEPFM = ["--data.init_args.dataset_options", "{n_rows: 6000, seed: 0}", "--data.init_args.batch_size", "64",
          "--trainer.max_epochs", "3", "--model.init_args.model.init_args.hidden_units", "[32]",
          "--model.init_args.model.init_args.embedding_dim", "8"]


@pytest.fixture(scope="module")
def deepfm_run(tmp_path_factory):
    """The README command on DeepFM, run to the end."""
    tmp = tmp_path_factory.mktemp("readme_ddp")
    run = _fit(tmp, "deepfm", DEEPFM)
    return tmp, _finished(run, tmp, "deepfm")


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
def test_readme_command_finishes_with_progress_bar_and_scores_in_one_process(deepfm_run, tmp_path):
    tmp, m = deepfm_run
    ckpt = Path(m["best_checkpoint"])
    assert ckpt.is_dir() and (ckpt / META_FILE).is_file()  # a sharded (DCP) checkpoint
    assert 0.5 < m["test"]["auc"] < 1 and m["epochs_trained"] >= 1
    # one process: report (AUC of the checkpoint on the test split) == the test AUC of the run
    report_dir = tmp_path / "report"
    assert main(["report", "--ckpt", str(ckpt), "--out", str(report_dir), "--bootstrap", "10"]) == 0
    report = json.loads((report_dir / "metrics.json").read_text())
    assert report["models"][0]["metrics"]["auc"]["value"] == pytest.approx(m["test"]["auc"], abs=1e-6)
    # one process: predict scores the test split; their AUC against the labels is the run's
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--config", str(ROOT / "experiments/deepfm_synthetic.yaml"), *DEEPFM, "--ckpt_path", str(ckpt),
                 "--predict_out", str(out), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]) == 0
    dm = load_datamodule(ckpt)
    dm.setup("test")
    labels = torch.cat([b.labels for b in dm.test_dataloader()])
    scores = torch.tensor(pl.read_parquet(out)["score"].to_numpy())
    from torchmetrics.functional.classification import binary_auroc

    assert len(scores) == len(labels)
    assert float(binary_auroc(scores, labels.long())) == pytest.approx(m["test"]["auc"], abs=1e-6)


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
def test_sdim_short_history_readme_command(tmp_path):
    run = _fit(tmp_path, "sdim", [
        "--data.init_args.dataset_options", "{n_rows: 3000, n_users: 50, history_len: 32, seed: 0}",
        "--data.init_args.batch_size", "128", "--trainer.max_epochs", "2",
        "--model.init_args.model.init_args.short_len", "8", "--model.init_args.model.init_args.hidden_units", "[32]",
        "--model.init_args.model.init_args.attention_units", "[16]"], configs=["experiments/sdim_synthetic.yaml"])
    m = _finished(run, tmp_path, "sdim")
    ckpt = Path(m["best_checkpoint"])
    task = load_checkpoint(ckpt)  # one process
    dm = load_datamodule(ckpt)
    dm.setup("test")
    with torch.no_grad():
        s = torch.cat([torch.sigmoid(task(b).logits) for b in dm.test_dataloader()])
    y = torch.cat([b.labels for b in dm.test_dataloader()])
    from torchmetrics.functional.classification import binary_auroc

    assert float(binary_auroc(s, y.long())) == pytest.approx(m["test"]["auc"], abs=1e-6)


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
def test_two_tower_readme_command_and_retrieve_in_one_process(tmp_path):
    run = _fit(tmp_path, "two_tower", ["--trainer.max_epochs", "2"], configs=["experiments/two_tower_synthetic.yaml"])
    m = _finished(run, tmp_path, "two_tower")
    ckpt = Path(m["best_checkpoint"])
    assert ckpt.is_dir()
    out = tmp_path / "metrics.json"
    assert main(["retrieve", "--ckpt", str(ckpt), "--k", "50", "--method", "single", "--out",
                 str(tmp_path / "cand.parquet"), "--metrics", str(out)]) == 0
    got = json.loads(out.read_text())
    for k in ("recall@10", "recall@50", "ndcg@10", "ndcg@50"):
        assert got[k] == pytest.approx(m["test"][k], abs=1e-6), (k, got, m["test"])
    assert m["test"]["recall@50"] > 0.3  # it learned something (random: 50/500)


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
def test_early_stopping_fires_in_ddp(tmp_path):
    """Early stopping decides on rank-reduced values and stops every rank after epoch 0 (with
    the rich progress bar when `rich` is installed, else TQDM's)."""
    import importlib.util

    callbacks = [
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val/auc", "mode": "max", "save_top_k": 1, "filename": "best-{epoch}"}},
        {"class_path": "pytorch_lightning.callbacks.EarlyStopping",  # val/auc >= 0 always: stops after epoch 0
         "init_args": {"monitor": "val/auc", "mode": "max", "stopping_threshold": 0.0}}]
    if importlib.util.find_spec("rich") is not None:
        callbacks.append({"class_path": "pytorch_lightning.callbacks.RichProgressBar"})
    overlay = tmp_path / "stop.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    run = _fit(tmp_path, "early", ["--config", str(overlay), "--data.init_args.dataset_options", "{n_rows: 3000, seed: 0}",
                                   "--data.init_args.batch_size", "128", "--trainer.max_epochs", "5"])
    assert run.wait() == 0, run.text()[-4000:]
    m = run_metrics(tmp_path / "runs", "early")
    assert m["epochs_trained"] == 1 and m["world_size"] == 2


def _wait_for(path_glob: Path, run: Run, timeout: float = READ_TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if list(path_glob.parent.glob(path_glob.name)):
            return
        if run.proc.poll() is not None:
            pytest.fail(f"the run ended (exit {run.proc.returncode}) before {path_glob}:\n{run.text()[-3000:]}")
        time.sleep(0.1)
    run.kill_all()
    pytest.fail(f"no {path_glob} after {timeout} s")


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_to_launcher_stops_all_ranks_with_a_resumable_checkpoint(deepfm_run, tmp_path, signum):
    _, full = deepfm_run
    name = f"stopped_{signum.name}"
    run = _fit(tmp_path, name, DEEPFM)
    _wait_for(tmp_path / "runs" / name / "version_0" / "checkpoints" / "best-epoch=0.ckpt", run)
    t0 = time.monotonic()
    run.proc.send_signal(signum)  # to the launching process only
    rc = run.wait(timeout=60)
    while run.alive() and time.monotonic() - t0 < 30:
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    assert not run.alive(), "a rank outlived the launcher"
    assert elapsed < 30, elapsed
    assert rc == 128 + signum, run.text()[-3000:]
    # one line (the bar redraws with carriage returns, so the message may follow bar text)
    lines = re.findall(r"recsys: stopped by [^\r\n]*", run.text())
    assert len(lines) == 1 and "--ckpt_path last" in lines[0], run.text()[-2000:]
    assert "Traceback" not in run.text()
    last = tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / META_FILE).is_file()
    assert not (tmp_path / "runs" / name / "version_0" / "metrics.json").exists()
    if signum != signal.SIGTERM:
        return
    # resumed on 2 processes: ends with the metrics of the uninterrupted run (same seed)
    resumed = _fit(tmp_path, name, [*DEEPFM, "--ckpt_path", "last"])
    assert resumed.wait() == 0, resumed.text()[-4000:]
    m = run_metrics(tmp_path / "runs", name)
    assert m["epochs_trained"] == full["epochs_trained"]
    for split in ("valid", "test"):
        for key in ("auc", "logloss"):
            assert m[split][key] == pytest.approx(full[split][key], abs=1e-6), (split, key, m[split], full[split])


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
def test_killed_rank_ends_the_others(tmp_path):
    run = _fit(tmp_path, "k9", [*DEEPFM, "--trainer.max_epochs", "20"])
    _wait_for(tmp_path / "runs" / "k9" / "version_0" / "checkpoints" / "best-epoch=0.ckpt", run)
    children = [int(p) for p in subprocess.run(["ps", "--ppid", str(run.proc.pid), "-o", "pid="],
                                               capture_output=True, text=True).stdout.split()]
    assert len(children) == 1
    t0 = time.monotonic()
    os.kill(children[0], signal.SIGKILL)  # rank 1 dies
    rc = run.wait(timeout=60)
    elapsed = time.monotonic() - t0
    assert rc != 0 and elapsed < 30, (rc, elapsed)
    assert not run.alive()


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
def test_hung_rank_ends_the_others_after_the_timeout(tmp_path):
    """A rank that is alive but stuck (SIGSTOP) holds the others in a collective until
    ``timeout_s``; then they fail with one line and the launcher ends its children."""
    run = _fit(tmp_path, "hung", [*DEEPFM, "--trainer.max_epochs", "20", "--trainer.strategy.init_args.timeout_s", "45"])
    _wait_for(tmp_path / "runs" / "hung" / "version_0" / "checkpoints" / "best-epoch=0.ckpt", run)
    children = [int(p) for p in subprocess.run(["ps", "--ppid", str(run.proc.pid), "-o", "pid="],
                                               capture_output=True, text=True).stdout.split()]
    t0 = time.monotonic()
    os.kill(children[0], signal.SIGSTOP)
    try:
        rc = run.wait(timeout=120)
        elapsed = time.monotonic() - t0
        assert rc == 1 and 40 < elapsed < 100, (rc, elapsed)
        lines = re.findall(r"recsys: error: rank 0: a collective[^\r\n]*", run.text())
        assert len(lines) == 1, run.text()[-3000:]
        time.sleep(1)
        assert not [p for p in run.alive() if p != children[0]]
    finally:
        run.kill_all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # several processes, end to end (run by `make test` and CI)
def test_torchrun_two_nodes_on_localhost_match_the_lightning_launched_run(deepfm_run, tmp_path):
    _, launched = deepfm_run
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.is_file():
        pytest.skip("torchrun not installed beside this python")
    port = _free_port()
    argv = readme_ddp_command()[len(_recsys()):]  # fit --config ... --config ...
    cmd = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "recsys-test", "-m", "recsys.cli", *argv,
           "--trainer.devices", "1", "--trainer.num_nodes", "2", "--trainer.enable_progress_bar", "true",
           "--trainer.logger.init_args.name", "torchrun", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
           "--trainer.default_root_dir", str(tmp_path / "runs" / "torchrun"), *DEEPFM]
    nodes = [Run(cmd, tmp_path, f"node{i}") for i in range(2)]
    try:
        rcs = [n.wait() for n in nodes]
    finally:
        for n in nodes:
            n.kill_all()
    assert rcs == [0, 0], "\n".join(n.text()[-2000:] for n in nodes)
    m = run_metrics(tmp_path / "runs", "torchrun")
    assert m["world_size"] == 2 and m["epochs_trained"] == launched["epochs_trained"]
    for split in ("valid", "test"):
        for key in ("auc", "logloss"):
            assert m[split][key] == pytest.approx(launched[split][key], abs=1e-4), (split, key, m[split], launched[split])


def test_gloo_process_group_is_destroyed_at_exit(tmp_path):
    """Lightning destroys only NCCL groups at exit; a gloo group left to interpreter teardown can
    abort a finished run (exit -6, "terminate called without an active exception"). The
    strategy's atexit hook destroys it first: a hook registered before it (so run after it) sees
    no group any more."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import atexit\n"
        "import torch.distributed as dist\n"
        "atexit.register(lambda: print('initialized at exit:', dist.is_initialized(), flush=True))\n"
        "import pytorch_lightning as L\n"
        "from recsys.tasks.distributed import ShardedDDPStrategy\n"
        "trainer = L.Trainer(strategy=ShardedDDPStrategy(), devices=1, accelerator='cpu', logger=False,\n"
        "                    enable_progress_bar=False)\n"
        "trainer.strategy.setup_environment()\n"
        "print('backend:', dist.get_backend(), flush=True)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("MASTER_PORT", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend: gloo" in proc.stdout
    assert "initialized at exit: False" in proc.stdout, proc.stdout

"""What `recsys` prints (issue 17 items 10-12), checked by running the command in a subprocess.

* one flag style: ``--a-b`` and ``--a_b`` on every subcommand; help texts render;
  ``recsys --help`` lists the subcommands without importing torch;
* quiet output: a fit prints the metrics line, not Lightning's tips / availability lines /
  deprecations; ``--verbose`` brings Lightning's lines back;
* progress bars on a terminal by default, none in logs (stderr not a TTY).

Commands that should show a progress bar run with stderr on a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXTRA = ("rank-features", "report", "search-dims", "tune", "retrieve")
# the noise of a plain fit before issue 17 item 10, one pattern per source
NOISE = {
    "litlogger tip": r"Tip: For seamless cloud logging",
    "pytree deprecation": r"LeafSpec\)` is deprecated",
    "fx tracing warning": r"is_fx_tracing will return",
    "checkpoint restores": r"Restoring states from the checkpoint|Loaded model weights",
    "accelerator lines": r"GPU available|TPU available",
    "seed line": r"Seed set to",
    "two ModelCheckpoints": r"multiple `ModelCheckpoint`",
    "log files deleted": r"Previous log files in this directory will be deleted",
    "checkpoint dir not empty": r"Checkpoint directory .* exists and is not empty",
}


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RECSYS_PROGRESS")}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra})
    return env


def recsys(*args: str, cwd: Path | None = None, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=_env(**env), timeout=timeout)


def recsys_tty(*args: str, cwd: Path | None = None, timeout: float = 300, both: bool = False) -> tuple[int, str, str]:
    """Run with stderr (``both``: and stdout) on a pseudo-terminal, as in a shell; returns (exit code,
    stdout, terminal text)."""
    master, slave = pty.openpty()
    # a terminal 120 columns wide (a fresh pty is 0 x 0, and tqdm draws nothing in 0 columns)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the slave side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "recsys.cli", *args], stdout=slave if both else subprocess.PIPE,
                              stderr=slave, text=True, cwd=cwd or ROOT, env=_env(), timeout=timeout)
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    return proc.returncode, proc.stdout or "", b"".join(chunks).decode(errors="replace")


def _tiny_config(tmp_path: Path, name: str = "tiny", epochs: int = 1) -> Path:
    cfg = yaml.safe_load((ROOT / "experiments" / "deepfm_synthetic.yaml").read_text())
    cfg["trainer"].update({"max_epochs": epochs, "default_root_dir": str(tmp_path / name),
                           "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(tmp_path), "name": name}}})
    cfg["trainer"].pop("enable_progress_bar", None)  # the default: decided by the terminal
    cfg["model"]["init_args"]["model"]["init_args"].update({"embedding_dim": 4, "hidden_units": [8]})
    cfg["data"]["init_args"].update({"dataset_options": {"n_rows": 3000, "seed": 0}, "batch_size": 256})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _noise(text: str) -> list[str]:
    return [what for what, pattern in NOISE.items() if re.search(pattern, text)]


# ------------------------------------------------------------------------ item 12: flags and help
def test_top_level_help_lists_every_command_without_importing_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "recsys.cli", "--help"], capture_output=True,
                          text=True, cwd=ROOT, env=_env(), timeout=60)
    assert proc.returncode == 0
    for name in ("fit", "validate", "test", "predict", *EXTRA):
        assert re.search(rf"^  {re.escape(name)} ", proc.stdout, re.M), name
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "pytorch_lightning" not in imported


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow) if c in ("report", "retrieve") else c
                                     for c in EXTRA])  # those two import torch (~5 s)
def test_every_subcommand_help_renders(command):
    proc = recsys(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: recsys {command}")
    assert "%%" not in proc.stdout and "%(" not in proc.stdout


@pytest.mark.parametrize("command, args, expect", [
    # each option given in the spelling it is NOT declared with; a bad value shows it was recognized
    ("tune", ["--config", "c.yaml", "--space", "s.yaml", "--n_trials", "many"], "argument --n-trials: invalid int"),
    ("tune", ["--config", "c.yaml", "--space", "s.yaml", "--study_name"], "argument --study-name: expected one"),
    ("rank-features", ["--data", "d.parquet", "--out", "o", "--n_bins", "x"], "argument --n-bins: invalid int"),
    pytest.param("report", ["--ckpt", "a.ckpt", "--out", "o", "--batch_size", "x"], "argument --batch-size: invalid int",
                 marks=pytest.mark.slow),
    ("search-dims", ["--config", "c.yaml", "--out", "o", "--warm-start-epochs", "x"],
     "argument --warm_start_epochs: invalid int"),
    pytest.param("retrieve", ["--ckpt", "absent.ckpt", "--out", "o.parquet", "--no_restrict"], "absent.ckpt",
                 marks=pytest.mark.slow),  # imports torch: ~5 s
])
def test_both_flag_spellings_are_accepted(command, args, expect, tmp_path):
    proc = recsys(command, *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unrecognized arguments" not in proc.stderr
    assert expect in proc.stderr, proc.stderr


@pytest.mark.slow
def test_trainer_commands_accept_dashed_options(tmp_path):
    proc = recsys("fit", "--config", str(ROOT / "experiments" / "deepfm_synthetic.yaml"), "--save-every-n-steps", "7",
                  "--test-after-fit=false", "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["save_every_n_steps"] == 7 and cfg["test_after_fit"] is False


# ------------------------------------------------------------------------------ item 10: quiet fit
@pytest.mark.slow
def test_fit_prints_no_library_noise_and_verbose_brings_it_back(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=2)
    proc = recsys("fit", "--config", str(cfg), "--save_every_n_steps", "5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert _noise(out) == [], out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("recsys: valid auc "), out
    # resume in the same run directory: one line saying so, then the metrics line
    proc = recsys("fit", "--config", str(cfg), "--ckpt_path", "last", "--trainer.max_epochs", "3",
                  "--save_every_n_steps", "5", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert _noise(out) == [], out
    assert [ln.split(" ", 2)[1] for ln in out.splitlines() if ln.strip()] == ["resuming", "valid"], out
    proc = recsys("fit", "--config", str(cfg), "--verbose", "--trainer.max_epochs", "1", cwd=tmp_path)
    assert proc.returncode == 0
    assert "GPU available" in proc.stdout + proc.stderr and "Restoring states" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_make_demo_shows_the_progress_bar_and_ends_with_the_metrics(tmp_path):
    """The Makefile's demo command as written (recsys from this checkout), on a terminal."""
    make = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n\t(.+)$", make, re.M).group(1)
    args = recipe.split()
    assert args[0] == "$(BIN)/recsys", recipe
    config = args[args.index("--config") + 1]
    assert "enable_progress_bar" not in recipe
    cfg = yaml.safe_load((ROOT / config).read_text())
    assert "enable_progress_bar" not in cfg["trainer"]
    (tmp_path / "experiments").mkdir()
    (tmp_path / config).write_text((ROOT / config).read_text())
    rc, _, tty = recsys_tty(*args[1:], cwd=tmp_path, timeout=900, both=True)
    assert rc == 0, tty[-3000:]
    assert _noise(tty) == [], tty[-3000:]
    assert re.search(r"Epoch 0: .*it/s", tty), tty[-2000:]  # Lightning's bar, on the terminal
    # after the bar's last redraw (carriage returns), only recsys's own lines
    final = [ln.rstrip("\r").rsplit("\r", 1)[-1].strip() for ln in tty.split("\n")]
    final = [ln for ln in final if ln]
    assert final[-2].startswith("recsys: valid auc ") and final[-1].startswith("recsys: report written to"), final[-5:]
    assert not any(ln.startswith("recsys: warning") for ln in final), final  # built-in data: nothing to fix


# ------------------------------------------------------------------ item 11: progress bars by default
def _ranking_data(tmp_path: Path) -> Path:
    rows = 4000
    df = pl.DataFrame({"a": [i % 7 for i in range(rows)], "b": [i % 13 for i in range(rows)],
                       "c": [(i * 7919) % 101 for i in range(rows)], "label": [int(i % 7 < 3) for i in range(rows)]})
    path = tmp_path / "d.parquet"
    df.write_parquet(path)
    return path


@pytest.mark.slow
def test_rank_features_bar_on_a_terminal_and_none_in_logs(tmp_path):
    data = _ranking_data(tmp_path)
    rc, stdout, tty = recsys_tty("rank-features", "--data", str(data), "--out", str(tmp_path / "r1"))
    assert rc == 0, tty
    assert re.search(r"counting.*rows/s", tty), tty
    assert re.search(r"pair scores.*pairs/s", tty), tty  # the pair stage counts pairs, not rows
    proc = recsys("rank-features", "--data", str(data), "--out", str(tmp_path / "r2"))  # stderr is a pipe: a log
    assert proc.returncode == 0, proc.stderr
    assert "it/s" not in proc.stderr and "rows/s" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("recsys: ranked 3 features")


@pytest.fixture(scope="module")
def ranking_ckpt(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    proc = recsys("fit", "--config", str(_tiny_config(tmp)), "--test_after_fit", "false", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(tmp.glob("tiny/version_0/checkpoints/best-*.ckpt"))


@pytest.mark.slow
def test_report_shows_progress_on_a_terminal_only(ranking_ckpt, tmp_path):
    rc, stdout, tty = recsys_tty("report", "--ckpt", str(ranking_ckpt), "--out", str(tmp_path / "a"),
                                 "--bootstrap", "20")
    assert rc == 0, tty[-3000:]
    assert re.search(r"scoring A.*batch", tty) and "bootstrap (20 resamples)" in tty, tty[-3000:]
    proc = recsys("report", "--ckpt", str(ranking_ckpt), "--out", str(tmp_path / "b"), "--bootstrap", "20")
    assert proc.returncode == 0 and "scoring A" not in proc.stderr, proc.stderr[-3000:]
    assert _noise(proc.stdout + proc.stderr) == []


@pytest.mark.slow
def test_search_dims_shows_progress_on_a_terminal(tmp_path):
    cfg = _tiny_config(tmp_path, "dims")
    rc, stdout, tty = recsys_tty("search-dims", "--config", str(cfg), "--out", str(tmp_path / "d"),
                                 "--warm_start_epochs", "0", "--search_epochs", "1", cwd=tmp_path, both=True)
    assert rc == 0, tty[-3000:]
    assert re.search(r"Epoch 0: .*it/s", tty), tty[-3000:]
    assert _noise(stdout + tty) == [], (stdout + tty)[-3000:]


@pytest.mark.slow
def test_retrieve_shows_progress_on_a_terminal_without_a_flag(tmp_path):
    cfg = yaml.safe_load((ROOT / "experiments" / "two_tower_synthetic.yaml").read_text())
    cfg["trainer"].update({"max_epochs": 1, "default_root_dir": str(tmp_path / "tt"),
                           "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(tmp_path), "name": "tt"}}})
    path = tmp_path / "tt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = recsys("fit", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _noise(proc.stdout + proc.stderr) == [], proc.stdout + proc.stderr
    ckpt = next(tmp_path.glob("tt/version_0/checkpoints/best-*.ckpt"))
    rc, stdout, tty = recsys_tty("retrieve", "--ckpt", str(ckpt), "--k", "20", "--method", "knn-embed",
                                 "--clusters", "4", "--out", str(tmp_path / "c.parquet"), cwd=tmp_path)
    assert rc == 0, tty[-3000:]
    assert re.search(r"embedding test queries.*it", tty), tty[-3000:]
    proc = recsys("retrieve", "--ckpt", str(ckpt), "--k", "20", "--out", str(tmp_path / "d.parquet"), cwd=tmp_path)
    assert proc.returncode == 0 and "queries" not in proc.stderr, proc.stderr[-3000:]
    assert _noise(proc.stdout + proc.stderr) == [], proc.stdout + proc.stderr

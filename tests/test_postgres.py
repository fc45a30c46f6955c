"""`recsys tune` on a real PostgreSQL server (the session's throw-away cluster, tests/pgserver.py).

Every test here is marked ``postgres`` (``pytest -k postgres`` selects them). Trials are real
`recsys fit` runs of a small DeepFM on 3,000 synthetic rows for 1-3 epochs. "Hosts" are separate
`recsys tune` processes with their own --study-dir and their own RECSYS_TUNE_HOST name, sharing
one --storage URL and --study-name, as machines would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from recsys.cli import main

from conftest import small_synthetic_config

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

SPACE = {
    "objective": {"metric": "val/auc", "direction": "maximize"},
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
    "pruner": {"name": "none"},
    "params": {
        "model.init_args.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
        "model.init_args.model.init_args.hidden_units": {"type": "categorical", "choices": [[16], [32, 16]]},
    },
}


def _setup(tmp: Path, epochs: int) -> tuple[Path, Path]:
    cfg = small_synthetic_config(tmp, "deepfm", {"embedding_dim": 4, "hidden_units": [16]},
                                 {"n_rows": 3000, "seed": 0}, epochs=epochs, lr=0.003, batch_size=256)
    sp = tmp / "space.yaml"
    sp.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    return cfg, sp


def _tune(cfg: Path, sp: Path, study_dir: Path, name: str, *extra: str) -> list[str]:
    return ["tune", "--config", str(cfg), "--space", str(sp), "--study-dir", str(study_dir), "--study-name", name,
            *extra]


def _host(tmp: Path, host: str, args: list[str]) -> subprocess.Popen:
    """`recsys tune ARGS` as a separate process standing for machine ``host``; output in tmp/<host>.log."""
    log = open(tmp / f"{host}.log", "a")
    return subprocess.Popen([sys.executable, "-m", "recsys.cli", *args], cwd=ROOT,
                            env={**ENV, "RECSYS_TUNE_HOST": host}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait(procs: list[subprocess.Popen], tmp: Path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    logs = "\n".join(f.read_text()[-3000:] for f in tmp.glob("*.log"))
    assert all(p.returncode in (0, -signal.SIGKILL) for p in procs), logs


def _load(url: str, name: str):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url.replace("postgresql://", "postgresql+psycopg://"))


# ----------------------------------------------------------------------------- two hosts, one study
@pytest.mark.slow
def test_postgres_two_hosts_reach_n_trials_together(postgres_server, tmp_path):
    cfg, sp = _setup(tmp_path, epochs=2)
    url = postgres_server.url
    # the same command on both hosts, started at the same moment: the study is topped up once
    procs = [_host(tmp_path, h, _tune(cfg, sp, tmp_path / h, "two_hosts", "--storage", url, "--n-trials", "6",
                                      "--workers", "1", "--no-export")) for h in ("host-a", "host-b")]
    _wait(procs, tmp_path)
    assert [p.returncode for p in procs] == [0, 0]
    trials = _load(url, "two_hosts").get_trials()
    assert sorted(t.number for t in trials) == list(range(6))  # every trial number once, none lost
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6  # no trial ran twice
    hosts = [t.system_attrs["recsys:owner"]["host"] for t in trials]
    assert set(hosts) == {"host-a", "host-b"}, hosts  # both did trials
    for t in trials:  # each in its own host's study dir
        assert Path(t.user_attrs["run_dir"]).parent.parent.name == t.system_attrs["recsys:owner"]["host"]
        assert (Path(t.user_attrs["config"])).is_file()
    out = (tmp_path / "host-a.log").read_text() + (tmp_path / "host-b.log").read_text()
    assert sorted(int(n) for n in re.findall(r"(\d+) trial\(s\) added", out)) == [0, 6]
    assert postgres_server.password not in out
    assert "optuna-dashboard postgresql+psycopg://tuner:***@127.0.0.1" in out


@pytest.mark.slow
def test_postgres_sigkilled_host_trial_is_failed_by_heartbeat_and_retried(postgres_server, tmp_path):
    cfg, sp = _setup(tmp_path, epochs=2)
    url, name, n = postgres_server.url, "killed_host", 4
    args = {h: _tune(cfg, sp, tmp_path / h, name, "--storage", url, "--n-trials", str(n), "--heartbeat", "1",
                     "--grace", "3", "--no-export") for h in ("host-a", "host-b")}
    a = _host(tmp_path, "host-a", args["host-a"])
    b = _host(tmp_path, "host-b", args["host-b"])
    killed, killed_at = None, 0.0
    try:
        deadline = time.time() + 420
        while time.time() < deadline and a.poll() is None:  # kill host-a in the middle of one of its trials
            time.sleep(0.3)
            try:
                trials = _load(url, name).get_trials()
            except Exception:  # noqa: BLE001 - the study is being created
                continue
            mine = [t for t in trials if t.state == TrialState.RUNNING and t.params
                    and t.system_attrs.get("recsys:owner", {}).get("host") == "host-a"]
            if mine:
                killed = mine[0].number
                os.killpg(a.pid, signal.SIGKILL)
                killed_at = time.time()
                break
    finally:
        if a.poll() is None and killed is None:
            os.killpg(a.pid, signal.SIGKILL)
    _wait([a, b], tmp_path)
    assert killed is not None, (tmp_path / "host-a.log").read_text()[-3000:]
    assert a.returncode == -signal.SIGKILL and b.returncode == 0
    # host-b saw the trial's heartbeat stop (host-a's pid means nothing on host-b) and requeued it;
    # whatever host-b had not finished, the documented resume (the same command again) does
    time.sleep(max(0.0, killed_at + 4 - time.time()))
    rerun = _tune(cfg, sp, tmp_path / "host-b", name, "--storage", url, "--n-trials", str(n), "--heartbeat", "1",
                  "--grace", "3")
    assert subprocess.run([sys.executable, "-m", "recsys.cli", *rerun], cwd=ROOT, env={**ENV, "RECSYS_TUNE_HOST":
                          "host-b"}, capture_output=True, text=True, timeout=600).returncode == 0
    trials = _load(url, name).get_trials()
    dead = [t for t in trials if t.number == killed][0]
    assert dead.state == TrialState.FAIL and "error" not in dead.user_attrs  # failed by the heartbeat, not a crash
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert retries[0].system_attrs["recsys:owner"]["host"] == "host-b"
    counted = [t for t in trials if t.number != killed]
    assert len(counted) == n and all(t.state == TrialState.COMPLETE for t in counted)
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    rows = list(csv.DictReader(open(tmp_path / "host-b" / "trials.csv")))
    assert [r["retry_of"] for r in rows if r["number"] == str(retries[0].number)] == [str(killed)]
    assert [r["state"] for r in rows if r["number"] == str(killed)] == ["FAIL"]


# ----------------------------------------------------------------------------- SQLite -> PostgreSQL
@pytest.fixture(scope="module")
def sqlite_study(tmp_path_factory):
    """A 3-trial study on SQLite (1 epoch each), run in-process as `recsys tune` with its defaults."""
    tmp = tmp_path_factory.mktemp("sqlite_study")
    cfg, sp = _setup(tmp, epochs=1)
    study_dir = tmp / "sqlite"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(_tune(cfg, sp, study_dir, "moved", "--n-trials", "3")) == 0
    return tmp, cfg, sp, study_dir, out.getvalue()


@pytest.fixture(scope="module")
def moved_study(sqlite_study, postgres_server):
    """The SQLite study copied to PostgreSQL with optuna.copy_study, then resumed there up to 5 trials."""
    tmp, cfg, sp, study_dir, _ = sqlite_study
    src = f"sqlite:///{study_dir / 'study.db'}"
    dst = postgres_server.url.replace("postgresql://", "postgresql+psycopg://")
    optuna.copy_study(from_study_name="moved", from_storage=src, to_storage=dst)
    out = tmp / "resume.out"
    r = subprocess.run([sys.executable, "-m", "recsys.cli", *_tune(cfg, sp, tmp / "pg", "moved", "--storage",
                        postgres_server.url, "--n-trials", "5")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)
    out.write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]
    return src, r.stdout


@pytest.mark.slow
def test_postgres_resumes_a_study_copied_from_sqlite(sqlite_study, moved_study, postgres_server):
    src, out = moved_study
    before = _load(src, "moved").get_trials()
    after = _load(postgres_server.url, "moved").get_trials()
    assert "2 trial(s) added" in out
    assert [t.number for t in after] == list(range(5)) and all(t.state == TrialState.COMPLETE for t in after)
    for old, new in zip(before, after):  # the copied trials are there as they were, not rerun
        assert (new.params, new.value, new.datetime_complete) == (old.params, old.value, old.datetime_complete)
    assert all(Path(t.user_attrs["run_dir"]).parts[-3] == "pg" for t in after[3:])  # the new ones ran here
    rows = list(csv.DictReader(open(sqlite_study[0] / "pg" / "trials.csv")))
    assert len(rows) == 5 and (sqlite_study[0] / "pg" / "best_config.yaml").is_file()


# ----------------------------------------------------------------------------- optuna-dashboard
def _dashboard(url: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    from pgserver import free_port

    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which("optuna-dashboard")
    assert exe, "optuna-dashboard is not installed (pip install 'recsys[dashboard]')"
    port = free_port()
    log = open(tmp / f"dashboard-{port}.log", "w")
    p = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "/api/meta", timeout=2).read()
            return p, base
        except OSError:
            if p.poll() is not None:
                break
            time.sleep(0.3)
    os.killpg(p.pid, signal.SIGKILL)
    raise AssertionError(f"optuna-dashboard did not start: {(tmp / f'dashboard-{port}.log').read_text()[-2000:]}")


def _get(base: str, path: str) -> dict:
    return json.loads(urllib.request.urlopen(base + path, timeout=30).read())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["sqlite", "postgresql"])
def test_postgres_and_sqlite_studies_in_optuna_dashboard(where, sqlite_study, moved_study, postgres_server):
    tmp, cfg, sp, study_dir, sqlite_out = sqlite_study
    # the command `recsys tune` printed, run as printed (with the password put back in)
    out = moved_study[1] if where == "postgresql" else sqlite_out
    url = re.search(r"watch it with: optuna-dashboard (\S+)", out).group(1)
    assert ("***" in url) == (where == "postgresql")
    url = url.replace("***", postgres_server.password)
    study = _load(url, "moved")
    p, base = _dashboard(url, tmp)
    try:
        summaries = _get(base, "/api/studies")["study_summaries"]
        (summary,) = [s for s in summaries if s["study_name"] == "moved"]
        detail = _get(base, f"/api/studies/{summary['study_id']}")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert study_attrs["recsys:config"] == str(cfg) and study_attrs["recsys:metric"] == "val/auc"
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [t.number for t in study.get_trials()]
    assert len(trials) == (5 if where == "postgresql" else 3)
    for shown, real in zip(trials, study.get_trials()):
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        assert attrs["run_dir"] == real.user_attrs["run_dir"]
        assert attrs["config"] == real.user_attrs["config"] and attrs["config"].endswith("trial.yaml")
        assert float(attrs["valid_auc"]) == pytest.approx(real.user_attrs["valid_auc"])
        assert "test_auc" in attrs and "epochs" in attrs
        assert shown["state"].lower() == "complete" and shown["values"][0] == pytest.approx(real.value)


# ----------------------------------------------------------------------------- a storage that cannot open
@pytest.mark.parametrize("case", ["wrong password", "unreachable host", "closed port", "missing driver"])
def test_postgres_bad_storage_is_one_line_naming_the_url_and_fix(case, postgres_server, tmp_path, capsys,
                                                                  monkeypatch):
    from pgserver import free_port

    cfg, sp = _setup(tmp_path, epochs=1)
    s = postgres_server
    url, fix = {
        "wrong password": (s.url_with(password="not-the-password"), "check the user name and password"),
        "unreachable host": (s.url_with(host="db-host.invalid"), "check the URL's host and port"),
        "closed port": (s.url_with(port=free_port()), "check the URL's host and port"),
        "missing driver": (s.url, "pip install 'recsys[postgres]'"),
    }[case]
    if case == "missing driver":  # neither psycopg nor psycopg2 importable
        for mod in ("psycopg", "psycopg2"):
            monkeypatch.setitem(sys.modules, mod, None)
    study_dir = tmp_path / "st"
    t0 = time.time()
    assert main(_tune(cfg, sp, study_dir, "bad", "--storage", url, "--n-trials", "2")) == 2
    assert time.time() - t0 < 30
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    masked = url.replace(url.split(":")[2].split("@")[0], "***")
    assert f"--storage {masked}" in err and "Fix: " + fix in err, err
    assert "not-the-password" not in err and s.password not in err
    assert not study_dir.exists()  # nothing written
    monkeypatch.undo()
    assert "bad" not in optuna.get_all_study_names(s.url.replace("postgresql://", "postgresql+psycopg://"))

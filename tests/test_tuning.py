"""`recsys tune`: real (tiny) studies on synthetic data: pruning, exports, workers, resume, failures.

Every trial is a real `recsys fit` of a small DeepFM on 3,000 synthetic rows for <= 3 epochs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from recsys.cli import main
from recsys.errors import ConfigError
from recsys.tuning.space import load_space

from conftest import small_synthetic_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

SPACE = {
    "objective": {"metric": "val/auc", "direction": "maximize"},
    "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
    "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    "params": {
        # the low end (1e-6) learns nothing in 3 epochs: such trials fall below the median and are pruned
        "model.init_args.lr": {"type": "float", "low": 1.0e-6, "high": 3.0e-2, "log": True},
        "model.init_args.model.init_args.hidden_units": {"type": "categorical", "choices": [[16], [32, 16]]},
        "model.init_args.model.init_args.dropout": {
            "type": "float", "low": 0.0, "high": 0.3,
            "when": {"model.init_args.model.init_args.hidden_units": [[32, 16]]}},
    },
}


def _setup(tmp_path: Path, space: dict | None = None, epochs: int = 3, name: str = "study") -> tuple[Path, Path]:
    cfg = small_synthetic_config(tmp_path, "deepfm", {"embedding_dim": 4, "hidden_units": [16]},
                                 {"n_rows": 3000, "seed": 0}, epochs=epochs, lr=0.003, batch_size=256)
    sp = tmp_path / f"{name}_space.yaml"
    sp.write_text(yaml.safe_dump(space or SPACE, sort_keys=False))
    return cfg, sp


def _study(study_dir: Path, name: str):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def _tune(cfg: Path, sp: Path, study_dir: Path, *extra: str) -> list[str]:
    return ["tune", "--config", str(cfg), "--space", str(sp), "--study-dir", str(study_dir),
            "--study-name", "s", *extra]


# ----------------------------------------------------------------------------- space validation
@pytest.mark.parametrize("params, where, fix", [
    ({"model.init_args.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "params.model.init_args.lr", "swap"),
    ({"model.init_args.lr": {"type": "float", "low": 0, "high": 0.01, "log": True}}, "params.model.init_args.lr",
     "raise low"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1}}, "params.lr", "start it with"),
    ({"model.init_args.lr": {"type": "uniform", "low": 0.1, "high": 1}}, "params.model.init_args.lr", "type: float"),
    ({"model.init_args.lr": {"type": "categorical", "choices": []}}, "params.model.init_args.lr", "choices"),
    ({"model.init_args.lr": {"type": "float", "low": "abc", "high": 1}}, "params.model.init_args.lr", "number"),
    ({"model.init_args.model.init_args.dropout": {"type": "float", "low": 0, "high": 0.3,
                                                  "when": {"model.init_args.x": 1}}},
     "params.model.init_args.model.init_args.dropout", "condition on a key listed in params"),
    ({"model.a": {"type": "categorical", "choices": [1, 2], "when": {"model.b": 1}},
      "model.b": {"type": "categorical", "choices": [1, 2], "when": {"model.a": 1}}}, "params.model.", "cycle"),
])
def test_bad_space_names_file_key_and_fix(tmp_path, params, where, fix):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"params": params}))
    with pytest.raises(ConfigError) as e:
        load_space(path)
    msg = str(e.value)
    assert str(path) in msg and where in msg and fix in msg, msg


def test_space_reads_yaml_exponents_and_conditions(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("params:\n  model.init_args.lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
                    "  a.b: {type: categorical, choices: [[1, 2], [3]]}\n"
                    "  model.c: {type: int, low: 1, high: 3, when: {a.b: [3]}}\n".replace("a.b", "data.init_args.x"))
    s = load_space(path)
    assert s.params[0].low == 1e-4 and s.params[0].log
    assert s.params[2].when == {"data.init_args.x": [[3]]}
    # a condition may name an entry listed after it: it is sampled after that entry
    path.write_text("params:\n  model.d: {type: float, low: 0, high: 1, when: {model.h: [[8, 8]]}}\n"
                    "  model.h: {type: categorical, choices: [[8], [8, 8]]}\n")
    assert [p.key for p in load_space(path).params] == ["model.h", "model.d"]
    assert load_space(ROOT / "experiments" / "spaces" / "deepfm_ml100k.yaml").features.keep == ["user_id", "item_id"]


def test_misspelled_key_is_rejected_before_any_trial(tmp_path, capsys):
    space = {"params": {"model.init_args.model.init_args.hiden_units": {"type": "categorical",
                                                                       "choices": [[16], [32]]}}}
    cfg, sp = _setup(tmp_path, space)
    assert main(_tune(cfg, sp, tmp_path / "st", "--n-trials", "2")) == 2
    err = capsys.readouterr().err
    assert f"{sp}: params.model.init_args.model.init_args.hiden_units" in err and "hiden_units" in err
    assert not (tmp_path / "st" / "trials").exists() or not any((tmp_path / "st" / "trials").iterdir())


# ----------------------------------------------------------------------------- a small real study
@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tune")
    space = dict(SPACE, features={"ranking": "auto", "top_n": {"low": 3, "high": 10}, "keep": ["user_id", "item_id"]})
    cfg, sp = _setup(tmp, space)
    study_dir = tmp / "study"
    assert main(_tune(cfg, sp, study_dir, "--n-trials", "6")) == 0
    return tmp, cfg, sp, study_dir


@pytest.mark.slow
def test_study_completes_prunes_and_exports(study_run):
    tmp, cfg, sp, study_dir = study_run
    study = _study(study_dir, "s")
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states, states  # at least one bad trial stopped early
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["epochs"] < 3 for t in pruned)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.user_attrs["epochs"] == 3 for t in complete)
    # the feature-subset search kept user_id/item_id plus the top n ranked fields
    ranked = (study_dir / "ranking.csv").read_text().splitlines()[1:]
    assert all("features.top_n" in t.params for t in trials)
    t0 = complete[0]
    ran = yaml.safe_load((Path(t0.user_attrs["run_dir"]) / "trial.yaml").read_text())
    fields = ran["data"]["init_args"]["fields"]
    assert fields[:2] == ["user_id", "item_id"] and len(fields) == 2 + t0.params["features.top_n"]
    assert len(ranked) >= len(fields)
    header = (study_dir / "ranking.csv").read_text().splitlines()[0].split(",")
    assert "redundant_with" in header  # ranking: auto is the default ranking, mi-redundancy
    names = [line.split(",")[header.index("feature")] for line in ranked]
    top = [n for n in names if n not in ("user_id", "item_id")][:t0.params["features.top_n"]]
    assert set(fields[2:]) == set(top)
    # each trial ran in its own directory
    assert len({t.user_attrs["run_dir"] for t in trials}) == 6
    # exports
    rows = (study_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 7 and rows[0].startswith("number,state,value,epochs")
    page = (study_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    for title in ("Optimization history", "Parameter importances", "Parallel coordinates"):
        assert title in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline


@pytest.mark.slow
def test_best_config_reruns_with_recsys_fit(study_run):
    tmp, cfg, sp, study_dir = study_run
    best = _study(study_dir, "s").best_trial
    best_cfg = study_dir / "best_config.yaml"
    assert best_cfg.is_file()
    assert main(["fit", "--config", str(best_cfg), "--trainer.logger.init_args.save_dir", str(tmp / "rerun"),
                 "--trainer.default_root_dir", str(tmp / "rerun")]) == 0
    metrics = json.loads(next((tmp / "rerun").rglob("metrics.json")).read_text())
    assert metrics["valid"]["auc"] == pytest.approx(best.value, abs=1e-4)  # same seed, same result


@pytest.mark.slow
def test_failing_trial_does_not_stop_the_study(tmp_path, capsys):
    bad_space = {"pruner": {"name": "none"},
                 "params": {"model.init_args.lr": {"type": "categorical", "choices": [0.003, float("inf")]},
                            "model.init_args.optimizer": {"type": "categorical", "choices": ["adam", "bogus"]}}}
    cfg, sp = _setup(tmp_path, bad_space, epochs=1)
    study_dir = tmp_path / "st"
    # a choice the config rejects is refused before the study exists (every choice is parsed first)
    assert main(_tune(cfg, sp, study_dir, "--n-trials", "4")) == 2
    err = capsys.readouterr().err
    assert "params.model.init_args.optimizer" in err and "'bogus'" in err and not study_dir.exists()
    space = {"pruner": {"name": "none"},
             "params": {"model.init_args.lr": {"type": "categorical", "choices": [0.003, float("inf")]}}}
    cfg, sp = _setup(tmp_path, space, epochs=1)
    study_dir.mkdir()
    # queue one NaN-loss trial (lr = inf) between two good ones
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize")
    for lr in (0.003, float("inf"), 0.003):
        study.enqueue_trial({"model.init_args.lr": lr})
    assert main(_tune(cfg, sp, study_dir, "--n-trials", "3")) == 0
    trials = _study(study_dir, "s").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "not finite" in trials[1].user_attrs["error"]
    assert "not finite" in (study_dir / "trials.csv").read_text()
    assert (study_dir / "best_config.yaml").is_file()


# ----------------------------------------------------------------------------- workers and resume
@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path, capsys):
    cfg, sp = _setup(tmp_path, epochs=2)
    study_dir = tmp_path / "st"
    r = subprocess.run([sys.executable, "-m", "recsys.cli", *_tune(cfg, sp, study_dir, "--n-trials", "4",
                                                                   "--workers", "2", "--no-export")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    trials = _study(study_dir, "s").get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert sorted(t.number for t in trials) == list(range(4))
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4  # no trial ran twice
    owners = [t.system_attrs["recsys:owner"]["pid"] for t in trials]
    assert len(set(owners)) == 2, owners  # both workers ran trials
    dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(dirs)) == 4 and all((Path(d) / "trial.yaml").is_file() for d in dirs)
    # rerunning with the same budget adds nothing
    assert main(_tune(cfg, sp, study_dir, "--n-trials", "4", "--no-export")) == 0
    assert "0 trial(s) added" in capsys.readouterr().out
    assert len(_study(study_dir, "s").get_trials()) == 4


@pytest.mark.slow
def _kill_while_a_later_trial_runs(args: list[str], study_dir: Path, log_path: Path) -> int | None:
    """Start `recsys tune`, SIGKILL its process group while trial >= 2 runs; the number killed.

    None when the whole study ended before a later trial was seen running (a fast machine).
    """
    log = open(log_path, "w")
    p = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 420
        while time.time() < deadline:
            time.sleep(0.1)
            if p.poll() is not None:  # finished (or crashed) before it could be killed
                return None
            if not (study_dir / "study.db").exists():
                continue
            try:
                trials = _study(study_dir, "s").get_trials()
            except Exception:  # noqa: BLE001 - the study is being created
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and t.params]
            if any(t.state.is_finished() for t in trials) and running:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
                return running[0].number
        return None
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        log.close()


def test_killed_study_resumes_without_lost_or_duplicated_trials(tmp_path):
    # trials of 3 epochs on 3,000 rows take ~1 s on a quiet machine: if the study ends before a
    # later trial is caught running, try again with longer trials (the race, not the feature, missed)
    killed_running = None
    for attempt, epochs in enumerate((3, 8, 20)):
        (tmp_path / f"try{attempt}").mkdir()
        cfg, sp = _setup(tmp_path / f"try{attempt}", epochs=epochs)
        study_dir = tmp_path / f"try{attempt}" / "st"
        args = [sys.executable, "-m", "recsys.cli", *_tune(cfg, sp, study_dir, "--n-trials", "4", "--no-export")]
        log_path = tmp_path / f"try{attempt}" / "first_run.log"
        killed_running = _kill_while_a_later_trial_runs(args, study_dir, log_path)
        if killed_running is not None:
            break
        text = log_path.read_text()
        assert "Traceback" not in text, text[-3000:]  # it ended, it did not crash
    assert killed_running is not None, log_path.read_text()[-3000:]
    before = {t.number: t for t in _study(study_dir, "s").get_trials()}
    assert before[killed_running].state == TrialState.RUNNING  # left behind by the kill

    assert main(_tune(cfg, sp, study_dir, "--n-trials", "4")) == 0
    trials = _study(study_dir, "s").get_trials()
    interrupted = [t for t in trials if t.number == killed_running][0]
    assert interrupted.state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == killed_running]
    assert len(retries) == 1 and retries[0].state.is_finished()
    assert retries[0].params == interrupted.params  # the same trial, run again
    counted = [t for t in trials if t.number != killed_running]
    assert len(counted) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    # trials finished before the kill were not rerun
    for n, t in before.items():
        if t.state.is_finished():
            assert [x for x in trials if x.number == n][0].datetime_complete == t.datetime_complete
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]

"""A stranger's mistakes, through the real `recsys` command (issue 17): each one ends with exit
status 2, one `recsys: error:` line that names the fix, no traceback, and nothing written.

The data is a tiny parquet file (300 rows) with a schema YAML; one module-scoped 1-epoch fit
provides the checkpoint that predict/test/resume cases need.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {"label": "label", "keys": {"user": "user_id", "item": "item_id"},
          "fields": [{"name": "user_id", "kind": "categorical"}, {"name": "item_id", "kind": "categorical"},
                     {"name": "age", "kind": "numeric"}]}


def tiny_frame(n: int = 300, seed: int = 0) -> pl.DataFrame:
    import random

    rng = random.Random(seed)
    return pl.DataFrame({
        "user_id": [f"u{rng.randrange(20)}" for _ in range(n)],
        "item_id": [rng.randrange(30) for _ in range(n)],
        "age": [rng.random() * 50 for _ in range(n)],
        "label": [rng.randrange(2) for _ in range(n)],
        "split": [("train", "train", "train", "valid", "test")[i % 5] for i in range(n)],
    })


def write_config(tmp: Path, name: str = "run", data: dict | None = None, model: dict | None = None,
                 trainer: dict | None = None) -> Path:
    """A 1-epoch DeepFM config on ``tmp/d.parquet`` (+ schema), logging under ``tmp/runs/name``."""
    if not (tmp / "d.parquet").exists():
        tiny_frame().write_parquet(tmp / "d.parquet")
        (tmp / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))
    cfg = {
        "data": {"class_path": "recsys.data.CTRDataModule",
                 "init_args": {"dataset": str(tmp / "d.parquet"), "schema": str(tmp / "schema.yaml"),
                               "batch_size": 64, **(data or {})}},
        "model": {"class_path": "recsys.tasks.RankingTask",
                  "init_args": {"lr": 0.01, "model": model or {"class_path": "recsys.models.DeepFM",
                                                               "init_args": {"embedding_dim": 4,
                                                                             "hidden_units": [8]}}}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp / "runs"),
                    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp / "runs"), "name": name}},
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"filename": "best-{epoch}", "monitor": "val/auc", "mode": "max",
                                                 "save_top_k": 1}}],
                    **(trainer or {})},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def recsys(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`recsys ARGS` in a fresh process (this checkout's code first on the path)."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1")
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def one_error(res: subprocess.CompletedProcess, short: bool = True) -> str:
    """Exit status 2, no traceback, exactly one `recsys: error:` line (and, with ``short``, at most
    5 lines on stderr in all); returns the error line."""
    err = res.stderr
    assert res.returncode == 2, (res.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("recsys: error:")]
    assert len(errors) == 1, err[-3000:]
    assert not short or len([ln for ln in err.splitlines() if ln.strip()]) <= 5, err
    return errors[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and mtime: equal snapshots = nothing written."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, config, best checkpoint) of one tiny 1-epoch fit."""
    from recsys.cli import main

    tmp = tmp_path_factory.mktemp("trained")
    cfg = write_config(tmp, "run")
    assert main(["fit", "--config", str(cfg), "--test_after_fit", "false", "--save_every_n_steps", "2"]) == 0
    ckpt = next((tmp / "runs" / "run").glob("version_0/checkpoints/best-*.ckpt"))
    return tmp, cfg, ckpt


# ----------------------------------------------------------------- 1: scoring needs a checkpoint
@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "test", "validate"])
def test_scoring_without_checkpoint_is_refused(tmp_path, command):
    cfg = write_config(tmp_path)
    before = snapshot(tmp_path)
    line = one_error(recsys([command, "--config", str(cfg), "--predict_out", str(tmp_path / "s.parquet")]
                            if command == "predict" else [command, "--config", str(cfg)], tmp_path))
    assert "--ckpt_path" in line and "untrained" in line and "Fix:" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()


# -------------------------------------------------- 2: allowlist checked before any import
def _import_time_module(tmp: Path) -> tuple[str, Path]:
    """A package on PYTHONPATH that writes a marker file when imported."""
    marker = tmp / "imported.txt"
    pkg = tmp / "plugins" / "sneaky_cb"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text("import-time code ran")
        import pytorch_lightning as L

        class Marker(L.Callback):
            pass
    """))
    return str(tmp / "plugins"), marker


@pytest.mark.slow
def test_disallowed_class_path_is_refused_before_its_module_is_imported(tmp_path):
    plugins, marker = _import_time_module(tmp_path)
    cfg = write_config(tmp_path, trainer={"callbacks": [{"class_path": "sneaky_cb.Marker"}]})
    before = snapshot(tmp_path)
    # the CLI as users run it: the module's import-time code must not run
    line = one_error(recsys(["fit", "--config", str(cfg)], tmp_path, env={"PYTHONPATH": f"{ROOT}{os.pathsep}{plugins}"}))
    assert "sneaky_cb.Marker" in line and "--allow_classes sneaky_cb" in line and "trainer.callbacks" in line
    assert not marker.exists()
    assert snapshot(tmp_path) == before
    # same from the command line instead of the YAML, and the module is not in sys.modules afterwards
    probe = textwrap.dedent(f"""
        import sys
        from recsys.cli import main
        rc = main(["fit", "--config", {str(cfg)!r}, "--trainer.callbacks+=sneaky_cb.Marker"])
        print(rc, "sneaky_cb" in sys.modules)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}{os.pathsep}{plugins}")
    env.pop("RECSYS_ALLOW_CLASSES", None)
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.stdout.split()[-2:] == ["2", "False"], res.stdout + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not marker.exists()


# ------------------------------------------------ 5: sequence models on a schema without one
@pytest.mark.slow
@pytest.mark.parametrize("model", ["AWMoE", "SDIM", "DIN"])
def test_sequence_model_without_sequence_field_is_one_line(tmp_path, model):
    cfg = write_config(tmp_path, model={"class_path": f"recsys.models.{model}", "init_args": {}})
    line = one_error(recsys(["fit", "--config", str(cfg)], tmp_path))
    assert f"{model} needs a behaviour sequence field; the schema has none" in line
    assert "kind: sequence" in line and "DeepFM" in line  # the fix: add one, or a model without one
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------- 6: misspelled keys
@pytest.mark.slow
@pytest.mark.parametrize("where, args, key, suggestion", [
    ("cli", ["--model.init_args.model.init_args.embeding_dim", "4"], "embeding_dim", "embedding_dim"),
    ("cli", ["--data.init_args.batchsize", "8"], "batchsize", "batch_size"),
    ("yaml", ("model", "embeding_dim"), "embeding_dim", "embedding_dim"),
    ("yaml", ("trainer", "max_epoch"), "max_epoch", "max_epochs"),
    ("yaml", ("callback", "monitr"), "monitr", "monitor"),
])
def test_misspelled_key_names_it_and_suggests_the_closest(tmp_path, where, args, key, suggestion):
    cfg = write_config(tmp_path)
    if where == "yaml":
        data = yaml.safe_load(cfg.read_text())
        section, bad = args
        target = {"model": data["model"]["init_args"]["model"]["init_args"], "trainer": data["trainer"],
                  "callback": data["trainer"]["callbacks"][0]["init_args"]}[section]
        target[bad] = 3
        cfg.write_text(yaml.safe_dump(data))
        args = []
    res = recsys(["fit", "--config", str(cfg), *args], tmp_path)
    line = one_error(res)
    assert len(res.stderr.strip().splitlines()) <= 5
    assert key in line and f"did you mean '{suggestion}'" in line or f"did you mean 'trainer.{suggestion}'" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("empty", ["{}", ""])
def test_misspelled_empty_top_level_key_is_refused(tmp_path, empty):
    """`trainr: {}` has no leaves for jsonargparse to reject: without the check it is ignored."""
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + f"trainr: {empty}\n")
    before = snapshot(tmp_path)
    res = recsys(["fit", "--config", str(cfg)], tmp_path)
    line = one_error(res)
    assert "trainr" in line and "did you mean 'trainer'" in line and cfg.name in line
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------- 8: output paths
@pytest.mark.slow
def test_predict_out_directory_is_refused_before_scoring(trained, tmp_path):
    _, cfg, ckpt = trained
    out = tmp_path / "scores"
    out.mkdir()
    before = snapshot(ckpt.parents[2])
    line = one_error(recsys(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt), "--predict_out", str(out)],
                            tmp_path))
    assert "--predict_out" in line and "is a directory" in line
    assert list(out.iterdir()) == [] and "scored" not in line
    assert snapshot(ckpt.parents[2]) == before  # no new version_N, no config.yaml


@pytest.mark.slow
def test_predict_writes_one_file_and_no_log_folder(trained, tmp_path):
    tmp, cfg, ckpt = trained
    runs = ckpt.parents[2]
    versions = sorted(p.name for p in runs.iterdir())
    for _ in range(2):
        res = recsys(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt)], tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in runs.iterdir()) == versions  # no version_N per call
    scores = pl.read_parquet(ckpt.parents[1] / "predictions.parquet")  # beside the checkpoint's run
    assert len(scores) == 60 and sorted(scores.columns) == ["item_id", "score", "user_id"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
def test_refused_resume_keeps_the_runs_config(trained, tmp_path):
    tmp, cfg, _ = trained
    version = tmp / "runs" / "run" / "version_0"
    assert (version / "checkpoints" / "last.ckpt").is_file()
    config_before = (version / "config.yaml").read_bytes()
    before = snapshot(version)
    res = recsys(["fit", "--config", str(cfg), "--ckpt_path", "last", "--trainer.max_epochs", "2",
                  "--data.init_args.batch_size", "32"], tmp_path)
    line = one_error(res)
    assert "cannot resume" in line and "batch_size=64" in line and "32" in line
    assert (version / "config.yaml").read_bytes() == config_before
    assert snapshot(version) == before  # nor its metrics.csv, hparams.yaml or checkpoints


@pytest.mark.slow
def test_resume_refused_for_other_data_keeps_the_runs_metrics(tmp_path):
    """Another number of training rows is found only once the data is loaded and the loop
    restored (mid-epoch checkpoint), after the run folder's metrics.csv was set aside: it is put back."""
    cfg = write_config(tmp_path, data={"batch_size": 16})
    # stopped mid-epoch (step 3 of 12) with a checkpoint of that step: a resumable, interrupted run
    first = recsys(["fit", "--config", str(cfg), "--trainer.max_steps", "3", "--save_every_n_steps", "1",
                    "--test_after_fit", "false", "--trainer.log_every_n_steps", "1"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    version = tmp_path / "runs" / "run" / "version_0"
    metrics_before = (version / "metrics.csv").read_bytes()
    config_before = (version / "config.yaml").read_bytes()
    fewer = tmp_path / "fewer.parquet"
    pl.read_parquet(tmp_path / "d.parquet").head(200).write_parquet(fewer)
    res = recsys(["fit", "--config", str(cfg), "--ckpt_path", "last", "--trainer.max_steps", "6",
                  "--data.init_args.dataset", str(fewer)], tmp_path)
    line = one_error(res, short=False)
    assert "cannot resume" in line and "n=" in line
    assert (version / "metrics.csv").read_bytes() == metrics_before
    assert not list(version.glob("metrics.part-*.csv"))
    assert (version / "config.yaml").read_bytes() == config_before


# ------------------------------------------------------------- 9: data too small to rank
def test_rank_features_refuses_data_too_small_to_rank(tmp_path):
    data = tmp_path / "two.csv"
    pl.DataFrame({"a": ["x", "y"], "b": [1, 2], "label": [0, 1]}).write_csv(data)
    before = snapshot(tmp_path)
    res = recsys(["rank-features", "--data", str(data), "--out", str(tmp_path / "rk"), "--no-progress"], tmp_path)
    line = one_error(res)
    assert "too few rows to rank" in line and "2 rows (1 with label = 0, 1 with label = 1)" in line
    assert "needs at least 6 rows" in line and "two.csv" in line  # 2 features: p <= 0.01/2 needs 6 rows
    assert snapshot(tmp_path) == before and not (tmp_path / "rk").exists()
    # at the bound it ranks (and what it says is needed is enough)
    pl.DataFrame({"a": ["x", "y"] * 4, "b": list(range(8)), "label": [0, 1] * 4}).write_csv(data)
    res = recsys(["rank-features", "--data", str(data), "--out", str(tmp_path / "rk"), "--no-progress"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert pl.read_csv(tmp_path / "rk" / "ranking.csv")["feature"][0] == "a"


# ------------------------------------------- 4: every split checked before the first training step
@pytest.mark.slow
@pytest.mark.parametrize("split, damage, expected", [
    ("test", "item_id as strings", "field 'item_id' holds str values but was fitted on int"),
    ("valid", "label 2", "label values are not 0/1"),
    ("test", "no age column", "columns ['age'] are missing"),
    ("test", "no rows", "the test split is empty"),
])
def test_every_split_is_checked_before_training_and_the_wrong_file_named(tmp_path, split, damage, expected):
    frame = tiny_frame()
    files = {}
    for name in ("train", "valid", "test"):
        part = frame.filter(pl.col("split") == name).drop("split")
        if name == split:
            part = {"item_id as strings": lambda f: f.with_columns(pl.col("item_id").cast(pl.String) + "x"),
                    "label 2": lambda f: f.with_columns(pl.lit(2).alias("label")),
                    "no age column": lambda f: f.drop("age"),
                    "no rows": lambda f: f.head(0)}[damage](part)
        files[name] = tmp_path / f"{name}_rows.parquet"
        part.write_parquet(files[name])
    cfg = write_config(tmp_path, data={"dataset": str(files["train"]), "valid_path": str(files["valid"]),
                                       "test_path": str(files["test"])})
    line = one_error(recsys(["fit", "--config", str(cfg)], tmp_path))
    assert f"{split}_rows.parquet" in line and expected in line
    others = [n for n in files if n != split]
    assert not any(f"{n}_rows.parquet" in line for n in others)  # the wrong file, not the train file
    assert not (tmp_path / "runs").exists()  # refused before the trainer (or its log folder) exists


# ------------------------------------------------ 7: tune validates the space before creating anything
@pytest.mark.slow
def test_tune_typo_creates_nothing_and_a_changed_space_says_how_to_go_on(tmp_path):
    cfg = write_config(tmp_path)
    space = {"objective": {"metric": "val/auc", "direction": "maximize"}, "sampler": {"name": "tpe", "seed": 0},
             "params": {"model.init_args.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
                        "model.init_args.model.init_args.embeding_dim": {"type": "categorical", "choices": [4, 8]}}}
    sp = tmp_path / "space.yaml"
    sp.write_text(yaml.safe_dump(space))
    study_dir = tmp_path / "study"
    tune = ["tune", "--config", str(cfg), "--space", str(sp), "--study-dir", str(study_dir), "--n-trials", "1"]
    before = snapshot(tmp_path)
    line = one_error(recsys(tune, tmp_path))
    assert f"{sp}: params.model.init_args.model.init_args.embeding_dim" in line
    assert "did you mean 'embedding_dim'" in line
    assert snapshot(tmp_path) == before and not study_dir.exists()  # no study.db, no study
    # a bad value of a correct key (the second choice): also refused before anything exists
    space["params"]["model.init_args.model.init_args.embedding_dim"] = {"type": "categorical", "choices": [4, "wide"]}
    del space["params"]["model.init_args.model.init_args.embeding_dim"]
    sp.write_text(yaml.safe_dump(space))
    line = one_error(recsys(tune, tmp_path))
    assert "embedding_dim = 'wide'" in line and not study_dir.exists()
    # the typo fixed, the same command runs
    space["params"]["model.init_args.model.init_args.embedding_dim"]["choices"] = [4, 8]
    sp.write_text(yaml.safe_dump(space))
    res = recsys(tune, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    # a space that really differs from the stored study's: refused, saying how to go on
    space["params"]["model.init_args.model.init_args.embedding_dim"]["choices"] = [4, 16]
    sp.write_text(yaml.safe_dump(space))
    line = one_error(recsys(tune, tmp_path), short=False)
    assert "different search space" in line and "--study-name" in line and "--restart" in line
    res = recsys(tune + ["--restart"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--restart: deleted study 'space'" in res.stdout
    assert len(list(study_dir.glob("trials.replaced-*/trial_0000"))) == 1  # the old run folders are kept
    import optuna

    study = optuna.load_study(study_name="space", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 1 and study.user_attrs["recsys:space_fingerprint"]


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--model.init_args.lr", "abc"], "model.init_args.lr: expected float, got 'abc'"),
    (["--model.init_args.optimizer", "bogus"], "model.init_args.optimizer: expected typing.Literal['adam'"),
    (["--trainer.max_epochs", "x"], "trainer.max_epochs: expected int, got 'x'"),
])
def test_wrong_value_names_the_dotted_key_in_one_line(tmp_path, args, expected):
    cfg = write_config(tmp_path)
    line = one_error(recsys(["fit", "--config", str(cfg), *args], tmp_path))
    assert expected in line
    assert not (tmp_path / "runs").exists()

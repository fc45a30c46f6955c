"""Safety: checkpoints read with weights_only=True on every path (a pickled payload never runs),
a corrupt or truncated checkpoint is a clear RecsysError, checkpoint writes are atomic, a config
may only instantiate classes from allowed packages, and the cache never leads elsewhere."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from recsys.cli import check_class_paths, main
from recsys.errors import ConfigError, RecsysError
from recsys.tasks import load_checkpoint
from recsys.checkpoint import RecsysCheckpointIO, read_checkpoint
from recsys.utils import cache_dir, within

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, name: str, callbacks: list | None = None) -> Path:
    cfg = yaml.safe_load((ROOT / "experiments" / "deepfm_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": 1, "default_root_dir": str(tmp_path / name), "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": name}},
    })
    if callbacks:
        cfg["trainer"]["callbacks"] = cfg["trainer"]["callbacks"] + callbacks
    cfg["model"]["init_args"]["model"]["init_args"].update({"embedding_dim": 4, "hidden_units": [16]})
    cfg["data"]["init_args"]["dataset_options"] = {"n_rows": 2000, "seed": 0}
    cfg["data"]["init_args"]["batch_size"] = 256
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("safety")
    cfg = _config(tmp, "run")
    assert main(["fit", "--config", str(cfg), "--test_after_fit", "false"]) == 0
    ckpt = next((tmp / "run").glob("version_*/checkpoints/best-*.ckpt"))
    return tmp, cfg, ckpt


class _Payload:
    """Unpickling this creates ``marker``: code a weights_only load must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------ checkpoints
def test_pickled_payload_in_checkpoint_never_runs(trained, tmp_path, capsys):
    _, cfg, ckpt = trained
    data = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "pwned"
    data["recsys"]["extra"] = _Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(data, evil)

    with pytest.raises(RecsysError, match="cannot read the checkpoint"):
        load_checkpoint(evil)
    # Lightning's own loading paths: resume (fit --ckpt_path) and scoring (predict --ckpt_path)
    assert main(["fit", "--config", str(cfg), "--ckpt_path", str(evil), "--test_after_fit", "false"]) == 2
    assert main(["predict", "--config", str(cfg), "--ckpt_path", str(evil), "--trainer.logger", "false",
                 "--predict_out", str(tmp_path / "p.parquet")]) == 2
    assert not marker.exists()
    assert "cannot read" in capsys.readouterr().err


def test_sharded_checkpoint_directory_never_runs_code(trained, tmp_path):
    """DCP's own reader unpickles ``.metadata`` freely and loads non-tensor entries with
    weights_only=False; recsys's reader admits neither."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from recsys.checkpoint import META_FILE

    _, _, ckpt = trained
    data = torch.load(ckpt, weights_only=True)
    state = data.pop("state_dict")
    marker = tmp_path / "pwned"

    evil = tmp_path / "evil_meta.ckpt"
    evil.mkdir()
    torch.save(data, evil / META_FILE)
    (evil / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(RecsysError, match="cannot read the sharded checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()

    # a well-formed DCP directory whose entries include a pickled object
    sneaky = tmp_path / "sneaky.ckpt"
    dcp.save({"state_dict": {**state, "extra": _Payload(marker)}}, checkpoint_id=str(sneaky), no_dist=True)
    torch.save(data, sneaky / META_FILE)
    with pytest.raises(RecsysError, match="non-tensor entry"):
        load_checkpoint(sneaky)
    assert not marker.exists()

    # the same directory without the object loads, in one process
    good = tmp_path / "good.ckpt"
    dcp.save({"state_dict": state}, checkpoint_id=str(good), no_dist=True)
    torch.save(data, good / META_FILE)
    task = load_checkpoint(good)
    for k, v in task.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("class_path, message", [
    ("subprocess.Popen", "not from an allowed package"),
    ("recsys.data.CTRDataModule", "is not a RankingModel"),
    ("recsys.models.NoSuchModel", "does not exist here"),
])
def test_checkpoint_cannot_choose_the_code_it_runs(trained, tmp_path, class_path, message):
    """The model class a checkpoint names is data: only RankingModels from allowed packages."""
    _, _, ckpt = trained
    data = torch.load(ckpt, weights_only=True)
    data["recsys"]["model"]["class_path"] = class_path
    data["recsys"]["model"]["init_args"] = {"args": ["touch", str(tmp_path / "pwned")]}
    bad = tmp_path / "class.ckpt"
    torch.save(data, bad)
    with pytest.raises(RecsysError, match=message):
        load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(trained, tmp_path, capsys, damage):
    _, cfg, ckpt = trained
    raw = ckpt.read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    with pytest.raises(RecsysError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "corrupt" in str(err.value)
    assert main(["fit", "--config", str(cfg), "--ckpt_path", str(bad), "--test_after_fit", "false"]) == 2
    out = capsys.readouterr().err
    assert "recsys: error:" in out and str(bad) in out and "Traceback" not in out


def test_checkpoint_of_another_model_is_a_clear_error(trained, tmp_path):
    _, _, ckpt = trained
    data = torch.load(ckpt, weights_only=True)
    data["state_dict"] = {k: v[:1] if v.ndim else v for k, v in data["state_dict"].items()}  # wrong shapes
    bad = tmp_path / "shapes.ckpt"
    torch.save(data, bad)
    with pytest.raises(RecsysError, match="does not rebuild its model"):
        load_checkpoint(bad)
    with pytest.raises(RecsysError, match="no recsys checkpoint directory|not a recsys checkpoint"):
        read_checkpoint(tmp_path)  # a directory without the sharded-checkpoint metadata


def test_checkpoint_writes_are_atomic(trained, tmp_path):
    _, _, ckpt = trained
    io = RecsysCheckpointIO()
    target = tmp_path / "last.ckpt"
    good = torch.load(ckpt, weights_only=True)
    io.save_checkpoint(good, target)
    before = target.read_bytes()

    class Explodes:
        def __reduce__(self):
            raise RuntimeError("disk full halfway")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({**good, "boom": [torch.zeros(1000)] * 50 + [Explodes()]}, target)
    assert target.read_bytes() == before  # the previous checkpoint is intact ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # ... and no partial file is left
    assert read_checkpoint(target)["global_step"] == good["global_step"]


# ---------------------------------------------------------------------- configs
def _plugin_module(tmp_path: Path, monkeypatch) -> Path:
    """A third-party package with a Lightning callback that leaves a marker when it runs."""
    pkg = tmp_path / "thirdparty_cb"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from pathlib import Path
        import pytorch_lightning as L

        class Marker(L.Callback):
            def __init__(self, path: str):
                self.path = path

            def on_fit_start(self, trainer, pl_module):
                Path(self.path).write_text("ran")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "marker.txt"


def test_config_with_disallowed_class_is_refused(tmp_path, monkeypatch, capsys):
    marker = _plugin_module(tmp_path, monkeypatch)
    monkeypatch.delenv("RECSYS_ALLOW_CLASSES", raising=False)
    cb = [{"class_path": "thirdparty_cb.Marker", "init_args": {"path": str(marker)}}]
    cfg = _config(tmp_path, "plugin", callbacks=cb)
    assert main(["fit", "--config", str(cfg), "--test_after_fit", "false"]) == 2
    err = capsys.readouterr().err
    assert "thirdparty_cb.Marker" in err and "--allow_classes thirdparty_cb" in err and "trainer.callbacks" in err
    assert not marker.exists()
    # the YAML cannot allow itself
    data = yaml.safe_load(cfg.read_text())
    data["allow_classes"] = "thirdparty_cb"
    cfg.write_text(yaml.safe_dump(data))
    # not an option of the config: the class is still refused (one line)
    assert main(["fit", "--config", str(cfg), "--test_after_fit", "false"]) == 2
    assert "not from an allowed package" in capsys.readouterr().err
    assert not marker.exists()


def test_allow_classes_opt_in_on_the_command_line_or_environment(tmp_path, monkeypatch):
    marker = _plugin_module(tmp_path, monkeypatch)
    cb = [{"class_path": "thirdparty_cb.Marker", "init_args": {"path": str(marker)}}]
    cfg = _config(tmp_path, "plugin", callbacks=cb)
    args = ["fit", "--config", str(cfg), "--test_after_fit", "false"]
    assert main(args + ["--allow_classes", "thirdparty_cb"]) == 0
    assert marker.read_text() == "ran"
    marker.unlink()
    monkeypatch.setenv("RECSYS_ALLOW_CLASSES", "thirdparty_cb")
    assert main(args) == 0
    assert marker.exists()


def test_class_path_check_walks_nested_config():
    cfg = {"model": {"class_path": "recsys.tasks.RankingTask",
                     "init_args": {"model": {"class_path": "os.system", "init_args": {}}}},
           "trainer": {"callbacks": [{"class_path": "pytorch_lightning.callbacks.EarlyStopping"}]}}
    with pytest.raises(ConfigError, match="'os.system'") as err:
        check_class_paths(cfg)
    assert err.value.where == "model.init_args.model"
    check_class_paths(cfg, extra_allowed=["os"])
    # a prefix must match a whole package name
    with pytest.raises(ConfigError):
        check_class_paths({"x": {"class_path": "torchevil.Module"}})


# ------------------------------------------------------------------------ cache
def test_cache_never_leads_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    assert cache_dir("movielens-100k") == tmp_path / "cache" / "movielens-100k"
    for bad in ("../escape", "/etc", "a/../../b"):
        with pytest.raises(RecsysError, match="leads outside"):
            cache_dir(bad)
    with pytest.raises(RecsysError):
        within(tmp_path, "x/../../y")
    assert not (tmp_path / "escape").exists()


def test_altered_cached_movielens_files_are_not_used(tmp_path, monkeypatch):
    from recsys.data.datasets import movielens as ml
    from recsys.errors import DataError

    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path))
    monkeypatch.delenv(ml.ENV_DIR, raising=False)
    folder = cache_dir(ml.CACHE_NAME) / "grouplens"
    folder.mkdir(parents=True)
    for name in ml.GROUPLENS_FILES:
        (folder / name).write_text(f"{name} contents\n")
    # first sight of a cache without a record: recorded as found, then used
    assert ml.fetch_ml100k(download=False) == folder
    assert (folder / ml.GROUPLENS_SUMS).is_file()
    # truncated afterwards: not used (and with download=False, nothing else to use)
    (folder / "u.data").write_text("u.da")
    with pytest.raises(DataError, match="not in the cache"):
        ml.fetch_ml100k(download=False)


def test_model_factories_refuse_classes_outside_the_allowlist(monkeypatch):
    """build_model / build_retrieval_model are reached from configs and checkpoints: a class
    path outside the allowed packages is refused before anything is imported; the environment
    opt-in lets it through to the import."""
    from recsys.errors import ConfigError
    from recsys.models.base import build_model
    from recsys.retrieval.two_tower import build_retrieval_model

    monkeypatch.delenv("RECSYS_ALLOW_CLASSES", raising=False)
    for factory in (build_model, build_retrieval_model):
        with pytest.raises(ConfigError, match="os.system"):
            factory({"class_path": "os.system", "init_args": {}}, None)
    monkeypatch.setenv("RECSYS_ALLOW_CLASSES", "collections")
    with pytest.raises(TypeError):  # allowed: imported and called (OrderedDict(None) is not a model)
        build_model({"class_path": "collections.OrderedDict", "init_args": {"x": 1}}, None)

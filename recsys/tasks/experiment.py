"""Experiments: build and run a config (a YAML file or a dict) through Lightning's CLI machinery.

The public Python API under ``recsys fit|validate|test|predict``, ``recsys tune``'s trials and
``recsys search-dims``; no argv is parsed here unless a caller hands one over::

    from recsys.tasks.experiment import build, fit

    result = fit("experiments/deepfm_synthetic.yaml")            # or a dict (a parsed YAML)
    result.metrics["valid"]["auc"], result.task, result.trainer

    cli = build(config_dict)              # parsed and instantiated, nothing run
    cli.model, cli.datamodule, cli.trainer

    check_config(config_dict)             # None when it parses, else the parser's message

Rules the CLI class (:class:`ExperimentCLI`) adds to Lightning's:

* a config may only instantiate classes from the packages in
  :data:`~recsys.utils.ALLOWED_PACKAGES` (plus an explicit ``allow_classes`` opt-in, or
  ``$RECSYS_ALLOW_CLASSES``; never from the YAML itself);
* ``fit`` with ``ckpt_path: last`` resumes from the newest ``last*.ckpt`` of the config's log
  directory, in the same ``version_N`` directory; ``save_every_n_steps: N`` writes ``last.ckpt``
  every N training steps;
* checkpoints are read with ``weights_only=True`` everywhere and written atomically
  (:class:`recsys.checkpoint.RecsysCheckpointIO`);
* after ``fit`` the best checkpoint is evaluated on the valid and test splits and
  ``metrics.json`` is written next to the run's logs; ``predict`` writes a parquet of key
  columns + scores.
"""

from __future__ import annotations

import json
import os
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from recsys.errors import ConfigError, RecsysError
from recsys.tasks.callbacks import PredictionWriter
from recsys.utils import ALLOW_ENV, ALLOWED_PACKAGES, check_class_allowed  # noqa: F401


def class_paths(config) -> list[tuple[str, str]]:
    """Every ``class_path`` of a parsed config, as (where, class path) pairs."""
    found: list[tuple[str, str]] = []

    def walk(node, where: str) -> None:
        if hasattr(node, "__dict__") and type(node).__name__ == "Namespace":
            node = vars(node)
        if isinstance(node, dict):
            cp = node.get("class_path")
            if isinstance(cp, str):
                found.append((where or "config", cp))
            for k, v in node.items():
                walk(v, f"{where}.{k}" if where else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(config, "")
    return found


def check_class_paths(config, extra_allowed: list[str] = ()) -> None:
    """Raise :class:`~recsys.errors.ConfigError` if the config names a class outside
    :data:`ALLOWED_PACKAGES` + ``extra_allowed`` + ``$RECSYS_ALLOW_CLASSES``."""
    for where, cp in class_paths(config):
        check_class_allowed(cp, where, extra_allowed)


class ExperimentCLI(LightningCLI):
    """Lightning's CLI with recsys's rules: the class allowlist, ``--ckpt_path last`` resume,
    scoring with a checkpoint's own encoders, atomic ``weights_only`` checkpoint I/O, the
    prediction writer and ``metrics.json`` after ``fit``.

    ``report_writer``: a ``fn(checkpoint, split, out_dir)`` that writes the offline report when
    the config says ``report: true`` (the commands floor sets it; this floor does not import reports).
    ``fit_metrics``: what :func:`write_fit_metrics` returned after ``fit`` (None before).
    """

    allow_classes: list[str] = []
    report_writer: Callable[[str, str, Path], None] | None = None
    fit_metrics: dict | None = None

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.features", "model.init_args.features", apply_on="instantiate")
        parser.add_argument("--predict_out", type=str | None, default=None,
                            help="predict: parquet file for keys + scores (default: predictions.parquet in the checkpoint's run folder)")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="fit: evaluate the best checkpoint on valid and test and write metrics.json")
        parser.add_argument("--report", type=bool, default=False,
                            help="fit/test: also write the offline AUC report of the best (fit) or given "
                                 "(test --ckpt_path) checkpoint to <log_dir>/report")
        parser.add_argument("--save_every_n_steps", type=int | None, default=None,
                            help="fit: also write <log_dir>/checkpoints/last.ckpt every N training steps, so "
                                 "`--ckpt_path last` can resume a killed run mid-epoch")

    def parse_arguments(self, parser, args) -> None:
        # a mistake is one ConfigError line (closest valid key), not jsonargparse's usage dump
        from recsys.config_errors import parse_or_explain

        parse_or_explain(parser, args, super().parse_arguments)

    def instantiate_classes(self) -> None:
        from recsys.config_errors import recsys_error_in

        try:
            super().instantiate_classes()
        except RecsysError:
            raise
        except Exception as e:  # jsonargparse wraps a model's RecsysError in its Union message
            found = recsys_error_in(e)
            if found is None:
                raise
            raise found from None

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.subcommand) if self.subcommand else None
        check_class_paths(cfg if cfg is not None else self.config, self.allow_classes)
        if cfg is None:
            return
        if self.subcommand == "fit":
            if cfg.get("ckpt_path") == "last":
                self._kept_metrics = _resolve_last(cfg)
            elif cfg.get("ckpt_path") and Path(cfg.ckpt_path).exists():
                check_resume_sampler(cfg.ckpt_path, cfg)
            return
        check_scoring_checkpoint(self.subcommand, cfg.get("ckpt_path"))
        if self.subcommand == "predict":
            from recsys.config_errors import check_output_file

            cfg.predict_out = cfg.get("predict_out") or default_predict_out(cfg.ckpt_path)
            check_output_file(cfg.predict_out, "--predict_out")
            # scoring writes one file: no version_N log folder, no config.yaml per call
            cfg.trainer.logger = False
            self.save_config_callback = None
        # scoring a checkpoint: use the encoders stored in it, not a refit on today's data
        ckpt = cfg.get("ckpt_path")
        if ckpt and ckpt not in ("best", "last", "hpc") and not cfg.data.init_args.get("features_from"):
            cfg.data.init_args.features_from = ckpt

    _kept_metrics: tuple[Path, Path] | None = None

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            # a resume refused after the data loaded (e.g. another number of training rows) or a
            # run that failed before logging anything: put the run's metrics.csv back where it was
            if self._kept_metrics is not None:
                old, part = self._kept_metrics
                if part.is_file() and not old.exists() and _launcher_rank() == 0:
                    os.replace(part, old)
            raise

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path here (weights_only=True) to merge its hyperparameters
        # into the config; read it first so a corrupt or unsafe file is a RecsysError
        from recsys.checkpoint import read_checkpoint

        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if ckpt and Path(ckpt).is_file():
            read_checkpoint(ckpt, keys=())
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs):
        from pytorch_lightning.callbacks import ModelCheckpoint

        from recsys.checkpoint import RecsysCheckpointIO

        cfg = self.config.get(self.subcommand) if self.subcommand else self.config
        every = cfg.get("save_every_n_steps") if cfg is not None else None
        trainer = super().instantiate_trainer(**kwargs)
        from recsys.tasks.callbacks import GracefulStop

        if not any(isinstance(c, GracefulStop) for c in trainer.callbacks):
            trainer.callbacks.append(GracefulStop())  # SIGTERM/SIGINT: checkpoint, then exit
        if every:
            trainer.callbacks.append(ModelCheckpoint(every_n_train_steps=int(every), save_top_k=0, save_last=True))
        io = trainer.strategy.checkpoint_io
        if type(io).__name__ == "TorchCheckpointIO":  # Lightning's default: make it atomic + weights_only
            trainer.strategy.checkpoint_io = RecsysCheckpointIO()
        return trainer

    def before_predict(self) -> None:
        cfg = self.config[self.subcommand]
        out = cfg.get("predict_out") or default_predict_out(cfg.get("ckpt_path"))
        self.trainer.callbacks.append(PredictionWriter(out))

    def before_fit(self) -> None:
        if self.trainer.is_global_zero:
            _warn_data(self.datamodule, "train", check_oov=False)

    def before_test(self) -> None:
        if self.trainer.is_global_zero:
            _warn_data(self.datamodule, "test")

    def before_validate(self) -> None:
        if self.trainer.is_global_zero:
            _warn_data(self.datamodule, "valid")

    def after_validate(self) -> None:
        write_eval_metrics(self.trainer, self.datamodule, "valid")

    def after_test(self) -> None:
        write_eval_metrics(self.trainer, self.datamodule, "test")
        cfg = self.config[self.subcommand]
        ckpt = cfg.get("ckpt_path")
        if cfg.get("report") and ckpt and Path(ckpt).is_file():
            self._write_report(ckpt, "test", Path(self.trainer.log_dir or ".") / "report")

    def _write_report(self, ckpt: str, split: str, out: Path) -> None:
        writer = type(self).report_writer
        if writer is None:
            print("recsys: report: true needs the `recsys` command (or recsys.reports.build_report); skipped")
            return
        writer(ckpt, split, out)

    def after_fit(self) -> None:
        cfg = self.config[self.subcommand]
        if not cfg.get("test_after_fit", True) or self.trainer.interrupted:
            return
        metrics = self.fit_metrics = write_fit_metrics(self.trainer, self.model, self.datamodule)
        if cfg.get("report") and metrics.get("best_checkpoint") and self.trainer.is_global_zero:
            self._write_report(metrics["best_checkpoint"], "test" if "test" in metrics else "valid",
                               Path(metrics["metrics_file"]).parent / "report")


def check_scoring_checkpoint(subcommand: str, ckpt: str | None) -> None:
    """``validate``/``test``/``predict`` score a trained model: without ``--ckpt_path`` (an existing
    checkpoint file or sharded-checkpoint directory) they would score freshly initialised weights."""
    example = "--ckpt_path runs/<name>/version_N/checkpoints/best-<epoch>.ckpt (written by recsys fit)"
    if not ckpt:
        raise ConfigError(f"`recsys {subcommand}` needs a trained checkpoint; without one it would score an "
                          "untrained model", where="--ckpt_path", fix=f"pass {example}")
    if ckpt in ("best", "last", "hpc"):
        raise ConfigError(f"{ckpt!r} only means something inside `recsys fit`", where=f"--ckpt_path {ckpt}",
                          fix=f"pass the checkpoint file: {example}")
    if not Path(ckpt).exists():
        raise ConfigError("checkpoint not found", where=f"--ckpt_path {ckpt}", fix=f"check the path: {example}")


def default_predict_out(ckpt: str | None) -> str:
    """``predict`` without ``--predict_out``: ``predictions.parquet`` in the checkpoint's run folder
    (``runs/x/version_0/checkpoints/best.ckpt`` -> ``runs/x/version_0/predictions.parquet``)."""
    folder = Path(ckpt or ".").resolve().parent if ckpt else Path(".")
    if folder.name == "checkpoints":
        folder = folder.parent
    return str(folder / "predictions.parquet")


class SaveConfigAfterRestore(SaveConfigCallback):
    """Lightning's config.yaml writer; a resumed fit writes it only once the checkpoint was
    accepted (a refused resume leaves the run's config.yaml as it was)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        # (trainer.ckpt_path is not set yet at setup: the config says whether this fit resumes)
        resuming = trainer.ckpt_path or (self.config.get("ckpt_path") if hasattr(self.config, "get") else None)
        if stage == "fit" and resuming:
            return
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, "fit")


def _logger_root(cfg) -> tuple[object | None, Path | None]:
    """(logger init_args namespace, its save_dir/name directory) of a trainer config, when the
    logger is one class_path entry with a save_dir (CSVLogger, TensorBoardLogger)."""
    logger = cfg.trainer.get("logger") if cfg.get("trainer") is not None else None
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    init = getattr(logger, "init_args", None) if logger is not None and not isinstance(logger, bool) else None
    if init is None or not init.get("save_dir"):
        return init, None
    name = init.get("name")
    return init, Path(init.save_dir) / name if name else Path(init.save_dir)


def _launcher_rank() -> int:
    """This process's rank as set by a launcher (Lightning's own, torchrun, SLURM); 0 if none."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit() and int(os.environ[var]) != 0:
            return int(os.environ[var])
    return 0


def check_resume_sampler(ckpt_path: str | Path, cfg) -> None:
    """A fit resumed from ``ckpt_path`` must keep the batch size and shuffling seed its sampler
    was saved with; refuse a different one now, before the run folder, its metrics.csv or its
    config.yaml are touched (the sampler would refuse it only after Lightning restored the run)."""
    from recsys.checkpoint import read_checkpoint
    from recsys.errors import DataError

    try:
        ckpt = read_checkpoint(ckpt_path, keys=())
    except RecsysError:
        return  # reported, with its fix, when Lightning reads it
    loops = ckpt.get("loops") if isinstance(ckpt, dict) else None
    fit_loop = loops.get("fit_loop", {}) if isinstance(loops, dict) else {}
    states = (fit_loop.get("state_dict") or {}).get("combined_loader") if isinstance(fit_loop, dict) else None
    data = cfg.get("data")
    init = data.get("init_args") if data is not None and hasattr(data, "get") else None
    if not isinstance(states, list) or init is None:
        return
    for state in states:
        if not isinstance(state, dict):
            continue
        for key in ("batch_size", "seed"):
            want = init.get(key)
            if want is not None and key in state and state[key] != want:
                raise DataError(f"cannot resume: the checkpoint's sampler had {key}={state[key]!r}, this run has "
                                f"{want!r}", where=f"--ckpt_path {ckpt_path}",
                                fix=f"resume with data.init_args.{key} {state[key]!r} (the interrupted run's), or "
                                    "start a new run without --ckpt_path")


def _resolve_last(cfg) -> tuple[Path, Path] | None:
    """``fit --ckpt_path last``: the newest ``last*.ckpt`` (file, or directory of a sharded run)
    under the config's log directory; the resumed run logs into the same ``version_N``
    directory (its old ``metrics.csv`` is kept as ``metrics.part-K.csv``), so its checkpoint
    callbacks continue their own history. Nothing found: Lightning trains from scratch.
    Returns ``(metrics.csv, metrics.part-K.csv)`` when it moved one (so a run that fails before
    writing new metrics can move it back), else None."""
    init, root = _logger_root(cfg)
    default_root = Path(cfg.trainer.get("default_root_dir") or Path.cwd() / "lightning_logs")
    found: list[Path] = []
    for r in (root, default_root):  # the logger's own directory first: default_root_dir may be shared
        if r is not None and r.is_dir():
            found = [p for p in r.rglob("last*.ckpt") if not p.name.startswith(".") and (p.is_file() or p.is_dir())]
            if found:
                break
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    kept = None
    cfg.ckpt_path = str(newest)
    check_resume_sampler(newest, cfg)  # before the run folder is touched
    if init is not None and root is not None and init.get("version") is None:
        try:
            version_dir = newest.relative_to(root).parts[0]
        except ValueError:
            return None
        if (root / version_dir).is_dir():
            init.version = version_dir
            # CSVLogger warns that "previous log files in this directory will be deleted": it
            # only deletes metrics.csv, which recsys has just kept as metrics.part-K.csv below
            warnings.filterwarnings("ignore", message=r".*Previous log files in this directory will be deleted")
            # and ModelCheckpoint that the resumed run's own checkpoint folder is not empty
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            old = root / version_dir / "metrics.csv"
            if old.is_file() and _launcher_rank() == 0:
                k = 1
                while (root / version_dir / f"metrics.part-{k}.csv").exists():
                    k += 1
                kept = (old, root / version_dir / f"metrics.part-{k}.csv")
                os.replace(*kept)
    if _launcher_rank() == 0:
        print(f"recsys: resuming from {newest}")
    return kept


def data_rates(datamodule, split: str) -> dict | None:
    """``{"rows", "missing_rate", "oov_rate"}`` of a split as encoded for the model (None for a
    data module that does not hold its splits in memory, or a split it does not have)."""
    encoded = getattr(datamodule, "encoded", None)
    if not callable(encoded):
        return None
    try:
        enc = encoded(split)
    except RecsysError:
        return None
    if not hasattr(enc, "missing_rate"):
        return None
    return {"rows": len(enc), "missing_rate": dict(enc.missing_rate), "oov_rate": dict(enc.oov_rate)}


def _warn_data(datamodule, split: str, check_oov: bool = True) -> None:
    """Print the one-line missing (> 1%) / unseen-value (> 5%) warnings of ``split`` to stderr."""
    import sys

    encoded = getattr(datamodule, "encoded", None)
    if not callable(encoded):
        return
    from recsys.data.sources import BUILTIN

    if split != "predict" and getattr(datamodule, "dataset", None) in BUILTIN:
        return  # recsys's own data sets: nothing for the user to fix (the rates are in metrics.json)
    from recsys.data.preprocess import data_warnings

    try:
        enc = encoded(split)
    except RecsysError:
        return
    source = getattr(datamodule, "predict_path", None) if split == "predict" else None
    where = f"{source or getattr(datamodule, '_source', None) or 'the data'} [{split}]"
    for line in data_warnings(enc, where, check_oov=check_oov):
        print(line, file=sys.stderr)


def write_eval_metrics(trainer, datamodule, split: str) -> Path | None:
    """``recsys validate``/``test``: write ``<log_dir>/metrics.json`` with the split's metrics and
    its missing / unseen-value rates per field."""
    if not trainer.is_global_zero or trainer.logger is None or trainer.log_dir is None:
        return None  # no run folder of its own: never write over a fit's metrics.json
    from recsys.utils import atomic_write_text

    prefix = "val/" if split == "valid" else "test/"
    metrics = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    out = {split: metrics, "data": {split: data_rates(datamodule, split)}}
    path = Path(trainer.log_dir) / "metrics.json"
    atomic_write_text(path, json.dumps(out, indent=2))
    return path


def write_fit_metrics(trainer, task, datamodule) -> dict:
    """Evaluate the best checkpoint on valid (and test if present); write ``metrics.json``."""
    from recsys.utils import atomic_write_text

    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") or None
    # the path itself, not "best": Lightning warns about "best" whenever a second ModelCheckpoint
    # exists (recsys's own --save_every_n_steps one), though the first one's best is the one meant
    ckpt_path = best or None
    metrics: dict = {
        "model": task.model.config["class_path"],
        "dataset": getattr(datamodule, "dataset", None),
        "best_checkpoint": best,
        "epochs_trained": trainer.current_epoch,
        "train": {},
    }
    throughput = getattr(task, "throughput", [])
    if throughput:
        metrics["train"]["samples_per_s_median"] = statistics.median(throughput)
    for split, fn in (("valid", trainer.validate), ("test", trainer.test)):
        has_split = getattr(datamodule, "has_split", None)
        if callable(has_split):  # cheap check (a streaming data module would load the split)
            if not has_split(split):
                continue
        else:
            try:
                datamodule.frame(split)
            except RecsysError:
                continue
        res = fn(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
        prefix = "val" if split == "valid" else "test"
        metrics[split] = {k.split("/", 1)[1]: float(v) for k, v in res.items() if k.startswith(prefix + "/")}
    rates = {split: data_rates(datamodule, split) for split in ("train", "valid", "test")}
    metrics["data"] = {k: v for k, v in rates.items() if v is not None}
    out_dir = Path(trainer.log_dir or trainer.default_root_dir)
    path = out_dir / "metrics.json"
    metrics["metrics_file"] = str(path)
    metrics["world_size"] = trainer.world_size
    if not trainer.is_global_zero:  # every rank evaluated (collectives); one writes
        return metrics
    atomic_write_text(path, json.dumps({k: v for k, v in metrics.items() if k != "metrics_file"}, indent=2))

    def line(split: str) -> str:
        m = metrics[split]
        if "auc" in m:
            return f"{split} auc {m['auc']:.4f} logloss {m['logloss']:.4f}"
        shown = [k for k in ("recall@100", "ndcg@10") if k in m] or sorted(m)[:2]
        return f"{split} " + " ".join(f"{k} {m[k]:.4f}" for k in shown)

    summary = ", ".join(line(s) for s in ("valid", "test") if metrics.get(s))
    print(f"recsys: {summary}; metrics written to {path}")
    return metrics


# ------------------------------------------------------------------------------ the Python API


def _config_dict(config: Mapping[str, Any] | str | Path) -> dict:
    """A config as a plain dict: a mapping (deep-copied, so the caller's stays untouched) or a YAML file."""
    import copy

    from recsys.config_errors import read_config_file

    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    return read_config_file(config)


def _args(subcommand: str | None, config: Mapping[str, Any] | str | Path, overrides: Sequence[str]):
    """Lightning CLI ``args``: a YAML path (with argv-style ``overrides``) stays a path, so
    relative paths and ``--print_config`` behave as on the command line; a dict is passed as is."""
    if isinstance(config, Mapping):
        if overrides:
            raise ConfigError("overrides go into the config dict itself", where="overrides",
                              fix="set the keys in the dict, or pass a YAML path with overrides")
        cfg = _config_dict(config)
        return {"subcommand": subcommand, subcommand: cfg} if subcommand else cfg
    if not Path(config).is_file():
        raise ConfigError("config file not found", where=str(config), fix="pass experiments/<name>.yaml")
    return [*([subcommand] if subcommand else []), "--config", str(config), *overrides]


def make_cli(args: list[str] | Mapping[str, Any], *, run: bool = True, callbacks: Sequence = (),
             allow_classes: Sequence[str] = (), cli_class: type[ExperimentCLI] | None = None,
             trainer_defaults: Mapping[str, Any] | None = None) -> ExperimentCLI:
    """The one constructor of the experiment CLI: ``args`` is an argv list (``["fit", "--config",
    X]``) or a parsed config (``{"subcommand": "fit", "fit": {...}}``, or with ``run=False`` the
    config dict itself). ``callbacks`` are extra Lightning callbacks added to the config's (e.g. a
    pruning callback, which cannot come from YAML); ``allow_classes``: packages beyond
    :data:`~recsys.utils.ALLOWED_PACKAGES` whose classes the config may instantiate;
    ``trainer_defaults``: Trainer arguments a config may override (e.g. ``enable_progress_bar``)."""
    import pytorch_lightning as L

    from recsys.data.datamodule import CTRDataModule  # noqa: F401 - importable short names
    from recsys.tasks import distributed  # noqa: F401 - registers the `recsys_ddp` strategy
    from recsys.tasks.ranking import RankingTask  # noqa: F401

    # callers hand their args over explicitly; Lightning warns whenever sys.argv is not empty
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    extra = [a for a in allow_classes if a]
    if extra:  # model factories (build_model) check class paths too: let them see the opt-in
        os.environ[ALLOW_ENV] = ",".join([*filter(None, os.environ.get(ALLOW_ENV, "").split(",")), *extra])
    from recsys.config_errors import import_policy

    base = cli_class or ExperimentCLI
    cls = type(base.__name__, (base,), {"allow_classes": extra})
    with import_policy(extra):  # class paths checked on the dotted path, before any import
        return cls(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            seed_everything_default=0,
            save_config_callback=SaveConfigAfterRestore,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            trainer_defaults={**(trainer_defaults or {}), **({"callbacks": list(callbacks)} if callbacks else {})}
            or None,
        )


@dataclass
class FitResult:
    """What :func:`fit` returns. ``metrics``: the content of ``metrics.json`` (valid/test AUC,
    logloss, best checkpoint, ...); empty when the run was interrupted or ``test_after_fit`` is off."""

    task: Any
    datamodule: Any
    trainer: Any
    metrics: dict = field(default_factory=dict)
    cli: Any = None


def build(config: Mapping[str, Any] | str | Path, *, overrides: Sequence[str] = (),
          allow_classes: Sequence[str] = (), cli_class: type[ExperimentCLI] | None = None) -> ExperimentCLI:
    """Parse and instantiate an experiment (task, data module, trainer) without running anything:
    ``cli.model``, ``cli.datamodule``, ``cli.trainer``, ``cli.config``, ``cli.parser``.

    ``config``: a YAML path (``overrides`` as on the command line, e.g. ``["--trainer.max_epochs",
    "2"]``) or a config dict. Raises :class:`ConfigError` when it does not parse."""
    try:
        return make_cli(_args(None, config, overrides), run=False, allow_classes=allow_classes, cli_class=cli_class)
    except SystemExit as e:  # jsonargparse printed its own message
        raise ConfigError("the config (or an override) does not parse; see the message above",
                          where=str(config) if not isinstance(config, Mapping) else "config") from e


def fit(config: Mapping[str, Any] | str | Path, *, overrides: Sequence[str] = (), callbacks: Sequence = (),
        allow_classes: Sequence[str] = (), cli_class: type[ExperimentCLI] | None = None) -> FitResult:
    """Run ``recsys fit`` on a config (YAML path or dict) in this process; returns the trained task,
    the data module, the trainer and ``metrics.json``'s content. A config the parser rejects
    raises ``SystemExit`` as on the command line (its message on stderr)."""
    cli = make_cli(_args("fit", config, overrides), callbacks=callbacks, allow_classes=allow_classes,
                   cli_class=cli_class)
    metrics = {k: v for k, v in (cli.fit_metrics or {}).items() if k != "metrics_file"}
    return FitResult(task=cli.model, datamodule=cli.datamodule, trainer=cli.trainer, metrics=metrics, cli=cli)


class _Parsed(Exception):
    pass


class _ParseOnly(ExperimentCLI):
    def before_instantiate_classes(self) -> None:
        raise _Parsed


def check_config(config: Mapping[str, Any] | str | Path, subcommand: str = "fit") -> str | None:
    """Parse a config through the experiment's argument parser without building anything (class
    paths are checked against the allowlist before any import): None when it parses, else the
    reason (the ConfigError's ``where: message`` with the closest valid key, or the parser's text)."""
    import contextlib
    import io
    import logging

    err = io.StringIO()
    names = ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        for n in names:  # no "Seed set to 0" per check
            logging.getLogger(n).setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            make_cli(_args(subcommand, config, ()), cli_class=_ParseOnly)
    except _Parsed:
        return None
    except SystemExit:
        return err.getvalue() or "rejected"
    except RecsysError as e:
        return f"{e.where}: {e.message}" if e.where else e.message
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
    return None


__all__ = ["ExperimentCLI", "FitResult", "build", "fit", "check_config", "make_cli", "write_fit_metrics",
           "class_paths", "check_class_paths"]

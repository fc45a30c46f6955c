"""The ``recsys`` command.

Trainer subcommands go through Lightning's CLI (``recsys fit|validate|test|predict --config
experiments/<x>.yaml``, ``--print_config``, dotted overrides such as ``--model.init_args.lr 3e-4``).
After ``fit``, recsys evaluates the best checkpoint on the valid and test splits and writes
``metrics.json`` next to the run's logs. ``predict`` writes a parquet of key columns + scores
(``--predict_out FILE``, default ``predictions.parquet`` in the checkpoint's run folder; no new
log folder). ``validate``, ``test`` and ``predict`` refuse to run without ``--ckpt_path``.

Other subcommands (``rank-features``, ``search-dims``, ``tune``, ``report``, ``retrieve``) register
themselves with :func:`register_command`; ``recsys --help`` lists whatever is registered.

User errors (:class:`~recsys.errors.RecsysError`) print one line and exit with status 2.

Safety: a config may only instantiate classes from the packages in :data:`ALLOWED_PACKAGES`
(recsys, torch, torchrec, pytorch_lightning/lightning); others need an explicit opt-in on the
command line (``--allow_classes mypkg[,otherpkg]``) or in the environment
(``RECSYS_ALLOW_CLASSES=mypkg``), never in the YAML itself. Checkpoints are read with
``weights_only=True`` everywhere (resume included) and written atomically.

Resume: ``recsys fit --config X.yaml --ckpt_path last`` continues from the newest ``last*.ckpt``
of the config's log directory, in the same ``version_N`` directory; with
``--save_every_n_steps N`` a run writes ``last.ckpt`` every N training steps, so a run killed
mid-epoch resumes mid-epoch and ends with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path
from recsys.errors import RecsysError

TRAINER_COMMANDS = {
    "fit": "train a model from a YAML config (then test the best checkpoint, write metrics.json)",
    "validate": "evaluate a checkpoint on the valid split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "score the predict file (or the test split) and write a parquet of keys + scores",
}

# Subcommands beyond the trainer's: name -> (one-line help, "module:function"). The function
# takes the remaining argv and returns an exit code. Modules are imported only when their
# command runs, so `recsys --help` stays fast; a command whose module is absent is not listed.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "rank-features": ("rank features by cardinality-normalized mutual information; data-quality report",
                      "recsys.features.cli:main"),
    "report": ("offline AUC report for one or more checkpoints (HTML, Markdown, metrics.json)",
               "recsys.reports.cli:main"),
    "search-dims": ("search per-field embedding widths (DNIS) under a parameter budget", "recsys.features.dims_cli:main"),
    "tune": ("Optuna study over a config and a search space", "recsys.tuning.cli:main"),
    "retrieve": ("candidate retrieval (single vector or kNN-Embed) from a trained two-tower checkpoint",
                 "recsys.retrieval.cli:main"),
}


from recsys.utils import ALLOW_ENV, ALLOWED_PACKAGES, check_class_allowed  # noqa: E402,F401
from recsys.utils import split_names as _split_names  # noqa: E402


def _pop_allow_classes(argv: list[str]) -> tuple[list[str], list[str]]:
    """Remove ``--allow_classes X`` / ``--allow_classes=X`` from ``argv``; return (argv, packages).
    A command-line flag only: a YAML config cannot widen what it may instantiate."""
    out, allowed = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--allow_classes":
            if i + 1 >= len(argv):
                from recsys.errors import ConfigError

                raise ConfigError("--allow_classes needs a value", where="--allow_classes",
                                  fix="e.g. --allow_classes mypkg,otherpkg.models")
            allowed += _split_names(argv[i + 1])
            i += 2
            continue
        if a.startswith("--allow_classes="):
            allowed += _split_names(a.split("=", 1)[1])
        else:
            out.append(a)
        i += 1
    return out, allowed


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


def register_command(name: str, help: str, target: str) -> None:
    """Add ``recsys NAME`` implemented by ``target`` = ``"module:function"`` (``fn(argv) -> int``)."""
    EXTRA_COMMANDS[name] = (help, target)


def _available(target: str) -> bool:
    """Whether ``target``'s module exists, found on disk without importing it or its packages
    (``find_spec("a.b.c")`` would import ``a.b``, and recsys's packages import torch)."""
    parts = target.split(":")[0].split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if len(parts) == 1:
        return True
    locations = list(spec.submodule_search_locations or [])
    for i, part in enumerate(parts[1:], start=1):
        last = i == len(parts) - 1
        found = []
        for loc in locations:
            pkg = Path(loc) / part
            if (pkg / "__init__.py").is_file():
                found.append(str(pkg))
            elif last and (Path(loc) / f"{part}.py").is_file():
                return True
        if not found:
            return False
        if last:
            return True
        locations = found
    return False


def _run_extra(name: str, argv: list[str]) -> int:
    module, _, func = EXTRA_COMMANDS[name][1].partition(":")
    return int(getattr(importlib.import_module(module), func)(argv) or 0)


def _usage() -> str:
    lines = ["usage: recsys <command> [options]", "", "commands:"]
    for name, help in TRAINER_COMMANDS.items():
        lines.append(f"  {name:<14}{help}")
    for name, (help, target) in EXTRA_COMMANDS.items():
        if _available(target):
            lines.append(f"  {name:<14}{help}")
    lines += ["", "`recsys <command> --help` shows a command's options; trainer commands take",
              "`--config experiments/<x>.yaml` (see experiments/), `--print_config`, and `--verbose`",
              "(Lightning's own info lines). Options may be written --a-b or --a_b."]
    return "\n".join(lines)


def _make_cli_class():
    from pytorch_lightning.cli import LightningCLI

    from recsys.tasks.callbacks import PredictionWriter

    class RecsysCLI(LightningCLI):
        allow_classes: list[str] = []

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
                    _resolve_last(cfg)
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
            from recsys.reports import build_report

            build_report([ckpt], data=split, out_dir=out)
            print(f"recsys: report written to {out / 'report.html'}")

        def after_fit(self) -> None:
            cfg = self.config[self.subcommand]
            if not cfg.get("test_after_fit", True) or self.trainer.interrupted:
                return
            metrics = write_fit_metrics(self.trainer, self.model, self.datamodule)
            if cfg.get("report") and metrics.get("best_checkpoint") and self.trainer.is_global_zero:
                self._write_report(metrics["best_checkpoint"], "test" if "test" in metrics else "valid",
                                   Path(metrics["metrics_file"]).parent / "report")

    return RecsysCLI


def check_scoring_checkpoint(subcommand: str, ckpt: str | None) -> None:
    """``validate``/``test``/``predict`` score a trained model: without ``--ckpt_path`` (an existing
    checkpoint file or sharded-checkpoint directory) they would score freshly initialised weights."""
    from recsys.errors import ConfigError

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


def _make_save_config_class():
    from pytorch_lightning.cli import SaveConfigCallback

    class SaveConfigAfterRestore(SaveConfigCallback):
        """Lightning's config.yaml writer; a resumed fit writes it only once the checkpoint was
        accepted (a refused resume leaves the run's config.yaml as it was)."""

        def setup(self, trainer, pl_module, stage: str) -> None:
            if stage == "fit" and trainer.ckpt_path:
                return
            super().setup(trainer, pl_module, stage)

        def on_train_start(self, trainer, pl_module) -> None:
            super().setup(trainer, pl_module, "fit")

    return SaveConfigAfterRestore


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


def _resolve_last(cfg) -> None:
    """``fit --ckpt_path last``: the newest ``last*.ckpt`` (file, or directory of a sharded run)
    under the config's log directory; the resumed run logs into the same ``version_N``
    directory (its old ``metrics.csv`` is kept as ``metrics.part-K.csv``), so its checkpoint
    callbacks continue their own history. Nothing found: Lightning trains from scratch."""
    init, root = _logger_root(cfg)
    default_root = Path(cfg.trainer.get("default_root_dir") or Path.cwd() / "lightning_logs")
    found: list[Path] = []
    for r in (root, default_root):  # the logger's own directory first: default_root_dir may be shared
        if r is not None and r.is_dir():
            found = [p for p in r.rglob("last*.ckpt") if not p.name.startswith(".") and (p.is_file() or p.is_dir())]
            if found:
                break
    if not found:
        return
    newest = max(found, key=lambda p: p.stat().st_mtime)
    cfg.ckpt_path = str(newest)
    if init is not None and root is not None and init.get("version") is None:
        try:
            version_dir = newest.relative_to(root).parts[0]
        except ValueError:
            return
        if (root / version_dir).is_dir():
            init.version = version_dir
            # CSVLogger warns that "previous log files in this directory will be deleted": it
            # only deletes metrics.csv, which recsys has just kept as metrics.part-K.csv below
            import warnings

            warnings.filterwarnings("ignore", message=r".*Previous log files in this directory will be deleted")
            # and ModelCheckpoint that the resumed run's own checkpoint folder is not empty
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            old = root / version_dir / "metrics.csv"
            if old.is_file() and _launcher_rank() == 0:
                k = 1
                while (root / version_dir / f"metrics.part-{k}.csv").exists():
                    k += 1
                os.replace(old, root / version_dir / f"metrics.part-{k}.csv")
    if _launcher_rank() == 0:
        print(f"recsys: resuming from {newest}")


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
    if not trainer.is_global_zero or trainer.log_dir is None:
        return None
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


def run_trainer_cli(argv: list[str], callbacks: list | None = None, allow_classes: list[str] | None = None):
    """Run a Lightning trainer subcommand; returns the LightningCLI object.

    ``callbacks`` are extra Lightning callbacks added to those of the config (for programmatic
    callers such as ``recsys tune``'s pruning callback, which cannot come from YAML).
    ``allow_classes``: packages beyond :data:`ALLOWED_PACKAGES` whose classes the config may
    instantiate (also ``--allow_classes`` in ``argv``).
    """
    import pytorch_lightning as L

    from recsys.data.datamodule import CTRDataModule  # noqa: F401 - importable short names
    from recsys.tasks import distributed  # noqa: F401 - registers the `recsys_ddp` strategy
    from recsys.tasks.ranking import RankingTask  # noqa: F401

    from recsys.console import canonical_flags, pop_flag, progress_default, quiet_libraries

    argv, verbose = pop_flag(canonical_flags(argv), "--verbose")
    # after importing Lightning (its import sets its loggers' levels); --verbose keeps its INFO lines
    quiet_libraries(verbose=verbose)
    argv, allowed = _pop_allow_classes(list(argv))
    extra = list(allow_classes or []) + allowed
    if extra:  # model factories (build_model) check class paths too: let them see the opt-in
        os.environ[ALLOW_ENV] = ",".join([*filter(None, os.environ.get(ALLOW_ENV, "").split(",")), *extra])
    from recsys.config_errors import import_policy

    cls = _make_cli_class()
    cls.allow_classes = extra
    with import_policy(extra):  # class paths checked on the dotted path, before any import
        return cls(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            seed_everything_default=0,
            save_config_callback=_make_save_config_class(),
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            # a config or `--trainer.enable_progress_bar` decides; otherwise a bar on a terminal only
            trainer_defaults={"enable_progress_bar": progress_default(sys.stdout),  # Lightning's bar writes there
                              **({"callbacks": list(callbacks)} if callbacks else {})},
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    from recsys.console import quiet_libraries

    quiet_libraries(verbose="--verbose" in argv)  # every command; trainer commands pop --verbose later
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    try:
        if argv[0] in TRAINER_COMMANDS:
            run_trainer_cli(argv)
            return 0
        if argv[0] in EXTRA_COMMANDS and _available(EXTRA_COMMANDS[argv[0]][1]):
            return _run_extra(argv[0], argv[1:])
        print(f"recsys: error: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    except RecsysError as e:
        print(f"recsys: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsys: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - stop signals and lost ranks end a run with one line
        from recsys.tasks.callbacks import StopRequested
        from recsys.tasks.distributed import is_peer_failure

        if isinstance(e, StopRequested):
            if _launcher_rank() == 0:
                print(f"recsys: {e}", file=sys.stderr)
            return 128 + e.signum
        if is_peer_failure(e):
            first = str(e).splitlines()[0][:200] if str(e) else ""
            print(f"recsys: error: rank {_launcher_rank()}: a collective with the other training processes failed "
                  f"({type(e).__name__}: {first}); a process died, hung or was stopped, so this one stops too "
                  "(resume from the newest checkpoint with --ckpt_path last)", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())

"""The ``recsys`` command.

Trainer subcommands go through Lightning's CLI (``recsys fit|validate|test|predict --config
experiments/<x>.yaml``, ``--print_config``, dotted overrides such as ``--model.init_args.lr 3e-4``).
After ``fit``, recsys evaluates the best checkpoint on the valid and test splits and writes
``metrics.json`` next to the run's logs. ``predict`` writes a parquet of key columns + scores
(``--predict_out FILE``).

Other subcommands (``rank-features``, ``search-dims``, ``tune``, ``report``, ``retrieve``) register
themselves with :func:`register_command`; ``recsys --help`` lists whatever is registered.

User errors (:class:`~recsys.errors.RecsysError`) print one line and exit with status 2.
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


def register_command(name: str, help: str, target: str) -> None:
    """Add ``recsys NAME`` implemented by ``target`` = ``"module:function"`` (``fn(argv) -> int``)."""
    EXTRA_COMMANDS[name] = (help, target)


def _available(target: str) -> bool:
    module = target.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
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
              "`--config experiments/<x>.yaml` (see experiments/) and `--print_config`."]
    return "\n".join(lines)


def _make_cli_class():
    from pytorch_lightning.cli import LightningCLI

    from recsys.tasks.callbacks import PredictionWriter

    class RecsysCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("data.features", "model.init_args.features", apply_on="instantiate")
            parser.add_argument("--predict_out", type=str | None, default=None,
                                help="predict: parquet file for keys + scores (default: <log_dir>/predictions.parquet)")
            parser.add_argument("--test_after_fit", type=bool, default=True,
                                help="fit: evaluate the best checkpoint on valid and test and write metrics.json")
            parser.add_argument("--report", type=bool, default=False,
                                help="fit/test: also write the offline AUC report of the best (fit) or given "
                                     "(test --ckpt_path) checkpoint to <log_dir>/report")

        def before_instantiate_classes(self) -> None:
            # scoring a checkpoint: use the encoders stored in it, not a refit on today's data
            cfg = self.config.get(self.subcommand) if self.subcommand else None
            if cfg is None or self.subcommand == "fit":
                return
            ckpt = cfg.get("ckpt_path")
            if ckpt and ckpt not in ("best", "last", "hpc") and not cfg.data.init_args.get("features_from"):
                cfg.data.init_args.features_from = ckpt

        def before_predict(self) -> None:
            cfg = self.config[self.subcommand]
            out = cfg.get("predict_out") or str(Path(self.trainer.log_dir or ".") / "predictions.parquet")
            self.trainer.callbacks.append(PredictionWriter(out))

        def after_test(self) -> None:
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
            if cfg.get("report") and metrics.get("best_checkpoint"):
                self._write_report(metrics["best_checkpoint"], "test" if "test" in metrics else "valid",
                                   Path(metrics["metrics_file"]).parent / "report")

    return RecsysCLI


def write_fit_metrics(trainer, task, datamodule) -> dict:
    """Evaluate the best checkpoint on valid (and test if present); write ``metrics.json``."""
    from recsys.utils import atomic_write_text

    ckpt = trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") or None
    ckpt_path = "best" if best else None
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
        try:
            datamodule.frame(split)
        except RecsysError:
            continue
        res = fn(task, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)[0]
        prefix = "val" if split == "valid" else "test"
        metrics[split] = {k.split("/", 1)[1]: float(v) for k, v in res.items() if k.startswith(prefix + "/")}
    out_dir = Path(trainer.log_dir or trainer.default_root_dir)
    path = out_dir / "metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2))
    metrics["metrics_file"] = str(path)
    summary = ", ".join(f"{s} auc {metrics[s]['auc']:.4f} logloss {metrics[s]['logloss']:.4f}"
                        for s in ("valid", "test") if s in metrics and "auc" in metrics[s])
    print(f"recsys: {summary}; metrics written to {path}")
    return metrics


def run_trainer_cli(argv: list[str], callbacks: list | None = None):
    """Run a Lightning trainer subcommand; returns the LightningCLI object.

    ``callbacks`` are extra Lightning callbacks added to those of the config (for programmatic
    callers such as ``recsys tune``'s pruning callback, which cannot come from YAML).
    """
    import pytorch_lightning as L

    from recsys.data.datamodule import CTRDataModule  # noqa: F401 - importable short names
    from recsys.tasks.ranking import RankingTask  # noqa: F401

    cls = _make_cli_class()
    return cls(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        trainer_defaults={"callbacks": list(callbacks)} if callbacks else None,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
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


if __name__ == "__main__":
    sys.exit(main())

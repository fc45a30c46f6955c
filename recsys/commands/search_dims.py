"""``recsys search-dims``: DNIS embedding-width search under a parameter budget.

    recsys search-dims --config experiments/deepfm_ml100k.yaml --budget 0.5 --out runs/dims_deepfm

reads the experiment YAML exactly as ``recsys fit`` does (LightningCLI; extra arguments such as
``--data.init_args.dataset_options.n_rows 5000`` are passed on as overrides), searches alpha with
:class:`~recsys.tasks.dims.DimensionSearchTask` (warm start, then bi-level search), prunes to
``--budget`` x the full-width table parameters and writes to ``--out``:

* ``config.yaml``: the experiment config with ``model.init_args.model.init_args.dims`` set to
  the searched widths (and ``_dims`` appended to the trainer's run directory / logger name, so a
  retrain does not mix with the full-width runs). ``recsys fit --config OUT/config.yaml``
  retrains it from scratch.
* ``summary.json`` and ``summary.md``: table parameters before/after (and the budget), all
  model parameters before/after, widths per table and per frequency block, the search history.
* ``widths.png``: kept vs full width per table and per (table, frequency block).

Every file is written to a temporary name and renamed when complete; nothing is written when
the search fails.
"""

from __future__ import annotations

import argparse
import sys
import io
import json
from pathlib import Path
from typing import Any

from recsys.console import ArgumentParser, add_progress_flags, canonical_flags, resolve_progress
from recsys.errors import ConfigError, RecsysError


def _freq_blocks(text: str) -> int | list[float]:
    try:
        if "," in text or "." in text:
            return [float(x) for x in text.split(",") if x.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or comma-separated fractions, got {text!r}") from None


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="recsys search-dims", allow_abbrev=False,
                                description="DNIS search of per-table embedding widths under a parameter budget. "
                                            "Unknown --options are passed to the config parser as overrides.")
    p.add_argument("--config", required=True, help="experiment YAML (as for `recsys fit --config`)")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of the full-width table parameters (0, 1]")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--warm_start_epochs", type=int, default=2, help="plain training epochs before the search")
    p.add_argument("--search_epochs", type=int, default=3, help="bi-level search epochs")
    p.add_argument("--lr", type=float, default=None, help="Adam lr of the weights (default: the config's lr)")
    p.add_argument("--alpha_lr", type=float, default=1e-2, help="SGD lr of alpha")
    p.add_argument("--l1", type=float, default=1e-5, help="L1 coefficient on alpha")
    p.add_argument("--grad_norm", type=_bool, default=True, help="per-row normalization of alpha's gradient")
    p.add_argument("--train_network", type=_bool, default=True, help="train the network too during the search")
    p.add_argument("--freq_blocks", type=_freq_blocks, default=4,
                   help="frequency blocks per table: an int S (equal occurrence shares) or fractions, e.g. 0.1,0.2,0.7")
    p.add_argument("--dim_block", type=int, default=1, help="dims per dimension block")
    p.add_argument("--criterion", choices=["magnitude", "alpha"], default="magnitude",
                   help="pruning importance: |e * alpha| (default) or alpha")
    p.add_argument("--min_width", type=int, default=1, help="dims every table keeps")
    add_progress_flags(p)
    return p


def load_experiment(config: str, overrides: list[str]):
    """``(cli, task, datamodule)`` of an experiment YAML, parsed and instantiated as ``recsys fit``
    would, without running anything (:func:`recsys.tasks.experiment.build`)."""
    from recsys.tasks.experiment import build

    if not Path(config).is_file():
        raise ConfigError("config file not found", where=config, fix="check --config")
    cli = build(config, overrides=list(overrides))
    task = cli.model
    if not hasattr(task, "model") or not hasattr(cli.datamodule, "features"):
        raise ConfigError("search-dims needs a RankingTask config with a CTRDataModule", where=config)
    return cli, task, cli.datamodule


def searched_config_yaml(cli, model_config: dict[str, Any], source: str, budget: float) -> str:
    """The experiment config (non-default values) with the searched ``dims``, as YAML."""
    cfg = cli.config.clone()
    cfg.model.init_args.model.init_args.dims = dict(model_config["init_args"]["dims"])
    trainer = cfg.trainer
    if trainer.get("default_root_dir"):
        trainer.default_root_dir = f"{trainer.default_root_dir}_dims"
    logger = trainer.get("logger")
    if logger is not None and not isinstance(logger, (bool, list)) and logger.get("init_args") is not None \
            and logger.init_args.get("name"):
        logger.init_args.name = f"{logger.init_args.name}_dims"
    text = cli.parser.dump(cfg, skip_default=True)
    header = (f"# Searched by `recsys search-dims` (DNIS) from {source}, budget {budget} of the full-width\n"
              f"# embedding-table parameters. Retrain from scratch: recsys fit --config <this file>\n")
    return header + text


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _markdown(summary: dict[str, Any]) -> str:
    tp = summary["table_parameters"]
    mp = summary["model_parameters"]
    lines = [f"# Embedding-dimension search (DNIS): {summary['model']}", "",
             f"- config: `{summary['config']}`; budget {summary['budget']} ({summary['criterion']} pruning)",
             f"- table parameters: {tp['full']:,} -> {tp['kept']:,} ({tp['kept_fraction']:.1%}; "
             f"budget {tp['budget']:,})",
             f"- model parameters: {mp['full']:,} -> {mp['searched']:,}", "",
             "| table | rows | full width | width | width per frequency block |", "|---|---:|---:|---:|---|"]
    for t, d in summary["tables"].items():
        lines.append(f"| {t} | {d['rows']:,} | {d['full_width']} | {d['width']} | {d['block_widths']} |")
    lines += ["", "| epoch | phase | val logloss | val AUC | mean alpha |", "|---:|---|---:|---:|---:|"]
    for h in summary["history"]:
        lines.append(f"| {h['epoch']} | {h['phase']} | {h['val_logloss']:.4f} | {h['val_auc']:.4f} | "
                     f"{h['alpha_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def search_dims(config: str, budget: float, out: str | Path, overrides: list[str] = (), warm_start_epochs: int = 2,
                search_epochs: int = 3, lr: float | None = None, alpha_lr: float = 1e-2, l1: float = 1e-5,
                grad_norm: bool = True, train_network: bool = True, freq_blocks: int | list[float] = 4,
                dim_block: int = 1, criterion: str = "magnitude", min_width: int = 1,
                progress: bool = False) -> dict[str, Any]:
    """Run the search and write ``config.yaml``, ``summary.json``, ``summary.md``, ``widths.png``
    to ``out``; returns the summary (with ``files``)."""
    import pytorch_lightning as L

    from recsys.models.dnis import plot_widths
    from recsys.models.base import build_model
    from recsys.tasks.dims import DimensionSearchTask
    from recsys.utils import atomic_path, atomic_write_text

    if not 0 < budget <= 1:
        raise ConfigError(f"budget must be in (0, 1], got {budget}", where="--budget")
    if search_epochs < 1 or warm_start_epochs < 0:
        raise ConfigError("search_epochs must be >= 1 and warm_start_epochs >= 0", where="--search_epochs")
    cli, ranking_task, dm = load_experiment(config, list(overrides))
    model = ranking_task.model
    full_params = _count(model)
    features = dm.features
    task = DimensionSearchTask(model, features, warm_start_epochs=warm_start_epochs,
                               lr=lr if lr is not None else ranking_task.hparams.get("lr", 1e-3),
                               alpha_lr=alpha_lr, l1=l1, grad_norm=grad_norm, train_network=train_network,
                               freq_blocks=freq_blocks, dim_block=dim_block)
    accelerator = cli.config.trainer.get("accelerator") or "auto"
    trainer = L.Trainer(max_epochs=warm_start_epochs + search_epochs, accelerator=accelerator, devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    if trainer.interrupted:
        raise KeyboardInterrupt
    result = task.prune(budget, criterion=criterion, min_width=min_width)
    model_config = task.searched_model_config(result)
    searched_params = _count(build_model(model_config, features))
    summary = {
        "model": model.config["class_path"], "config": str(config), "overrides": list(overrides),
        **result.to_dict(),
        "model_parameters": {"full": full_params, "searched": searched_params},
        "dims": dict(model_config["init_args"]["dims"]),
        "search": {k: (list(v) if isinstance(v, tuple) else v) for k, v in task.hparams.items()},
        "search_epochs": search_epochs,
        "history": task.history,
        "alpha": {t: a.detach().cpu().numpy().round(4).tolist() for t, a in task.selection.alpha.items()},
    }
    yaml_text = searched_config_yaml(cli, model_config, str(config), budget)
    png = io.BytesIO()
    plot_widths(result, task.selection, png)
    out = Path(out)
    files = {"config": out / "config.yaml", "summary": out / "summary.json", "markdown": out / "summary.md",
             "plot": out / "widths.png"}
    atomic_write_text(files["config"], yaml_text)
    atomic_write_text(files["summary"], json.dumps(summary, indent=2))
    atomic_write_text(files["markdown"], _markdown(summary))
    with atomic_path(files["plot"]) as tmp:
        tmp.write_bytes(png.getvalue())
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary


def main(argv: list[str] | None = None) -> int:
    args, overrides = build_parser().parse_known_args(argv)
    overrides = canonical_flags(overrides)
    bad = [o for o in overrides if o.startswith("--") and "." not in o.split("=")[0]]
    if bad:
        raise RecsysError(f"unknown option(s) {bad}", where="recsys search-dims",
                          fix="see `recsys search-dims --help`; config overrides are dotted "
                              "(--model.init_args.lr 1e-3)")
    summary = search_dims(args.config, args.budget, args.out, overrides=overrides,
                          warm_start_epochs=args.warm_start_epochs, search_epochs=args.search_epochs, lr=args.lr,
                          alpha_lr=args.alpha_lr, l1=args.l1, grad_norm=args.grad_norm,
                          train_network=args.train_network, freq_blocks=args.freq_blocks, dim_block=args.dim_block,
                          criterion=args.criterion, min_width=args.min_width,
                          progress=resolve_progress(args.progress, sys.stdout))
    tp = summary["table_parameters"]
    widths = ", ".join(f"{t}={w}" for t, w in summary["dims"].items())
    print(f"recsys: table parameters {tp['full']:,} -> {tp['kept']:,} ({tp['kept_fraction']:.1%}); widths: {widths}")
    print(f"recsys: wrote {summary['files']['config']} (retrain: recsys fit --config {summary['files']['config']}), "
          f"{summary['files']['summary']}, {summary['files']['plot']}")
    return 0

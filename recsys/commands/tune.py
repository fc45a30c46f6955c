"""``recsys tune``: an Optuna study over an experiment config and a search space.

    recsys tune --config experiments/deepfm_ml100k.yaml --space experiments/spaces/deepfm_ml100k.yaml \\
        --n-trials 40 [--timeout S] [--storage URL] [--study-name NAME] [--workers K]

Each trial runs `recsys fit` on the config with the sampled overrides in its own run directory
(``<study-dir>/trials/trial_NNNN``), pruned from its per-epoch validation metric. At the end the
study directory holds ``best_config.yaml`` (rerun with ``recsys fit --config``), ``trials.csv`` and
``report.html``. Rerunning the same command resumes the study; more ``recsys tune`` commands on
other hosts with the same ``--storage`` URL and ``--study-name`` work on the same study. See
docs/tuning.md and :mod:`recsys.tuning.study` for the budget/resume rules.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from recsys.console import ArgumentParser
from recsys.errors import ConfigError
from recsys.tuning.space import load_config, load_space


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="recsys tune", description="Optuna study over an experiment config and a "
                                "search space (pruning, parallel workers, resume).")
    p.add_argument("--config", required=True, help="experiment config that `recsys fit --config` runs")
    p.add_argument("--space", required=True, help="search space YAML (see experiments/spaces/)")
    p.add_argument("--n-trials", type=int, default=None,
                   help="the study's total number of trials (a resumed study runs only the missing ones); "
                        "omit to work off the trials already queued (a worker joining a study)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds after which workers start no new trial (queued trials stay for a resume)")
    p.add_argument("--storage", default=None,
                   help="Optuna RDB URL (default: sqlite:///<study-dir>/study.db); "
                        "postgresql://user:pw@host/db for workers on several hosts")
    p.add_argument("--study-name", default=None, help="default: the space file's name")
    p.add_argument("--study-dir", default=None, help="run directories and exports (default: runs/tune/<study-name>)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: the space's sampler.seed)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default=None,
                   help="override the space's pruner")
    p.add_argument("--heartbeat", type=int, default=30,
                   help="seconds between a running trial's heartbeats; 0 = none (default 30)")
    p.add_argument("--grace", type=int, default=120,
                   help="a running trial without a heartbeat for this long is requeued (default 120)")
    p.add_argument("--restart", action="store_true",
                   help="start the study over: delete the stored study of this name (e.g. one created from an "
                        "earlier version of the space); its run folders are kept, renamed trials.replaced-<time>")
    p.add_argument("--export-only", action="store_true", help="write the exports of an existing study and exit")
    p.add_argument("--no-export", action="store_true", help="do not write the exports at the end")
    p.add_argument("--verbose", action="store_true", help="show each trial's Lightning output instead of its log file")
    p.add_argument("--allow_classes", "--allow-classes", default=None, metavar="PKG[,PKG]",
                   help="packages beyond recsys/torch/torchrec/Lightning whose classes the config may name "
                        "(as `recsys fit --allow_classes`; passed to every trial and worker)")
    p.add_argument("--worker-settings", default=None, help=argparse.SUPPRESS)  # internal: a worker process
    return p


def settings_from_args(args: argparse.Namespace):
    from recsys.tuning.study import TuneSettings, default_storage

    space = Path(args.space)
    name = args.study_name or space.stem
    study_dir = Path(args.study_dir or Path("runs") / "tune" / name)
    if args.n_trials is not None and args.n_trials < 0:
        raise ConfigError(f"must be >= 0, got {args.n_trials}", where="--n-trials")
    if args.workers < 1:
        raise ConfigError(f"must be >= 1, got {args.workers}", where="--workers")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"must be > 0 seconds, got {args.timeout}", where="--timeout")
    if args.heartbeat and args.grace <= args.heartbeat:
        raise ConfigError(f"--grace ({args.grace}) must exceed --heartbeat ({args.heartbeat})", where="--grace",
                          fix="use a grace period of a few heartbeats")
    return TuneSettings(config=str(args.config), space=str(space), study_name=name, study_dir=str(study_dir),
                        storage=args.storage or default_storage(study_dir), n_trials=args.n_trials,
                        timeout=args.timeout, workers=args.workers, seed=args.seed, pruner=args.pruner,
                        heartbeat=args.heartbeat, grace=args.grace, verbose=args.verbose)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.allow_classes:  # trials (in-process) and worker processes read the opt-in from the environment
        import os

        from recsys.utils import ALLOW_ENV

        os.environ[ALLOW_ENV] = ",".join(filter(None, [os.environ.get(ALLOW_ENV, ""), args.allow_classes]))
    from recsys.tuning.study import TuneSettings, check_space_against_config, open_study, top_up, work

    if args.worker_settings:  # a worker process started by --workers
        work(TuneSettings.from_json(Path(args.worker_settings).read_text()))
        return 0

    settings = settings_from_args(args)
    space = load_space(settings.space)
    base_cfg = load_config(settings.config)
    study_dir = Path(settings.study_dir)
    from recsys.tuning.study import make_storage, mask_url, storage_lock, storage_url, study_lock

    if args.export_only and args.restart:
        raise ConfigError("--restart and --export-only exclude each other", where="--restart")
    if not args.export_only:
        # the space and one trial's config first: a typo creates no study (and no study.db)
        check_space_against_config(space, base_cfg, settings.config, study_dir)
    # then the storage: an unreachable server, a refused login or a missing driver writes nothing
    storage = make_storage(settings.storage, settings.heartbeat, settings.grace)
    study_dir.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        try:
            study = open_study(settings, space, storage, create=False)
        except KeyError:
            raise ConfigError(f"no study named {settings.study_name!r} in {mask_url(settings.storage)}",
                              where="--export-only",
                              fix="pass the --study-name / --study-dir / --storage the study was run with") from None
        return _export(study, space, settings)
    # hosts that start at once top the study up one after the other (a lock in PostgreSQL; a file lock here)
    with storage_lock(storage, settings.study_name), study_lock(study_dir):
        if args.restart:
            _delete_study(storage, settings, study_dir)
        study = open_study(settings, space, storage)
        added = top_up(study, settings.n_trials) if settings.n_trials is not None else 0
    from optuna.trial import TrialState

    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    print(f"recsys tune: study {settings.study_name!r} in {mask_url(settings.storage)}; {space.metric} "
          f"({space.direction}); {added} trial(s) added, {waiting} queued; {settings.workers} worker(s); "
          f"run dirs under {study_dir / 'trials'}", flush=True)
    print(f"recsys tune: watch it with: optuna-dashboard {mask_url(storage_url(settings.storage))}"
          + (" (*** = the password)" if mask_url(settings.storage) != settings.storage else ""), flush=True)
    t0 = time.time()
    if settings.workers == 1:
        work(settings)
    else:
        _run_workers(settings, study_dir)
    print(f"recsys tune: workers done in {time.time() - t0:.0f}s", flush=True)
    if args.no_export:
        return 0
    return _export(study, space, settings)


def _delete_study(storage, settings, study_dir: Path) -> None:
    """``--restart``: delete the stored study of this name (if any); keep its run folders, renamed."""
    import optuna

    from recsys.tuning.study import mask_url

    try:
        optuna.delete_study(study_name=settings.study_name, storage=storage)
    except KeyError:
        return  # nothing stored under this name: a fresh start anyway
    trials = study_dir / "trials"
    kept = ""
    if trials.is_dir():
        dest = study_dir / f"trials.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(trials, dest)
        kept = f"; its run folders are now {dest}"
    print(f"recsys tune: --restart: deleted study {settings.study_name!r} from {mask_url(settings.storage)}{kept}",
          flush=True)


def _run_workers(settings, study_dir: Path) -> None:
    """Start ``settings.workers`` processes of this command, each a worker on the same study; wait."""
    path = study_dir / f".worker.{os.getpid()}.json"
    path.write_text(settings.to_json())
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "recsys.cli", "tune", "--config", settings.config, "--space", settings.space,
           "--worker-settings", str(path)]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(settings.workers)]
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    finally:
        path.unlink(missing_ok=True)
    bad = [p.returncode for p in procs if p.returncode != 0]
    if bad:
        print(f"recsys tune: {len(bad)} worker(s) exited with status {bad}", file=sys.stderr, flush=True)


def _export(study, space, settings) -> int:
    from recsys.tuning.export import export_all, state_counts

    out = export_all(study, space, settings.config, Path(settings.study_dir), settings.study_name)
    trials = study.get_trials(deepcopy=False)
    counts = state_counts(study)
    epochs = sum(int(t.user_attrs.get("epochs") or 0) for t in trials)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    print(f"recsys tune: {summary}; {epochs} epochs in all", flush=True)
    if out["best_config"] is None:
        print("recsys tune: no trial completed, so no best config", flush=True)
    else:
        b = study.best_trial
        test = b.user_attrs.get("test_auc")
        print(f"recsys tune: best trial {b.number}: {space.metric} {b.value:.4f}"
              + (f", test auc {test:.4f}" if isinstance(test, float) else "")
              + f"; rerun with: recsys fit --config {out['best_config']}", flush=True)
    print(f"recsys tune: wrote {out['trials']} and {out['report']}", flush=True)
    return 0

"""Optuna studies over recsys experiment configs: storage, trial budget, workers, resume.

How a study is laid out (``runs/tune/<study>/`` by default)::

    study.db            the default storage (SQLite); any RDB URL works instead (--storage)
    ranking.csv         the feature ranking of a feature-subset search with ``ranking: auto``
    trials/trial_0007/  one run directory per trial: trial.yaml (the exact config it ran),
                        log.txt (its output), config.yaml, metrics.json, checkpoints/
    best_config.yaml    exports (see recsys.tuning.export): rerun with `recsys fit --config`
    trials.csv, report.html

**Budget.** ``--n-trials N`` is the study's total, not "N more": the command tops the study up to
N trials by putting empty *slots* (Optuna WAITING trials without fixed parameters) in the storage.
Workers claim slots atomically (the storage's compare-and-set from WAITING to RUNNING), so any
number of workers, on one machine or many, run exactly N trials between them and never the same
one twice; a worker stops when no slot is left (or at ``--timeout``).

**Resume.** A killed study leaves its unfinished slots WAITING and the trials that were running
RUNNING. Rerunning the same command picks the waiting slots up. A RUNNING trial whose worker is
gone is marked FAIL and *requeued*: a new slot with the same parameters (``retry_of`` = the old
trial's number) runs it again, and the interrupted trial no longer counts towards N. A worker is
known to be gone when it ran on this host and its process no longer exists (checked at once), or,
on any host, when its heartbeat is older than ``--grace`` seconds (Optuna's heartbeat; workers
beat every ``--heartbeat`` seconds). Nothing is lost and nothing runs twice.

**Failures.** A trial that raises (NaN loss, a config Lightning rejects, out of memory) is recorded
as FAIL with its error message in the ``error`` user attribute and the study goes on.

**Determinism.** The sampler of trial ``k`` is seeded with ``seed + k``, and every trial runs its
config's ``seed_everything``: one uninterrupted worker and the same seed give the same study. With
several workers, or after a resume, the order in which trials finish (what TPE has seen) varies.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from recsys.errors import ConfigError, RecsysError
from recsys.tuning.space import FEATURES_PARAM, SearchSpace, get_dotted, load_config, load_space, set_dotted
from recsys.utils import atomic_write_text

# the host a worker records with its trials; RECSYS_TUNE_HOST overrides the hostname where machines share one
# (containers started with the same --hostname): a trial of this host whose process is gone is requeued at once
HOST = os.environ.get("RECSYS_TUNE_HOST") or socket.gethostname()
LOG = logging.getLogger("recsys.tuning")
# set by SIGINT/SIGTERM in a worker: Lightning turns a KeyboardInterrupt inside fit into exit(1),
# which must not be mistaken for a failed trial
INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _interrupt_handlers() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt once (and set INTERRUPTED); restored afterwards."""
    import signal

    def handler(signum, frame):
        if INTERRUPTED.is_set():
            return
        INTERRUPTED.set()
        raise KeyboardInterrupt

    INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in old:
            signal.signal(sig, handler)
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@dataclass
class TuneSettings:
    """Everything a worker needs; built by the CLI, shared with worker processes as JSON."""

    config: str
    space: str
    study_name: str
    study_dir: str
    storage: str
    n_trials: int | None = None
    timeout: float | None = None
    workers: int = 1
    seed: int | None = None
    pruner: str | None = None
    heartbeat: int = 30
    grace: int = 120
    verbose: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "TuneSettings":
        return cls(**json.loads(text))


def default_storage(study_dir: str | Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'study.db'}"


# ----------------------------------------------------------------------------- optuna objects
def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and printed commands)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: mask what looks like a password
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


DRIVER_FIX = "pip install 'recsys[postgres]' (installs the psycopg driver)"


def storage_url(url: str) -> str:
    """``url`` with an installed PostgreSQL driver named: a bare ``postgresql://`` gets ``+psycopg`` (psycopg 3)
    or ``+psycopg2``, whichever is installed (SQLAlchemy's default differs between its versions). Other URLs
    are returned as they are. A ConfigError when no driver is installed."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib

    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return driver + url[url.index("://"):]
    raise ConfigError("no PostgreSQL driver is installed (psycopg or psycopg2)", where=f"--storage {mask_url(url)}",
                      fix=DRIVER_FIX)


def _storage_error(url: str, e: BaseException) -> ConfigError:
    """One line for a storage that cannot be opened: the URL (password masked), the cause, the fix."""
    where = f"--storage {mask_url(url)}"
    text = str(getattr(e, "orig", None) or e).strip()
    first = re.sub(r"^\([\w.]+\)\s*", "", text.splitlines()[0] if text else type(e).__name__)
    password = _parsed_password(url)
    if password:  # drivers do not echo it, but never print it
        first = first.replace(password, "***")
    low = text.lower()
    if isinstance(e, ImportError):
        return ConfigError(f"the database driver is not installed ({first})", where=where,
                           fix=DRIVER_FIX if "postgres" in url else "install the SQLAlchemy driver the URL names")
    if "authentication failed" in low or "password" in low and "supplied" in low:
        return ConfigError(f"the server refused the login ({first})", where=where,
                           fix="check the user name and password in the URL (URL-encode @ : / in a password, e.g. "
                               "%40 for @) and that pg_hba.conf lets this host log in with a password")
    if "does not exist" in low and "database" in low:
        return ConfigError(f"no such database ({first})", where=where,
                           fix="create it on the server (createdb -O <user> <database>) or fix the URL's database")
    if any(k in low for k in ("resolve host", "connection refused", "could not connect", "timeout", "timed out",
                              "no route", "network is unreachable", "could not translate host")):
        return ConfigError(f"cannot reach the database server ({first})", where=where,
                           fix="check the URL's host and port, that the server runs and listens there "
                               "(postgresql.conf listen_addresses) and that no firewall blocks the port")
    return ConfigError(f"cannot open the storage ({type(e).__name__}: {first})", where=where,
                       fix="use sqlite:///path/study.db or postgresql://user:password@host:port/db")


def _parsed_password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


def make_storage(url: str, heartbeat: int | None = 30, grace: int | None = 120):
    """An RDB storage with heartbeats; stale trials found by the heartbeat are requeued.

    A storage that cannot be opened (driver missing, server unreachable, login refused) is a
    ConfigError naming the URL with its password masked."""
    import optuna

    _quiet_optuna()
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith(("postgresql", "postgres")):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in 10 s, not minutes
    real_url = storage_url(url)
    try:
        # one cache-wrapped storage shared by every Study object of this process (Optuna wraps an
        # RDBStorage anew per Study otherwise, and a trial claimed through one wrapper is unknown to another)
        import inspect

        # Optuna >= 4.9 names the stale-trial hook heartbeat_stale_trial_callback (failed_trial_callback before)
        hook = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in
                inspect.signature(optuna.storages.RDBStorage).parameters else "failed_trial_callback")
        with _schema_lock(real_url, engine_kwargs):
            return optuna.storages.get_storage(optuna.storages.RDBStorage(
                real_url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat or None,
                grace_period=grace if heartbeat else None, **{hook: requeue_trial if heartbeat else None}))
    except Exception as e:  # noqa: BLE001 - sqlalchemy raises many kinds for a bad URL
        raise _storage_error(url, e) from None


@contextlib.contextmanager
def _schema_lock(url: str, engine_kwargs: dict) -> Iterator[None]:
    """On PostgreSQL, hold an advisory lock while Optuna creates its tables: hosts that start on an empty
    database at the same moment would otherwise race in CREATE TABLE (a duplicate-key error on pg_type)."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=engine_kwargs.get("connect_args", {}))
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key("recsys-tune:schema")})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key("recsys-tune:schema")})
                conn.commit()
    finally:
        engine.dispose()


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock."""
    import hashlib

    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def storage_lock(storage, name: str) -> Iterator[None]:
    """An exclusive lock held in the database itself (PostgreSQL advisory lock) while the block runs, so
    workers on several hosts that start at the same time top the study up once. Other storages: no lock
    (SQLite studies are one machine's, serialized by :func:`study_lock`)."""
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    key = _lock_key(f"recsys-tune:{name}")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def make_sampler(space: SearchSpace, seed: int | None = None):
    import optuna

    opts = dict(space.sampler)
    name = opts.pop("name")
    s = opts.pop("seed", 0) if seed is None else seed
    opts.pop("seed", None)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=s)
    return optuna.samplers.TPESampler(seed=s, **opts)


def make_pruner(space: SearchSpace, name: str | None = None, max_epochs: int | None = None):
    import optuna

    opts = dict(space.pruner)
    name = name or opts.pop("name")
    opts.pop("name", None)
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        keep = {k: opts[k] for k in ("min_resource", "max_resource", "reduction_factor") if k in opts}
        if "max_resource" not in keep and max_epochs:
            keep["max_resource"] = int(max_epochs)
        return optuna.pruners.HyperbandPruner(**keep)
    keep = {k: opts[k] for k in ("n_startup_trials", "n_warmup_steps", "interval_steps") if k in opts}
    return optuna.pruners.MedianPruner(**keep)


def requeue_trial(study, trial) -> None:
    """Put a new slot with ``trial``'s parameters in the queue (the trial was interrupted)."""
    study.enqueue_trial(params=dict(trial.params), user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    LOG.info("trial %d was interrupted; requeued with the same parameters", trial.number)


@contextlib.contextmanager
def study_lock(study_dir: str | Path) -> Iterator[None]:
    """An exclusive file lock in the study directory (serializes top-up and stale recovery of the
    workers of this host; hosts sharing an RDB coordinate through the storage itself)."""
    path = Path(study_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock
            pass
        try:
            yield
        finally:
            try:
                import fcntl

                fcntl.flock(f, fcntl.LOCK_UN)
            except ImportError:
                pass


def open_study(settings: TuneSettings, space: SearchSpace, storage=None, sampler_seed: int | None = None,
               create: bool = True, max_epochs: int | None = None):
    """Create or load the study; refuse a study that was created from a different space or metric."""
    import optuna

    storage = storage or make_storage(settings.storage, settings.heartbeat, settings.grace)
    sampler = make_sampler(space, settings.seed if sampler_seed is None else sampler_seed)
    pruner = make_pruner(space, settings.pruner, max_epochs)
    if create:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                    pruner=pruner, direction=space.direction, load_if_exists=True)
    else:
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner)
    attrs = study.user_attrs
    if "recsys:space_fingerprint" not in attrs:
        study.set_user_attr("recsys:space_fingerprint", space.fingerprint)
        study.set_user_attr("recsys:metric", space.metric)
        study.set_user_attr("recsys:config", str(settings.config))
        study.set_user_attr("recsys:space", str(settings.space))
    elif attrs["recsys:space_fingerprint"] != space.fingerprint:
        raise ConfigError(
            f"study {settings.study_name!r} in {mask_url(settings.storage)} was created from a different search space "
            f"({attrs.get('recsys:space')}); its {len(study.get_trials(deepcopy=False))} trial(s) would not be "
            "comparable with new ones",
            where=str(settings.space),
            fix="to start a separate study, pass a new --study-name; to replace this one, rerun with --restart "
                "(deletes the stored study; its run folders are kept, renamed); to continue it, restore the space "
                "file it was created with")
    if study.direction.name.lower() != space.direction:
        raise ConfigError(f"study {settings.study_name!r} maximizes/minimizes differently from the space",
                          where=f"{settings.space}: objective.direction", fix="use a new --study-name")
    return study


# ----------------------------------------------------------------------------- budget and resume
def counted_trials(study) -> list:
    """The trials that count towards the budget: all but those interrupted and requeued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [t for t in trials if t.number not in retried]


def top_up(study, n_trials: int) -> int:
    """Add empty WAITING slots until the study counts ``n_trials`` trials; returns how many were added."""
    missing = n_trials - len(counted_trials(study))
    for _ in range(max(0, missing)):
        study.enqueue_trial(params={}, skip_if_exists=False)
    return max(0, missing)


def _process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _process_start(pid) in (None, started)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def recover_stale(study) -> list[int]:
    """Fail and requeue RUNNING trials whose worker is gone; returns the recovered trial numbers.

    Same host: the worker's process no longer exists. Any host: the heartbeat is older than the
    grace period (needs heartbeats, on by default)."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    recovered = []
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get("recsys:owner")
        if not owner:  # its worker died between claiming it and recording itself (or ran elsewhere, old)
            age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
            if age > max(600, 5 * (storage.get_heartbeat_interval() or 0)):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                        requeue_trial(study, t)
                        recovered.append(t.number)
            continue
        if owner.get("host") != HOST or _process_alive(int(owner["pid"]), owner.get("started")):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                requeue_trial(study, t)
                recovered.append(t.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    if storage.get_heartbeat_interval() is not None:
        running = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)  # fails stale trials, calls requeue_trial for each
        if running:
            recovered += [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                          if t._trial_id in running and "error" not in t.user_attrs]
    return recovered


def claim_slot(study) -> int | None:
    """Atomically take a WAITING slot (WAITING -> RUNNING); returns its trial id, or None when none is left."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


class _Heartbeat:
    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.interval = storage.get_heartbeat_interval()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            self.stop.wait(self.interval)

    def __enter__(self):
        if self.interval is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


# ----------------------------------------------------------------------------- features
def resolve_ranking(space: SearchSpace, base_cfg: dict, study_dir: Path, config_path: str) -> list[str]:
    """The ranked feature names of a feature-subset search, best first (restricted to the config's
    ``data.init_args.fields`` if it sets them). ``ranking: auto`` ranks the config's training split
    once with :class:`~recsys.features.ranking.FeatureRanker` and keeps ``study_dir/ranking.csv``."""
    import polars as pl

    fs = space.features
    assert fs is not None
    where = f"{space.path}: features.ranking"
    if fs.ranking == "auto":
        path = study_dir / "ranking.csv"
        if not path.is_file():
            _auto_rank(base_cfg, path, config_path)
    else:
        path = Path(fs.ranking)
        if not path.exists() and not path.is_absolute() and (space.path.parent / path).exists():
            path = space.path.parent / path
        if path.is_dir():
            path = path / "ranking.csv"
        if not path.is_file():
            raise ConfigError(f"ranking file not found: {path}", where=where,
                              fix="run `recsys rank-features --data <train file> --out <dir>` and point ranking at "
                                  "<dir> (or its ranking.csv / ranking.json), or use ranking: auto")
    try:
        if path.suffix == ".json":
            names = [r["feature"] for r in json.loads(path.read_text())["ranking"]]
        else:
            names = pl.read_csv(path)["feature"].to_list()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot read the ranking {path} ({type(e).__name__}: {e})", where=where,
                          fix="point it at the ranking.csv or ranking.json written by `recsys rank-features`") from None
    allowed = get_dotted(base_cfg, "data.init_args.fields")
    if allowed:
        names = [n for n in names if n in allowed]
    if not names:
        raise ConfigError(f"the ranking {path} has no feature the config can use", where=where)
    missing = [k for k in fs.keep if allowed and k not in allowed]
    if missing:
        raise ConfigError(f"features.keep names {missing}, which the config's data.init_args.fields leaves out",
                          where=f"{space.path}: features.keep")
    return names


def _auto_rank(base_cfg: dict, out: Path, config_path: str) -> None:
    from recsys.data import CTRDataModule
    from recsys.features.ranking import FeatureRanker

    data = base_cfg.get("data") or {}
    if "CTRDataModule" not in str(data.get("class_path", "recsys.data.CTRDataModule")):
        raise ConfigError("ranking: auto needs the config's data to be recsys.data.CTRDataModule",
                          where=config_path, fix="rank the features with `recsys rank-features` and give the path")
    args = {k: v for k, v in (data.get("init_args") or {}).items()
            if k in ("dataset", "schema", "split_column", "valid_path", "test_path", "dataset_options", "fields")}
    dm = CTRDataModule(**args)
    frame = dm.frame("train")
    schema = dm.schema
    ranker = FeatureRanker(label=schema.label, schema=schema, pairs=False, progress=False).fit(frame)
    ranker.ranking_.write_csv(out.with_suffix(".tmp.csv"))
    os.replace(out.with_suffix(".tmp.csv"), out)
    print(f"recsys tune: ranked {ranker.ranking_.height} features of the training split -> {out}", flush=True)


def feature_subset(trial, space: SearchSpace, ranked: list[str]) -> list[str]:
    fs = space.features
    assert fs is not None
    rest = [n for n in ranked if n not in fs.keep]
    high = min(fs.high or len(rest), len(rest))
    low = min(fs.low, high)
    n = trial.suggest_int(FEATURES_PARAM, low, high, step=fs.step) if high > low else low
    if high <= low:
        trial.set_user_attr(FEATURES_PARAM, n)
    return list(fs.keep) + rest[:n]


# ----------------------------------------------------------------------------- one trial
class TrialFailed(Exception):
    """A trial's run raised; the message is one line for the study log."""


def trial_config(base_cfg: dict, space: SearchSpace, values: dict[str, Any], run_dir: Path,
                 fields: list[str] | None, progress: bool = False) -> dict:
    """The base config with the fixed overrides, the sampled values and the trial's own run directory."""
    cfg = copy.deepcopy(base_cfg)
    for k, v in {**space.fixed, **values}.items():
        set_dotted(cfg, k, copy.deepcopy(v), where=f"{space.path}: {k}")
    if fields is not None:
        set_dotted(cfg, "data.init_args.fields", list(fields))
    tr = cfg.setdefault("trainer", {})
    tr["default_root_dir"] = str(run_dir)
    tr["logger"] = {"class_path": "pytorch_lightning.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run_dir.parent), "name": "", "version": run_dir.name}}
    tr["enable_progress_bar"] = bool(progress)
    return cfg


@contextlib.contextmanager
def _captured(log_path: Path, verbose: bool) -> Iterator[None]:
    """Send the trial's output (Lightning, warnings, prints) to its log file, not the study console."""
    if verbose:
        yield
        return
    names = ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    handler = None
    with open(log_path, "a") as f:
        handler = logging.StreamHandler(f)
        try:
            for n in names:
                lg = logging.getLogger(n)
                lg.addHandler(handler)
                lg.setLevel(logging.INFO)
                for h in lg.handlers:
                    if h is not handler and isinstance(h, logging.StreamHandler):
                        h.setLevel(logging.CRITICAL + 1)
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            for n in names:
                lg = logging.getLogger(n)
                lg.removeHandler(handler)
                lg.setLevel(levels[n])
                for h in lg.handlers:
                    if isinstance(h, logging.StreamHandler):
                        h.setLevel(logging.NOTSET)


def run_trial(trial, space: SearchSpace, base_cfg: dict, study_dir: Path, ranked: list[str] | None,
              verbose: bool = False) -> float:
    """Sample ``trial``, run `recsys fit` on the resulting config with pruning, return the objective.

    Raises optuna.TrialPruned when pruned and TrialFailed when the run fails."""
    import optuna

    from recsys.tasks.experiment import fit
    from recsys.tuning.pruning import OptunaPruning

    run_dir = study_dir / "trials" / f"trial_{trial.number:04d}"
    run_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("run_dir", str(run_dir))
    cb = OptunaPruning(trial, space.metric)
    log_path = run_dir / "log.txt"
    try:
        values = space.sample(trial)
        fields = feature_subset(trial, space, ranked) if space.features is not None and ranked else None
        if fields is not None:
            trial.set_user_attr("fields", fields)
        cfg = trial_config(base_cfg, space, values, run_dir, fields, progress=verbose)
        cfg_path = run_dir / "trial.yaml"  # not read back: the trial runs the dict itself
        trial.set_user_attr("config", str(cfg_path))  # the exact config it ran (`recsys fit --config` reruns it)
        atomic_write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
        with _captured(log_path, verbose), warnings.catch_warnings():
            # the run directory already holds trial.yaml and log.txt: expected, not worth a warning
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            fit(cfg, callbacks=[cb])
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            raise TrialFailed(f"no metrics.json in {run_dir} (the fit stopped early; see {log_path})")
        metrics = json.loads(metrics_file.read_text())
        key = space.metric.split("/", 1)[1]
        if key in metrics.get("valid", {}):
            value = float(metrics["valid"][key])
        elif cb.values:  # a metric metrics.json does not carry: the best epoch's
            value = (max if space.direction == "maximize" else min)(cb.values)
        else:
            raise TrialFailed(f"{space.metric} was never logged")
        for split in ("valid", "test"):
            for k, v in metrics.get(split, {}).items():
                trial.set_user_attr(f"{split}_{k}", v)
        if value != value:  # NaN
            raise TrialFailed(f"{space.metric} is NaN")
        return value
    except optuna.TrialPruned:
        raise
    except SystemExit as e:  # Lightning's argument parser rejected the config (or Ctrl-C in fit)
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt from None
        raise TrialFailed(_config_error(log_path, e)) from None
    except TrialFailed:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the run is the trial's, not the study's
        with contextlib.suppress(OSError), open(log_path, "a") as f:
            traceback.print_exc(file=f)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TrialFailed(f"{type(e).__name__}: {msg}") from e
    finally:
        trial.set_user_attr("epochs", cb.epochs)
        if cb.values:
            trial.set_user_attr("curve", cb.values)


def parser_error(text: str) -> str:
    """The informative part of a Lightning/jsonargparse parser error (which key, what was expected)."""
    lines = text.splitlines()
    idx = max((i for i, ln in enumerate(lines) if ln.lstrip().startswith("error:")), default=None)
    if idx is None:
        return ""
    skip = ("Does not validate against any of the Union", "Subtypes:", "Errors:", "Given value",
            "- Expected a <class 'NoneType'>")
    keep = [ln.strip() for ln in lines[idx:] if ln.strip() and not ln.strip().startswith(skip)]
    return " ".join(keep)[:600]


def _config_error(log_path: Path, e: SystemExit) -> str:
    try:
        err = parser_error(log_path.read_text())
    except OSError:
        err = ""
    return f"config rejected: {err}" if err else f"the trainer exited with status {e.code}"


# ----------------------------------------------------------------------------- the worker loop
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _progress_line(study, n_total: int | None) -> tuple[int, int, str]:
    from optuna.trial import TrialState

    trials = counted_trials(study)
    done = [t for t in trials if t.state.is_finished()]
    best = ""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        b = (max if study.direction.name == "MAXIMIZE" else min)(complete, key=lambda t: t.value)
        best = f"best {b.value:.4f} (trial {b.number})"
    return len(done), n_total or len(trials), best


def work(settings: TuneSettings, out=None) -> dict[str, int]:
    """Run trials until no slot is left or the timeout passes; returns counts by final state."""
    out = out or sys.stdout
    space = load_space(settings.space)
    base_cfg = load_config(settings.config)
    study_dir = Path(settings.study_dir)
    max_epochs = space.fixed.get("trainer.max_epochs", get_dotted(base_cfg, "trainer.max_epochs"))
    storage = make_storage(settings.storage, settings.heartbeat, settings.grace)
    base_seed = settings.seed if settings.seed is not None else int(space.sampler.get("seed", 0))
    study = open_study(settings, space, storage, create=False, max_epochs=max_epochs)
    ranked = None
    if space.features is not None:
        with study_lock(study_dir):
            ranked = resolve_ranking(space, base_cfg, study_dir, settings.config)
    deadline = time.time() + settings.timeout if settings.timeout else None
    counts = {"complete": 0, "pruned": 0, "fail": 0}
    me = f"{HOST}:{os.getpid()}"
    with _interrupt_handlers():
        _work_loop(settings, space, base_cfg, study_dir, storage, study, ranked, deadline, counts, me, base_seed,
                   max_epochs, out)
    return counts


def _work_loop(settings, space, base_cfg, study_dir, storage, study, ranked, deadline, counts, me, base_seed,
               max_epochs, out) -> None:
    import optuna
    from optuna.trial import TrialState

    while True:
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt
        if deadline is not None and time.time() >= deadline:
            print(f"recsys tune [{me}]: timeout reached; the remaining slots stay queued for a resume", file=out,
                  flush=True)
            break
        with study_lock(study_dir):
            for n in recover_stale(study):
                print(f"recsys tune [{me}]: trial {n} was interrupted (its worker is gone); requeued", file=out,
                      flush=True)
            trial_id = claim_slot(study)
        if trial_id is None:
            break
        if storage.get_heartbeat_interval() is not None:
            storage.record_heartbeat(trial_id)
        number = storage.get_trial_number_from_id(trial_id)
        # a sampler seeded per trial: the same seed gives the same study, resumed or not
        study = open_study(settings, space, storage, sampler_seed=base_seed + number, create=False,
                           max_epochs=max_epochs)
        storage.set_trial_system_attr(trial_id, "recsys:owner",
                                      {"host": HOST, "pid": os.getpid(), "started": _process_start(os.getpid())})
        trial = optuna.trial.Trial(study, trial_id)
        t0 = time.time()
        value, state, note = None, TrialState.COMPLETE, ""
        with _Heartbeat(storage, trial_id):
            try:
                value = run_trial(trial, space, base_cfg, study_dir, ranked, settings.verbose)
            except optuna.TrialPruned as e:
                state, note = TrialState.PRUNED, str(e)
            except TrialFailed as e:
                state, note = TrialState.FAIL, str(e)
                trial.set_user_attr("error", note)
            except BaseException:  # Ctrl-C / SIGTERM: give the trial back to the queue
                with contextlib.suppress(Exception):
                    frozen = storage.get_trial(trial_id)
                    if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                        requeue_trial(study, frozen)
                        print(f"recsys tune [{me}]: interrupted; trial {number} requeued", file=out, flush=True)
                raise
        gc.collect()  # the finished run's trainer, model and data (Lightning keeps reference cycles)
        trial.set_user_attr("duration_s", round(time.time() - t0, 2))
        frozen = study.tell(trial, value, state=state) if state == TrialState.COMPLETE else \
            study.tell(trial, state=state)
        counts[state.name.lower()] += 1
        done, total, best = _progress_line(study, settings.n_trials)
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in frozen.params.items())
        epochs = frozen.user_attrs.get("epochs", 0)
        res = (f"{space.metric} {value:.4f}" if state == TrialState.COMPLETE else
               f"{state.name.lower()}" + (f": {note}" if note else ""))
        print(f"recsys tune [{done}/{total}] trial {number}: {res} | {epochs} epochs, {time.time() - t0:.1f}s | "
              f"{params}" + (f" | {best}" if best else ""), file=out, flush=True)


def check_space_against_config(space: SearchSpace, base_cfg: dict, config_path: str, study_dir: Path) -> None:
    """Before anything is created: parse the config with the space's fixed overrides, then with
    one whole trial's values (low ends / first choices), then with each searched value on its own
    (both ends of a range, every choice), through Lightning's argument parser (class paths checked
    against the allowlist before import), without building anything. A key or value the classes do
    not take is a ConfigError naming the space file, the key and the closest valid key. Writes
    nothing (the configs are parsed as dicts)."""
    from recsys.tasks.experiment import check_config

    def parses(cfg: dict) -> str | None:
        err = check_config(cfg)  # class paths checked against the allowlist before import
        return None if err is None else (parser_error(err) or err.strip().splitlines()[-1][:600] or "rejected")

    run_dir = Path(study_dir) / "trials" / "check"
    err = parses(trial_config(base_cfg, space, {}, run_dir, None))
    if err:
        raise ConfigError(f"the config (with the space's fixed overrides) does not parse: {err}",
                          where=f"{config_path} + {space.path}: fixed",
                          fix="check it with `recsys fit --config <config> --print_config`")
    combination_ok = parses(trial_config(base_cfg, space, space.example(), run_dir, None)) is None
    for p in space.params:  # every value on its own: both ends of a range, every choice
        values = p.choices if p.type == "categorical" else [p.low, p.high]
        for v in values:
            err = parses(trial_config(base_cfg, space, {p.key: v}, run_dir, None))
            if err:
                raise ConfigError(f"the config does not accept {p.key} = {v!r} ({err})",
                                  where=f"{space.path}: params.{p.key}",
                                  fix="check the key's spelling and the value against `recsys fit --config "
                                      f"{config_path} --print_config`")
    if not combination_ok:
        raise ConfigError("the config does not accept the combination of searched keys", where=str(space.path))


__all__ = ["TuneSettings", "RecsysError", "work", "open_study", "top_up", "recover_stale", "claim_slot",
           "run_trial", "trial_config", "make_storage", "mask_url", "storage_url", "storage_lock",
           "check_space_against_config", "default_storage"]

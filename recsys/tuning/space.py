"""Search spaces: a YAML file mapping dotted config keys to distributions.

A space samples overrides of an experiment config (``experiments/<x>.yaml``); each trial is that
config with the sampled values written in, run by the same code path as ``recsys fit``::

    # experiments/spaces/deepfm_ml100k.yaml
    objective: {metric: val/auc, direction: maximize}    # a metric the task logs every epoch
    sampler: {name: tpe, seed: 0, n_startup_trials: 8}   # tpe | random
    pruner: {name: median, n_startup_trials: 4, n_warmup_steps: 1}   # median | hyperband | none
    fixed:                                                # overrides applied to every trial
      trainer.max_epochs: 8
    params:
      model.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      data.init_args.batch_size: {type: categorical, choices: [512, 1024, 2048]}
      model.init_args.model.init_args.hidden_units:
        type: categorical
        choices: [[256, 128], [400, 400, 400]]
      model.init_args.weight_decay: {type: float, low: 0.0, high: 1.0e-4}
      model.init_args.model.init_args.dropout:            # conditional: sampled only when the
        type: float                                       # named entry took one of
        low: 0.0                                          # the listed values
        high: 0.5
        when: {model.init_args.model.init_args.hidden_units: [[400, 400, 400]]}
    features:                  # optional feature-subset search (OutRank-style AutoML)
      ranking: auto            # or the ranking.csv / ranking.json / output dir of `recsys rank-features`
      top_n: {low: 4, high: 9}         # searched as the int parameter ``features.top_n``
      keep: [user_id, item_id]          # always kept, in addition to the top n

Distributions: ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (``low``,
``high``, optional ``step`` or ``log``), ``categorical`` (``choices``: any YAML values, lists and
mappings included; Optuna records non-scalar choices by their JSON text).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys.errors import ConfigError

CONFIG_ROOTS = ("seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path")
FEATURES_PARAM = "features.top_n"
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random")
DIRECTIONS = ("maximize", "minimize")
_TOP_KEYS = {"objective", "sampler", "pruner", "fixed", "params", "features"}


def _num(v: Any, where: str, what: str, integer: bool = False) -> float | int:
    """A YAML number; PyYAML reads ``1e-4`` (no dot) as a string, so accept numeric strings too."""
    if isinstance(v, bool):
        raise ConfigError(f"{what} must be a number, got {v!r}", where=where)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            raise ConfigError(f"{what} must be a number, got {v!r}", where=where,
                              fix="write a number, e.g. 1.0e-4") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{what} must be a finite number, got {v!r}", where=where)
    if integer:
        if float(v) != int(v):
            raise ConfigError(f"{what} must be an integer, got {v!r}", where=where)
        return int(v)
    return float(v)


def _choice_key(v: Any) -> Any:
    """How Optuna records a categorical choice: scalars as they are, anything else as JSON text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return json.dumps(v, sort_keys=True)


@dataclass
class Param:
    """One searched entry: ``key`` (dotted config path) -> distribution."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)
    when: dict[str, list[Any]] = field(default_factory=dict)

    def distribution(self):
        import optuna.distributions as d

        if self.type == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return d.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return d.CategoricalDistribution([_choice_key(c) for c in self.choices])

    def suggest(self, trial) -> Any:
        """Sample this entry in ``trial``; returns the config value (decoded categorical)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        keys = [_choice_key(c) for c in self.choices]
        picked = trial.suggest_categorical(self.key, keys)
        return self.choices[keys.index(picked)]

    def decode(self, recorded: Any) -> Any:
        """Config value of a value Optuna recorded for this entry."""
        if self.type != "categorical":
            return recorded
        keys = [_choice_key(c) for c in self.choices]
        return self.choices[keys.index(recorded)] if recorded in keys else recorded

    def example(self) -> Any:
        return self.choices[0] if self.type == "categorical" else self.low

    def active(self, values: dict[str, Any]) -> bool:
        return all(k in values and values[k] in allowed for k, allowed in self.when.items())


@dataclass
class FeatureSearch:
    """Search the number of top-ranked features (``features.top_n``) kept by ``data.init_args.fields``."""

    ranking: str  # "auto" or a path
    low: int
    high: int | None  # None: all ranked features
    step: int = 1
    keep: list[str] = field(default_factory=list)


@dataclass
class SearchSpace:
    path: Path
    params: list[Param]
    metric: str = "val/auc"
    direction: str = "maximize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)
    features: FeatureSearch | None = None
    text: str = ""

    @property
    def fingerprint(self) -> str:
        """Hash of what defines the trials (params, features, fixed, objective); not sampler/pruner."""
        spec = {"params": [p.__dict__ for p in self.params], "fixed": self.fixed, "metric": self.metric,
                "direction": self.direction, "features": self.features.__dict__ if self.features else None}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def param(self, key: str) -> Param | None:
        return next((p for p in self.params if p.key == key), None)

    def sample(self, trial) -> dict[str, Any]:
        """Sample every active entry in file order; returns ``{dotted key: config value}``."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.key] = p.suggest(trial)
        return values

    def example(self) -> dict[str, Any]:
        """One value per entry (low end / first choice), conditionals included: for validating keys."""
        return {p.key: p.example() for p in self.params}

    def decode(self, recorded: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in recorded.items():
            p = self.param(k)
            out[k] = p.decode(v) if p else v
        return out


def _parse_param(key: str, spec: Any, where: str, others: dict[str, Any]) -> Param:
    w = f"{where}: params.{key}"
    if not isinstance(key, str) or not key or key.split(".")[0] not in CONFIG_ROOTS:
        raise ConfigError(f"the key {key!r} is not a dotted config key", where=w,
                          fix=f"start it with one of {', '.join(CONFIG_ROOTS)} "
                              "(e.g. model.init_args.lr, data.init_args.batch_size)")
    if any(not part for part in key.split(".")):
        raise ConfigError(f"the key {key!r} has an empty part", where=w, fix="remove the doubled or trailing dot")
    if not isinstance(spec, dict):
        raise ConfigError(f"expected a mapping such as {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}, "
                          f"got {spec!r}", where=w)
    typ = spec.get("type")
    allowed = {"type", "when"}
    if typ in ("float", "int"):
        allowed |= {"low", "high", "log", "step"}
        integer = typ == "int"
        for req in ("low", "high"):
            if req not in spec:
                raise ConfigError(f"a {typ} entry needs '{req}'", where=w, fix=f"add {req}: <number>")
        low = _num(spec["low"], w, "low", integer)
        high = _num(spec["high"], w, "high", integer)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"log must be true or false, got {log!r}", where=w)
        step = None if spec.get("step") is None else _num(spec["step"], w, "step", integer)
        if low > high:
            raise ConfigError(f"low ({low}) is above high ({high})", where=w, fix="swap them")
        if log and low <= 0:
            raise ConfigError(f"a log-scaled range needs low > 0, got {low}", where=w,
                              fix="raise low or drop 'log: true'")
        if log and step not in (None, 1):
            raise ConfigError("'log' and 'step' cannot be combined", where=w, fix="drop one of them")
        if step is not None and step <= 0:
            raise ConfigError(f"step must be > 0, got {step}", where=w)
        param = Param(key, typ, low, high, log, None if (log and integer) else step)
    elif typ == "categorical":
        allowed |= {"choices"}
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError("a categorical entry needs a non-empty list 'choices'", where=w,
                              fix="add choices: [a, b, ...]")
        keys = [_choice_key(c) for c in choices]
        if len(set(map(json.dumps, keys))) != len(keys):
            raise ConfigError(f"choices repeat a value: {choices}", where=w, fix="list each choice once")
        param = Param(key, typ, choices=list(choices))
    else:
        raise ConfigError(f"unknown or missing type {typ!r}", where=w, fix="use type: float, int or categorical")
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"unknown option(s) {sorted(extra)} for a {typ} entry", where=w,
                          fix=f"use only {sorted(allowed)}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise ConfigError(f"'when' must map another entry's key to its value(s), got {when!r}", where=w)
    for k, v in when.items():
        if k == key or k not in others:
            raise ConfigError(f"'when' names {k!r}, which is not another entry of params", where=w,
                              fix="condition on a key listed in params")
        cond = others[k]
        if not isinstance(cond, Param):
            raise ConfigError(f"'when' names {k!r}, whose entry is invalid", where=w)
        if cond.type == "categorical" and any(c == v for c in cond.choices):
            vals = [v]  # one choice (which may itself be a list)
        else:
            vals = v if isinstance(v, list) else [v]
        if cond.type == "categorical":
            bad = [x for x in vals if not any(c == x for c in cond.choices)]
            if bad:
                raise ConfigError(f"'when' lists {bad} for {k!r}, which are not among its choices {cond.choices}",
                                  where=w, fix="use values from the choices of that entry")
        param.when[k] = list(vals)
    return param


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (structure, ranges, conditions).

    Raises :class:`~recsys.errors.ConfigError` naming the file and the key. Whether each key
    exists in the experiment config is checked against the config's classes by
    :func:`recsys.tuning.study.check_space_against_config`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("search space file not found", where=str(path),
                          fix="pass --space experiments/spaces/<name>.yaml (see docs/tuning.md)")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({str(e).splitlines()[0]})", where=str(path)) from None
    where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError("expected a mapping with 'params' (and optional objective, sampler, pruner, fixed, "
                          "features)", where=where)
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}", where=where,
                          fix=f"use only {sorted(_TOP_KEYS)}")
    obj = raw.get("objective") or {}
    if not isinstance(obj, dict):
        raise ConfigError("'objective' must be a mapping {metric: val/auc, direction: maximize}", where=where)
    metric = obj.get("metric", "val/auc")
    direction = obj.get("direction", "minimize" if "loss" in str(metric) else "maximize")
    if not isinstance(metric, str) or not metric.startswith("val/"):
        raise ConfigError(f"objective.metric must be a validation metric logged per epoch (val/...), got {metric!r}",
                          where=f"{where}: objective.metric", fix="use val/auc or val/logloss")
    if direction not in DIRECTIONS:
        raise ConfigError(f"objective.direction must be one of {DIRECTIONS}, got {direction!r}",
                          where=f"{where}: objective.direction")
    sampler = dict(raw.get("sampler") or {})
    sampler.setdefault("name", "tpe")
    sampler.setdefault("seed", 0)
    if sampler["name"] not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler['name']!r}", where=f"{where}: sampler.name",
                          fix=f"use one of {SAMPLERS}")
    _check_options(sampler, {"name", "seed", "n_startup_trials", "multivariate"}, f"{where}: sampler")
    pruner = dict(raw.get("pruner") or {})
    pruner.setdefault("name", "median")
    if pruner["name"] not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner['name']!r}", where=f"{where}: pruner.name",
                          fix=f"use one of {PRUNERS}")
    _check_options(pruner, {"name", "n_startup_trials", "n_warmup_steps", "interval_steps", "min_resource",
                            "max_resource", "reduction_factor"}, f"{where}: pruner")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError("'fixed' must map dotted config keys to values", where=f"{where}: fixed")
    for k in fixed:
        if not isinstance(k, str) or k.split(".")[0] not in CONFIG_ROOTS:
            raise ConfigError(f"the key {k!r} is not a dotted config key", where=f"{where}: fixed.{k}",
                              fix=f"start it with one of {', '.join(CONFIG_ROOTS)}")
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise ConfigError("'params' must map dotted config keys to distributions", where=f"{where}: params")
    # two passes: the distributions first, then the conditions (which may name any other entry)
    plain = {k: _parse_param(k, {kk: vv for kk, vv in spec.items() if kk != "when"} if isinstance(spec, dict)
                             else spec, where, {}) for k, spec in params_raw.items()}
    params: dict[str, Param] = {k: _parse_param(k, spec, where, plain) for k, spec in params_raw.items()}
    for key in params:
        if key in fixed:
            raise ConfigError(f"{key!r} is both fixed and searched", where=f"{where}: params.{key}",
                              fix="remove it from one of 'fixed' and 'params'")
    params = _condition_order(params, where)
    features = _parse_features(raw.get("features"), where)
    if features is not None and ("data.init_args.fields" in params or "data.init_args.fields" in fixed):
        raise ConfigError("data.init_args.fields is set by the feature-subset search", where=f"{where}: features",
                          fix="remove data.init_args.fields from params/fixed, or drop 'features'")
    if not params and features is None:
        raise ConfigError("nothing to search: 'params' is empty and there is no 'features' entry",
                          where=f"{where}: params", fix="add at least one entry")
    return SearchSpace(path=path, params=list(params.values()), metric=metric, direction=direction,
                       sampler=sampler, pruner=pruner, fixed=dict(fixed), features=features, text=text)


def _condition_order(params: dict[str, Param], where: str) -> dict[str, Param]:
    """File order, except that an entry comes after the entries its ``when`` names; a cycle is an error."""
    out: dict[str, Param] = {}
    visiting: list[str] = []

    def visit(k: str) -> None:
        if k in out:
            return
        if k in visiting:
            cycle = " -> ".join(visiting[visiting.index(k):] + [k])
            raise ConfigError(f"the 'when' conditions form a cycle: {cycle}", where=f"{where}: params.{k}",
                              fix="make the conditions one-directional")
        visiting.append(k)
        for dep in params[k].when:
            visit(dep)
        visiting.pop()
        out[k] = params[k]

    for k in params:
        visit(k)
    return out


def _check_options(d: dict, allowed: set[str], where: str) -> None:
    extra = set(d) - allowed
    if extra:
        raise ConfigError(f"unknown option(s) {sorted(extra)}", where=where, fix=f"use only {sorted(allowed)}")


def _parse_features(spec: Any, where: str) -> FeatureSearch | None:
    if spec is None:
        return None
    w = f"{where}: features"
    if not isinstance(spec, dict):
        raise ConfigError("'features' must be a mapping {ranking: auto, top_n: {low: 4, high: 9}}", where=w)
    _check_options(spec, {"ranking", "top_n", "keep"}, w)
    ranking = spec.get("ranking", "auto")
    if not isinstance(ranking, str):
        raise ConfigError(f"features.ranking must be 'auto' or a path, got {ranking!r}", where=f"{w}.ranking")
    top = spec.get("top_n") or {}
    if not isinstance(top, dict):
        raise ConfigError("features.top_n must be a mapping {low: 4, high: 9, step: 1}", where=f"{w}.top_n")
    _check_options(top, {"low", "high", "step"}, f"{w}.top_n")
    low = _num(top.get("low", 1), f"{w}.top_n", "low", integer=True)
    high = None if top.get("high") is None else _num(top["high"], f"{w}.top_n", "high", integer=True)
    step = _num(top.get("step", 1), f"{w}.top_n", "step", integer=True)
    if low < 1 or (high is not None and high < low) or step < 1:
        raise ConfigError(f"need 1 <= low <= high and step >= 1, got low={low} high={high} step={step}",
                          where=f"{w}.top_n")
    keep = spec.get("keep") or []
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise ConfigError("features.keep must be a list of field names", where=f"{w}.keep")
    return FeatureSearch(ranking=ranking, low=low, high=high, step=step, keep=list(keep))


# ----------------------------------------------------------------------------- config overrides
def set_dotted(cfg: dict, key: str, value: Any, where: str = "") -> None:
    """Set ``cfg[a][b][c] = value`` for ``key = "a.b.c"``, creating mappings on the way."""
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[:i + 1])} is {nxt!r}, not a mapping",
                              where=where or key, fix="point the key at a mapping entry of the config")
        node = nxt
    node[parts[-1]] = value


def get_dotted(cfg: dict, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def load_config(path: str | Path) -> dict:
    """Read an experiment config YAML as a dict (ConfigError if missing or malformed, or without
    a ``model`` entry)."""
    from recsys.config_errors import read_config_file

    return read_config_file(path, require_model=True)

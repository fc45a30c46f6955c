"""Config and command-line mistakes, explained in one line before any work starts.

jsonargparse answers a misspelled key with ~60 lines of usage and nested "Does not validate
against any of the Union subtypes" text. :func:`parse_or_explain` runs the parser without its
exit-on-error and turns the message into one :class:`~recsys.errors.ConfigError` naming the key,
where it sits and the closest valid key::

    recsys: error: model.init_args.model.init_args.embeding_dim: unknown key for
    recsys.models.DeepFM; did you mean 'embedding_dim'? Fix: ...

:func:`import_policy` makes jsonargparse check every class path a config or the command line
names against recsys's allowlist *before* importing its module (so a disallowed module's
import-time code never runs). :func:`recsys_error_in` finds a RecsysError that jsonargparse
wrapped while instantiating (e.g. "AWMoE needs a sequence field").
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from recsys.errors import ConfigError, RecsysError

_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_SUBCOMMAND_OPTION = re.compile(r"Subcommand '([^']+)' does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.+)")
_DENIED = re.compile(r"Importing '([^']+)' is not allowed")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"class_path '([\w.]+)'")
_GOT_CLASS = re.compile(r"Got value: Namespace\(class_path='([\w.]+)'")
_KEY_PATH = re.compile(r"^[A-Za-z_][\w.]*$")


def _parsers(parser) -> Iterator:
    yield parser
    sub = getattr(parser, "_subcommands_action", None)
    if sub is not None:
        for p in sub._name_parser_map.values():
            yield from _parsers(p)


def parse_or_explain(parser, args, parse: Callable, subcommand: str | None = None) -> None:
    """``parse(parser, args)`` with every (sub)parser raising instead of printing usage; a parse
    error becomes one :class:`ConfigError` (see :func:`explain`)."""
    for p in _parsers(parser):
        p.exit_on_error = False
    check_empty_top_keys(parser, args)
    try:
        parse(parser, args)
    except argparse.ArgumentError as e:
        found = recsys_error_in(e)
        if found is not None:
            raise found from None
        raise explain(str(e), parser, args) from None


def read_config_file(path, *, require_model: bool = False) -> dict:
    """An experiment config YAML file as a dict; a missing file, invalid YAML or a document that
    is not a mapping (or, with ``require_model``, has no ``model`` entry) is a one-line
    :class:`ConfigError` naming the file. (One reader for ``fit(path)``, ``tune`` and ``export``.)"""
    from pathlib import Path

    import yaml

    path = Path(path)
    example = "experiments/deepfm_ml100k.yaml"
    if not path.is_file():
        raise ConfigError("config file not found", where=str(path), fix=f"pass an existing config, e.g. {example}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({str(e).splitlines()[0]})", where=str(path)) from None
    if not isinstance(cfg, dict) or (require_model and "model" not in cfg):
        raise ConfigError("not an experiment config (" + ("no 'model' entry" if isinstance(cfg, dict) else
                                                           "not a mapping") + ")", where=str(path),
                          fix=f"pass a config that `recsys fit --config` runs, e.g. {example}")
    return cfg


def check_empty_top_keys(parser, args) -> None:
    """Refuse a misspelled top-level key whose value is empty (``trainr: {}`` or ``trainr:``) in a
    ``--config`` file. jsonargparse reports an unknown key only through its leaves, so an empty
    block has none and would be ignored without a word; keys with values are left to it."""
    if not isinstance(args, (list, tuple)):
        return
    sub = _subcommand(args)
    valid_top = sorted({k.split(".")[0] for k in _parser_keys(parser, sub)})
    if not valid_top:
        return
    subcommands = set(getattr(getattr(parser, "_subcommands_action", None), "_name_parser_map", {}) or {})
    files = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    files += [a.split("=", 1)[1] for a in args if isinstance(a, str) and a.startswith("--config=")]
    import yaml

    for f in files:
        try:
            with open(f) as fh:
                cfg = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError):
            continue  # the parser reports unreadable files itself
        if not isinstance(cfg, dict):
            continue
        for key, value in cfg.items():
            if value in (None, {}, []) and str(key) not in valid_top and str(key) not in subcommands:
                hint = _suggest(str(key), valid_top)
                raise ConfigError("unknown top-level key with an empty value" + (f"; {hint}" if hint else ""),
                                  where=f"{f}: {key}",
                                  fix=f"remove it or use one of the top-level keys: {_listing(valid_top)}")


def recsys_error_in(exc: BaseException) -> RecsysError | None:
    """The first :class:`RecsysError` in ``exc``'s cause/context chain (jsonargparse wraps the
    errors of the classes it instantiates), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RecsysError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def init_keys(class_path: str) -> list[str]:
    """The keyword arguments ``class_path``'s constructor accepts (following ``**kwargs`` to the
    base classes, as jsonargparse does). Only for classes already imported (allowed ones)."""
    module, _, name = class_path.rpartition(".")
    if module not in sys.modules:
        return []
    cls = getattr(sys.modules[module], name, None)
    if cls is None:
        return []
    keys: list[str] = []
    for klass in (cls.__mro__ if inspect.isclass(cls) else [cls]):
        init = klass.__init__ if inspect.isclass(cls) else klass
        if init is object.__init__:
            break
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        keys += [p.name for p in params if p.name != "self" and p.name not in keys
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return keys


def _suggest(key: str, candidates: list[str]) -> str:
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close and last != key:
        tails = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [tails[t] for t in difflib.get_close_matches(last, list(tails), n=1, cutoff=0.6)]
    if not close:  # case or separator slips (batchSize, batch-size)
        norm = {c.lower().replace("-", "_"): c for c in candidates}
        if key.lower().replace("-", "_") in norm:
            close = [norm[key.lower().replace("-", "_")]]
    return f"did you mean '{close[0]}'?" if close else ""


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _parser_keys(parser, subcommand: str | None) -> list[str]:
    sub = getattr(parser, "_subcommands_action", None)
    if subcommand and sub is not None and subcommand in sub._name_parser_map:
        parser = sub._name_parser_map[subcommand]
    keys = []
    for a in parser._actions:
        dest = getattr(a, "dest", None)
        if dest and dest not in ("help", "config", "print_config") and _KEY_PATH.match(dest):
            keys.append(dest)
    return keys


def _subcommand(args) -> str | None:
    for a in args or []:
        if isinstance(a, str) and not a.startswith("-"):
            return a
    return None


def explain(message: str, parser=None, args=None) -> ConfigError:
    """One ConfigError for a jsonargparse error message (at most a few lines when printed)."""
    sub = _subcommand(args)
    m = _DENIED.search(message)
    if m:
        from recsys.utils import ALLOW_ENV, allowed_packages

        path = m.group(1)
        keys = _PARSER_KEY.findall(message[: m.start()])
        top = path.split(".")[0]
        return ConfigError(f"asks to instantiate {path!r}, which is not from an allowed package "
                           f"({', '.join(allowed_packages())}); nothing of it was imported",
                           where=keys[0] if keys else "config",
                           fix=f"if you trust it, allow its package on the command line: --allow_classes {top} "
                               f"(or {ALLOW_ENV}={top})")
    m = _OPTION.search(message)
    if m:
        key = m.group(1)
        before = message[: m.start()]
        line_end = message.find("\n", m.end())
        line = message[m.start(): line_end if line_end >= 0 else len(message)]
        got = _GOT_CLASS.search(line)
        class_path = got.group(1) if got else (_CLASS_PATH.findall(before) or [None])[-1]
        # the dotted path: each `Parser key "k"` adds k; each class entered adds init_args
        parts: list[str] = []
        for tok in re.finditer(r'Parser key "([^"]+)"|class_path \'[\w.]+\'', before):
            parts.append(tok.group(1) if tok.group(1) else "init_args")
        if got:
            parts.append("init_args")
        where = ".".join(parts + [key]) if parts else key
        valid = init_keys(class_path) if class_path else []
        hint = _suggest(key, valid)
        owner = f" for {class_path}" if class_path else ""
        fix = f"{class_path.rsplit('.', 1)[-1]} takes: {_listing(valid)}" if valid else \
            f"`recsys {sub or 'fit'} --help` lists the options"
        return ConfigError(f"unknown key{owner}" + (f"; {hint}" if hint else ""), where=where, fix=fix)
    m = _SUBCOMMAND_OPTION.search(message)
    if m:
        key = m.group(2)
        valid = _parser_keys(parser, m.group(1)) if parser is not None else []
        hint = _suggest(key, valid)
        return ConfigError(f"unknown key for `recsys {m.group(1)}`" + (f"; {hint}" if hint else ""), where=key,
                           fix=f"`recsys {m.group(1)} --help` lists the options (top-level keys: "
                               f"{_listing(sorted({k.split('.')[0] for k in valid}))})")
    m = _UNRECOGNIZED.search(message)
    if m:
        first = m.group(1).split()[0]
        key = first.lstrip("-").split("=")[0]
        valid = _parser_keys(parser, sub) if parser is not None else []
        hint = _suggest(key, valid)
        return ConfigError("unrecognized argument" + (f"; did you mean '--{hint[14:-2]}'?" if hint else ""),
                           where=first, fix=f"`recsys {sub or '<command>'} --help` lists the options")
    # anything else: the innermost error of the first alternative, at its dotted key
    where, inner = _innermost(message)
    return ConfigError(inner, where=where, fix=f"`recsys {sub or '<command>'} --help` lists the options")


_STRUCTURAL = ("Given value", "Subtypes:", "Errors:", "Does not validate against any", "Subclass types expect",
               "- a class path", "- a dict with", "- a dict without")


def _innermost(message: str) -> tuple[str | None, str]:
    """(dotted key, reason) of a nested jsonargparse error: the last line of the first failing
    alternative (``Expected a <class 'float'>. Got value: abc`` under ``model`` / RankingTask /
    ``lr`` -> ``model.init_args.lr``, "expected a float, got 'abc'")."""
    lines = message.splitlines()
    start = next((k for k, ln in enumerate(lines) if ln.strip() == "Errors:"), None)
    leaf_at = None
    if start is not None and start + 1 < len(lines):
        first = lines[start + 1]
        indent = len(first) - len(first.lstrip())
        leaf_at = start + 1
        for k in range(start + 2, len(lines)):
            ln = lines[k]
            if ln.strip() and len(ln) - len(ln.lstrip()) <= indent:
                break  # the next alternative
            if ln.strip() and not ln.strip().startswith(_STRUCTURAL):
                leaf_at = k
    if leaf_at is None:
        text = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(_STRUCTURAL)]
        leaf_at = lines.index(next((ln for ln in lines if ln.strip() == text[-1]), lines[0])) if text else 0
    leaf_line = lines[leaf_at] if lines else ""
    before = "\n".join(lines[:leaf_at]) + "\n" + leaf_line
    parts: list[str] = []
    for tok in re.finditer(r'Parser key "([^"]+)"|class_path \'[\w.]+\'|expects a function or a callable class',
                           before):
        parts.append(tok.group(1) if tok.group(1) else "init_args")
    while parts and parts[-1] == "init_args":
        parts.pop()
    leaf = leaf_line.strip().lstrip("- ")
    leaf = re.sub(r'^.*?Parser key "[^"]+":\s*', "", leaf)
    leaf = re.sub(r"^Type .*? expects a function or a callable class: ", "", leaf)
    got = re.search(r"\. Got value: (.*?)(?:\. Got value: |$)", leaf)
    if got is None:
        given = re.search(r"^\s*Given value: (.*)$", message, re.M)
        if given and not given.group(1).startswith(("NestedArg(", "{", "Namespace(", "[")):
            got = given
    leaf = re.sub(r"\. Got value: .*", "", leaf)
    leaf = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", leaf)
    leaf = re.sub(r"^Expected an? ", "expected ", leaf)
    if got and not got.group(1).startswith("Namespace("):
        leaf += f", got {got.group(1)!r}"
    if not leaf:
        leaf = "invalid value"
    if len(leaf) > 300:
        leaf = leaf[:300] + " ..."
    return (".".join(parts) or None), leaf


@contextmanager
def import_policy(extra: list[str] | tuple[str, ...] = ()):
    """While parsing and instantiating: jsonargparse imports a class path named by a config or the
    command line only when it lies in an allowed package (checked on the dotted path, before any
    import); the previous jsonargparse settings come back afterwards."""
    from jsonargparse import _common, set_parsing_settings

    from recsys.utils import allowed_packages

    settings = _common.parsing_settings
    saved = dict(settings["import_path_verdicts"]), settings["import_paths_enforced"]
    allow = [p for p in allowed_packages(extra) if all(part.isidentifier() for part in p.split("."))
             and p != "jsonargparse" and not p.startswith("jsonargparse.")]
    set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=allow)
    try:
        yield
    finally:
        settings["import_path_verdicts"], settings["import_paths_enforced"] = saved


def check_output_file(path: str, where: str) -> None:
    """Refuse an output file path that cannot be written, before any work: an existing directory,
    a parent that is a file, or a directory without write permission."""
    import os
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise ConfigError("is a directory; an output file is needed here", where=f"{where} {path}",
                          fix=f"name a file, e.g. {where} {p / 'scores.parquet'}")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{parent} is not a directory", where=f"{where} {path}", fix="choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {parent} (permission denied)", where=f"{where} {path}",
                          fix="choose a directory you can write to")

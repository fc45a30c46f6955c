"""Typed options of the built-in data sets (``data.init_args.dataset_options`` in a config).

One frozen dataclass per data set, validated when built; :func:`parse_options` turns the YAML
mapping into it. A key the data set does not take is a :class:`~recsys.errors.ConfigError`
naming the key, the closest valid one and the full list (not a ``TypeError`` from deep inside a
loader); a value of the wrong type or out of range is one too. The sequence length has one name
everywhere: ``history_len`` (the ``history`` field's ``max_len``).

>>> parse_options("adult", {"split_seed": 3})
AdultOptions(split_seed=3)
>>> parse_options("movielens-100k", {"history_lenn": 5})
Traceback (most recent call last):
...
recsys.errors.ConfigError: data.dataset_options.history_lenn: unknown option of data set 'movielens-100k' Fix: did you mean 'history_len'? its options: ['history_len']
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from recsys.errors import ConfigError


# the sequence length's former names (one name now: history_len)
OLD_SEQUENCE_NAMES = ("max_history", "history_max_len", "max_len")


def _check_int(name: str, value: Any, low: int, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"must be an integer >= {low}, got {value!r}", where=f"{where}.{name}")


@dataclass(frozen=True)
class MovieLensOptions:
    """``movielens-100k`` (the ``ml100k-ctr`` view). ``history_len``: behaviours kept in the
    ``history`` sequence field (the user's earlier positives, most recent last). The frame itself
    stores up to ``max(1000, history_len)`` of them (the report's history-length segments)."""

    history_len: int = 50

    def __post_init__(self) -> None:
        _check_int("history_len", self.history_len, 1, "data.dataset_options")


@dataclass(frozen=True)
class MovieLensRetrievalOptions:
    """``ml100k-retrieval``: ``history_len`` earlier items per row (leave-last-out split)."""

    history_len: int = 50

    def __post_init__(self) -> None:
        _check_int("history_len", self.history_len, 1, "data.dataset_options")


@dataclass(frozen=True)
class AdultOptions:
    """``adult``: ``split_seed`` of the label-stratified 80/10/10 split."""

    split_seed: int = 0

    def __post_init__(self) -> None:
        _check_int("split_seed", self.split_seed, 0, "data.dataset_options")


@dataclass(frozen=True)
class SyntheticRetrievalOptions:
    """``synthetic-retrieval``: the arguments of
    :func:`~recsys.data.datasets.synthetic_retrieval.make_synthetic_retrieval`."""

    n_users: int = 400
    n_items: int = 500
    n_genres: int = 10
    interactions: tuple[int, int] = (15, 40)
    max_interests: int = 3
    zipf: float = 1.0
    history_len: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        where = "data.dataset_options"
        for name, low in (("n_users", 1), ("n_items", 1), ("n_genres", 1), ("max_interests", 1),
                          ("history_len", 1), ("seed", 0)):
            _check_int(name, getattr(self, name), low, where)
        inter = self.interactions
        if not isinstance(inter, (list, tuple)) or len(inter) != 2:
            raise ConfigError(f"must be [min, max], got {inter!r}", where=f"{where}.interactions")
        for v in inter:
            _check_int("interactions", v, 1, where)
        object.__setattr__(self, "interactions", tuple(inter))
        if isinstance(self.zipf, bool) or not isinstance(self.zipf, (int, float)) or self.zipf < 0:
            raise ConfigError(f"must be a number >= 0, got {self.zipf!r}", where=f"{where}.zipf")


def _synthetic_config():
    from recsys.data.datasets.synthetic import SyntheticConfig

    return SyntheticConfig


def options_class(dataset: str) -> type:
    """The options dataclass of a built-in data set (``synthetic`` and ``synthetic-wide``:
    :class:`~recsys.data.datasets.synthetic.SyntheticConfig`, which validates itself)."""
    classes = {"movielens-100k": MovieLensOptions, "ml100k-retrieval": MovieLensRetrievalOptions,
               "adult": AdultOptions, "synthetic-retrieval": SyntheticRetrievalOptions}
    if dataset in ("synthetic", "synthetic-wide"):
        return _synthetic_config()
    return classes[dataset]


def check_keys(dataset: str, options: Mapping[str, Any], valid: list[str]) -> None:
    """Raise a ConfigError for the first key of ``options`` not in ``valid``, with the closest one."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"must be a mapping of option: value, got {type(options).__name__}",
                          where="data.dataset_options")
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            if key in OLD_SEQUENCE_NAMES and "history_len" in valid:
                close = ["history_len"]
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown option of data set {dataset!r}", where=f"data.dataset_options.{key}",
                              fix=f"{hint}its options: {valid}")


def parse_options(dataset: str, options: Mapping[str, Any] | None):
    """``options`` (a mapping from YAML) as the data set's options dataclass, validated."""
    options = dict(options or {})
    cls = options_class(dataset)
    valid = [f.name for f in dataclasses.fields(cls)]
    if dataset == "synthetic-wide":  # n_rows/seed and the rest of SyntheticConfig's fields
        valid = [n for n in valid if n not in ("categoricals", "numerics")]
    check_keys(dataset, options, valid)
    try:
        return cls(**options)
    except ConfigError as e:
        if e.where and e.where.startswith("SyntheticConfig."):  # name the YAML key the user wrote
            raise ConfigError(e.message, where=f"data.dataset_options.{e.where.split('.', 1)[1]}",
                              fix=e.fix) from None
        raise
    except (TypeError, ValueError) as e:  # a value of the wrong type inside a field's validation
        raise ConfigError(f"bad option value ({e})", where="data.dataset_options",
                          fix=f"see the options of {dataset!r}: {valid}") from None


__all__ = ["AdultOptions", "MovieLensOptions", "MovieLensRetrievalOptions", "SyntheticRetrievalOptions",
           "options_class", "parse_options", "check_keys"]

"""Where raw data comes from: built-in data sets by name, or any parquet/CSV file + schema YAML.

Built-in names (their ``dataset_options`` are typed: :mod:`recsys.data.datasets.options`; a
misspelled key is a ConfigError naming the closest valid one):

* ``synthetic`` (default): seeded generator with planted signal, no download
  (:mod:`recsys.data.datasets.synthetic`); options are ``SyntheticConfig`` fields (``history_len``, ...).
* ``synthetic-wide``: the 40-field wide-table benchmark data
  (:func:`recsys.data.datasets.synthetic.make_wide_table`); options ``n_rows``, ``seed`` and
  ``SyntheticConfig`` fields.
* ``movielens-100k``: the ``ml100k-ctr`` view (:mod:`recsys.data.datasets.movielens`);
  options: ``history_len``.
* ``ml100k-retrieval``: MovieLens-100K for candidate retrieval, leave-last-out per user
  (:func:`recsys.data.datasets.movielens.load_ml100k_retrieval`); options: ``history_len``.
* ``adult``: the Adult census-income table, 8 categorical + 6 numeric fields, label income >50K,
  seeded stratified 80/10/10 split (:mod:`recsys.data.datasets.adult`); options: ``split_seed``.
* ``synthetic-retrieval``: seeded users with planted multi-cluster interests
  (:func:`recsys.data.datasets.synthetic_retrieval.make_synthetic_retrieval`), leave-last-out like the above.

Anything else is a path to a ``.parquet`` or ``.csv`` file (or a directory of parquet files).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import polars as pl

from recsys.data.datasets.options import parse_options
from recsys.errors import DataError
from recsys.schema import Schema

BUILTIN: dict[str, Callable[..., tuple[pl.DataFrame, Schema]]] = {}


def register_dataset(name: str):
    """Decorator: register ``fn(**options) -> (frame with a split column, schema)`` under ``name``."""

    def deco(fn):
        BUILTIN[name] = fn
        return fn

    return deco


@register_dataset("synthetic")
def _synthetic(**options: Any) -> tuple[pl.DataFrame, Schema]:
    from recsys.data.datasets.synthetic import make_synthetic

    data = make_synthetic(parse_options("synthetic", options))
    return data.frame, data.schema


@register_dataset("synthetic-wide")
def _synthetic_wide(**options: Any) -> tuple[pl.DataFrame, Schema]:
    from recsys.data.datasets.synthetic import make_wide_table

    parse_options("synthetic-wide", options)  # names a bad key; make_wide_table builds the config
    data = make_wide_table(**options)
    return data.frame, data.schema


@register_dataset("movielens-100k")
def _movielens(**options: Any) -> tuple[pl.DataFrame, Schema]:
    from recsys.data.datasets.movielens import load_ml100k_ctr, ml100k_ctr_schema

    opts = parse_options("movielens-100k", options)
    return (load_ml100k_ctr(max_history=max(1000, opts.history_len)),
            ml100k_ctr_schema(history_len=opts.history_len))


@register_dataset("ml100k-retrieval")
def _movielens_retrieval(**options: Any) -> tuple[pl.DataFrame, Schema]:
    from recsys.data.datasets.movielens import load_ml100k_retrieval, ml100k_retrieval_schema

    opts = parse_options("ml100k-retrieval", options)
    return load_ml100k_retrieval(max_history=opts.history_len), ml100k_retrieval_schema(history_len=opts.history_len)


@register_dataset("adult")
def _adult(**options: Any) -> tuple[pl.DataFrame, Schema]:
    from recsys.data.datasets.adult import adult_schema, load_adult

    return load_adult(split_seed=parse_options("adult", options).split_seed), adult_schema()


@register_dataset("synthetic-retrieval")
def _synthetic_retrieval(**options: Any) -> tuple[pl.DataFrame, Schema]:
    from recsys.data.datasets.synthetic_retrieval import make_synthetic_retrieval

    return make_synthetic_retrieval(**dataclasses.asdict(parse_options("synthetic-retrieval", options)))


def read_table(path: str | Path, columns: list[str] | None = None,
               lazy: bool = False) -> pl.DataFrame | pl.LazyFrame:
    """Read a parquet or CSV file (or a directory of parquet files), only ``columns`` if given.

    ``lazy=True`` returns the ``LazyFrame`` scan instead (its schema already read, so a file polars
    cannot open fails here, not at ``collect``). Raises :class:`DataError` naming the path for a
    missing or empty file, an unknown format or a read failure.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", where=str(p), fix="check the path (relative paths start at the working directory)")
    suffix = p.suffix.lower()
    try:
        if p.is_dir():
            lf = pl.scan_parquet(str(p / "*.parquet"))
        elif suffix in (".parquet", ".pq"):
            lf = pl.scan_parquet(str(p))
        elif suffix in (".csv", ".tsv", ".txt"):
            if p.stat().st_size == 0:
                raise DataError("the file is empty", where=str(p), fix="write a header line and data rows")
            lf = pl.scan_csv(str(p), separator="\t" if suffix == ".tsv" else ",", infer_schema_length=10000)
        else:
            raise DataError(f"unsupported file type {suffix!r}", where=str(p), fix="use .parquet or .csv")
        if columns is not None:
            present = lf.collect_schema().names()
            missing = [c for c in columns if c not in present]
            if missing:
                raise DataError(f"columns {missing} are missing; the file has {present}", where=str(p),
                                fix="add the columns or fix the schema's field names / 'column:' entries")
            lf = lf.select(columns)
        if lazy:
            lf.collect_schema()
            return lf
        return lf.collect()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - polars/OS errors become one clear message
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"could not read the file ({type(e).__name__}: {first})", where=str(p),
                        fix="check that it is a valid parquet/CSV file") from None

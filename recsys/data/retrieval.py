"""Data for candidate retrieval: the item catalogue, held-out targets, seen items; a synthetic set.

:class:`RetrievalDataModule` is a :class:`~recsys.data.CTRDataModule` (same arguments, same
batches: one row = one user-item interaction, the query side being the user fields and history of
that row) that also knows the *catalogue* of candidate items and, for every valid/test row, the
items its user has already seen. It needs the schema's ``user`` and ``item`` keys.

* **catalogue**: every distinct item key found in any split (train, valid, test), sorted by the
  key, one row each: the item's features are taken from its *last* row in the data (item
  features are meant to be constant; where they vary, the latest wins). Items never seen in
  training still get an embedding from their side features (their id maps to OOV).
* **targets** of a split: the catalogue position of each row's item.
* **seen** of a split: per row, the catalogue positions of the items its user interacted with in
  the *earlier* splits (valid: train; test: train + valid). Those are excluded from the
  candidates (the ``ml100k-retrieval`` protocol) and are the user's engagements for kNN-Embed's
  mixtures. Rows of one user within the same split do not exclude each other.
* **engagements** of a split: the same items per row in time order (kNN-Embed reads the most
  recent ones).

>>> dm = RetrievalDataModule(dataset_options={"n_users": 60, "n_items": 80}, batch_size=64)
>>> dm.setup("fit"); len(dm.catalogue().item_ids)
80
>>> values, offsets = dm.seen("valid"); len(offsets) == len(dm.frame("valid")) + 1
True

:func:`make_synthetic_retrieval` draws a data set with planted multi-interest structure: items
belong to ``n_genres`` genres, each user likes 1-3 genres with random weights and interacts with
items of those genres (Zipf popularity within a genre), so a good retriever must cover several
interests at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys.data.batch import SplitDataset
from recsys.data.datamodule import CTRDataModule
from recsys.errors import ConfigError, DataError
from recsys.schema import FieldSpec, Schema

__all__ = ["Catalogue", "RetrievalDataModule", "leave_last_out", "make_synthetic_retrieval"]

SPLIT_ORDER = ("train", "valid", "test")


@dataclass
class Catalogue:
    """The candidate items.

    Attributes:
        item_ids: raw item keys, sorted; position ``n`` is catalogue id ``n`` ``[N]``.
        frame: one row per item (all columns of the data, from the item's last row) ``[N rows]``.
        dataset: those rows encoded; ``dataset[idx]`` is a :class:`Batch` (the item tower reads
            its fields).
    """

    item_ids: pl.Series
    frame: pl.DataFrame
    dataset: SplitDataset

    def __len__(self) -> int:
        return len(self.item_ids)

    def batches(self, size: int = 8192):
        """The catalogue as consecutive Batches of ``size`` items."""
        for s in range(0, len(self), size):
            yield self.dataset[torch.arange(s, min(s + size, len(self)))]


def _empty_csr(n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(values, offsets [N+1])`` of ``n`` empty lists."""
    return np.zeros(0, dtype=np.int64), np.zeros(n + 1, dtype=np.int64)


def _per_row_csr(rows: pl.DataFrame, per_user: pl.DataFrame, user: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's user's ``items`` list (from ``per_user``: ``user``, ``items``) as CSR
    ``(values, offsets [N+1])``, in row order; users absent from ``per_user`` get an empty list."""
    joined = rows.with_columns(pl.col(user).cast(per_user[user].dtype)).join(
        per_user, on=user, how="left", maintain_order="left")
    lists = joined["items"].fill_null(pl.lit([], pl.List(pl.Int64)))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lists.list.len().to_numpy().astype(np.int64), out=offsets[1:])
    values = lists.explode(empty_as_null=False, keep_nulls=False).to_numpy().astype(np.int64)
    return values, offsets


class RetrievalDataModule(CTRDataModule):
    """A CTRDataModule that also serves the catalogue, held-out targets and seen items.

    Arguments are those of :class:`~recsys.data.CTRDataModule`; the default data set is
    ``synthetic-retrieval`` (no download). See the module docstring for the definitions.
    """

    def __init__(
        self,
        dataset: str = "synthetic-retrieval",
        schema: str | None = None,
        split_column: str = "split",
        valid_path: str | None = None,
        test_path: str | None = None,
        predict_path: str | None = None,
        dataset_options: dict[str, Any] | None = None,
        fields: list[str] | None = None,
        batch_size: int = 1024,
        eval_batch_size: int | None = None,
        seed: int = 0,
        features_from: str | None = None,
    ):
        super().__init__(dataset=dataset, schema=schema, split_column=split_column, valid_path=valid_path,
                         test_path=test_path, predict_path=predict_path, dataset_options=dataset_options,
                         fields=fields, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                         features_from=features_from)
        self._catalogue: Catalogue | None = None
        self._cache: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ keys
    def _key(self, role: str) -> str:
        keys = self.features.schema.keys
        if role not in keys:
            raise DataError(f"retrieval needs the schema's {role!r} key", where=f"{self.dataset}: schema keys",
                            fix=f"add 'keys: {{{role}: <column>}}' to the schema")
        col = keys[role]
        for name, frame in self._frames.items():
            if col not in frame.columns:
                raise DataError(f"the {role} key column {col!r} is missing from the {name} rows",
                                where=str(self.dataset), fix="add the column or fix the schema's keys")
        return col

    @property
    def user_key(self) -> str:
        return self._key("user")

    @property
    def item_key(self) -> str:
        return self._key("item")

    def _split_frames(self, splits: tuple[str, ...]) -> list[pl.DataFrame]:
        self._load()
        return [self._frames[s] for s in splits if s in self._frames and len(self._frames[s])]

    # ------------------------------------------------------------- catalogue
    def catalogue(self) -> Catalogue:
        """Every item of every split (see the module docstring), encoded once and cached."""
        if self._catalogue is None:
            item = self.item_key
            frames = self._split_frames(SPLIT_ORDER)
            cols = frames[0].columns
            allrows = pl.concat([f.select(cols) for f in frames], how="vertical_relaxed")
            if allrows[item].null_count():
                raise DataError(f"{allrows[item].null_count()} rows have no item key", where=f"{self.dataset}, column {item!r}",
                                fix="drop rows without an item id")
            items = allrows.unique(subset=[item], keep="last", maintain_order=True).sort(item)
            enc = self.features.transform(items, source=f"{self.dataset} [catalogue]", require_label=False)
            keys = [f.name for f in self.features.schema.id_fields]
            self._catalogue = Catalogue(item_ids=items[item], frame=items, dataset=SplitDataset(enc, keys))
        return self._catalogue

    def _positions(self, keys: pl.Series) -> np.ndarray:
        """Catalogue positions of raw item keys (every key is in the catalogue by construction)."""
        cat = self.catalogue().item_ids
        lookup = pl.DataFrame({"k": cat, "pos": np.arange(len(cat), dtype=np.int64)})
        out = pl.DataFrame({"k": keys.cast(cat.dtype)}).join(lookup, on="k", how="left", maintain_order="left")
        pos = out["pos"]
        if pos.null_count():
            raise DataError(f"{pos.null_count()} item keys are not in the catalogue", where=str(self.dataset))
        return pos.to_numpy().astype(np.int64)

    def targets(self, split: str) -> np.ndarray:
        """Catalogue position of each row's item in ``split`` ``[N]``."""
        if ("targets", split) not in self._cache:
            self._cache[("targets", split)] = self._positions(self.frame(split)[self.item_key])
        return self._cache[("targets", split)]

    def seen(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``split``: the user's items in earlier splits, as CSR ``(values, offsets [N+1])``
        of catalogue positions (sorted, unique). ``train`` rows get empty lists."""
        if ("seen", split) in self._cache:
            return self._cache[("seen", split)]
        user, item = self.user_key, self.item_key
        rows, frames = self._rows_and_earlier(split)
        if not frames:
            out = _empty_csr(len(rows))
        else:
            past = pl.concat([f.select(user, item) for f in frames], how="vertical_relaxed")
            past = past.with_columns(pl.Series("pos", self._positions(past[item])))
            per_user = past.group_by(user).agg(pl.col("pos").unique().sort().alias("items"))
            out = _per_row_csr(rows, per_user, user)
        self._cache[("seen", split)] = out
        return out

    def _rows_and_earlier(self, split: str) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
        """``split``'s user column and the frames of the splits before it (all splits for a
        split outside :data:`SPLIT_ORDER`)."""
        rows = self.frame(split).select(self.user_key)
        earlier = SPLIT_ORDER[:SPLIT_ORDER.index(split)] if split in SPLIT_ORDER else SPLIT_ORDER
        return rows, self._split_frames(earlier)

    def engagements(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Per row of ``split``: the same items as :meth:`seen`, but in time order (oldest first,
        by the schema's ``time`` key, then the item key; row order without a time key), repeats
        kept. CSR ``(values, offsets [N+1])``. kNN-Embed's mixtures read the most recent of them."""
        if ("engagements", split) in self._cache:
            return self._cache[("engagements", split)]
        user, item = self.user_key, self.item_key
        time_col = self.features.schema.keys.get("time")
        rows, frames = self._rows_and_earlier(split)
        if not frames:
            out = _empty_csr(len(rows))
        else:
            cols = [user, item] + ([time_col] if time_col and all(time_col in f.columns for f in frames) else [])
            past = pl.concat([f.select(cols) for f in frames], how="vertical_relaxed")
            past = past.with_columns(pl.Series("pos", self._positions(past[item])),
                                     pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
            order = [c for c in (cols[2:] + [item, "_row"])]
            past = past.sort([user] + order)
            per_user = past.group_by(user, maintain_order=True).agg(pl.col("pos").alias("items"))
            out = _per_row_csr(rows, per_user, user)
        self._cache[("engagements", split)] = out
        return out

    def user_ids(self, split: str) -> pl.Series:
        """Raw user key of each row of ``split``."""
        return self.frame(split)[self.user_key]


# ------------------------------------------------------------------- helpers
def leave_last_out(df: pl.DataFrame, user: str, item: str, time: str, max_history: int) -> pl.DataFrame:
    """Add ``history`` (the user's earlier items by ``(time, item)``, last ``max_history``),
    ``label`` (1) and ``split`` (last -> test, second last -> valid, rest -> train)."""
    df = df.sort(user, time, item)
    pos = pl.int_range(pl.len(), dtype=pl.Int64).over(user)
    df = df.with_columns(pos.alias("_pos"), pl.len().over(user).alias("_n"))
    items = df.group_by(user, maintain_order=True).agg(pl.col(item).alias("_items"))
    df = df.join(items, on=user, how="left", maintain_order="left")
    start = (pl.col("_pos") - max_history).clip(lower_bound=0)
    split = (pl.when(pl.col("_pos") == pl.col("_n") - 1).then(pl.lit("test"))
             .when(pl.col("_pos") == pl.col("_n") - 2).then(pl.lit("valid")).otherwise(pl.lit("train")))
    return df.with_columns(
        pl.col("_items").list.slice(start, pl.col("_pos") - start).alias("history"),
        pl.lit(1, pl.Int8).alias("label"),
        split.alias("split"),
    ).drop("_pos", "_n", "_items").sort(time, user, item)


def make_synthetic_retrieval(n_users: int = 400, n_items: int = 500, n_genres: int = 10,
                             interactions: tuple[int, int] = (15, 40), max_interests: int = 3,
                             zipf: float = 1.0, history_len: int = 20,
                             seed: int = 0) -> tuple[pl.DataFrame, Schema]:
    """A seeded retrieval data set with planted multi-interest users.

    Item ``i`` has genre ``i mod n_genres`` and a Zipf(``zipf``) popularity within its genre. User
    ``u`` likes 1..``max_interests`` genres with Dirichlet(1) weights and draws
    ``interactions`` (min, max) distinct items: a genre by its weight, then an item of the genre
    by popularity. Interactions get increasing timestamps; the split is leave-last-out
    (:func:`leave_last_out`).

    Columns: ``user_id``, ``segment`` (the user's top genre, a noisy user feature: right 70% of the
    time), ``item_id``, ``genre`` (``g<k>``), ``genres`` (``[genre]``), ``timestamp``, ``history``,
    ``label``, ``split``. The same arguments give the identical frame.

    >>> df, schema = make_synthetic_retrieval(n_users=50, n_items=60, seed=1)
    >>> sorted(set(df["split"])), df.filter(pl.col("split") == "test").height
    (['test', 'train', 'valid'], 50)
    """
    lo, hi = interactions
    if n_users < 2 or n_items < n_genres or n_genres < 1 or not 1 <= lo <= hi or max_interests < 1:
        raise ConfigError(f"invalid synthetic-retrieval options (n_users={n_users}, n_items={n_items}, "
                          f"n_genres={n_genres}, interactions={interactions}, max_interests={max_interests})",
                          where="data.dataset_options",
                          fix="need n_users >= 2, n_items >= n_genres >= 1, 1 <= min <= max interactions")
    rng = np.random.default_rng(seed)
    genre_of = np.arange(n_items) % n_genres
    members = [np.flatnonzero(genre_of == g) for g in range(n_genres)]
    pop = [1.0 / np.arange(1, len(m) + 1) ** zipf for m in members]
    pop = [p / p.sum() for p in pop]
    rows_u, rows_i, rows_t, segments = [], [], [], []
    t = 0
    for u in range(n_users):
        n_int = int(rng.integers(1, max_interests + 1))
        genres = rng.choice(n_genres, size=n_int, replace=False)
        weights = rng.dirichlet(np.ones(n_int))
        top = int(genres[np.argmax(weights)])
        segments.append(top if rng.random() < 0.7 else int(rng.integers(n_genres)))
        want = int(rng.integers(lo, hi + 1))
        chosen: list[int] = []
        taken: set[int] = set()
        for _ in range(want * 20):
            if len(chosen) >= want:
                break
            g = int(genres[rng.choice(n_int, p=weights)])
            i = int(members[g][rng.choice(len(members[g]), p=pop[g])])
            if i not in taken:
                taken.add(i)
                chosen.append(i)
        for i in chosen:
            t += int(rng.integers(1, 100))
            rows_u.append(u)
            rows_i.append(i)
            rows_t.append(t)
    df = pl.DataFrame({"user_id": rows_u, "item_id": rows_i, "timestamp": rows_t}, schema={
        "user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64})
    seg = pl.DataFrame({"user_id": np.arange(n_users, dtype=np.int64), "segment": [f"g{s}" for s in segments]})
    df = df.join(seg, on="user_id", how="left").with_columns(
        pl.format("g{}", pl.col("item_id") % n_genres).alias("genre"))
    df = df.with_columns(pl.concat_list("genre").alias("genres"))
    df = leave_last_out(df, "user_id", "item_id", "timestamp", history_len)
    df = df.select("user_id", "segment", "item_id", "genre", "genres", "timestamp", "history", "label", "split")
    schema = Schema(
        fields=(
            FieldSpec("user_id", "categorical"),
            FieldSpec("segment", "categorical"),
            FieldSpec("item_id", "categorical"),
            FieldSpec("genre", "categorical"),
            FieldSpec("history", "sequence", shares="item_id", max_len=history_len),
        ),
        label="label",
        keys={"user": "user_id", "item": "item_id", "time": "timestamp"},
    )
    return df, schema

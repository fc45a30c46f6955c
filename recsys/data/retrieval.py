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

:func:`~recsys.data.datasets.synthetic_retrieval.make_synthetic_retrieval` draws a data set with planted multi-interest structure: items
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
from recsys.data.datasets.synthetic_retrieval import leave_last_out, make_synthetic_retrieval  # noqa: F401
from recsys.errors import DataError

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

"""A seeded retrieval data set with planted multi-interest users (the built-in ``synthetic-retrieval``),
and the leave-last-out split it uses.

Items belong to ``n_genres`` genres, each user likes 1-3 genres with random weights and interacts
with items of those genres (Zipf popularity within a genre), so a good retriever must cover several
interests at once. (Re-exported by :mod:`recsys.data.retrieval`.)
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.errors import ConfigError
from recsys.schema import FieldSpec, Schema

__all__ = ["leave_last_out", "make_synthetic_retrieval"]


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

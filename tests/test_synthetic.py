"""The synthetic CTR generator: determinism, splits, history, planted signal, schema, benchmark data."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from recsys.data.datasets.synthetic import (
    CategoricalSpec,
    SyntheticConfig,
    feature_ranking_config,
    make_feature_ranking_data,
    make_synthetic,
    make_wide_table,
    roc_auc,
)
from recsys.errors import ConfigError
from recsys.schema import Schema

SMALL = dict(n_rows=3_000, n_users=60, n_items=200)


@pytest.fixture(scope="module")
def default():
    return make_synthetic()


@pytest.fixture(scope="module")
def ranking():
    return make_feature_ranking_data(n_rows=100_000, seed=0)


def _chi2(frame: pl.DataFrame, col: str) -> tuple[float, int]:
    """Pearson chi-square of ``col`` x label (df = values - 1): label-rate spread across values."""
    p = frame["label"].mean()
    g = frame.group_by(col).agg(pl.col("label").mean().alias("m"), pl.len().alias("n"))
    return float((g["n"] * (g["m"] - p) ** 2).sum() / (p * (1 - p))), g.height - 1


# --------------------------------------------------------------------------------- determinism
def test_same_seed_same_frame_and_different_seed_differs():
    a = make_synthetic(**SMALL, seed=3)
    b = make_synthetic(SyntheticConfig(**SMALL, seed=3))
    assert a.frame.equals(b.frame)
    assert a.oracle_auc == b.oracle_auc
    c = make_synthetic(**SMALL, seed=4)
    assert not a.frame.equals(c.frame)
    assert not a.frame["label"].equals(c.frame["label"])


def test_adding_a_column_leaves_the_others_unchanged():
    base = make_synthetic(**SMALL)
    cfg = SyntheticConfig(**SMALL)
    more = make_synthetic(cfg, categoricals=cfg.categoricals + (CategoricalSpec("extra_noise", 7),))
    assert more.frame.drop("extra_noise").equals(base.frame)  # noise column: same labels too


# ------------------------------------------------------------------------------- shape, types
def test_columns_dtypes_and_order(default):
    f = default.frame
    assert f.height == 50_000
    assert f["label"].dtype == pl.Int8 and set(f["label"].unique()) <= {0, 1}
    assert f["split"].dtype == pl.String
    assert f["_p_true"].dtype == pl.Float64 and f["_p_true"].is_between(0, 1).all()
    for c in ("user_id", "item_id", "timestamp", "inf_2", "inf_10", "inf_1000"):
        assert f[c].dtype == pl.Int64, c
    assert f["inf_5"].dtype == pl.String and f["inf_5"].str.starts_with("c1_").all()
    assert f["tags"].dtype == pl.List(pl.String)
    assert f["history"].dtype == pl.List(pl.Int64)
    tag_len = f["tags"].list.len()
    assert tag_len.min() == 1 and tag_len.max() == 4
    assert (f["tags"].list.n_unique() == tag_len).all()  # distinct tags per row
    assert f["user_id"].max() < 2_000 and f["item_id"].max() < 1_000
    # sorted by (timestamp, user_id, item_id)
    assert f.select("timestamp", "user_id", "item_id").equals(f.select("timestamp", "user_id", "item_id").sort(
        "timestamp", "user_id", "item_id"))


def test_missing_column_has_about_20_percent_nulls(default):
    frac = default.frame["noise_missing"].null_count() / default.frame.height
    assert abs(frac - 0.2) < 0.01  # binomial std at 50k rows is 0.0018
    assert default.frame.drop("noise_missing").null_count().sum_horizontal().item() == 0


# ---------------------------------------------------------------------------------- splits
def test_split_is_80_10_10_by_time(default):
    f = default.frame
    counts = dict(f.group_by("split").len().iter_rows())
    assert counts == {"train": 40_000, "valid": 5_000, "test": 5_000}
    assert f["split"].to_list() == ["train"] * 40_000 + ["valid"] * 5_000 + ["test"] * 5_000
    ts = {s: f.filter(pl.col("split") == s)["timestamp"] for s in ("train", "valid", "test")}
    assert ts["train"].max() <= ts["valid"].min() and ts["valid"].max() <= ts["test"].min()


# --------------------------------------------------------------------------------- history
def test_history_is_the_users_strictly_earlier_items_last_max_len():
    L = 5
    # 3,000 rows over 10 minutes: many same-second rows of one user (ties must be excluded)
    d = make_synthetic(**SMALL, history_len=L, time_span_s=600, seed=1)
    f = d.frame
    assert f.select(pl.struct("user_id", "timestamp").is_duplicated().sum()).item() > 100
    seen: dict[int, list[tuple[int, int]]] = {}
    n_nonempty = 0
    for user, ts, item, hist in f.select("user_id", "timestamp", "item_id", "history").iter_rows():
        earlier = [i for t, i in seen.get(user, []) if t < ts]  # frame order = (timestamp, item_id)
        assert hist == earlier[-L:]
        n_nonempty += bool(hist)
        seen.setdefault(user, []).append((ts, item))
    assert n_nonempty > 0.9 * f.height
    assert f["history"].list.len().max() == L
    assert d.schema.field("history").max_len == L and d.schema.field("history").shares == "item_id"


def test_history_len_zero_drops_the_sequence():
    d = make_synthetic(**SMALL, history_len=0)
    assert "history" not in d.frame.columns and "history" not in d.schema.names


# ------------------------------------------------------------------------------ label, signal
def test_positive_rate(default):
    assert 0.27 < default.frame["label"].mean() < 0.33  # base_rate 0.3
    assert abs(default.frame["_p_true"].mean() - 0.3) < 1e-6  # the intercept is solved for it
    d = make_synthetic(**SMALL, base_rate=0.1)
    assert 0.07 < d.frame["label"].mean() < 0.13


def test_oracle_auc_in_target_band(default):
    assert set(default.oracle_auc) == {"train", "valid", "test"}
    for split, auc in default.oracle_auc.items():
        assert 0.75 <= auc <= 0.85, (split, auc)
        sub = default.frame.filter(pl.col("split") == split)
        assert auc == pytest.approx(roc_auc(sub["label"].to_numpy(), sub["_p_true"].to_numpy()), abs=1e-12)


def test_roc_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    s = rng.integers(0, 8, 300).astype(float)  # many ties
    pos, neg = s[y], s[~y]
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(3), np.arange(3.0)))


def test_informative_column_carries_signal_noise_column_does_not(default):
    f = default.frame
    # Pearson chi-square of value x label, df = 9 for both (cardinality 10, uniform values).
    # Noise: chi2(9), P(> 40) < 1e-5. Informative (effect std 0.4 on the logit, 50k rows): ~1,000.
    chi_inf, df_inf = _chi2(f, "inf_10")
    chi_noise, df_noise = _chi2(f, "noise_10")
    assert df_inf == df_noise == 9
    assert chi_noise < 40
    assert chi_inf > 400
    assert _chi2(f, "inf_2")[0] > 200 and _chi2(f, "inf_5")[0] > 200
    # numeric: |correlation| of the noise under 4 standard errors (1/sqrt(n)), informative well above
    y = f["label"].cast(pl.Float64)
    se = 1 / np.sqrt(f.height)
    assert abs(np.corrcoef(np.log(f["num_noise"].to_numpy()), y.to_numpy())[0, 1]) < 4 * se
    assert np.corrcoef(f["num_inf"].to_numpy(), y.to_numpy())[0, 1] > 20 * se
    assert set(default.informative) == {"user_id", "item_id", "inf_2", "inf_5", "inf_10", "inf_50", "inf_1000",
                                        "tags", "num_inf", "history"}
    assert set(default.noise) == {"noise_10", "noise_100", "noise_10000", "noise_missing", "num_noise"}


def test_history_affinity_is_planted(default):
    # the oracle loses ranking power without the history effect, by far more than seed noise
    flat = make_synthetic(history_effect=0.0)
    assert "history" not in flat.informative
    assert default.oracle_auc["test"] - flat.oracle_auc["test"] > 0.01


# ------------------------------------------------------------------------------------ schema
def test_schema_validates_and_names_existing_columns(default):
    s = default.schema
    assert Schema.from_dict(s.to_dict()) == s
    assert s.label == "label"
    assert s.keys == {"user": "user_id", "item": "item_id", "time": "timestamp"}
    assert set(s.source_columns) <= set(default.frame.columns)
    assert "_p_true" not in s.source_columns and "split" not in s.source_columns
    assert set(default.informative) | set(default.noise) == set(s.names)
    assert s.field("tags").kind == "multi_hot" and s.field("num_inf").kind == "numeric"
    assert [f.name for f in s.sequence_fields] == ["history"]


def test_config_errors_and_dict_specs():
    with pytest.raises(ConfigError, match="unknown options"):
        make_synthetic(n_rowz=10)
    with pytest.raises(ConfigError, match="n_rows"):
        SyntheticConfig(n_rows=0)
    with pytest.raises(ConfigError, match="copy_of"):
        SyntheticConfig(categoricals=({"name": "a", "cardinality": 3, "copy_of": "missing"},))
    d = make_synthetic(**SMALL, categoricals=[{"name": "a", "cardinality": 3, "effect": 0.5, "as_string": True}])
    assert d.frame["a"].str.starts_with("c0_").all() and "a" in d.informative


# ---------------------------------------------------------------------- feature-ranking data
def test_feature_ranking_data(ranking):
    f, s = ranking.frame, ranking.schema
    assert f.height == 100_000
    assert len(s.fields) == 40
    assert set(s.source_columns) <= set(f.columns)
    assert ranking.informative == ["inf_2", "inf_5", "inf_10", "inf_50", "inf_10000", "tags", "num_inf"]
    assert ranking.redundant == ["inf_10_copy"]
    assert len(ranking.noise) == 32 and not set(ranking.noise) & set(ranking.informative)
    assert "history" not in f.columns
    for name, k in [("inf_2", 2), ("inf_5", 5), ("inf_10", 10), ("inf_50", 50), ("noise_10", 10), ("noise_2", 2),
                    ("noise_5", 5), ("noise_100", 100), ("noise_1000", 1_000)]:
        assert f[name].n_unique() == k, name
    assert f["inf_10000"].n_unique() > 9_900  # 10 rows per value on average
    for i in range(5):
        assert f[f"noise_100k_{i}"].n_unique() > 60_000 and f[f"noise_1m_{i}"].n_unique() > 95_000
    assert f["noise_zipf_100k_0"].n_unique() < f["noise_100k_0"].n_unique()  # Zipf: head-heavy
    assert abs(f["noise_missing_50"].null_count() / f.height - 0.5) < 0.01  # binomial std 0.0016
    agree = (f["inf_10"].cast(pl.String) == f["inf_10_copy"].str.split("_").list.last()).mean()
    assert abs(agree - (0.7 + 0.3 / 10)) < 0.01  # kept 70%, else a uniform value
    chi_inf, _ = _chi2(f, "inf_10")
    chi_noise, _ = _chi2(f, "noise_10")
    assert chi_noise < 40 and chi_inf > 400
    assert 0.7 < ranking.oracle_auc["test"] < 0.85


def test_feature_ranking_config_is_a_synthetic_config():
    cfg = feature_ranking_config(n_rows=2_000, seed=5)
    assert cfg.n_rows == 2_000 and cfg.seed == 5 and cfg.history_len == 0
    assert make_synthetic(cfg).frame.equals(make_feature_ranking_data(n_rows=2_000, seed=5).frame)


# ------------------------------------------------------------------------------ wide-table data
def test_wide_table_shape_signal_and_determinism():
    d = make_wide_table(n_rows=20_000, seed=1)
    f, s = d.frame, d.schema
    assert len(s.fields) == 40
    kinds = [fs.kind for fs in s.fields]
    assert kinds.count("categorical") == 33 and kinds.count("numeric") == 7
    assert set(s.source_columns) <= set(f.columns) and "history" not in f.columns
    card = {fs.name: f[fs.name].n_unique() for fs in s.fields if fs.kind == "categorical"}
    small = [n for n, k in card.items() if k <= 50]
    assert len(small) == 29 and min(card.values()) == 2
    assert sorted(k for n, k in card.items() if k > 50) == [200, 500, 1000, 1000]  # c29, items, users, c30
    assert f.filter(pl.col("split") == "train").height == 16_000
    # planted: an even-index categorical carries signal, an odd one (noise) does not
    chi_inf, df_inf = _chi2(f, "c10")  # 20 values, effect 0.3
    chi_noise, df_noise = _chi2(f, "c11")  # 25 values, noise: chi2(24), P(> 60) < 1e-4
    assert (df_inf, df_noise) == (19, 24)
    assert chi_noise < 60 and chi_inf > 150  # effect spread 0.3: ~250 at 20k rows
    assert "c10" in d.informative and "c11" in d.noise and "n0" in d.informative and "n6" in d.noise
    assert 0.7 < d.oracle_auc["test"] < 0.9
    assert make_wide_table(n_rows=20_000, seed=1).frame.equals(f)
    assert not make_wide_table(n_rows=20_000, seed=2).frame["label"].equals(f["label"])


def test_long_tail_histories_follow_the_power_law_and_carry_planted_interests():
    """history_tail: per-user history lengths ~ (n + 1)^-a on 0..L, the most active users the
    longest, behaviours mostly from the user's interests, and the label effect is the interest."""
    L, a = 20, 1.2
    d = make_synthetic(n_rows=20_000, n_users=1_000, n_items=400, seed=3, history_len=L, history_tail=a,
                       history_focus=0.9, history_effect=2.0)
    f = d.frame.with_columns(pl.col("history").list.len().alias("_len"))
    per_user = f.group_by("user_id").agg(pl.col("_len").first(), pl.col("_len").n_unique().alias("_k"), pl.len())
    assert (per_user["_k"] == 1).all()  # every row of a user carries the same history
    w = (np.arange(L + 1) + 1.0) ** -a
    expected_short = w[:4].sum() / w.sum()  # P(n_u <= 3), about 0.5 for a = 1.2
    # users seen in the frame are the active ones, so the short share is at most the law's
    short = float((per_user["_len"] <= 3).mean())
    assert 0.2 < short <= expected_short + 0.03, (short, expected_short)
    rho = np.corrcoef(per_user["len"].rank().to_numpy(), per_user["_len"].rank().to_numpy())[0, 1]
    assert rho > 0.8  # more rows, longer history
    # behaviours in the user's interests: compare with the clusters of the user's own items
    cfg = d.config
    assert cfg.history_tail == a and d.schema.field("history").max_len == L
    again = make_synthetic(n_rows=20_000, n_users=1_000, n_items=400, seed=3, history_len=L, history_tail=a,
                           history_focus=0.9, history_effect=2.0)
    assert again.frame.equals(d.frame)
    # the planted interest moves the click rate: rows whose target shares a cluster with most of
    # the history click more often than rows whose target shares none
    items = f["item_id"].to_numpy()
    hist = f["history"].to_list()
    labels = f["label"].to_numpy()
    hit = np.array([it in set(h) for it, h in zip(items, hist)])
    nonempty = f["_len"].to_numpy() >= 5
    assert labels[hit & nonempty].mean() > labels[~hit & nonempty].mean() + 0.05
    with pytest.raises(ConfigError, match="history_tail"):
        make_synthetic(n_rows=100, history_tail=-1.0)
    with pytest.raises(ConfigError, match="history_focus"):
        make_synthetic(n_rows=100, history_tail=1.0, history_focus=1.5)


def test_history_per_row_plants_the_signal_in_the_rows_own_behaviours():
    """history_per_row: the lengths stay per user, the behaviours are drawn per row, and the label
    effect is exactly "the target's cluster appears among the row's behaviours" (recomputed from
    the frame and the generator's item clusters), so a shorter history carries less signal."""
    opts = dict(n_rows=20_000, n_users=1_000, n_items=60, n_clusters=5, seed=3, history_len=20,
                history_tail=1.2, history_focus=0.9, history_effect=3.0)
    d = make_synthetic(**opts, history_per_row=True)
    f = d.frame.with_columns(pl.col("history").list.len().alias("_len"))
    per_user = f.group_by("user_id").agg(pl.col("_len").n_unique().alias("_k"), pl.col("_len").first(),
                                         pl.col("history").n_unique().alias("_h"), pl.len())
    assert (per_user["_k"] == 1).all()  # the length is the user's
    busy = per_user.filter((pl.col("len") >= 5) & (pl.col("_len") >= 2))
    assert (busy["_h"] > 1).mean() > 0.9  # the behaviours are the row's
    # the clusters: items sharing a cluster have the same planted effect; recover the cluster of each
    # item from the generator (same structure seed) and recompute the hit flag from the frame
    from recsys.data.datasets import synthetic as S

    cluster = S._rng(3, "item_cluster").permutation(np.arange(60) % 5)
    items = f["item_id"].to_numpy()
    hit = np.array([bool(h) and (cluster[np.asarray(h)] == cluster[it]).any() for it, h in zip(items, f["history"].to_list())])
    p, base = f["_p_true"].to_numpy(), make_synthetic(**{**opts, "history_effect": 0.0}, history_per_row=True).frame["_p_true"].to_numpy()
    logit = np.log(p / (1 - p)) - np.log(base / (1 - base))  # the history term plus a shared intercept shift
    shift = logit[~hit].mean()
    assert 0.2 < hit.mean() < 0.8
    np.testing.assert_allclose(logit[~hit], shift, atol=1e-6)
    np.testing.assert_allclose(logit[hit], shift + 3.0, atol=1e-6)
    assert (f["_len"].to_numpy()[hit] > 0).all()
    # default unchanged by the new option's presence; same seed, same frame
    assert make_synthetic(**opts, history_per_row=True).frame.equals(d.frame)
    assert not make_synthetic(**opts).frame["history"].equals(d.frame["history"])
    with pytest.raises(ConfigError, match="history_per_row"):
        make_synthetic(n_rows=100, history_per_row=True)

"""Feature ranking (issue 3): MI against hand computations, the chance correction, 3MR, pairs,
streaming, the data-quality report, the CLI and bad input."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from recsys.cli import main as recsys_main
from recsys.errors import RecsysError
from recsys.features import FeatureRanker, expected_mutual_info, mutual_info_from_counts
from recsys.features.ranking import _log_factorial


def _rank(df: pl.DataFrame, **kw) -> FeatureRanker:
    kw.setdefault("label", "y")
    return FeatureRanker(**kw).fit(df)


def _row(r: FeatureRanker, feature: str) -> dict:
    return r.ranking_.filter(pl.col("feature") == feature).row(0, named=True)


# ----------------------------------------------------------------------------- the math
def test_mi_hand_computed_tiny_tables():
    # f = y: I = H(y) = ln 2
    df = pl.DataFrame({"f": [0, 1, 0, 1], "y": [0, 1, 0, 1]})
    assert _row(_rank(df), "f")["mi"] == pytest.approx(math.log(2), abs=1e-12)
    # independent: f splits each class evenly -> 0
    df = pl.DataFrame({"f": ["a", "b", "a", "b"], "y": [0, 0, 1, 1]})
    assert _row(_rank(df), "f")["mi"] == pytest.approx(0.0, abs=1e-12)
    # 3 x 2 table by hand: f = a,a,b,b,c,c,c ; y = 0,0,0,1,1,1,0
    f = ["a", "a", "b", "b", "c", "c", "c"]
    y = [0, 0, 0, 1, 1, 1, 0]
    n = 7
    table = {("a", 0): 2, ("b", 0): 1, ("b", 1): 1, ("c", 0): 1, ("c", 1): 2}
    pf = {"a": 2 / n, "b": 2 / n, "c": 3 / n}
    py = {0: 4 / n, 1: 3 / n}
    expected = sum(c / n * math.log((c / n) / (pf[a] * py[b])) for (a, b), c in table.items())
    r = _rank(pl.DataFrame({"f": f, "y": y}))
    assert _row(r, "f")["mi"] == pytest.approx(expected, abs=1e-12)
    assert r.label_entropy_ == pytest.approx(-(4 / 7) * math.log(4 / 7) - (3 / 7) * math.log(3 / 7), abs=1e-12)
    assert mutual_info_from_counts(np.array([[2, 0], [1, 1], [1, 2]])) == pytest.approx(expected, abs=1e-12)


def test_missing_is_its_own_category_and_multiclass_label():
    # with nulls as a category, f determines y exactly (3 classes)
    df = pl.DataFrame({"f": [None, None, "a", "a", "b", "b"], "y": ["x", "x", "y", "y", "z", "z"]})
    r = _rank(df)
    assert _row(r, "f")["mi"] == pytest.approx(math.log(3), abs=1e-12)
    assert _row(r, "f")["cardinality"] == 2 and _row(r, "f")["coverage"] == pytest.approx(4 / 6)
    assert r.classes_ == ["x", "y", "z"]


def test_expected_mi_matches_brute_force_permutations():
    f = [0, 0, 1, 1, 1, 2]
    y = [0, 1, 1, 0, 0, 1]
    mis = []
    for p in itertools.permutations(range(6)):
        t = np.zeros((3, 2))
        for i, j in zip(f, [y[k] for k in p]):
            t[i, j] += 1
        mis.append(mutual_info_from_counts(t))
    assert expected_mutual_info(np.bincount(f), np.bincount(y)) == pytest.approx(np.mean(mis), abs=1e-12)
    x = np.array([0, 1, 5, 127, 128, 129, 1000, 10**6])
    assert np.allclose(_log_factorial(x), [math.lgamma(v + 1.0) for v in x], rtol=1e-14, atol=1e-12)


def test_expected_mutual_info_equals_the_term_by_term_sum_exactly():
    """The EMI's table lookups and per-value precomputations change no float operation: the same
    value, to the bit, as the term-by-term sum with log-factorials from the series."""
    from recsys.features.significance import _log_factorial_formula as lf
    from recsys.features.significance import _unique_counts

    def reference(a, b):
        a, b = a[a > 0], b[b > 0]
        n = int(a.sum())
        av, aw = _unique_counts(a)
        bv, bw = _unique_counts(b)
        lf_n = float(lf(np.array([n]))[0])
        lf_av, lf_nav = lf(av), lf(n - av)
        total = 0.0
        for bj, wb in zip(bv.tolist(), bw.tolist()):
            mean = av * (bj / n)
            sd = np.sqrt(av * (bj / n) * ((n - av) / n) * ((n - bj) / max(n - 1, 1)))
            lo = np.maximum(np.maximum(1, av + bj - n), np.floor(mean - 12 * sd - 2).astype(np.int64))
            hi = np.minimum(np.minimum(av, bj), np.ceil(mean + 12 * sd + 2).astype(np.int64))
            length = np.maximum(hi - lo + 1, 0)
            m = int(length.sum())
            if m == 0:
                continue
            idx = np.repeat(np.arange(av.size), length)
            nij = (lo[idx] + np.arange(m) - (np.cumsum(length) - length)[idx]).astype(np.int64)
            ai = av[idx]
            log_p = (lf_av[idx] + lf_nav[idx] + float(lf(np.array([bj, n - bj])).sum()) - lf_n
                     - lf(nij) - lf(ai - nij) - lf(bj - nij) - lf(n - ai - bj + nij))
            term = nij / n * (math.log(n) + np.log(nij) - np.log(ai) - math.log(bj)) * np.exp(log_p)
            total += wb * float(np.dot(aw[idx], term))
        return max(total, 0.0)

    rng = np.random.default_rng(4)
    for _ in range(20):
        a = rng.integers(1, rng.choice([3, 40, 1_000]), rng.integers(2, 150))
        b = np.bincount(rng.integers(0, rng.integers(2, 30), int(a.sum())))
        assert expected_mutual_info(a, b) == reference(a, b)
        assert expected_mutual_info(b, a) == reference(b, a)


def test_log_factorial_table_and_top_counts_equal_the_direct_ways():
    """The log-factorial lookup table (grown as larger arguments come) holds exactly the series'
    values, beyond it the series itself; the quality report's top counts (the k-th largest from the
    counts' histogram) are those of a full stable sort."""
    from recsys.features import significance
    from recsys.features.quality import _top

    rng = np.random.default_rng(0)
    for top in (100, 5_000, 300_000, 1_500_000):
        x = rng.integers(0, top, 20_000)
        assert np.array_equal(_log_factorial(x), significance._log_factorial_formula(x))
    big = np.array([5, significance._LF_TABLE_MAX, significance._LF_TABLE_MAX + 12_345])
    assert np.array_equal(_log_factorial(big), significance._log_factorial_formula(big))
    for _ in range(300):
        a = rng.integers(0, rng.choice([2, 5, 100, 10**9]), rng.integers(1, 300))
        k = int(rng.integers(0, 8))
        assert np.array_equal(_top(a, k), np.argsort(-a, kind="stable")[:k])


# ------------------------------------------------------------------------ the correction
def _planted(n: int = 40_000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n // 2, n)  # ~ n/2 distinct: pure noise, high cardinality
    ids2 = rng.integers(0, 5_000, n)
    planted = rng.integers(0, 5_000, n)  # high cardinality WITH signal
    eff = rng.normal(0, 1.0, 5_000)[planted]
    weak = rng.integers(0, 3, n)
    p = 1 / (1 + np.exp(-(-1.0 + eff + 0.3 * (weak - 1))))
    y = (rng.random(n) < p).astype(np.int8)
    return pl.DataFrame({"noise_ids": ids, "noise_5k": ids2, "planted_5k": planted, "weak_3": weak, "y": y})


def test_permutation_correction_near_zero_on_noise_positive_on_planted():
    df = _planted()
    plain = _rank(df, heuristic="mi")
    corr = _rank(df)
    # plain MI puts the high-cardinality noise first; the corrected score does not
    assert plain.ranking_["feature"][0] == "noise_ids"
    assert corr.ranking_["feature"].to_list()[:2] == ["planted_5k", "weak_3"]
    for f in ("noise_ids", "noise_5k"):
        row = _row(corr, f)
        assert row["mi"] > 0.05  # large plug-in MI by chance...
        assert abs(row["score"]) < 5 * row["chance_mi_std"] + 1e-4  # ...removed by the correction
        assert abs(row["mi"] - row["emi"]) < 5 * row["chance_mi_std"] + 1e-4
    for f in ("planted_5k", "weak_3"):
        row = _row(corr, f)
        assert row["score"] > 0.003 and row["z"] > 10
    # the closed form and the permutation mean agree (within the permutation noise)
    for row in corr.ranking_.iter_rows(named=True):
        assert abs(row["emi"] - row["chance_mi_mean"]) < 4 * row["chance_mi_std"] / math.sqrt(5) + 1e-6
    exp = _rank(df, correction="expected")
    assert exp.ranking_["feature"].to_list()[:2] == ["planted_5k", "weak_3"]
    assert corr.selected() == ["planted_5k", "weak_3"]


def test_determinism_and_seed():
    df = _planted(8_000)
    a = _rank(df, seed=3).ranking_
    b = _rank(df, seed=3).ranking_
    c = _rank(df, seed=4).ranking_
    assert a.equals(b)
    assert not a["chance_mi_mean"].equals(c["chance_mi_mean"])
    assert a["mi"].equals(a["mi"]) and np.allclose(a.sort("feature")["mi"], c.sort("feature")["mi"])


# ------------------------------------------------------------------------- 3MR and pairs
def test_3mr_prefers_informative_over_its_noisy_duplicate():
    rng = np.random.default_rng(1)
    n = 30_000
    a = rng.integers(0, 8, n)
    b = rng.integers(0, 8, n)
    dup = np.where(rng.random(n) < 0.85, a, rng.integers(0, 8, n))  # noisy copy of a
    ea, eb = rng.normal(0, 1.0, 8), rng.normal(0, 0.6, 8)
    y = (rng.random(n) < 1 / (1 + np.exp(-(ea[a] + eb[b])))).astype(np.int8)
    df = pl.DataFrame({"a": a, "a_dup": dup, "b": b, "noise": rng.integers(0, 50, n), "y": y})
    mic = _rank(df, heuristic="mi-cardinality").ranking_["feature"].to_list()
    assert mic[:3] == ["a", "a_dup", "b"]  # relevance alone keeps the duplicate second
    r = _rank(df, heuristic="3mr")
    order = r.ranking_["feature"].to_list()
    assert order[0] == "a" and order.index("b") < order.index("a_dup")
    assert r.redundancy_ is not None and r.redundancy_.height == 4
    red = dict(zip(r.redundancy_["feature"], r.redundancy_["a"]))
    assert red["a_dup"] > 0.5 and abs(red["noise"]) < 0.01


def test_default_ranks_the_independent_column_above_copies(monkeypatch):
    """The default (mi-redundancy): with an informative column ``a``, two copies of it (its values
    as strings, shifted) and a 90% copy, and a weaker independent ``b``, the top 2 are ``a`` and
    ``b``; relevance alone (the former default) puts the copies before ``b``. Dense pairs are
    judged by the conditional MI, sparse ones by the share of the entropy the chosen column
    determines (``u``: 2,000 values, ~10 rows each, against an independent ``v`` and a copy)."""
    import recsys.features.ranking as ranking

    rng = np.random.default_rng(7)
    n = 20_000
    a, b = rng.integers(0, 6, n), rng.integers(0, 6, n)
    near = np.where(rng.random(n) < 0.9, a, rng.integers(0, 6, n))
    ea, eb = np.linspace(-1.5, 1.5, 6), np.linspace(-0.6, 0.6, 6)
    y = (rng.random(n) < 1 / (1 + np.exp(-(ea[a] + eb[b])))).astype(np.int8)
    df = pl.DataFrame({"a": a, "a_copy": a.astype(str), "a_shift": a + 10, "a_near": near, "b": b,
                       "noise": rng.integers(0, 50, n), "y": y})
    old = _rank(df, heuristic="mi-cardinality").ranking_["feature"].to_list()
    assert old.index("b") > max(old.index(c) for c in ("a_copy", "a_shift", "a_near"))
    r = _rank(df)
    assert r.heuristic == "mi-redundancy"
    assert r.ranking_["feature"].to_list()[:2] == ["a", "b"]
    for copy in ("a_copy", "a_shift", "a_near"):
        row = _row(r, copy)
        assert row["redundant_with"] == "a" and row["redundancy"] > 0.95 and row["score"] < 0.05 * row["mi_corrected"]
    assert _row(r, "b")["score"] == _row(r, "b")["mi_corrected"]  # independent of a: nothing taken off
    assert set(r.selected()) == {"a", "a_copy", "a_shift", "a_near", "b"}  # selection: significance, unchanged
    # rows' codes kept from the counting pass, or re-read when they would not fit: the same order
    monkeypatch.setattr(ranking, "_KEEP_CODES_BYTES", 0)
    again = _rank(df).ranking_
    assert again["feature"].equals(r.ranking_["feature"]) and np.allclose(again["score"], r.ranking_["score"])
    # pair statistics on a sample of the rows (big data): the same top 2
    monkeypatch.setattr(ranking, "_REDUNDANCY_ROWS", 8_000)
    assert _rank(df).ranking_["feature"].to_list()[:2] == ["a", "b"]
    # sparse pairs: a copy of a 2,000-value column, and an independent 2,000-value column
    u, v = rng.integers(0, 2_000, n), rng.integers(0, 2_000, n)
    eu = rng.normal(0, 1.5, 2_000)
    y = (rng.random(n) < 1 / (1 + np.exp(-(eu[u] + eu[v])))).astype(np.int8)
    r = _rank(pl.DataFrame({"u": u, "u_copy": u * 7 + 1, "v": v, "y": y}))
    assert r.ranking_["feature"].to_list()[1] == "v" and _row(r, "u_copy")["redundancy"] > 0.95
    assert _row(r, "v")["redundancy"] < 0.2


def test_pair_score_finds_xor_interaction():
    rng = np.random.default_rng(2)
    n = 20_000
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    flip = rng.random(n) < 0.1
    y = ((a ^ b) ^ flip).astype(np.int8)
    df = pl.DataFrame({"a": a, "b": b, "c": rng.integers(0, 2, n), "y": y})
    r = _rank(df, pairs=True, pair_top_k=None)
    assert max(abs(_row(r, f)["score"]) for f in "abc") < 1e-3  # no single column shows it
    top = r.pairs_.row(0, named=True)
    assert {top["feature_a"], top["feature_b"]} == {"a", "b"}
    assert top["relation"] > 0.3  # ~ ln2 - H(0.1)
    assert r.pairs_.filter(pl.col("relation") < 1e-3).height == 2


def test_pair_combination_does_not_collide():
    # "1"+"23" == "12"+"3" as strings; as codes they are distinct cells, and y follows the pair
    df = pl.DataFrame({"a": ["1", "12", "1", "12"] * 50, "b": ["23", "3", "23", "3"] * 50, "y": [0, 1, 0, 1] * 50})
    r = _rank(df, pairs=True, pair_top_k=None)
    assert r.pairs_["pair_cardinality"][0] == 2
    assert r.pairs_["relation_mi"][0] == pytest.approx(math.log(2), abs=1e-12)


# -------------------------------------------------------------------------- streaming
def test_streamed_equals_in_memory(tmp_path: Path):
    df = _planted(6_000).with_columns(
        pl.Series("num", np.random.default_rng(0).normal(size=6_000)),
        pl.Series("tags", [["x", "y"][: i % 3] if i % 7 else None for i in range(6_000)], dtype=pl.List(pl.String)))
    path = tmp_path / "d.parquet"
    df.write_parquet(path, row_group_size=1000)
    kw = dict(batch_size=777, pairs=True, pair_top_k=4)
    mem = _rank(df, **kw)
    lazy = _rank(pl.scan_parquet(path), **kw)
    file = FeatureRanker(label="y", **kw).fit(path)
    for other in (lazy, file):
        assert mem.ranking_.equals(other.ranking_)
        assert mem.pairs_.equals(other.pairs_)
        assert mem.quality_ == other.quality_
    one = _rank(df, batch_size=10**6)  # one batch: exact counts do not depend on batching
    cols = ["feature", "mi", "emi", "cardinality", "coverage"]
    assert mem.ranking_.select(cols).sort("feature").equals(one.ranking_.select(cols).sort("feature"))
    sampled = _rank(df, sample=2_000)
    assert sampled.n_rows_ == 2_000


def test_numeric_bins_and_multi_hot_sets():
    x = np.arange(1000, dtype=np.float64)
    df = pl.DataFrame({"x": x, "t": [["b", "a"] if i % 2 else ["a", "b"] for i in range(1000)],
                       "y": (x >= 500).astype(np.int8)}).with_columns(
        pl.when(pl.col("x") == 3).then(None).otherwise(pl.col("x")).alias("x"))
    r = _rank(df, n_bins=4)
    q = r.quality_["columns"]
    assert q["x"]["cardinality"] == 4 and q["x"]["missing"] == 1 and len(q["x"]["bin_boundaries"]) == 3
    assert q["t"]["cardinality"] == 1 and q["t"]["constant"]  # [a, b] and [b, a] are one set


# ------------------------------------------------------------------------ data quality
def test_quality_report_flags():
    rng = np.random.default_rng(0)
    n = 5_000
    base = rng.integers(0, 6, n)
    y = (rng.random(n) < 0.3).astype(np.int8)
    df = pl.DataFrame({
        "const": ["k"] * n,
        "near_const": np.where(np.arange(n) < 10, 1, 0),
        "missing": [None if i % 10 else "v" for i in range(n)],
        "row_id": np.arange(n),
        "base": base,
        "relabelled": pl.Series(base).replace_strict({i: f"v{5 - i}" for i in range(6)}),
        "leak": np.where(rng.random(n) < 0.01, 1 - y, y),
        "y": y,
    })
    rep = _rank(df).quality_
    f = rep["flagged"]
    assert f["constant"] == ["const"]
    assert f["near_constant"] == ["near_const"]
    assert f["mostly_missing"] == ["missing"]
    assert f["id_like"] == ["row_id"]
    assert sorted(f["duplicated"]) == ["base", "relabelled"] and rep["columns"]["base"]["duplicate_of"] == ["relabelled"]
    assert f["suspected_leak"] == ["leak"]
    ranker = _rank(df)
    assert ranker.ranking_["feature"][0] == "leak"  # the leak scores highest ...
    assert "leak" not in ranker.selected() and "leak" not in ranker.selected(top_k=3)  # ... but is not selected
    assert "const" not in ranker.selected(top_k=8)
    assert "leak" in ranker.selected(top_k=1, drop_flagged=())
    assert rep["columns"]["const"]["top_values"] == [{"value": "k", "count": n, "share": 1.0}]
    json.dumps(rep)


# --------------------------------------------------------------------------------- CLI
def test_cli_writes_every_output(tmp_path: Path):
    df = _planted(5_000).with_columns(pl.Series("num", np.random.default_rng(0).normal(size=5_000)))
    data = tmp_path / "d.csv"
    df.write_csv(data)
    out = tmp_path / "out"
    assert recsys_main(["rank-features", "--data", str(data), "--label", "y", "--out", str(out),
                        "--heuristic", "3mr", "--no-progress"]) == 0
    for name in ("ranking.csv", "ranking.json", "quality.json", "summary.md", "scores.png", "redundancy.png",
                 "selected_features.yaml"):
        assert (out / name).is_file(), name
    ranking = pl.read_csv(out / "ranking.csv")
    assert ranking.height == 5 and ranking["feature"][0] == "planted_5k"
    sel = yaml.safe_load((out / "selected_features.yaml").read_text())
    assert sel["data"]["init_args"]["fields"][0] == "planted_5k"
    assert "noise_ids" not in sel["data"]["init_args"]["fields"]
    assert json.loads((out / "ranking.json").read_text())["heuristic"] == "3mr"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    # rerun into the existing directory: files replaced, no heatmap left over without pairs
    assert recsys_main(["rank-features", "--data", str(data), "--label", "y", "--out", str(out),
                        "--pair-top-k", "0", "--top-k", "2", "--no-progress"]) == 0
    assert not (out / "redundancy.png").exists()
    assert len(yaml.safe_load((out / "selected_features.yaml").read_text())["data"]["init_args"]["fields"]) == 2


def test_cli_schema_and_errors(tmp_path: Path, capsys):
    df = pl.DataFrame({"a": ["x", "y"] * 20, "n": [float(i) for i in range(40)], "label": [0, 1] * 20})
    data = tmp_path / "d.parquet"
    df.write_parquet(data)
    schema = tmp_path / "s.yaml"
    schema.write_text(yaml.safe_dump({"label": "label", "fields": [
        {"name": "feat_a", "kind": "categorical", "column": "a"},
        {"name": "n", "kind": "numeric", "transform": "bucketize", "n_buckets": 4}]}))
    out = tmp_path / "o"
    assert recsys_main(["rank-features", "--data", str(data), "--schema", str(schema), "--out", str(out),
                        "--no-progress"]) == 0
    ranked = pl.read_csv(out / "ranking.csv")
    assert ranked["feature"].to_list()[0] == "feat_a"
    assert "redundant_with" in ranked.columns and "| redundancy | redundant_with |" in (out / "summary.md").read_text()
    # a failing run leaves nothing behind
    bad_out = tmp_path / "bad"
    assert recsys_main(["rank-features", "--data", str(data), "--label", "nope", "--out", str(bad_out)]) == 2
    assert "no label column 'nope'" in capsys.readouterr().err
    assert not bad_out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["missing_label", "continuous_label", "constant_label", "null_label", "empty_file",
                                  "header_only", "garbage_csv", "missing_file", "bad_heuristic"])
def test_bad_input_raises_recsys_error(tmp_path: Path, case: str):
    good = pl.DataFrame({"f": [1, 2, 3, 4], "y": [0, 1, 0, 1]})
    kwargs: dict = {"label": "y"}
    data: object = good
    if case == "missing_label":
        kwargs["label"] = "target"
    elif case == "continuous_label":
        data = pl.DataFrame({"f": list(range(500)), "y": np.linspace(0, 1, 500)})
    elif case == "constant_label":
        data = good.with_columns(pl.lit(1).alias("y"))
    elif case == "null_label":
        data = pl.DataFrame({"f": [1, 2, 3], "y": [0, None, 1]})
    elif case == "empty_file":
        data = tmp_path / "e.csv"
        data.write_text("")
    elif case == "header_only":
        data = tmp_path / "h.csv"
        data.write_text("f,y\n")
    elif case == "garbage_csv":
        data = tmp_path / "g.csv"
        data.write_text("f,y\n1,0\n2,1\n" + "x,y,z,w,v\n" * 3 + "3,0\n")
    elif case == "missing_file":
        data = tmp_path / "nope.parquet"
    elif case == "bad_heuristic":
        kwargs["heuristic"] = "mi-numba"
    with pytest.raises(RecsysError) as e:
        FeatureRanker(**kwargs).fit(data)
    assert str(e.value)


# ------------------------------------------------------------- the fast counting path
def _brute_force_counts(keys: list, y: list[int], perms: np.ndarray, n_classes: int):
    """Per distinct key in order of first appearance: row count, label counts, permuted label counts."""
    code: dict = {}
    for k in keys:
        code.setdefault(k, len(code))
    card = len(code)
    table = np.zeros((card, n_classes), np.int64)
    perm = np.zeros((perms.shape[0], card, n_classes), np.int64)
    for i, k in enumerate(keys):
        table[code[k], y[i]] += 1
        for p in range(perms.shape[0]):
            perm[p, code[k], perms[p, i]] += 1
    return list(code), table, perm


def _canon(kind: str, v):
    if v is None:
        return None
    if kind == "multi_hot":
        return frozenset(str(e) for e in v if e is not None)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else v + 0.0  # one NaN; -0.0 == 0.0
    return v


@pytest.mark.parametrize("batch_size", [97, 1000, 10**6])
def test_fast_counts_equal_brute_force(batch_size: int):
    from recsys.features.counting import _PermutedStream

    rng = np.random.default_rng(7)
    n = 3_000
    wide = np.where(np.arange(n) < n // 2, rng.integers(0, 50, n), rng.integers(-10**15, 10**15, n))  # LUT -> hash
    df = pl.DataFrame({
        "small": rng.integers(0, 5, n),
        "wide": wide,
        "extreme": rng.choice(np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]), n),
        "u64": pl.Series(rng.integers(0, 3, n).astype(np.uint64) * np.uint64(2**63 - 1), dtype=pl.UInt64),
        "ints_null": pl.Series(rng.integers(0, n, n)).set(pl.Series(rng.random(n) < 0.3), None),
        "str_hi": [f"s{v}" for v in rng.integers(0, n, n)],
        "str_null_late": [None if i > n // 2 and i % 5 == 0 else f"b{i % 17}" for i in range(n)],
        "boolean": pl.Series(rng.random(n) < 0.5).set(pl.Series(rng.random(n) < 0.1), None),
        "cat": pl.Series([f"c{v}" for v in rng.integers(0, 9, n)], dtype=pl.Categorical),
        "flt": pl.Series(rng.choice(np.array([0.0, -0.0, 1.5, np.nan]), n)).set(pl.Series(rng.random(n) < 0.1), None),
        "tags": pl.Series([None if rng.random() < 0.1 else
                           [None if rng.random() < 0.1 else f"t{v}" for v in rng.integers(0, 4, rng.integers(0, 25))]
                           for _ in range(n)], dtype=pl.List(pl.String)),
        "itags": pl.Series([list(rng.integers(0, 3, rng.integers(0, 3))) for _ in range(n)], dtype=pl.List(pl.Int64)),
        "num": pl.Series(rng.normal(size=n)).set(pl.Series(rng.random(n) < 0.1), None),
        "y": rng.integers(0, 3, n),
    })
    schema = {"label": "y", "fields": [
        *({"name": c, "kind": "categorical"} for c in ("small", "wide", "extreme", "u64", "ints_null", "str_hi",
                                                        "str_null_late", "boolean", "cat", "flt")),
        {"name": "tags", "kind": "multi_hot"}, {"name": "itags", "kind": "multi_hot"},
        {"name": "num", "kind": "numeric", "transform": "bucketize", "n_buckets": 7}]}
    from recsys.schema import Schema

    r = FeatureRanker(label="y", schema=Schema.from_dict(schema), batch_size=batch_size, n_permutations=3,
                      seed=5).fit(df)
    y = df["y"].to_list()
    stream = _PermutedStream(np.bincount(y), 3, 5)
    perms = np.concatenate([stream.next(min(batch_size, n - i)) for i in range(0, n, batch_size)], axis=1)
    for name in df.columns[:-1]:
        c = r._cols[name]
        if name == "num":
            x = df["num"].to_numpy()
            assert list(c.boundaries) == sorted({df["num"].quantile(q, interpolation="nearest")
                                                 for q in np.linspace(0, 1, 8)[1:-1]})
            keys = [None if np.isnan(v) else int(np.searchsorted(c.boundaries, v)) for v in x]
        else:
            keys = [_canon(c.kind, v) for v in df[name].to_list()]
        order, table, perm = _brute_force_counts(keys, y, perms, 3)
        assert c.card == len(order), name
        assert np.array_equal(c.table, table), name
        assert np.array_equal(c.n, table.sum(1)), name
        for k in range(3):
            assert np.array_equal(c.perm[k], perm[k][:, 1:]), name
        assert c.null_index == (order.index(None) if None in order else None), name
        if name not in ("num", "flt"):  # decoded values, in order of first appearance
            got = [_canon(c.kind, v) if c.kind != "multi_hot" else v for v in c.values.to_list()]
            if c.kind == "multi_hot":
                got = [None if v is None else frozenset(v.split("\x1f")) - {""} for v in got]
            assert got == order, name


def test_coder_growing_first_codes_like_one_by_one(monkeypatch):
    """The hash coder's grow-then-claim branch (a batch of mostly new values, e.g. an id column's
    first batch) gives the codes of coding value by value (order of first appearance, missing
    values a code of their own), one- and two-word keys, like the dedupe-then-grow branch."""
    from recsys.features import counting

    rng = np.random.default_rng(11)
    vals = [rng.integers(0, 30_000, 20_000), rng.integers(0, 200_000, 20_000), rng.integers(0, 50, 20_000),
            rng.integers(0, 400_000, 20_000)]
    valid = [None, None, None, rng.random(20_000) > 0.2]
    seen: dict = {}
    want = []
    for v, ok in zip(vals, valid):  # brute force: a dict in order of first appearance (None: missing)
        keys = [int(x) if ok is None or ok[i] else None for i, x in enumerate(v)]
        want.append([seen.setdefault(k, len(seen)) for k in keys])
    calls = []
    estimate = counting._estimated_distinct
    monkeypatch.setattr(counting, "_estimated_distinct", lambda k: calls.append((estimate(k), k.size)) or calls[-1][0])

    def codes(words: int) -> list[list[int]]:
        coder = counting._Coder(two_keys=words == 2)
        out = []
        for v, ok in zip(vals, valid):
            k1 = v * np.int64(0x9E3779B97F4A7C1)  # a wide range: the hash table, not the direct one
            out.append(coder.encode(k1, (v ^ 0x5A5A) if words == 2 else None, ok)[0].tolist())
        return out

    for words in (1, 2):
        calls.clear()
        assert codes(words) == want
        assert any(4 * new >= size for new, size in calls)  # the branch ran
        monkeypatch.setattr(counting, "_GROW_FIRST_ROWS", 10**12)
        assert codes(words) == want
        monkeypatch.setattr(counting, "_GROW_FIRST_ROWS", 4096)


def test_numeric_columns_from_the_quantile_pass_count_like_reading_them_again(tmp_path: Path, monkeypatch):
    """The counting pass takes numeric columns (NaN and null missing) from the quantile pass instead
    of decoding them again, except a column a categorical field reads too: counts, values and the
    ranking are those of reading every column in the batches."""
    from recsys.features.ranking import FeatureRanker as Ranker
    from recsys.schema import Schema

    rng = np.random.default_rng(5)
    n = 9_000
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    df = _planted(n).with_columns(pl.Series("x", x).set(pl.Series(rng.random(n) < 0.05), None),
                                  pl.Series("z", rng.integers(0, 7, n).astype(np.float64)),
                                  pl.Series("ts", rng.integers(0, 10**6, n)).cast(pl.Datetime("ms")))
    path = tmp_path / "d.parquet"
    df.write_parquet(path)
    schema = Schema.from_dict({"label": "y", "fields": [
        {"name": "x", "kind": "numeric"}, {"name": "z", "kind": "numeric"}, {"name": "z_cat", "column": "z",
                                                                           "kind": "categorical"},
        {"name": "ts", "kind": "numeric"}, {"name": "weak_3", "kind": "categorical"}]})
    read = Ranker._read
    taken = []

    def spy(self, *a):
        inp = read(self, *a)
        taken.append(inp.numeric_rows.columns if inp.numeric_rows is not None else None)
        return inp

    monkeypatch.setattr(Ranker, "_read", spy)
    fits = [Ranker(label="y", schema=schema, batch_size=2_000).fit(d) for d in (df, path)]
    assert taken == [["x", "ts"], ["x", "ts"]]  # (z is read by z_cat as well)

    def read_all(self, *a):
        inp = read(self, *a)
        inp.numeric_rows = None
        return inp

    monkeypatch.setattr(Ranker, "_read", read_all)
    base = Ranker(label="y", schema=schema, batch_size=2_000).fit(df)
    for r in fits:
        assert r.ranking_.equals(base.ranking_)
        for name, c in base._cols.items():
            assert np.array_equal(r._cols[name].table, c.table), name
            assert all(np.array_equal(p, q) for p, q in zip(r._cols[name].perm, c.perm)), name
            assert r._cols[name].values.equals(c.values), name


def test_duplicate_check_is_the_partition_over_all_batches():
    """The fingerprint behind ``duplicate_of`` sees the whole partition, batch after batch: a
    relabelled copy and a copy with missing values for one value are duplicates; a copy with two
    rows swapped (same values, same value counts) is not."""
    rng = np.random.default_rng(8)
    n = 6_000
    a = rng.integers(0, 5, n)
    swapped = a.copy()
    i = 4_321
    j = int(np.flatnonzero(a != a[i])[-1])
    swapped[[i, j]] = swapped[[j, i]]
    df = pl.DataFrame({"a": a, "a_str": [f"s{v * 7}" for v in a], "a_swapped": swapped,
                       "a_null": pl.Series(a).set(pl.Series(a == 3), None), "y": rng.integers(0, 2, n)})
    q = FeatureRanker(label="y", batch_size=1_000).fit(df).quality_
    assert sorted(q["flagged"]["duplicated"]) == ["a", "a_null", "a_str"]
    assert q["columns"]["a_swapped"]["duplicate_of"] == []


def test_threads_do_not_change_results(tmp_path: Path):
    rng = np.random.default_rng(2)
    n = 20_000
    num = rng.normal(size=n)
    num[rng.random(n) < 0.1] = np.nan
    df = _planted(n).with_columns(pl.Series("s", [f"v{i % 997}" for i in range(n)]), pl.Series("num", num),
                                  pl.Series("zeros", np.where(rng.random(n) < 0.7, 0.0, rng.exponential(size=n))),
                                  pl.Series("ids", [f"u{v}" for v in rng.integers(0, 10**6, n)]))
    one = _rank(df, n_threads=1, batch_size=5_000)
    two = _rank(df, n_threads=2, batch_size=5_000)
    assert one.ranking_.equals(two.ranking_) and one.quality_ == two.quality_
    assert list(one.quality_["columns"]["zeros"]["bin_boundaries"])[:2] == [np.nextafter(0.0, -1.0), 0.0]  # heavy value


def test_read_table_lazy_and_no_torch_import(tmp_path: Path):
    import subprocess
    import sys

    from recsys.data.sources import read_table

    path = tmp_path / "d.csv"
    pl.DataFrame({"a": [1, 2], "y": [0, 1]}).write_csv(path)
    lf = read_table(path, lazy=True)
    assert isinstance(lf, pl.LazyFrame) and lf.collect()["a"].to_list() == [1, 2]
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(RecsysError, match="empty"):
        read_table(empty, lazy=True)
    # ranking a file does not pull in torch through the recsys.data package
    code = (f"import sys; from recsys.features import FeatureRanker; FeatureRanker(label='y').fit({str(path)!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; import recsys.data.sources as s; import recsys.data; "
            "assert recsys.data.read_table is s.read_table is recsys.data.sources.read_table")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------- estimator contract, module layout
def test_parameters_are_stored_as_given_and_validated_in_fit(tmp_path: Path):
    from recsys.errors import ConfigError
    from recsys.schema import Schema

    feats, excl = ("a",), ("b",)
    r = FeatureRanker(label="y", features=feats, exclude=excl, alpha=1, heuristic="bogus")  # no check here
    params = r.get_params()
    assert params["features"] is feats and params["exclude"] is excl and params["alpha"] == 1
    assert isinstance(params["alpha"], int) and params["heuristic"] == "bogus"
    with pytest.raises(ConfigError, match="heuristic"):
        r.fit(pl.DataFrame({"a": [0, 1] * 10, "b": [1] * 20, "y": [0, 1] * 10}))
    assert FeatureRanker(**FeatureRanker(n_bins=7).get_params()).get_params() == FeatureRanker(n_bins=7).get_params()
    with pytest.raises(ConfigError, match="unknown parameter"):
        FeatureRanker().set_params(n_bin=3)
    # the schema path stays a path; the resolved schema is the fitted attribute schema_
    path = tmp_path / "s.yaml"
    Schema.from_dict({"label": "y", "fields": [{"name": "a", "kind": "categorical"}]}).to_yaml(path)
    df = pl.DataFrame({"a": [0, 1] * 50, "y": [0, 1] * 50})
    r = FeatureRanker(schema=str(path)).fit(df)
    assert r.schema == str(path) and isinstance(r.schema_, Schema) and r.ranking_["feature"].to_list() == ["a"]
    r.set_params(heuristic="mi").fit(df)
    assert r.ranking_["score"][0] == pytest.approx(r.ranking_["mi"][0])


def test_counting_and_quality_do_not_import_the_ranker():
    """No import cycle: ranking -> quality, ranking -> counting; never back (deferred imports included)."""
    import ast

    import recsys.features.counting as counting
    import recsys.features.quality as quality
    import recsys.features.significance as significance

    for mod in (counting, quality, significance):
        tree = ast.parse(Path(mod.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in imported if m and m.startswith("recsys.features.ranking")}, mod.__name__


def test_deduplicated_string_batches_count_like_every_row(monkeypatch):
    """Issue 18.5: low-cardinality string batches are deduplicated by polars before the running
    dictionary (``_Column._encode_distinct``). Against brute force, with batches where it applies and
    batches where it must not (missing values, declared placeholders, many values, values first seen
    in a later batch), the counts, codes and values are those of coding every row."""
    from recsys.features import counting
    from recsys.features.counting import _PermutedStream
    from recsys.schema import Schema

    used = []
    orig = counting._Column._encode_distinct

    def spy(self, *a):
        out = orig(self, *a)
        used.append((self.name, out is not None))
        return out

    monkeypatch.setattr(counting._Column, "_encode_distinct", spy)
    rng = np.random.default_rng(11)
    n, bs = 3 * 8_192, 8_192
    late = np.where(np.arange(n) < bs, rng.integers(0, 3, n), rng.integers(0, 40, n))  # new values in batch 2+
    grow = np.where(np.arange(n) < bs, rng.integers(0, 20, n), rng.integers(0, 10**6, n))  # few -> many values
    df = pl.DataFrame({
        "few": [f"f{v}" for v in rng.integers(0, 6, n)],
        "late": [f"l{v}" for v in late],
        "grow": [f"g{v}" for v in grow],
        "hi": [f"h{v}" for v in rng.integers(0, n, n)],
        "null_late": [None if i >= 2 * bs and i % 7 == 0 else f"n{i % 13}" for i in range(n)],
        "placeholder": ["?" if i % 11 == 0 else f"p{v}" for i, v in enumerate(rng.integers(0, 4, n))],
        "y": rng.integers(0, 2, n),
    })
    schema = Schema.from_dict({"label": "y", "missing_values": ["?"],
                               "fields": [{"name": c, "kind": "categorical"} for c in df.columns[:-1]]})
    r = FeatureRanker(label="y", schema=schema, batch_size=bs, n_permutations=3, seed=3, n_threads=1).fit(df)
    y = df["y"].to_list()
    stream = _PermutedStream(np.bincount(y), 3, 3)
    perms = np.concatenate([stream.next(min(bs, n - i)) for i in range(0, n, bs)], axis=1)
    for name in df.columns[:-1]:
        c = r._cols[name]
        keys = [None if v == "?" else v for v in df[name].to_list()]
        order, table, perm = _brute_force_counts(keys, y, perms, 2)
        assert c.values.to_list() == order, name
        assert np.array_equal(c.table, table), name
        for k in range(3):
            assert np.array_equal(c.perm[k], perm[k][:, 1:]), name
        assert c.null_index == (order.index(None) if None in order else None), name
    took = {k: [u for c, u in used if c == k] for k in df.columns[:-1]}
    assert took["few"] == [True, True, True] and took["late"] == [True, True, True]
    assert took["grow"][0] and not any(took["grow"][1:])  # one batch of few values, then too many
    assert not any(took["hi"]) and not any(took["placeholder"])
    assert took["null_late"] == [True, True, False]
    # the whole ranking is the one of the plain coder
    monkeypatch.setattr(counting._Column, "_encode_distinct", lambda self, *a: None)
    plain = FeatureRanker(label="y", schema=schema, batch_size=bs, n_permutations=3, seed=3, n_threads=1).fit(df)
    assert r.ranking_.equals(plain.ranking_)


def test_large_key_space_counts_come_in_key_order():
    """Counts of a key space too large for bincount come from a hash table whose order varies from
    run to run; in key order, sums over them (MI terms, the pair table) are the same bits every run."""
    from recsys.features.ranking import _DENSE_LIMIT, _count_sums, _counts, _xlogx_sum

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 3 * _DENSE_LIMIT, size=400_000) // 7 * 7  # sparse, repeated keys
    _, expected = np.unique(keys, return_counts=True)
    for _ in range(3):
        got = _counts(keys, 3 * _DENSE_LIMIT)
        np.testing.assert_array_equal(got, expected)
        assert _count_sums(keys, 3 * _DENSE_LIMIT) == (_xlogx_sum(expected), expected.size)

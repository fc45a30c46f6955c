"""Candidate retrieval: allocation, mixtures, index, kNN-Embed, metrics, data views, fit + retrieve."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
import yaml

from recsys.errors import ConfigError, RecsysError
from recsys.retrieval import (
    ExactIndex,
    KMeans,
    KNNEmbed,
    csr_lists,
    largest_remainder,
    raw_mixtures,
    single_vector,
    smooth_mixtures,
    top_m,
)
from recsys.retrieval import metrics as M

ROOT = Path(__file__).resolve().parents[1]


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# ------------------------------------------------------------------ allocation
def test_largest_remainder_hand_cases():
    assert largest_remainder(torch.tensor([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert largest_remainder(torch.tensor([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]  # tie -> lower index
    assert largest_remainder(torch.tensor([0.0, 2.0, 1.0, 0.0]), 3).tolist() == [0, 2, 1, 0]
    assert largest_remainder(torch.tensor([0.7, 0.2, 0.1]), 100).tolist() == [70, 20, 10]  # no float drift
    assert largest_remainder(torch.zeros(2, 3), 5).tolist() == [[0, 0, 0], [0, 0, 0]]
    # tie on the remainder: the heavier component wins the last slot
    assert largest_remainder(torch.tensor([0.25, 0.45, 0.30]), 2).tolist() == [0, 1, 1]


def test_largest_remainder_sums_to_k_and_follows_weights():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(500, 6, generator=g) * (torch.rand(500, 6, generator=g) > 0.3)
    w[0] = 0.0
    for k in (1, 7, 10, 100):
        a = largest_remainder(w, k)
        total = w.sum(1, keepdim=True)
        has = total.squeeze(1) > 0
        assert (a.sum(1)[has] == k).all() and (a[~has] == 0).all()
        quota = k * w / total.clamp(min=1e-12)
        # Hamilton's method: every allocation is its quota rounded down or up
        assert (a[has] >= torch.floor(quota[has] + 1e-9).long()).all()
        assert (a[has] <= torch.ceil(quota[has] - 1e-9).long()).all()
        assert (a[w == 0] == 0).all()
        # monotone: a heavier component never gets fewer slots
        heavier = w[:, :, None] > w[:, None, :]
        assert (a[:, :, None] >= a[:, None, :])[heavier].all()


# ------------------------------------------------------------------ mixtures
def test_raw_mixtures_smoothing_and_top_m():
    item_cluster = torch.tensor([0, 0, 1, 2, 2, 2])
    engaged = [torch.tensor([0, 1, 2, 3]), torch.tensor([3, 4]), torch.tensor([], dtype=torch.int64)]
    pi = raw_mixtures(engaged, item_cluster, 3)
    assert torch.allclose(pi, torch.tensor([[0.5, 0.25, 0.25], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    vecs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    # lambda = 0 is the raw mixture, exactly
    assert torch.equal(smooth_mixtures(pi, vecs, n_neighbors=2, lam=0.0), pi)
    # user 0's nearest neighbour is user 1; user 2's is user 1 too
    s = smooth_mixtures(pi, vecs, n_neighbors=1, lam=0.4)
    assert torch.allclose(s[0], 0.6 * pi[0] + 0.4 * pi[1])
    assert torch.allclose(s[2], 0.4 * pi[1])
    # two neighbours, uniform mean
    s2 = smooth_mixtures(pi, vecs, n_neighbors=2, lam=1.0)
    assert torch.allclose(s2[1], (pi[0] + pi[2]) / 2)
    kept = top_m(torch.tensor([[0.1, 0.5, 0.1, 0.3]]), 2)
    assert torch.allclose(kept, torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    kept = top_m(torch.tensor([[0.2, 0.2, 0.6]]), 2)  # tie -> lower index kept
    assert torch.allclose(kept, torch.tensor([[0.25, 0.0, 0.75]]))
    with pytest.raises(ConfigError):
        smooth_mixtures(pi, vecs, 2, lam=1.5)


# ---------------------------------------------------------------------- index
def test_exact_index_equals_brute_force():
    items, queries = _unit(523, 16, 0), _unit(37, 16, 1)
    g = torch.Generator().manual_seed(2)
    exclude = [torch.randint(0, 523, (int(torch.randint(0, 40, (1,), generator=g)),), generator=g) for _ in range(37)]
    full = queries @ items.T
    for n, e in enumerate(exclude):
        full[n, e] = float("-inf")
    want_s, want_i = torch.topk(full, 25, dim=1)
    got_s, got_i = ExactIndex(query_chunk=7, item_chunk=53).build(items).search(queries, 25, exclude)
    assert torch.equal(got_i, want_i)
    assert torch.allclose(got_s, want_s, atol=1e-6)
    # a sub-index with its own ids returns those ids and honours global exclusions
    ids = torch.arange(0, 523 * 3, 3)
    sub_s, sub_i = ExactIndex(item_chunk=100).build(items, ids=ids).search(queries, 25, [i * 3 for i in exclude])
    assert torch.equal(sub_i, want_i * 3)
    # fewer qualifying items than k: -inf / -1 tail
    s, i = ExactIndex().build(items[:5]).search(queries[:1], 8, [torch.tensor([0, 1])])
    assert (i[0, 3:] == -1).all() and torch.isinf(s[0, 3:]).all() and set(i[0, :3].tolist()) == {2, 3, 4}
    with pytest.raises(ConfigError):
        ExactIndex().build(items).search(queries[:, :4], 5)


def test_faiss_index_same_api_when_installed():
    pytest.importorskip("faiss")
    from recsys.retrieval import make_index

    items, queries = _unit(3000, 16, 9), _unit(20, 16, 10)
    exclude = [torch.arange(n, n + 30) for n in range(20)]
    _, ref = ExactIndex().build(items).search(queries, 20, exclude)
    s, i = make_index("faiss-hnsw").build(items).search(queries, 20, exclude)
    overlap = sum(len(set(a.tolist()) & set(r.tolist())) for a, r in zip(i, ref)) / ref.numel()
    assert overlap > 0.9
    assert not any(torch.isin(a, e).any() for a, e in zip(i, exclude))
    assert (s[:, :-1] >= s[:, 1:]).all()


# ------------------------------------------------------------------ kNN-Embed
def test_knn_embed_one_cluster_equals_single_vector():
    items, queries = _unit(300, 12, 3), _unit(40, 12, 4)
    engaged = [torch.randperm(300, generator=torch.Generator().manual_seed(n))[:n % 15] for n in range(40)]
    single = single_vector(ExactIndex().build(items), queries, 30, engaged)
    for restrict, unimodal in ((True, 0.0), (False, 0.0), (True, 0.5)):
        knn = KNNEmbed(n_clusters=1, m=1, lam=0.5, n_neighbors=5, query="user", restrict=restrict,
                       unimodal=unimodal).fit(items)
        res = knn.retrieve(queries, 30, engaged=engaged)
        assert torch.equal(res.ids, single.ids)
        assert torch.allclose(res.scores, single.scores, atol=1e-6)


def test_knn_embed_allocation_dedup_and_exclusion():
    # 4 well-separated groups of items; users engaged with two groups in a 3:1 ratio
    centers = _unit(4, 8, 5) * 4
    g = torch.Generator().manual_seed(6)
    items = F.normalize(centers.repeat_interleave(50, 0) + 0.3 * torch.randn(200, 8, generator=g), dim=1)
    engaged = [torch.tensor([0, 1, 2, 50 + n]) for n in range(6)]
    queries = F.normalize(items[0:6] + items[50:56], dim=1)
    knn = KNNEmbed(n_clusters=4, m=4, lam=0.0, query="user", unimodal=0.0, recent=None, seed=0).fit(items)
    res = knn.retrieve(queries, 20, engaged=engaged)
    c_a, c_b = int(knn.item_cluster_[0]), int(knn.item_cluster_[50])
    assert c_a != c_b
    for n in range(6):
        row = res.ids[n].tolist()
        assert len(set(row)) == 20 and not set(row) & set(engaged[n].tolist())
        comps = res.components[n].tolist()
        assert comps.count(c_a) == 15 and comps.count(c_b) == 5  # 0.75 / 0.25 of 20
        assert all(int(knn.item_cluster_[i]) == c for i, c in zip(row, comps))
        assert res.scores[n].tolist() == sorted(res.scores[n].tolist(), reverse=True)
    again = KNNEmbed(n_clusters=4, m=4, lam=0.0, query="user", unimodal=0.0, recent=None,
                     seed=0).fit(items).retrieve(queries, 20, engaged=engaged)
    assert torch.equal(again.ids, res.ids)
    # a unimodal share: the single-vector query takes half the slots, the clusters split the rest
    # 0.375 / 0.125 of 20 = 7.5 / 2.5 (the tied remainder goes to the heavier component)
    uni = KNNEmbed(n_clusters=4, m=4, lam=0.0, query="user", unimodal=0.5, recent=None, seed=0).fit(items)
    res_u = uni.retrieve(queries, 20, engaged=engaged)
    single = single_vector(ExactIndex().build(items), queries, 20, engaged)
    for n in range(6):
        comps = res_u.components[n].tolist()
        assert comps.count(-1) == 10 and comps.count(c_a) == 8 and comps.count(c_b) == 2
        from_single = {i for i, c in zip(res_u.ids[n].tolist(), comps) if c == -1}
        assert from_single == set(single.ids[n, :10].tolist())
    # recent: only the last engagement counts -> its cluster takes every cluster slot
    last = KNNEmbed(n_clusters=4, m=4, lam=0.0, query="user", unimodal=0.0, recent=1, seed=0).fit(items)
    res_l = last.retrieve(queries, 20, engaged=engaged)
    assert (res_l.components == c_b).all()
    assert not set(res_l.ids[0].tolist()) & {0, 1, 2, 50}  # still excludes every engagement
    # unrestricted component queries (centroid) deduplicate and backfill to k items
    res2 = KNNEmbed(n_clusters=4, m=2, query="centroid", restrict=False, unimodal=0.0).fit(items).retrieve(
        queries, 20, engaged)
    for n in range(6):
        row = res2.ids[n].tolist()
        assert len(set(row)) == 20 and -1 not in row
    with pytest.raises(ConfigError):
        KNNEmbed(query="nearest")


def test_kmeans_seeded_and_separates_blobs():
    centers = _unit(3, 5, 7) * 5
    x = centers.repeat_interleave(30, 0) + 0.2 * torch.randn(90, 5, generator=torch.Generator().manual_seed(8))
    a = KMeans(3, seed=1).fit(x)
    b = KMeans(3, seed=1).fit(x)
    assert torch.equal(a.labels_, b.labels_)
    for blob in range(3):
        assert len(set(a.labels_[blob * 30:(blob + 1) * 30].tolist())) == 1
    assert len(set(a.labels_.tolist())) == 3
    assert torch.allclose(a.centroids_.norm(dim=1), torch.ones(3))
    assert torch.equal(KMeans(3, spherical=False, seed=0).fit(x).predict(x[:30]), KMeans(3, spherical=False, seed=0).fit(x).labels_[:30])


# ------------------------------------------------------------------- metrics
def test_metrics_against_hand_computed():
    top = torch.tensor([[3, 1, 2, 7], [0, 4, 5, 6], [9, 8, -1, -1]])
    targets = [torch.tensor([2, 7]), torch.tensor([5]), torch.tensor([4])]
    assert M.recall_at_k(top, targets, 3) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert M.recall_at_k(top, targets, 4) == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert M.hit_rate_at_k(top, targets, 2) == 0.0
    assert M.hit_rate_at_k(top, targets, 3) == pytest.approx(2 / 3)
    # user 0: hits at ranks 3, 4 of 2 relevant; user 1: rank 3 of 1
    u0 = (1 / math.log2(4) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    u1 = 1 / math.log2(4)
    assert M.ndcg_at_k(top, targets, 4) == pytest.approx((u0 + u1 + 0) / 3)
    clusters = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1])
    assert M.distinct_per_list(top, clusters, 4) == pytest.approx((3 + 3 + 2) / 3)  # {1,0,3},{0,2,3},{1,0}
    genres = [["a"], ["a", "b"], ["c"], ["a"], ["d"], ["d"], ["e"], ["a"], ["f"], ["b"]]
    assert M.distinct_per_list(top, genres, 2) == pytest.approx((2 + 2 + 2) / 3)  # {a,b},{a,d},{b,f}
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ild = M.intra_list_distance(torch.tensor([[0, 1, 2]]), v, 3)
    c = 1 / math.sqrt(2)
    assert ild == pytest.approx(1 - (0 + c + c) / 3)
    assert M.coverage(top, 20, 2) == pytest.approx(6 / 20)  # {3,1,0,4,9,8}
    out = M.retrieval_metrics(top, torch.tensor([1, 6, 8]), ks=(2,), n_items=20)
    assert out["recall@2"] == pytest.approx(2 / 3) and out["coverage@2"] == pytest.approx(0.3)


# ---------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def rdm():
    from recsys.data.retrieval import RetrievalDataModule

    dm = RetrievalDataModule(dataset_options={"n_users": 120, "n_items": 150, "n_genres": 6}, batch_size=128)
    dm.setup("fit")
    return dm


def test_datamodule_catalogue_targets_seen(rdm):
    frame = pl.concat([rdm.frame(s) for s in ("train", "valid", "test")])
    cat = rdm.catalogue()
    assert cat.item_ids.to_list() == sorted(frame["item_id"].unique().to_list())
    for split, earlier in (("valid", ("train",)), ("test", ("train", "valid"))):
        rows = rdm.frame(split)
        seen = csr_lists(*rdm.seen(split))
        engaged = csr_lists(*rdm.engagements(split))
        targets = rdm.targets(split)
        past = frame.filter(pl.col("split").is_in(list(earlier)))
        for n in (0, 7, len(rows) - 1):
            user = rows["user_id"][n]
            want = sorted(cat.item_ids.to_list().index(i) for i in past.filter(pl.col("user_id") == user)["item_id"])
            assert seen[n].tolist() == want
            assert cat.item_ids[int(targets[n])] == rows["item_id"][n]
            assert int(targets[n]) not in want
            # engagements: the same items, oldest first
            ordered = past.filter(pl.col("user_id") == user).sort("timestamp")["item_id"].to_list()
            assert [cat.item_ids[i] for i in engaged[n].tolist()] == ordered


def test_ml100k_retrieval_view_reproduces_popularity_floor():
    from recsys.data.datasets import movielens as ml

    try:
        ml.fetch_ml100k()
    except RecsysError as e:
        pytest.skip(f"MovieLens-100K not available: {e}")
    df = ml.load_ml100k_retrieval(max_history=50)
    assert df.group_by("split").len().sort("split").rows() == [("test", 943), ("train", 98114), ("valid", 943)]
    train = df.filter(pl.col("split") != "test")  # everything before the held-out last item
    counts = np.zeros(1683)
    for i, c in train.group_by("item_id").len().iter_rows():
        counts[i] = c
    order = np.argsort(-counts, kind="stable")
    seen = {u: set(v) for u, v in df.filter(pl.col("split") != "test").group_by("user_id").agg("item_id").iter_rows()}
    hits = {10: 0, 50: 0, 100: 0}
    test = df.filter(pl.col("split") == "test")
    for u, i, hist in test.select("user_id", "item_id", "history").iter_rows():
        assert hist == [] or hist[-1] in seen[u]
        top = [x for x in order[:400] if x not in seen[u]]
        for k in hits:
            hits[k] += i in top[:k]
    # BENCHMARKS.md's popularity floor
    assert [round(hits[k] / 943, 3) for k in (10, 50, 100)] == [0.050, 0.143, 0.233]


# ------------------------------------------------------------- fit + retrieve
@pytest.mark.slow
def test_fit_then_retrieve_cli(tmp_path):
    from recsys.cli import main

    cfg = yaml.safe_load((ROOT / "experiments" / "two_tower_synthetic.yaml").read_text())
    cfg["trainer"].update({"max_epochs": 3, "default_root_dir": str(tmp_path), "enable_progress_bar": False,
                           "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(tmp_path), "name": "tt"}}})
    cfg["data"]["init_args"]["dataset_options"] = {"n_users": 200, "n_items": 200, "n_genres": 8}
    path = tmp_path / "tt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 0
    metrics = json.loads((tmp_path / "tt" / "version_0" / "metrics.json").read_text())
    assert metrics["model"] == "recsys.retrieval.two_tower.TwoTower"
    assert metrics["test"]["recall@50"] > 0.5  # random would be 50/200 minus seen
    ckpt = metrics["best_checkpoint"]

    from recsys.tasks.retrieval import load_retrieval_checkpoint

    task = load_retrieval_checkpoint(ckpt)
    assert not task.training and float(task.log_q.abs().sum()) > 0
    out = tmp_path / "cands.parquet"
    mfile = tmp_path / "m.json"
    assert main(["retrieve", "--ckpt", ckpt, "--k", "20", "--method", "knn-embed", "--clusters", "8",
                 "--out", str(out), "--metrics", str(mfile)]) == 0
    cands = pl.read_parquet(out)
    assert cands.columns == ["user_id", "rank", "item_id", "score", "component"]
    assert cands.height == 200 * 20
    assert cands.group_by("user_id").agg(pl.col("item_id").n_unique())["item_id"].min() == 20
    first = cands.filter(pl.col("user_id") == cands["user_id"][0]).sort("rank")
    assert first["score"].to_list() == sorted(first["score"].to_list(), reverse=True)
    m = json.loads(mfile.read_text())
    assert m["recall@10"] <= m["recall@20"] and m["clusters@20"] >= 1
    assert main(["retrieve", "--ckpt", ckpt, "--method", "single", "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["retrieve", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(out)]) == 2

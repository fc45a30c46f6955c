"""Offline reports: metrics against independent implementations and hand-computed values,
bootstrap and DeLong behaviour, and end-to-end reports from two real tiny checkpoints."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from recsys.cli import main as recsys_main
from recsys.data.datasets.synthetic import make_synthetic
from recsys.errors import RecsysError
from recsys import metrics as M
from recsys.reports import build_report
from recsys.reports.render import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 6000


# ------------------------------------------------------------------ independent implementations
def brute_auc(y, s) -> float:
    """AUC from its definition: P(score_pos > score_neg) + 1/2 P(equal), over all pairs."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def formula_logloss(y, p) -> float:
    return -sum(math.log(pi) if yi else math.log(1 - pi) for yi, pi in zip(y, p)) / len(y)


def brute_delong(y, a, b) -> tuple[float, float]:
    """DeLong (1988) from the definition: psi-matrices over all (positive, negative) pairs."""
    def comps(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)
    (A, v10a, v01a), (B, v10b, v01b) = comps(a), comps(b)
    m, n = len(v10a), len(v01a)

    def cov(u, v):
        return float(((u - u.mean()) * (v - v.mean())).sum() / (len(u) - 1))
    var = (cov(v10a, v10a) + cov(v10b, v10b) - 2 * cov(v10a, v10b)) / m \
        + (cov(v01a, v01a) + cov(v01b, v01b) - 2 * cov(v01a, v01b)) / n
    z = (B - A) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2))


def _data(n, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(np.int64)
    s = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.2 * y - 0.6)))
    if ties:
        s = np.round(s, 2)  # many tied scores
    return y, s


# ------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_logloss_match_independent_implementations(seed):
    y, s = _data(400, seed)
    assert M.roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    from torchmetrics.functional.classification import binary_auroc  # a third implementation
    assert M.roc_auc(y, s) == pytest.approx(binary_auroc(torch.tensor(s), torch.tensor(y)).item(), abs=1e-6)
    p = np.clip(s, 0.01, 0.99)
    assert M.log_loss(y, p) == pytest.approx(formula_logloss(y, p), rel=1e-12)
    assert math.isnan(M.roc_auc(np.ones(5), np.arange(5.0)))
    assert M.roc_auc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts 1/2


def test_average_precision_by_definition():
    y = np.array([1, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.7, 0.3, 0.1])
    # thresholds 0.9: P=1 R=1/3; 0.8: P=1/2 R=1/3; 0.7: P=3/4 R=1 -> AP = 1/3*1 + 2/3*3/4 = 5/6
    assert M.average_precision(y, s) == pytest.approx(5 / 6)


def test_gauc_hand_computed():
    # user 1: pos .9 beats neg .5, loses to neg .95 -> 0.5 (3 rows)
    # user 2: pos .8 beats .2 and .7; pos .6 beats .2 only -> 3/4 (4 rows)
    # user 3: both rows positive -> skipped
    y = np.array([1, 0, 0, 1, 0, 1, 0, 1, 1])
    s = np.array([.9, .5, .95, .8, .2, .6, .7, .3, .4])
    u = np.array(["a", "a", "a", "b", "b", "b", "b", "c", "c"])
    g = M.gauc(y, s, u)
    assert g.value == pytest.approx((3 * 0.5 + 4 * 0.75) / 7)
    assert (g.groups_used, g.groups_skipped, g.rows_used, g.rows_skipped) == (2, 1, 7, 2)
    # ties inside a user count 1/2; row order does not matter
    perm = np.random.default_rng(0).permutation(len(y))
    assert M.gauc(y[perm], s[perm], u[perm]).value == pytest.approx(g.value)
    assert M.gauc([1, 0, 1], [0.4, 0.4, 0.9], [7, 7, 7]).value == pytest.approx(0.75)


def test_gauc_matches_per_user_brute_force():
    y, s = _data(600, 3)
    users = np.random.default_rng(3).integers(0, 40, 600)
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * brute_auc(y[m], s[m])
            den += m.sum()
    assert M.gauc(y, s, users).value == pytest.approx(num / den, abs=1e-12)


def test_ece_and_calibration_ratio_hand_computed():
    p = np.array([0.05, 0.15, 0.15, 0.85, 0.95, 1.0])
    y = np.array([0, 1, 0, 1, 1, 1])
    # 10 equal-width bins: [0,.1): .05 vs 0 (1 row); [.1,.2): .15 vs .5 (2); [.8,.9): .85 vs 1 (1);
    # [.9,1]: mean(.95, 1.0) = .975 vs 1 (2 rows; p = 1.0 falls in the last bin)
    ece = (1 * 0.05 + 2 * 0.35 + 1 * 0.15 + 2 * 0.025) / 6
    assert M.expected_calibration_error(y, p, n_bins=10) == pytest.approx(ece)
    assert M.calibration_ratio(y, p) == pytest.approx(p.mean() / y.mean())
    b = M.calibration_bins(y, p, 10)
    assert b.count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 1, 2]
    # 2 bins: [0, .5): .1167 vs 1/3; [.5, 1]: .9333 vs 1
    assert M.expected_calibration_error(y, p, n_bins=2) == pytest.approx(
        (3 * abs(0.35 / 3 - 1 / 3) + 3 * abs(2.8 / 3 - 1)) / 6)


# ---------------------------------------------------------------------------------- bootstrap
def test_weighted_auc_equals_auc_of_the_resampled_rows():
    """Bootstrap resamples are multiplicity weights: check them against explicit resampling."""
    y, s = _data(300, 4)
    w = next(M.bootstrap_weights(len(y), 1, seed=5))
    idx = np.repeat(np.arange(len(y)), w.astype(int))
    groups, k = M.tie_groups(s)
    assert M._weighted_auc(groups, k, y.astype(float), w) == pytest.approx(brute_auc(y[idx], s[idx]), abs=1e-12)


def test_bootstrap_contains_point_narrows_and_is_seeded():
    widths = {}
    for n in (500, 5000):
        y, s = _data(n, 6, ties=False)
        res = M.bootstrap_metrics(y, s, n_boot=200, seed=0)
        for name, iv in res.items():
            assert iv.low <= iv.value <= iv.high, (n, name, iv)
        widths[n] = res["auc"].high - res["auc"].low
        assert res["auc"].value == pytest.approx(M.roc_auc(y, s))
        assert res["logloss"].value == pytest.approx(M.log_loss(y, s))
        assert res["ece"].value == pytest.approx(M.expected_calibration_error(y, s))
        again = M.bootstrap_metrics(y, s, n_boot=200, seed=0)
        assert again["auc"] == res["auc"]  # same seed, same interval
    # the standard error shrinks like 1/sqrt(n): 10x the rows -> about 0.32x the width
    assert widths[5000] < 0.5 * widths[500], widths


def test_gauc_bootstrap_resamples_users():
    y, s = _data(3000, 7, ties=False)
    users = np.random.default_rng(7).integers(0, 150, 3000)
    g = M.gauc(y, s, users)
    iv = M.bootstrap_gauc(g, n_boot=200, seed=0)
    assert iv.low <= g.value <= iv.high
    assert 0 < iv.high - iv.low < 0.2


# ------------------------------------------------------------------------------------- DeLong
@pytest.mark.parametrize("ties", [False, True])
def test_delong_matches_definition(ties):
    y, a = _data(500, 8, ties=ties)
    rng = np.random.default_rng(9)
    b = np.clip(a + rng.normal(0, 0.15, len(a)), 0, 1)
    if ties:
        b = np.round(b, 2)
    d = M.delong_test(y, a, b)
    z, p = brute_delong(y, a, b)
    assert d.z == pytest.approx(z, rel=1e-9)
    assert d.p_value == pytest.approx(p, rel=1e-9)
    assert d.delta == pytest.approx(brute_auc(y, b) - brute_auc(y, a))
    assert d.ci95[0] < d.delta < d.ci95[1]
    # the paired bootstrap agrees with DeLong on the spread of the difference
    pb = M.paired_bootstrap_auc_diff(y, a, b, n_boot=300, seed=0)
    assert pb.low <= pb.value <= pb.high
    assert 0.6 < (pb.high - pb.low) / (d.ci95[1] - d.ci95[0]) < 1.6


def test_delong_identical_and_clearly_different_models():
    y, a = _data(2000, 10, ties=False)
    same = M.delong_test(y, a, a)
    assert same.delta == 0 and same.p_value == 1.0
    noise = np.random.default_rng(0).random(len(y))
    worse = M.delong_test(y, a, noise)
    assert worse.delta < -0.1 and worse.p_value < 1e-6


def test_segment_metrics():
    y = np.array([1, 0, 1, 0, 1, 1])
    p = np.array([.9, .1, .2, .8, .6, .7])
    seg = np.array(["x", "x", "y", "y", "z", "z"], dtype=object)
    rows = {r["segment"]: r for r in M.segment_metrics(y, p, seg)}
    assert rows["x"]["auc"] == 1.0 and rows["y"]["auc"] == 0.0
    assert rows["z"]["auc"] is None and rows["z"]["rows"] == 2  # one class: AUC undefined


# ------------------------------------------------------------------------------ end to end
def _fit(tmp: Path, name: str, model: dict, seed: int) -> tuple[str, dict]:
    cfg = yaml.safe_load((ROOT / "experiments" / "deepfm_synthetic.yaml").read_text())
    cfg["seed_everything"] = seed
    cfg["trainer"].update({"max_epochs": 2, "default_root_dir": str(tmp / name), "enable_progress_bar": False,
                           "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(tmp), "name": name}}})
    cfg["model"]["init_args"]["model"] = model
    cfg["model"]["init_args"]["lr"] = 0.01  # learn something in 2 short epochs
    cfg["data"]["init_args"].update({"dataset_options": {"n_rows": N_ROWS, "seed": 0}, "batch_size": 256})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert recsys_main(["fit", "--config", str(path)]) == 0
    metrics = json.loads(sorted((tmp / name).glob("version_*/metrics.json"))[-1].read_text())
    return metrics["best_checkpoint"], metrics


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_fit")
    a = _fit(tmp, "deepfm", {"class_path": "recsys.models.DeepFM",
                             "init_args": {"embedding_dim": 8, "hidden_units": [32, 16]}}, 0)
    # lr_scale 1: the 0.01 learning rate above is for DeepFM's 2 short epochs; LogisticRegression's
    # default lr_scale 10 would make it 0.1, and the overconfident scores saturate float32 sigmoids
    b = _fit(tmp, "lr", {"class_path": "recsys.models.LogisticRegression", "init_args": {"lr_scale": 1.0}}, 0)
    return a, b


@pytest.fixture(scope="module")
def report(checkpoints, tmp_path_factory):
    (a, _), (b, _) = checkpoints
    out = tmp_path_factory.mktemp("report") / "out"
    rep = build_report([a, b], data="test", segments=["inf_5", "num_inf"], out_dir=out, n_boot=100)
    return rep, out


@pytest.mark.slow
def test_report_metrics_match_training_metrics(checkpoints, report):
    rep, out = report
    (_, ma), (_, mb) = checkpoints
    assert json.loads((out / "metrics.json").read_text()) == rep
    assert rep["format"] == "recsys-report/1"
    assert [m["name"] for m in rep["models"]] == ["A", "B"]
    assert [m["model_class"] for m in rep["models"]] == ["DeepFM", "LogisticRegression"]
    # the report's exact AUC is the test AUC that fit logged (torchmetrics, exact mode)
    for m, fit in zip(rep["models"], (ma, mb)):
        assert m["metrics"]["auc"]["value"] == pytest.approx(fit["test"]["auc"], abs=1e-5)
        assert m["metrics"]["logloss"]["value"] == pytest.approx(fit["test"]["logloss"], abs=1e-4)
        lo, hi = m["metrics"]["auc"]["ci95"]
        assert lo <= m["metrics"]["auc"]["value"] <= hi
        assert set(m["metrics"]) == {"auc", "gauc", "logloss", "ece", "calibration_ratio", "average_precision",
                                     "mean_prediction", "positive_rate"}
        assert m["gauc_detail"]["users_used"] > 0 and m["gauc_detail"]["users_skipped"] >= 0
        assert m["rows"] == rep["data"]["rows"] == round(0.1 * N_ROWS)
    assert rep["models"][0]["metrics"]["auc"]["value"] > 0.6  # DeepFM learned the planted signal
    [c] = rep["comparisons"]
    assert (c["a"], c["b"]) == ("A", "B")
    assert c["delta"] == pytest.approx(c["auc_b"] - c["auc_a"])
    assert 0 <= c["delong"]["p_value"] <= 1
    assert set(rep) == {"format", "created", "data", "settings", "conventions", "models", "segments",
                        "comparisons", "history_cap", "other_sections", "figures", "notes"}
    assert rep["history_cap"] is None  # not requested
    assert "skipped" in rep["conventions"]["gauc"] and "equal-width" in rep["conventions"]["ece"]


@pytest.mark.slow
def test_report_segments(report):
    rep, _ = report
    keys = [s["key"] for s in rep["segments"]]
    assert keys == ["history_length", "item_popularity", "field:inf_5", "field:num_inf"]
    for s in rep["segments"]:
        assert sum(b["rows"] for b in s["buckets"]) == rep["data"]["rows"], s["key"]
        assert all(len(b["metrics"]) == 2 for b in s["buckets"])
    hist = rep["segments"][0]
    assert "sequence field 'history'" in hist["method"]
    assert len(rep["segments"][3]["buckets"]) == 5  # a numeric column: quintiles
    assert {b["segment"] for b in rep["segments"][2]["buckets"]} <= {f"c1_{i}" for i in range(5)} | {"(null)"}


@pytest.mark.slow
def test_html_is_self_contained_and_has_every_section(report):
    rep, out = report
    page = (out / "report.html").read_text()
    for sid, title in SECTIONS.items():
        assert f'<h2 id="{sid}">{title}</h2>' in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(rep["figures"]) >= 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in page and "<script" not in page
    md = (out / "report.md").read_text()
    for title in SECTIONS.values():
        assert f"## {title}" in md
    for key in rep["figures"]:
        assert (out / "plots" / f"{key}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"plots/{key}.png" in md
    assert "GAUC" in page and "DeLong" in page


@pytest.mark.slow
def test_report_writes_atomically(checkpoints, tmp_path, monkeypatch):
    (a, _), _ = checkpoints
    from recsys.reports import render

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(render, "render_html", boom)
    with pytest.raises(RuntimeError):
        build_report([a], out_dir=tmp_path / "r", n_boot=5)
    assert list(tmp_path.iterdir()) == []  # no partial directory, no temporary left
    monkeypatch.undo()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("x")
    build_report([a], out_dir=tmp_path / "r", n_boot=5)  # an existing directory: files replaced in it
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["keep.txt", "metrics.json", "plots",
                                                                  "report.html", "report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


@pytest.mark.slow
def test_report_on_an_external_file_and_cli(checkpoints, tmp_path, capsys):
    (a, fit_a), _ = checkpoints
    test_rows = make_synthetic(n_rows=N_ROWS, seed=0).frame.filter(pl.col("split") == "test").drop("split")
    path = tmp_path / "rows.parquet"
    test_rows.write_parquet(path)
    out = tmp_path / "cli"
    assert recsys_main(["report", "--ckpt", a, "--data", str(path), "--out", str(out), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "A DeepFM: auc" in printed and "report.html" in printed
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["data"]["source"] == str(path)
    assert rep["models"][0]["metrics"]["auc"]["value"] == pytest.approx(fit_a["test"]["auc"], abs=1e-5)
    assert rep["comparisons"] == []
    assert "two or more checkpoints" in (out / "report.html").read_text()


@pytest.mark.slow
def test_cli_errors_are_one_line(checkpoints, tmp_path):
    (a, _), _ = checkpoints
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "recsys.cli", "report", "--ckpt", str(tmp_path / "nope.ckpt"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "nope.ckpt" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(RecsysError, match="no column 'nope'"):
        build_report([a], segments=["nope"], out_dir=tmp_path / "o", n_boot=5)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_other_task_checkpoints_hook(checkpoints, tmp_path, monkeypatch):
    (a, _), _ = checkpoints
    fake = tmp_path / "two_tower.ckpt"
    torch.save({"recsys": {"task": {"class_path": "recsys.tasks.retrieval.RetrievalTask"}}}, fake)
    with pytest.raises(RecsysError, match="supports ranking checkpoints"):
        build_report([a, fake], out_dir=tmp_path / "o", n_boot=5)
    from recsys.reports import build as B
    monkeypatch.setitem(B.TASK_SECTIONS, "recsys.tasks.retrieval.RetrievalTask",
                        lambda ckpt, data: {"title": "Retrieval", "columns": ["K", "Recall@K"], "rows": [[10, 0.5]]})
    rep = build_report([a, fake], out_dir=tmp_path / "o", n_boot=5)
    assert rep["other_sections"][0]["model"] == "B" and "Recall@K" in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.slow
def test_attention_map_hook(checkpoints, tmp_path, monkeypatch):
    """A model with ``attention_weights()`` gets its mean attention map plotted."""
    (a, _), _ = checkpoints
    from recsys.tasks import ranking

    real = ranking.load_checkpoint

    def with_attention(path, **kw):
        task = real(path, **kw)
        task.model.attention_fields = ["x", "y", "z"]
        task.model.attention_weights = lambda: torch.tensor([[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]]])
        return task
    monkeypatch.setattr(ranking, "load_checkpoint", with_attention)
    rep = build_report([a], out_dir=tmp_path / "o", n_boot=5)
    att = rep["models"][0]["attention"]
    assert att["fields"] == ["x", "y", "z"] and att["weights"][2] == [0.2, 0.2, 0.6]
    assert "attention_A" in rep["figures"]
    page = (tmp_path / "o" / "report.html").read_text()
    section = page.split('id="attention"')[1].split('id="method"')[0]
    assert "data:image/png;base64," in section


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report, tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _, out = report
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "check_report_browser.py"),
                          str(out / "report.html"), "--png", str(tmp_path / "shot.png")],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "shot.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------ history caps
def test_cap_sequences_keeps_the_last_k_ids_of_sequence_fields_only():
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    from recsys.data.batch import Batch
    from recsys.reports.history import cap_sequences, parse_caps

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 8, 12)                      # 6 rows of "hist", then 6 of "tags"
    values = torch.arange(int(lengths.sum()))
    kjt = KeyedJaggedTensor(keys=["hist", "tags"], values=values, lengths=torch.tensor(lengths))
    batch = Batch(dense=torch.zeros(6, 1), sparse=kjt, labels=torch.zeros(6))
    rows = torch.split(values, lengths.tolist())
    for k in (0, 1, 3, 100):
        out = cap_sequences(batch, ["hist"], k).sparse
        assert [r.tolist() for r in torch.split(out["hist"].values(), out["hist"].lengths().tolist())] == \
            [r[len(r) - min(k, len(r)):].tolist() for r in rows[:6]]
        assert torch.equal(out["tags"].values(), kjt["tags"].values())   # not a sequence field: untouched
    with pytest.raises(ValueError, match=">= 0"):
        cap_sequences(batch, ["hist"], -1)
    with pytest.raises(ValueError, match="'x'"):
        parse_caps("1,x")


@pytest.fixture(scope="module")
def awmoe_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_awmoe")
    return _fit(tmp, "awmoe", {"class_path": "recsys.models.AWMoE",
                               "init_args": {"embedding_dim": 8, "n_experts": 2, "expert_units": [16],
                                             "attention_units": [8], "cl_weight": 0.1}}, 0)[0]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["awmoe", "deepfm"])
def test_history_cap_scores_equal_scores_of_truncated_rows(which, awmoe_checkpoint, checkpoints, tmp_path):
    """Capping at K inside the report = scoring a file whose history column holds the last K items
    (K = 0: empty histories), for an attention model (AW-MoE) and a pooled-history one (DeepFM)."""
    from recsys.reports import build as B

    ckpt = Path(awmoe_checkpoint if which == "awmoe" else checkpoints[0][0])
    rows = make_synthetic(n_rows=N_ROWS, seed=0).frame.filter(pl.col("split") == "test").drop("split")
    full = tmp_path / "full.parquet"
    rows.write_parquet(full)
    s = B._score("A", ckpt, str(full), None, (0, 3))
    changed = 0
    for k in (0, 3):
        cut = tmp_path / f"cut{k}.parquet"
        rows.with_columns(pl.col("history").list.tail(k)).write_parquet(cut)
        ref = B._score("A", ckpt, str(cut), None).probs
        np.testing.assert_allclose(s.capped[k], ref, rtol=1e-5, atol=1e-6)
        changed += int(np.abs(s.capped[k] - s.probs).max() > 1e-4)
    assert changed == 2  # the caps really change the scores (the history matters to the model)


@pytest.mark.slow
def test_history_cap_section_in_report_and_cli(awmoe_checkpoint, checkpoints, tmp_path, capsys):
    (a, _), _ = checkpoints
    out = tmp_path / "cap"
    assert recsys_main(["report", "--ckpt", a, "--ckpt", awmoe_checkpoint, "--history-cap", "3,0,10",
                        "--bootstrap", "30", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "A DeepFM by history cap: K=0:" in printed and "B AWMoE by history cap" in printed
    rep = json.loads((out / "metrics.json").read_text())
    cap = rep["history_cap"]
    assert cap["caps"] == [0, 3, 10] and cap["fields"] == ["history"]
    assert [m["name"] for m in cap["models"]] == ["A", "B"]
    for m in cap["models"]:
        aucs = [c["auc"]["value"] for c in m["by_cap"]]
        for c in m["by_cap"]:
            lo, hi = c["auc"]["ci95"]
            assert lo <= c["auc"]["value"] <= hi
        # the synthetic history carries signal: more history, better AUC, and K=0 below the full AUC
        assert aucs[0] < aucs[2]
        full = next(x for x in rep["models"] if x["name"] == m["name"])["metrics"]["auc"]["value"]
        assert aucs[0] < full
    # one DeLong test per cap between A and B, consistent with the per-cap AUCs
    assert [(c["cap"], c["a"], c["b"]) for c in cap["comparisons"]] == [(0, "A", "B"), (3, "A", "B"), (10, "A", "B")]
    for c, ka, kb in zip(cap["comparisons"], cap["models"][0]["by_cap"], cap["models"][1]["by_cap"]):
        assert c["auc_a"] == pytest.approx(ka["auc"]["value"]) and c["auc_b"] == pytest.approx(kb["auc"]["value"])
        assert 0 <= c["delong"]["p_value"] <= 1
    page = (out / "report.html").read_text()
    assert f'<h2 id="history_cap">{SECTIONS["history_cap"]}</h2>' in page and "history_cap" in rep["figures"]
    assert "Not requested" not in page
    assert "## " + SECTIONS["history_cap"] in (out / "report.md").read_text()
    assert recsys_main(["report", "--ckpt", a, "--history-cap", "1,-2", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()

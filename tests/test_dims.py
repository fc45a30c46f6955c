"""DNIS embedding-dimension search: soft selection, frequency blocks, pruning, `recsys search-dims`, retraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.func import functional_call

from recsys.cli import main
from recsys.data import CTRDataModule
from recsys.data.datasets.synthetic import make_synthetic
from recsys.errors import RecsysError
from recsys.models.dnis import SoftSelection, frequency_blocks, prune_to_budget
from recsys.models import DNN, DeepFM
from recsys.tasks import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# user_id carries no signal (user_effect 0); item_id a strong planted one; both have 1000 values,
# so they cost the same per dim and the budget decides between them on importance alone
OPTIONS = {"n_rows": 20_000, "seed": 0, "user_effect": 0.0, "item_effect": 1.0, "n_users": 1000, "n_items": 1000}
BUDGET = 0.5


# ------------------------------------------------------------------------------------ units
def test_frequency_blocks_are_contiguous_and_ordered():
    counts = np.array([1, 1, 50, 30, 10, 5, 3, 1], dtype=float)  # ids 0/1 = OOV/missing
    b = frequency_blocks(8, counts, 2)
    assert b.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]  # id 2 alone holds > half of the occurrences
    b = frequency_blocks(8, counts, [0.5, 0.5])
    assert b.tolist() == [1, 1, 0, 0, 0, 1, 1, 1]
    assert frequency_blocks(8, None, 4).tolist() == [0] * 8  # hashed/bucketized: one block
    b = frequency_blocks(8, counts, 10)  # more blocks than values: empty blocks dropped
    assert b[2:].tolist() == sorted(b[2:].tolist()) and set(b.tolist()) == set(range(b.max() + 1))


def test_masked_weights_apply_alpha_per_row_block(dm, batch):
    model = DeepFM(dm.features, embedding_dim=4, hidden_units=[8]).eval()
    sel = SoftSelection(model.embedding, "embedding", dm.features, freq_blocks=3, dim_block=2)
    assert sel.alpha["inf_50"].shape == (3, 2)
    with torch.no_grad():
        for p in model.embedding.parameters():
            p.normal_(std=0.5)
        ref = model(batch).logits
        same = functional_call(model, sel.masked_weights(model), (batch,), strict=False).logits
        torch.testing.assert_close(same, ref)  # alpha = 1: the model itself
        sel.alpha["inf_50"].zero_()
        zeroed = functional_call(model, sel.masked_weights(model), (batch,), strict=False).logits
        model.embedding.ebc.embedding_bags["inf_50"].weight.zero_()
        torch.testing.assert_close(zeroed, model(batch).logits)
    # the masked copy passes gradients to both the table and alpha
    sel.reset_(0.5)
    out = functional_call(model, sel.masked_weights(model), (batch,), strict=False).logits.sum()
    out.backward()
    assert sel.alpha["inf_10"].grad.abs().sum() > 0
    assert model.embedding.ebc.embedding_bags["inf_10"].weight.grad.abs().sum() > 0


def test_prune_respects_budget_within_one_block(dm):
    model = DNN(dm.features, embedding_dim=8, hidden_units=[8])
    sel = SoftSelection(model.embedding, "embedding", dm.features, dim_block=2)
    with torch.no_grad():
        for a in sel.alpha.values():
            a.uniform_(0, 1)
    weights = dict(model.named_parameters())
    sizes = dm.features.table_sizes
    for budget in (0.3, 0.5, 0.9):
        r = prune_to_budget(sel, weights, budget)
        kept = sum(sizes[t] * w for t, w in r.widths.items())
        assert kept == r.params_kept <= budget * r.params_full
        assert budget * r.params_full - kept < 2 * max(sizes.values())  # one dim block of the largest table
        assert all(w % 2 == 0 and 2 <= w <= 8 for w in r.widths.values())
    with pytest.raises(RecsysError, match="budget"):
        prune_to_budget(sel, weights, 0.05)  # below 1 block (2 dims of 8) per table


@pytest.mark.parametrize("name", ["AutoInt", "AWMoE"])
def test_other_models_search_and_rebuild_with_widths(dm, batch, name):
    """AutoInt (pooled tables, projected to D) and AW-MoE (an unpooled history sharing the item
    table in an EmbeddingCollection): masked forward at alpha = 1 is the model; the searched
    widths rebuild the model."""
    import recsys.models as M
    from recsys.tasks import DimensionSearchTask

    model = getattr(M, name)(dm.features, embedding_dim=8).eval()
    task = DimensionSearchTask(model, dm.features)
    with torch.no_grad():
        torch.testing.assert_close(task(batch, masked=True).logits, model(batch).logits)
    r = task.prune(0.5)
    rebuilt = M.build_model(task.searched_model_config(r), dm.features)
    assert rebuilt.embedding.table_dims == r.widths and "item_id" in r.widths
    assert rebuilt(batch).logits.shape == (len(batch),)


# ---------------------------------------------------------------------------- end to end
def _config(tmp_path: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "experiments" / "deepfm_synthetic.yaml").read_text())
    cfg["trainer"].update({
        "max_epochs": 1, "default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False,
        "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp_path), "name": "run"}},
    })
    cfg["model"]["init_args"]["model"]["init_args"].update({"embedding_dim": 8, "hidden_units": [64, 32]})
    cfg["data"]["init_args"].update({"dataset_options": dict(OPTIONS), "batch_size": 256})
    path = tmp_path / "deepfm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dims")
    out = tmp / "out"
    assert main(["search-dims", "--config", str(_config(tmp)), "--budget", str(BUDGET), "--out", str(out),
                 "--warm_start_epochs", "2", "--search_epochs", "3"]) == 0
    return tmp, out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_search_writes_config_summary_and_plot(searched):
    _, out, summary = searched
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "summary.json", "summary.md", "widths.png"]
    assert (out / "widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "user_id" in (out / "summary.md").read_text()
    assert summary["model_parameters"]["searched"] < summary["model_parameters"]["full"]
    phases = [h["phase"] for h in summary["history"]]
    assert phases == ["warm", "warm", "search", "search", "search"]


@pytest.mark.slow
def test_alpha_stays_in_unit_interval(searched):
    _, _, summary = searched
    alpha = np.concatenate([np.ravel(a) for a in summary["alpha"].values()])
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert alpha.min() < 0.5  # the search moved alpha (the clip is exercised at 0 or 1)


@pytest.mark.slow
def test_noise_table_ends_narrower_than_informative(searched):
    _, _, summary = searched
    truth = make_synthetic(**OPTIONS)
    assert "user_id" in truth.noise and "item_id" in truth.informative
    dims = summary["dims"]
    assert dims["user_id"] < dims["item_id"], dims


@pytest.mark.slow
def test_exported_config_has_promised_parameter_count(searched):
    _, out, summary = searched
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    dims = cfg["model"]["init_args"]["model"]["init_args"]["dims"]
    assert dims == summary["dims"]
    dm = CTRDataModule(dataset_options=dict(OPTIONS), batch_size=256)
    sizes = dm.features.table_sizes
    full = sum(n * 8 for n in sizes.values())
    kept = sum(sizes[t] * w for t, w in dims.items())
    assert summary["table_parameters"]["full"] == full and summary["table_parameters"]["kept"] == kept
    assert kept <= BUDGET * full
    assert BUDGET * full - kept < max(sizes.values())  # within one dim (block) of the largest table


@pytest.mark.slow
def test_retrain_from_exported_config(searched):
    tmp, out, summary = searched
    assert main(["fit", "--config", str(out / "config.yaml"), "--trainer.max_epochs", "1"]) == 0
    files = sorted((tmp / "run_dims").glob("version_*/metrics.json"))
    assert files, list(tmp.iterdir())
    metrics = json.loads(files[-1].read_text())
    task = load_checkpoint(metrics["best_checkpoint"])
    assert task.model.embedding.table_dims == summary["dims"]
    assert metrics["test"]["auc"] > 0.55  # it trains (one epoch)


def test_bad_budget_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["search-dims", "--config", str(_config(tmp_path)), "--budget", "1.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "budget" in err and "Traceback" not in err
    assert not out.exists()

"""DCN-v2: cross layers against their formulas, the low-rank mixture against a per-expert loop,
the stacked / parallel wiring, construction errors, config rebuild and a small fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import small_synthetic_config
from recsys.cli import main
from recsys.data.datasets.synthetic import make_synthetic
from recsys.models import DCNv2, build_model
from recsys.models.dcn import CrossNetwork, CrossNetworkMix

SMALL = {"embedding_dim": 4, "hidden_units": [8], "cross_layers": 2}


def test_cross_network_is_the_formula():
    torch.manual_seed(0)
    net = CrossNetwork(5, 3)
    x0 = torch.randn(7, 5)
    x = x0
    for lin in net.layers:
        x = x0 * (x @ lin.weight.T + lin.bias) + x  # x_{l+1} = x_0 * (W_l x_l + b_l) + x_l
    torch.testing.assert_close(net(x0), x)
    # one layer with W = 0, b = 0 is the identity; the cross term raises the polynomial degree
    # by one per layer: scaling x_0 by s scales the degree-(L+1) output term by s^(L+1)
    lone = CrossNetwork(5, 1)
    with torch.no_grad():
        lone.layers[0].weight.zero_(); lone.layers[0].bias.zero_()
    torch.testing.assert_close(lone(x0), x0)


def test_cross_mix_is_the_gated_sum_of_low_rank_experts():
    torch.manual_seed(0)
    d, r, k = 6, 2, 3
    net = CrossNetworkMix(d, 2, rank=r, n_experts=k)
    with torch.no_grad():
        for b in net.bias:
            b.normal_()
    x0 = torch.randn(4, d)
    x = x0
    for layer in range(2):
        V, U, C, b = net.V[layer], net.U[layer], net.C[layer], net.bias[layer]
        g = torch.softmax(x @ net.gates[layer].weight.T, dim=1)          # [B, K]
        out = torch.zeros_like(x)
        for i in range(k):
            h = torch.tanh(torch.tanh(x @ V[i]) @ C[i].T) @ U[i].T       # U g(C g(V^T x))
            out = out + g[:, i:i + 1] * (x0 * (h + b))
        x = out + x
    torch.testing.assert_close(net(x0), x)
    assert net.V[0].shape == (k, d, r) and net.C[0].shape == (k, r, r)


@pytest.mark.parametrize("structure", ["stacked", "parallel", "cross_only"])
@pytest.mark.parametrize("low_rank", [0, 3])
def test_structures_wire_cross_and_dnn(dm, batch, structure, low_rank):
    torch.manual_seed(0)
    model = DCNv2(dm.features, structure=structure, low_rank=low_rank, n_experts=2, **SMALL).eval()
    seen = {}

    def hook(module, inputs, output) -> None:
        seen.setdefault("dnn_in", inputs[0])
    if model.dnn is not None:
        model.dnn.register_forward_hook(hook)
    out = model(batch)
    assert out.logits.shape == (len(batch),) and torch.isfinite(out.logits).all()
    x0 = model.field_embeddings(batch).flatten(1)
    d = x0.shape[1]
    assert d == len(model.embedding.field_names) * 4
    cross = model.cross(x0)
    if structure == "stacked":
        torch.testing.assert_close(seen["dnn_in"], cross)                # the DNN reads the cross output
        h = model.dnn(cross)
    elif structure == "parallel":
        torch.testing.assert_close(seen["dnn_in"], x0)                   # both read x_0
        h = torch.cat([cross, model.dnn(x0)], dim=1)
    else:
        assert model.dnn is None
        h = cross
    torch.testing.assert_close(out.logits, model.out(h).squeeze(-1))
    assert isinstance(model.cross, CrossNetworkMix if low_rank else CrossNetwork)


@pytest.mark.parametrize("kwargs, match", [({"structure": "deep"}, "structure"),
                                           ({"cross_layers": 0}, "cross_layers"),
                                           ({"low_rank": -1}, "low_rank"),
                                           ({"low_rank": 4, "n_experts": 0}, "n_experts"),
                                           ({"hidden_units": []}, "hidden_units"),
                                           ({"mlp_init": "he"}, "mlp_init"),
                                           ({"numeric_init": "he"}, "numeric_init")])
def test_bad_config_fails_at_construction(dm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCNv2(dm.features, **{**SMALL, **kwargs})
    DCNv2(dm.features, **{**SMALL, "hidden_units": [], "structure": "cross_only"})  # no DNN needed


def test_xavier_init_and_config_rebuild(dm, batch):
    torch.manual_seed(0)
    model = DCNv2(dm.features, low_rank=0, **SMALL).eval()  # Xavier is the default (init_defaults.py)
    assert all((lin.bias == 0).all() for lin in model.cross.layers) and (model.out.bias == 0).all()
    assert model.config["init_args"]["mlp_init"] == "xavier"
    torch_init = DCNv2(dm.features, low_rank=0, mlp_init="torch", **SMALL)
    assert all(torch.count_nonzero(lin.bias) > 0 for lin in torch_init.cross.layers)
    assert model.config["class_path"] == "recsys.models.dcn.DCNv2"
    json.dumps(model.config)
    rebuilt = build_model(model.config, dm.features).eval()
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(batch).logits, model(batch).logits)


def test_numeric_init_xavier_draws_the_numeric_vectors_as_a_linear_1_to_d(dm):
    """``numeric_init="xavier"``: the numeric fields' vectors have FuxiCTR's ``Linear(1, D)``
    Xavier-normal scale, std sqrt(2 / (1 + D)); the id tables keep ``init_std``; ``embedding``
    draws the numeric vectors as the id tables."""
    d = 32
    torch.manual_seed(0)
    plain = DCNv2(dm.features, embedding_dim=d, hidden_units=[8], init_std=1e-3,
                  numeric_init="embedding")
    torch.manual_seed(0)
    xav = DCNv2(dm.features, embedding_dim=d, hidden_units=[8], init_std=1e-3, numeric_init="xavier")
    v_plain, v_xav = plain.embedding.numeric.weight, xav.embedding.numeric.weight
    assert v_xav.numel() >= 2 * d  # the synthetic data has numeric fields
    assert v_plain.std().item() == pytest.approx(1e-3, rel=0.3)
    assert v_xav.std().item() == pytest.approx((2 / (1 + d)) ** 0.5, rel=0.3)
    ids = [p for n, p in xav.embedding.named_parameters() if "numeric" not in n]
    assert ids and all(p.std().item() < 5e-3 for p in ids if p.numel() > 10)


N_ROWS = 20_000


@pytest.mark.slow
@pytest.mark.parametrize("low_rank", [0, 8])
def test_small_fit_learns_planted_signal(tmp_path, low_rank):
    """As tests/test_moe.py: at least 60% of the oracle's lift over chance on 16k training rows."""
    path = small_synthetic_config(tmp_path, "dcn_v2", {"embedding_dim": 8, "hidden_units": [64, 32],
                                                       "low_rank": low_rank}, {"n_rows": N_ROWS, "seed": 0})
    assert main(["fit", "--config", str(path)]) == 0
    metrics = json.loads(sorted((tmp_path / "dcn_v2").glob("version_*/metrics.json"))[-1].read_text())
    oracle = make_synthetic(n_rows=N_ROWS, seed=0).oracle_auc["test"]
    assert 0.5 + 0.6 * (oracle - 0.5) < metrics["test"]["auc"] <= oracle + 0.02, (metrics["test"], oracle)

"""AutoInt / AutoInt+: interacting layer maths and flags, field embeddings, config, a real fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from recsys.cli import main
from recsys.data.datasets.synthetic import make_synthetic
from recsys.models import AutoInt, AutoIntPlus, build_model
from recsys.models.autoint import SDPA_MIN_FIELDS, InteractingLayer

ROOT = Path(__file__).resolve().parents[1]


def _reference(layer: InteractingLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The interacting layer written out per head with explicit loops over heads (no dropout)."""
    H, d = layer.num_heads, layer.head_dim
    w = layer.qkv.weight  # [3*H*d, in]: rows are W_Q (all heads), then W_K, then W_V
    act = torch.relu if layer.qkv_relu else (lambda t: t)
    heads, maps = [], []
    for h in range(H):
        wq, wk, wv = (w[i * H * d + h * d: i * H * d + (h + 1) * d] for i in range(3))
        q, k, v = act(x @ wq.T), act(x @ wk.T), act(x @ wv.T)          # [B, F, d]
        s = torch.einsum("bmd,bkd->bmk", q, k)
        if layer.use_scale:
            s = s / d ** 0.5
        a = torch.exp(s - s.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)                                # normalized over keys k
        maps.append(a)
        heads.append(a @ v)
    out = torch.cat(heads, dim=-1)
    if layer.residual == "project" or (layer.residual == "auto" and layer.res is not None):
        out = out + act(x @ layer.res.weight.T)
    elif layer.residual in ("identity", "auto"):
        out = out + x
    out = torch.relu(out)
    if layer.norm is not None:
        out = torch.nn.functional.layer_norm(out, (out.shape[-1],), layer.norm.weight, layer.norm.bias)
    return out, torch.stack(maps, dim=1)


@pytest.mark.parametrize("flags", [
    {},                                                              # the paper
    {"use_scale": True},
    {"qkv_relu": True},
    {"layer_norm": True},
    {"residual": "none"},
    {"residual": "auto"},                                            # widths differ: projects
    {"use_scale": True, "qkv_relu": True, "layer_norm": True},      # the official code's choices
])
def test_layer_matches_written_out_equations(flags):
    torch.manual_seed(0)
    layer = InteractingLayer(5, num_heads=2, head_dim=3, **flags)
    if layer.norm is not None:  # non-trivial affine parameters
        torch.nn.init.normal_(layer.norm.weight)
        torch.nn.init.normal_(layer.norm.bias)
    x = torch.randn(4, 6, 5)
    ref_out, ref_att = _reference(layer, x)
    torch.testing.assert_close(layer(x), ref_out)
    torch.testing.assert_close(layer.last_attention, ref_att)


@pytest.mark.parametrize("n_fields", [SDPA_MIN_FIELDS - 1, SDPA_MIN_FIELDS, 40])
@pytest.mark.parametrize("flags", [{}, {"use_scale": True}, {"qkv_relu": True, "residual": "auto"}])
def test_both_attention_kernels_match_the_equations_with_gradients(n_fields, flags):
    """Below SDPA_MIN_FIELDS the exp/sum softmax runs, from it the fused SDPA kernel: outputs,
    attention maps and the gradients of the input and of every weight equal the written-out
    equations' (float32 rounding; the fused backward recomputes the softmax from its log-sum-exp)."""
    torch.manual_seed(0)
    layer = InteractingLayer(8, num_heads=2, head_dim=4, **flags)
    x = torch.randn(64, n_fields, 8, requires_grad=True)
    out = layer(x)
    ref_out, ref_att = _reference(layer, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.last_attention, ref_att, rtol=1e-5, atol=1e-6)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad((ref_out * w).sum(), [x, *layer.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


def test_attention_dropout_in_training_keeps_the_exp_sum_path():
    torch.manual_seed(0)
    layer = InteractingLayer(8, num_heads=2, head_dim=4, attention_dropout=0.5)
    x = torch.randn(16, SDPA_MIN_FIELDS + 5, 8)
    layer.train()
    a, b = layer(x), layer(x)
    assert not torch.allclose(a, b)  # dropout on the weights: two passes differ
    layer.eval()
    torch.testing.assert_close(layer(x), _reference(layer, x)[0], rtol=1e-5, atol=1e-5)


def test_attention_is_softmax_over_keys_and_independent_of_other_rows():
    """Rows sum to 1 over the LAST axis, and a row's attention does not depend on the rest of
    the batch (the DeepCTR-Torch pitfall, softmax over the batch axis, would break both)."""
    torch.manual_seed(0)
    layer = InteractingLayer(4, num_heads=2, head_dim=4)
    x = torch.randn(16, 7, 4) * 3
    out = layer(x)
    att = layer.last_attention
    torch.testing.assert_close(att.sum(-1), torch.ones(16, 2, 7))
    assert not torch.allclose(att.sum(0), torch.ones(2, 7, 7))  # not normalized over the batch
    single = layer(x[3:4])
    torch.testing.assert_close(layer.last_attention[0], att[3])
    torch.testing.assert_close(single[0], out[3])


def test_model_attention_weights_for_the_report(dm, batch):
    model = AutoInt(dm.features, embedding_dim=6, attention_layers=2, num_heads=3, head_dim=2)
    assert model.attention_weights() is None  # before any forward pass
    model(batch)
    w = model.attention_weights()
    n_fields = len(dm.features.schema.dense_fields) + len(model.embedding.pooled_names)
    assert w.shape == (len(batch), 2, 3, n_fields, n_fields)
    assert len(model.attention_fields) == n_fields
    assert model.attention_fields[-1] == dm.features.schema.dense_fields[-1].name
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
    model(batch.__class__(dense=batch.dense[:5], sparse=_first_rows(batch, 5), labels=batch.labels[:5]))
    assert model.attention_weights().shape[0] == 5  # the LAST forward pass


def _first_rows(batch, n):
    from torchrec import KeyedJaggedTensor
    kjt = batch.sparse
    keys, vals, lens = kjt.keys(), [], []
    for k in keys:
        jt = kjt[k]
        l = jt.lengths()[:n]
        vals.append(jt.values()[: int(l.sum())])
        lens.append(l)
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(vals), lengths=torch.cat(lens))


def test_interacting_layers_are_permutation_equivariant(dm, batch):
    """Permuting the fields permutes the stack's outputs and attention maps the same way (the
    interacting layers have no notion of field position; only the output layer does)."""
    torch.manual_seed(0)
    model = AutoInt(dm.features, embedding_dim=4, attention_layers=3, num_heads=2, head_dim=3, init_std=0.5)
    e = model.field_embeddings(batch)
    perm = torch.randperm(e.shape[1])
    out = model.interacting(e)
    att = model.attention_weights()
    out_p = model.interacting(e[:, perm])
    att_p = model.attention_weights()
    torch.testing.assert_close(out_p, out[:, perm])
    torch.testing.assert_close(att_p, att[..., perm, :][..., perm])
    # the output layer is position-specific: the logit is not permutation invariant
    assert not torch.allclose(model.output(out_p.flatten(1)), model.output(out.flatten(1)))


def test_field_embeddings_numeric_is_value_times_vector(dm, batch):
    model = AutoInt(dm.features, embedding_dim=4, head_dim=2, init_std=0.3)
    e = model.field_embeddings(batch)
    pooled = model.embedding(batch)
    n_id = len(model.embedding.pooled_names)
    for i, name in enumerate(model.embedding.pooled_names):  # includes the mean-pooled multi-hot
        torch.testing.assert_close(e[:, i], pooled.pooled[name])
    for j in range(len(dm.features.schema.dense_fields)):
        torch.testing.assert_close(e[:, n_id + j], batch.dense[:, j:j + 1] * model.embedding.numeric.weight[j])


def test_residual_modes_and_flags_change_the_output():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6)
    base = InteractingLayer(6, num_heads=2, head_dim=3)                 # paper: W_res even at equal widths
    assert base.res is not None
    auto = InteractingLayer(6, num_heads=2, head_dim=3, residual="auto")  # FuxiCTR: identity when widths match
    assert auto.res is None
    assert InteractingLayer(4, num_heads=2, head_dim=3, residual="auto").res is not None
    outputs = {}
    for name, kw in {"project": {}, "auto": {"residual": "auto"}, "none": {"residual": "none"},
                     "scale": {"use_scale": True}, "qkv_relu": {"qkv_relu": True},
                     "layer_norm": {"layer_norm": True}}.items():
        layer = InteractingLayer(6, num_heads=2, head_dim=3, **kw)
        layer.load_state_dict(base.state_dict(), strict=False)  # same W_Q, W_K, W_V (and W_res)
        outputs[name] = layer(x)
    torch.testing.assert_close(outputs["auto"], torch.relu(_attn_part(base, x) + x))
    torch.testing.assert_close(outputs["none"], torch.relu(_attn_part(base, x)))
    torch.testing.assert_close(outputs["project"], torch.relu(_attn_part(base, x) + x @ base.res.weight.T))
    for name, out in outputs.items():
        if name != "project":
            assert not torch.allclose(out, outputs["project"]), name
    assert (outputs["none"] >= 0).all() and (outputs["project"] >= 0).all()  # ReLU after the residual
    ln = outputs["layer_norm"]
    torch.testing.assert_close(ln.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)  # LayerNorm is last


def _attn_part(layer, x):
    """sum_k a[m, k] W_V e_k (heads concatenated), without residual or ReLU."""
    r = InteractingLayer(layer.in_dim, num_heads=layer.num_heads, head_dim=layer.head_dim, residual="none")
    r.qkv.weight.data.copy_(layer.qkv.weight.data)
    b, f, _ = x.shape
    q, k, v = r.qkv(x).view(b, f, 3, r.num_heads, r.head_dim).permute(2, 0, 3, 1, 4)
    return ((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).reshape(b, f, -1)


def test_autoint_plus_adds_a_dnn_logit(dm, batch):
    torch.manual_seed(0)
    plain = AutoInt(dm.features, embedding_dim=4, head_dim=3)
    plus = AutoIntPlus(dm.features, embedding_dim=4, head_dim=3, dnn_hidden_units=[8, 4])
    assert plain.dnn is None and plus.dnn is not None
    missing, unexpected = plus.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("dnn.") for k in missing)
    e = plus.field_embeddings(batch)
    torch.testing.assert_close(plus(batch).logits, plain(batch).logits + plus.dnn(e.flatten(1)).squeeze(1))
    assert not torch.allclose(plus(batch).logits, plain(batch).logits)
    last = plus.dnn.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    torch.testing.assert_close(plus(batch).logits, plain(batch).logits)  # zero DNN output = AutoInt


def test_bad_configs_fail_at_construction(dm):
    tables = dm.features.schema.tables
    with pytest.raises(ValueError, match="residual='identity'"):
        AutoInt(dm.features, embedding_dim=16, num_heads=2, head_dim=32, residual="identity")
    AutoInt(dm.features, embedding_dim=16, num_heads=2, head_dim=8, residual="identity")  # 16 == 2 * 8
    with pytest.raises(ValueError, match="one width"):
        AutoInt(dm.features, embedding_dim=8, dims={tables[0]: 4}, project_fields=False)
    with pytest.raises(ValueError, match="attention_layers"):
        AutoInt(dm.features, attention_layers=0)
    with pytest.raises(ValueError, match="unknown residual"):
        AutoInt(dm.features, residual="sometimes")
    with pytest.raises(ValueError, match="needs dnn_hidden_units"):
        AutoIntPlus(dm.features, dnn_hidden_units=[])
    with pytest.raises(ValueError, match="num_heads"):
        AutoInt(dm.features, num_heads=0)


def test_attention_init_xavier_sets_every_attention_and_output_linear(dm):
    """attention_init='xavier' (FuxiCTR's init): Xavier-normal weights and zero biases on the
    interacting layers and the output layer; the DNN keeps its own mlp_init; 'torch' keeps PyTorch's
    uniform init, whose std (1/sqrt(3 fan_in)) is smaller here. W_Q, W_K, W_V are drawn as FuxiCTR's
    three separate [H*d, in] Linear layers, std sqrt(2/(in + H*d)), not with the fan-out of our
    fused [3*H*d, in] matrix (sqrt(2/(in + 3*H*d)), 1.4x smaller for 64 -> 3 x 64)."""
    torch.manual_seed(0)
    x = AutoIntPlus(dm.features, embedding_dim=16, num_heads=2, head_dim=32, attention_init="xavier")
    torch.manual_seed(0)
    t = AutoIntPlus(dm.features, embedding_dim=16, num_heads=2, head_dim=32)
    w, wt = x.interacting[1].qkv.weight, t.interacting[1].qkv.weight     # [192, 64]
    expected = (2.0 / (64 + 64)) ** 0.5                                 # per projection [64, 64]
    fused = (2.0 / (64 + 192)) ** 0.5
    for block in w.split(64, dim=0):                                    # W_Q, W_K, W_V: 4k weights each
        assert abs(block.std().item() - expected) < 0.05 * expected     # std error ~1%
        assert abs(block.mean().item()) < 0.01
    assert abs(w.std().item() - fused) > 0.2 * fused                    # not the fused matrix's fans
    res = x.interacting[0].res.weight                                   # W_res [64, 16]
    assert abs(res.std().item() - (2.0 / (16 + 64)) ** 0.5) < 0.1 * (2.0 / (16 + 64)) ** 0.5
    q0 = x.interacting[0].qkv.weight[:64]                               # first layer: [64, 16]
    assert abs(q0.std().item() - (2.0 / (16 + 64)) ** 0.5) < 0.1 * (2.0 / (16 + 64)) ** 0.5
    out_w = x.output.weight                                             # [1, F*64]
    assert abs(out_w.std().item() - (2.0 / (out_w.shape[1] + 1)) ** 0.5) < 0.1 * (2.0 / out_w.shape[1]) ** 0.5
    torch_std = 1.0 / (3 * 64) ** 0.5                                   # kaiming_uniform(a=sqrt(5))
    assert abs(wt.std().item() - torch_std) < 0.05 * torch_std and torch_std < 0.85 * expected
    assert torch.count_nonzero(x.output.bias) == 0
    dnn_w = x.dnn.net[0].weight                                         # DNN keeps mlp_init='torch'
    assert abs(dnn_w.std().item() - 1.0 / (3 * dnn_w.shape[1]) ** 0.5) < 0.05 / (3 * dnn_w.shape[1]) ** 0.5
    with pytest.raises(ValueError, match="attention_init"):
        AutoInt(dm.features, attention_init="he")


def test_default_inits_are_the_measured_ones(dm):
    """Defaults from experiments/bench/init_defaults.py (valid AUC, ml100k-ctr and Adult): plain
    AutoInt draws its attention and output layers Xavier (zero biases), AutoInt+ keeps PyTorch's."""
    torch.manual_seed(0)
    plain, plus = AutoInt(dm.features, embedding_dim=8, head_dim=4), AutoIntPlus(dm.features, embedding_dim=8, head_dim=4)
    assert torch.count_nonzero(plain.output.bias) == 0 and torch.count_nonzero(plus.output.bias) == 1
    xavier, torch_std = (2.0 / (8 + 8)) ** 0.5, 1.0 / (3 * 8) ** 0.5   # W_Q/K/V [8, 8] each
    assert plain.interacting[0].qkv.weight.std().item() == pytest.approx(xavier, rel=0.2)
    assert plus.interacting[0].qkv.weight.std().item() == pytest.approx(torch_std, rel=0.2)
    assert plain.config["init_args"]["attention_init"] == "xavier"
    assert plus.config["init_args"]["attention_init"] == plus.config["init_args"]["mlp_init"] == "torch"


def test_sequence_model_default_inits_are_the_measured_ones(dm):
    """AW-MoE, SDIM and DIN (init_defaults.py on ml100k-ctr and the synthetic rowtail set, Adult
    having no history): a default changes only where both data sets agree. SDIM: Xavier better on
    both (zero biases, Xavier-normal weights in its MLP); AW-MoE (tie on ml100k, PyTorch's better on
    rowtail) and DIN (PyTorch's better on rowtail) keep PyTorch's Linear init (non-zero biases)."""
    from recsys.models import AWMoE, DIN, SDIM

    torch.manual_seed(0)
    for model, first, init in ((AWMoE(dm.features, embedding_dim=8), "moe.experts.0.net.0", "torch"),
                               (SDIM(dm.features, embedding_dim=8), "mlp.net.0", "xavier"),
                               (DIN(dm.features, embedding_dim=8), "mlp.net.0", "torch")):
        assert model.config["init_args"]["mlp_init"] == init, type(model).__name__
        lin = model.get_submodule(first)
        fan_out, fan_in = lin.weight.shape
        if init == "xavier":
            assert torch.count_nonzero(lin.bias) == 0
            assert lin.weight.std().item() == pytest.approx((2.0 / (fan_in + fan_out)) ** 0.5, rel=0.1)
        else:
            assert torch.count_nonzero(lin.bias) == lin.bias.numel()
            assert lin.weight.abs().max().item() <= 1.0 / fan_in ** 0.5     # kaiming_uniform(a=sqrt(5))


def test_per_field_widths_are_projected(dm, batch):
    tables = dm.features.schema.tables
    model = AutoInt(dm.features, embedding_dim=8, head_dim=4, dims={tables[0]: 3, tables[1]: 12})
    assert model.field_embeddings(batch).shape[2] == 8
    assert model(batch).logits.shape == (len(batch),)


@pytest.mark.parametrize("cls,kwargs", [
    (AutoInt, {"embedding_dim": 6, "head_dim": 3, "use_scale": True, "layer_norm": True, "residual": "auto"}),
    (AutoIntPlus, {"embedding_dim": 6, "head_dim": 3, "dnn_hidden_units": [8], "qkv_relu": True, "use_wide": True}),
])
def test_config_rebuilds_identical_model(dm, batch, cls, kwargs):
    torch.manual_seed(0)
    model = cls(dm.features, **kwargs)
    assert model.config["class_path"] == f"recsys.models.autoint.{cls.__name__}"
    rebuilt = build_model(json.loads(json.dumps(model.config, default=list)), dm.features)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(batch).logits, model(batch).logits)
    torch.testing.assert_close(rebuilt.attention_weights(), model.attention_weights())


# ------------------------------------------------------------------ end to end
N_ROWS = 20_000


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """`recsys fit` with experiments/autoint_synthetic.yaml, narrowed to run in seconds."""
    tmp = tmp_path_factory.mktemp("autoint_fit")
    cfg = yaml.safe_load((ROOT / "experiments" / "autoint_synthetic.yaml").read_text())
    cfg["trainer"].update({"max_epochs": 3, "default_root_dir": str(tmp / "run"), "enable_progress_bar": False,
                           "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
                                      "init_args": {"save_dir": str(tmp), "name": "run"}}})
    cfg["model"]["init_args"]["model"]["init_args"].update({"embedding_dim": 8, "head_dim": 8})
    cfg["data"]["init_args"].update({"dataset_options": {"n_rows": N_ROWS, "seed": 0}, "batch_size": 512})
    path = tmp / "autoint.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path)]) == 0
    metrics = json.loads(sorted((tmp / "run").glob("version_*/metrics.json"))[-1].read_text())
    return tmp, metrics


@pytest.mark.slow
def test_fit_learns_planted_signal(fitted):
    """As in test_cli: at least 60% of the oracle's lift over chance (the Bayes-optimal test AUC
    of the generator) on 16k training rows means the planted effects were learned; a model that
    learned nothing scores 0.5 +- 0.01 on the 2k test rows."""
    _, metrics = fitted
    oracle = make_synthetic(n_rows=N_ROWS, seed=0).oracle_auc["test"]
    assert metrics["test"]["auc"] > 0.5 + 0.6 * (oracle - 0.5), (metrics["test"], oracle)
    assert metrics["test"]["auc"] <= oracle + 0.02


@pytest.mark.slow
def test_report_shows_the_attention_map(fitted):
    from recsys.reports import build_report

    tmp, metrics = fitted
    rep = build_report([metrics["best_checkpoint"]], out_dir=tmp / "report", n_boot=5)
    att = rep["models"][0]["attention"]
    schema = make_synthetic(n_rows=1000, seed=0).schema
    assert att["fields"][-1] == schema.dense_fields[-1].name
    weights = torch.tensor(att["weights"])
    assert weights.shape == (len(att["fields"]),) * 2
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(att["fields"]), dtype=weights.dtype), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["autoint_ml100k", "autoint_plus_ml100k", "autoint_synthetic",
                                  "autoint_plus_synthetic"])
def test_experiment_configs_build(dm, batch, name):
    """Every AutoInt YAML names a class and arguments that construct (data-independent check)."""
    spec = yaml.safe_load((ROOT / "experiments" / f"{name}.yaml").read_text())["model"]["init_args"]["model"]
    model = build_model(spec, dm.features)
    assert isinstance(model, AutoInt) and (model.dnn is not None) == ("plus" in name)
    assert model(batch).logits.shape == (len(batch),)

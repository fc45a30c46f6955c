"""Train a FuxiCTR 2.3.10 model on the ml100k-ctr split and write a result JSON.

Run with the PEER venv's python (see setup_peers.sh), never with recsys's:

    experiments/bench/.venv-peers/bin/python experiments/bench/peers/fuxictr_deepfm.py \
        --data DIR --seed 2019 --model DeepFM --out result.json

Models: DeepFM, AutoInt, AutoIntPlus (the zoo's AutoInt with a DNN), MMoE (one task), SDIM
(the LongCTR zoo's, over the full history up to 1,000, unpooled); see MODELS.

DIR holds train.parquet / valid.parquet / test.parquet with the ml100k-ctr columns
(see shared BENCHMARKS.md): user_id, item_id, age_bucket, gender, occupation, zip3,
release_year, genres (list[str]), first_genre, history (list[int], most recent last),
label, plus non-feature columns (timestamp, rating, split) that are dropped here.

What this script does, in FuxiCTR's own terms:
  1. writes a prepared copy of the three splits into a work dir (ids cast to strings so
     that item_id and the history tokens share one vocabulary; history cut to its last
     ``history_max_len`` items, because FuxiCTR's tokenizer would otherwise keep the
     *first* max_len items);
  2. fits FuxiCTR's FeatureProcessor on train (min_categr_count=1) and transforms the
     three splits with its ``build_dataset`` (parquet in, parquet out);
  3. builds the model, applies the init fix (below), and drives ``BaseModel.fit`` /
     ``BaseModel.evaluate`` with FuxiCTR's own early stopping on valid AUC;
  4. evaluates the best checkpoint on valid and test and writes the JSON.

The PyPI wheel of FuxiCTR ships the library (layers, BaseModel, data pipeline) but not
the model zoo (``model_zoo/<Model>/src/<Model>.py`` lives only in the GitHub repo), and its
``RankDataLoader`` returns the loaders directly, so the zoo's ``run_expid.py`` (which calls
``.make_iterator()``) fails on it. Hence this driver. With ``--model-zoo PATH`` (a FuxiCTR
checkout's ``model_zoo`` folder) the zoo's own model class is used; otherwise the model is
composed here from the wheel's layers exactly as the zoo composes it (see ``BUILDERS``; the
zoo's ``MultiHeadSelfAttention`` and ``MMoE_Layer`` are copied here too, as the wheel lacks them;
SDIM's LSH attention is written here on the wheel's ``MultiHeadTargetAttention``/``MLP_Block``, and
only the composition works for it: the zoo's LongCTR class needs LongCTR's own data loader).

Init fix: ``FeatureEmbeddingDict.init_weights`` skips every feature that has
``share_embedding``. In the main embedding that is right (the table *is* the shared
item_id table, initialized under its own name), but the wide/LR part builds its
1-dim tables with ``use_sharing=False``, so the history's LR table is a separate
``nn.Embedding`` that keeps PyTorch's N(0, 1) init; summed over 50 history items it
swamps the logit and DeepFM scores AUC ~0.59. We re-initialize every such unshared
table with the module's own ``embedding_initializer`` (the padding row stays zero) and
report ``"init_fix": true`` with the tables touched.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

import fuxictr
from fuxictr.features import FeatureMap
from fuxictr.preprocess import FeatureProcessor, build_dataset
from fuxictr.pytorch.dataloaders import RankDataLoader
from fuxictr.pytorch.layers import (
    FactorizationMachine,
    FeatureEmbedding,
    FeatureEmbeddingDict,
    LogisticRegression,
    MLP_Block,
    MultiHeadTargetAttention,
    ScaledDotProductAttention,
)
from fuxictr.pytorch.models import BaseModel, MultiTaskModel
from fuxictr.pytorch.torch_utils import get_activation, seed_everything

DATASET_ID = "ml100k_ctr"
CATEGORICAL = ["user_id", "item_id", "age_bucket", "gender", "occupation", "zip3",
               "release_year", "first_genre"]
MULTI_HOT = ["genres"]
HISTORY = "history"
LABEL = "label"

# The shared recipe (BENCHMARKS.md, "ml100k-ctr"): the same for every model.
COMMON_PARAMS = {
    "embedding_dim": 16,
    "batch_size": 4096,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "loss": "binary_crossentropy",
    "metrics": ["logloss", "AUC"],
    "monitor": "AUC",
    "monitor_mode": "max",
    "early_stop_patience": 2,
    "epochs": 100,
    "embedding_regularizer": None,
    "net_regularizer": None,
    "shuffle": True,
}


# ---------------------------------------------------------------------------------------
# Model table. To add a model: give it an entry here (its params on top of COMMON_PARAMS,
# how the history is fed to it, and the zoo's module/class name) and, for use without
# --model-zoo, a builder in BUILDERS composed from the wheel's layers.
#   DCN       -> zoo "DCN": CrossNet(num_fields*emb, num_cross_layers) + MLP_Block, concat, Linear
#   DIN       -> zoo "DIN": history must stay unpooled (history_encoder=None) and the
#                target is item_id (din_target_field="item_id", din_sequence_field="history")
# Here: DeepFM, AutoInt, AutoIntPlus (the zoo's AutoInt class with dnn_hidden_units set; the
# zoo has no separate AutoInt+ class), MMoE (the zoo's MultiTaskModel with one task).
# SDIM (LongCTR zoo): history unpooled (history_encoder=None), left-padded (history_padding).
# ---------------------------------------------------------------------------------------
# AutoInt widths of experiments/autoint_ml100k.yaml (the paper's: 3 interacting layers, 2 heads of
# d' = 32, i.e. FuxiCTR's attention_dim = 64), and FuxiCTR's AutoInt_default switches:
# use_residual True, use_scale False, layer_norm False, use_wide False, no dropout.
AUTOINT_PARAMS = {
    "attention_layers": 3,
    "num_heads": 2,
    "attention_dim": 64,
    "use_residual": True,
    "use_scale": False,
    "layer_norm": False,
    "use_wide": False,
    "dnn_activations": "relu",
    "net_dropout": 0,
    "batch_norm": False,
}

MODELS = {
    "DeepFM": {
        "zoo": ("DeepFM", "DeepFM"),
        "params": {
            "hidden_units": [256, 128],
            "hidden_activations": "relu",
            "net_dropout": 0,
            "batch_norm": False,
        },
        "history_max_len": 50,
        "history_encoder": "layers.MaskedAveragePooling()",
    },
    "AutoInt": {
        "zoo": ("AutoInt", "AutoInt"),
        "params": {**AUTOINT_PARAMS, "dnn_hidden_units": []},
        "history_max_len": 50,
        "history_encoder": "layers.MaskedAveragePooling()",
    },
    "AutoIntPlus": {
        "zoo": ("AutoInt", "AutoInt"),
        "params": {**AUTOINT_PARAMS, "dnn_hidden_units": [256, 128]},
        "history_max_len": 50,
        "history_encoder": "layers.MaskedAveragePooling()",
    },
    # one-task MMoE with the widths of recsys's MoE (experiments/moe_*.yaml): 4 experts
    # [256, 128], a linear gate, a linear tower (FuxiCTR's zoo defaults would be gate/tower
    # [128, 64]; the recipe's "hidden [256, 128]" is the experts here)
    "MMoE": {
        "zoo": ("multitask/MMoE", "MMoE"),
        "params": {
            "task": ["binary_classification"],
            "num_tasks": 1,
            "num_experts": 4,
            "expert_hidden_units": [256, 128],
            "gate_hidden_units": [],
            "tower_hidden_units": [],
            "hidden_activations": "relu",
            "net_dropout": 0,
            "batch_norm": False,
        },
        "history_max_len": 50,
        "history_encoder": "layers.MaskedAveragePooling()",
    },
    # LongCTR SDIM with the widths of experiments/sdim_ml100k.yaml: embedding 16, m = 48 hashes
    # in tau = 3 bits per signature (FuxiCTR's num_hashes = m / tau = 16 signatures, hash_bits = 3),
    # per-signature L2 (l2_norm True; the zoo's default is False, ours and the paper's is L2),
    # short-term part over the last 10 behaviours, DNN [256, 128], batch 1024 (our yaml's; the
    # shared recipe's 4096 is what --batch-size 4096 gives). The short-term attention is the zoo's
    # MultiHeadTargetAttention with its SDIM_default widths (attention_dim 64, 2 heads, scaled,
    # Q/K/V/O projections). History: the full one (up to 1,000), unpooled, left-padded ("pre",
    # the layout of the zoo's LongCTR data loader: most recent last).
    "SDIM": {
        "zoo": ("LongCTR/SDIM", "SDIM"),
        "zoo_unusable": "the zoo's LongCTR SDIM needs LongCTR's own data loader (batches of "
                        "(batch_dict, item_dict, mask)) and asserts fuxictr==2.3.2; use the "
                        "composition (no --model-zoo)",
        "params": {
            "batch_size": 1024,
            "dnn_hidden_units": [256, 128],
            "dnn_activations": "relu",
            "attention_dim": 64,
            "num_heads": 2,
            "use_scale": True,
            "use_qkvo": True,
            "attention_dropout": 0,
            "reuse_hash": True,
            "num_hashes": 16,
            "hash_bits": 3,
            "l2_norm": True,
            "short_seq_len": 10,
            "net_dropout": 0,
            "batch_norm": False,
            "target_field": "item_id",
            "sequence_field": HISTORY,
        },
        "history_max_len": 1000,
        "history_encoder": None,
        "history_padding": "pre",
    },
}


class DeepFM(BaseModel):
    """DeepFM from FuxiCTR's own layers, wired as in FuxiCTR's model_zoo DeepFM:
    FeatureEmbedding -> FactorizationMachine (LR + pairwise inner products) plus an
    MLP over the flattened field embeddings; sum of both logits, then sigmoid."""

    def __init__(self, feature_map, model_id="DeepFM", gpu=-1, learning_rate=1e-3,
                 embedding_dim=10, hidden_units=(64, 64, 64), hidden_activations="ReLU",
                 net_dropout=0, batch_norm=False, embedding_regularizer=None,
                 net_regularizer=None, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.fm = FactorizationMachine(feature_map)
        self.mlp = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                             hidden_units=list(hidden_units),
                             hidden_activations=hidden_activations,
                             output_activation=None, dropout_rates=net_dropout,
                             batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        emb = self.embedding_layer(X)
        logit = self.fm(X, emb) + self.mlp(emb.flatten(start_dim=1))
        return {"y_pred": self.output_activation(logit)}


class MultiHeadSelfAttention(nn.Module):
    """The zoo's ``MultiHeadSelfAttention`` (model_zoo/AutoInt/src/AutoInt.py; not in the
    wheel): bias-free W_q/W_k/W_v, heads split, the wheel's ScaledDotProductAttention (softmax
    over the last axis), heads concatenated, residual (a bias-free W_res only when the widths
    differ), optional LayerNorm, then ReLU."""

    def __init__(self, input_dim, attention_dim=None, num_heads=1, dropout_rate=0.,
                 use_residual=True, use_scale=False, layer_norm=False):
        super().__init__()
        if attention_dim is None:
            attention_dim = input_dim
        assert attention_dim % num_heads == 0, \
            f"attention_dim={attention_dim} is not divisible by num_heads={num_heads}"
        self.head_dim = attention_dim // num_heads
        self.num_heads = num_heads
        self.use_residual = use_residual
        self.scale = self.head_dim ** 0.5 if use_scale else None
        self.W_q = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_k = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_v = nn.Linear(input_dim, attention_dim, bias=False)
        self.W_res = (nn.Linear(input_dim, attention_dim, bias=False)
                      if use_residual and input_dim != attention_dim else None)
        self.dot_attention = ScaledDotProductAttention(dropout_rate)
        self.layer_norm = nn.LayerNorm(attention_dim) if layer_norm else None

    def forward(self, X):
        residual = X
        query, key, value = self.W_q(X), self.W_k(X), self.W_v(X)
        batch_size = query.size(0)
        query = query.view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        output, _ = self.dot_attention(query, key, value, scale=self.scale)
        output = output.transpose(1, 2).contiguous().view(batch_size, -1, self.num_heads * self.head_dim)
        if self.W_res is not None:
            residual = self.W_res(residual)
        if self.use_residual:
            output += residual
        if self.layer_norm is not None:
            output = self.layer_norm(output)
        return output.relu()


class AutoInt(BaseModel):
    """AutoInt / AutoInt+ wired as the zoo's ``AutoInt``: FeatureEmbedding -> stacked
    MultiHeadSelfAttention -> flatten -> Linear(num_fields * attention_dim, 1); plus an
    MLP_Block logit over the flattened embeddings when ``dnn_hidden_units`` is non-empty
    (AutoInt+), plus an LR logit when ``use_wide``; sigmoid."""

    def __init__(self, feature_map, model_id="AutoInt", gpu=-1, learning_rate=1e-3,
                 embedding_dim=10, dnn_hidden_units=(64, 64, 64), dnn_activations="ReLU",
                 attention_layers=2, num_heads=1, attention_dim=8, net_dropout=0,
                 batch_norm=False, layer_norm=False, use_scale=False, use_wide=False,
                 use_residual=True, embedding_regularizer=None, net_regularizer=None, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.lr_layer = LogisticRegression(feature_map, use_bias=False) if use_wide else None
        self.dnn = MLP_Block(input_dim=feature_map.sum_emb_out_dim(), output_dim=1,
                             hidden_units=list(dnn_hidden_units),
                             hidden_activations=dnn_activations, output_activation=None,
                             dropout_rates=net_dropout, batch_norm=batch_norm) \
            if dnn_hidden_units else None
        self.self_attention = nn.Sequential(
            *[MultiHeadSelfAttention(embedding_dim if i == 0 else attention_dim,
                                     attention_dim=attention_dim, num_heads=num_heads,
                                     dropout_rate=net_dropout, use_residual=use_residual,
                                     use_scale=use_scale, layer_norm=layer_norm)
              for i in range(attention_layers)])
        self.fc = nn.Linear(feature_map.num_fields * attention_dim, 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        feature_emb = self.embedding_layer(X)
        attention_out = torch.flatten(self.self_attention(feature_emb), start_dim=1)
        y_pred = self.fc(attention_out)
        if self.dnn is not None:
            y_pred += self.dnn(feature_emb.flatten(start_dim=1))
        if self.lr_layer is not None:
            y_pred += self.lr_layer(X)
        return {"y_pred": self.output_activation(y_pred)}


class MMoE_Layer(nn.Module):
    """The zoo's ``MMoE_Layer`` (model_zoo/multitask/MMoE/src/MMoE.py): expert MLP_Blocks,
    one gate MLP_Block per task with a softmax, gate-weighted sum of the expert outputs."""

    def __init__(self, num_experts, num_tasks, input_dim, expert_hidden_units, gate_hidden_units,
                 hidden_activations, net_dropout, batch_norm):
        super().__init__()
        self.num_experts, self.num_tasks = num_experts, num_tasks
        self.experts = nn.ModuleList([
            MLP_Block(input_dim=input_dim, hidden_units=list(expert_hidden_units),
                      hidden_activations=hidden_activations, output_activation=None,
                      dropout_rates=net_dropout, batch_norm=batch_norm)
            for _ in range(num_experts)])
        self.gate = nn.ModuleList([
            MLP_Block(input_dim=input_dim, hidden_units=list(gate_hidden_units),
                      output_dim=num_experts, hidden_activations=hidden_activations,
                      output_activation=None, dropout_rates=net_dropout, batch_norm=batch_norm)
            for _ in range(num_tasks)])
        self.gate_activation = get_activation("softmax")

    def forward(self, x):
        experts_output = torch.stack([self.experts[i](x) for i in range(self.num_experts)], dim=1)
        mmoe_output = []
        for i in range(self.num_tasks):
            gate_output = self.gate_activation(self.gate[i](x))  # (B, num_experts)
            mmoe_output.append(torch.sum(gate_output.unsqueeze(-1) * experts_output, dim=1))
        return mmoe_output


class MMoE(MultiTaskModel):
    """The zoo's ``MMoE`` (a ``MultiTaskModel``): FeatureEmbedding -> flatten -> MMoE_Layer ->
    one MLP_Block tower per task; run here with one task (num_tasks=1, the label column)."""

    def __init__(self, feature_map, task=("binary_classification",), num_tasks=1, model_id="MMoE",
                 gpu=-1, learning_rate=1e-3, embedding_dim=10, num_experts=4,
                 expert_hidden_units=(512, 256, 128), gate_hidden_units=(128, 64),
                 tower_hidden_units=(128, 64), hidden_activations="ReLU", net_dropout=0,
                 batch_norm=False, embedding_regularizer=None, net_regularizer=None, **kwargs):
        super().__init__(feature_map, task=list(task), num_tasks=num_tasks, model_id=model_id,
                         gpu=gpu, embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.mmoe_layer = MMoE_Layer(num_experts=num_experts, num_tasks=self.num_tasks,
                                     input_dim=embedding_dim * feature_map.num_fields,
                                     expert_hidden_units=expert_hidden_units,
                                     gate_hidden_units=gate_hidden_units,
                                     hidden_activations=hidden_activations,
                                     net_dropout=net_dropout, batch_norm=batch_norm)
        self.tower = nn.ModuleList([
            MLP_Block(input_dim=list(expert_hidden_units)[-1], output_dim=1,
                      hidden_units=list(tower_hidden_units), hidden_activations=hidden_activations,
                      output_activation=None, dropout_rates=net_dropout, batch_norm=batch_norm)
            for _ in range(num_tasks)])
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        feature_emb = self.embedding_layer(X)
        expert_output = self.mmoe_layer(feature_emb.flatten(start_dim=1))
        labels = self.feature_map.labels
        return {f"{labels[i]}_pred": self.output_activation[i](self.tower[i](expert_output[i]))
                for i in range(self.num_tasks)}


class SDIM(BaseModel):
    """SDIM (FuxiCTR's LongCTR zoo ``SDIM``) composed on the wheel's layers for the standard
    RankDataLoader (one feature dict per batch; the zoo's own class needs LongCTR's loader,
    which yields ``(batch_dict, item_dict, mask)``, and asserts fuxictr==2.3.2).

    As in the zoo: ``FeatureEmbedding``; target = the item's embedding (here ``item_id`` is the
    only item-side feature, so ``item_info_dim`` = embedding_dim, and the history shares its
    table); short-term interest = the wheel's ``MultiHeadTargetAttention`` of the target over
    the last ``short_seq_len`` behaviours; long-term interest = LSH attention: fixed
    ``random_rotations`` [d, num_hashes * hash_bits] ~ N(0, 1) (``requires_grad=False``, drawn
    once: ``reuse_hash``), bit = 1[rotation > 0] (the zoo's argmax over [-rot, rot], ties -> 0),
    bucket = sum_b bit_b 2**b per hash; per hash, the sum of the real behaviours whose bucket
    equals the target's (zero when none), optionally L2-normalised (``l2_norm``), mean over the
    hashes; ``MLP_Block`` with the sigmoid inside over [other fields, target, long, short].

    Written here rather than copied: the colliding sums are one batched matmul of the collision
    matrix [B, L, H] with the sequence (the zoo gathers the same rows with ``nonzero`` +
    ``F.embedding_bag(mode="sum")``); the rotations are one [d, H * bits] matrix instead of a
    per-row ``repeat``; the short-term slice takes the last ``short_seq_len`` *behaviours* with
    their own mask (the zoo's ``[-short_seq_len:-1]`` slice counts the target's slot, and slices
    a length-L mask as if it had the target's column; see the README). Each batch's history is
    cut to its longest real one, as LongCTR's loader pads per batch (output unchanged).
    """

    def __init__(self, feature_map, model_id="SDIM", gpu=-1, learning_rate=1e-3, embedding_dim=10,
                 dnn_hidden_units=(512, 128, 64), dnn_activations="ReLU", attention_dim=64,
                 use_qkvo=True, num_heads=1, use_scale=True, attention_dropout=0, reuse_hash=True,
                 num_hashes=1, hash_bits=4, l2_norm=False, short_seq_len=50, net_dropout=0,
                 batch_norm=False, target_field="item_id", sequence_field="history",
                 embedding_regularizer=None, net_regularizer=None, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        if not reuse_hash:
            raise ValueError("reuse_hash=False (fresh rotations every batch) is not supported here")
        self.target_field, self.sequence_field = target_field, sequence_field
        self.num_hashes, self.hash_bits = num_hashes, hash_bits
        self.short_seq_len, self.l2_norm = short_seq_len, l2_norm
        self.item_info_dim = feature_map.features[target_field].get("embedding_dim", embedding_dim)
        self.other_fields = [f for f, spec in feature_map.features.items()
                             if spec["type"] != "meta" and f not in (target_field, sequence_field)]
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        self.short_attention = MultiHeadTargetAttention(self.item_info_dim, attention_dim, num_heads,
                                                        attention_dropout, use_scale, use_qkvo)
        self.random_rotations = nn.Parameter(
            torch.randn(self.item_info_dim, num_hashes * hash_bits), requires_grad=False)
        self.powers_of_two = nn.Parameter(2.0 ** torch.arange(hash_bits, dtype=torch.float32),
                                          requires_grad=False)
        other_dim = sum(feature_map.features[f].get("embedding_dim", embedding_dim)
                        for f in self.other_fields)
        self.dnn = MLP_Block(input_dim=other_dim + 3 * self.item_info_dim, output_dim=1,
                             hidden_units=list(dnn_hidden_units), hidden_activations=dnn_activations,
                             output_activation=self.output_activation, dropout_rates=net_dropout,
                             batch_norm=batch_norm)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def lsh_hash(self, x):
        """``x [..., d] -> buckets [..., num_hashes]`` (small exact integers, as float)."""
        bits = (x @ self.random_rotations > 0).float()                      # [..., H * bits]
        return bits.unflatten(-1, (self.num_hashes, self.hash_bits)) @ self.powers_of_two

    def lsh_attention(self, target, seq, mask):
        """``target [B, d], seq [B, L, d], mask [B, L] -> [B, d]``."""
        collide = (self.lsh_hash(seq) == self.lsh_hash(target).unsqueeze(1)) & mask.unsqueeze(-1)
        sums = collide.to(seq.dtype).transpose(1, 2) @ seq                  # [B, H, d]
        if self.l2_norm:
            sums = F.normalize(sums, dim=-1)                                # zero stays zero
        return sums.mean(dim=1)

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        ids = X[self.sequence_field].long()                                 # [B, max_len], left-padded
        # LongCTR's loader pads each batch only to its longest history (min(longest, max_len));
        # cut the fixed-width left padding the same way (padding never contributes: no-op on
        # the output, less work); at least short_seq_len wide
        width = max(int((ids != 0).sum(dim=1).max()), self.short_seq_len)
        X[self.sequence_field] = ids[:, ids.shape[1] - min(width, ids.shape[1]):]
        emb = self.embedding_layer.embedding_layer(X)                       # feature -> tensor
        target = emb[self.target_field]                                     # [B, d]
        seq = emb[self.sequence_field]                                      # [B, L', d]
        mask = X[self.sequence_field] != 0                                  # padding_idx 0
        k = self.short_seq_len
        short = self.short_attention(target, seq[:, -k:], mask[:, -k:])
        long = self.lsh_attention(target, seq, mask)
        parts = [emb[f].flatten(start_dim=1) for f in self.other_fields]
        y_pred = self.dnn(torch.cat(parts + [target, long, short], dim=-1))
        return {"y_pred": y_pred}


BUILDERS = {"DeepFM": DeepFM, "AutoInt": AutoInt, "AutoIntPlus": AutoInt, "MMoE": MMoE,
            "SDIM": SDIM}


def model_class(name: str, model_zoo: str | None):
    """The zoo's class when a model_zoo folder is given, else our composition."""
    if model_zoo and MODELS[name].get("zoo_unusable"):
        raise SystemExit(f"--model {name} --model-zoo: {MODELS[name]['zoo_unusable']}")
    if model_zoo:
        zoo_dir, cls_name = MODELS[name]["zoo"]
        torch_dir = Path(model_zoo) / zoo_dir / f"{zoo_dir}_torch"
        src_dir = torch_dir if (torch_dir / "src").is_dir() else Path(model_zoo) / zoo_dir
        sys.path.insert(0, str(src_dir))
        module = importlib.import_module("src")
        return getattr(module, cls_name), f"model_zoo:{src_dir}"
    if name not in BUILDERS:
        raise SystemExit(f"--model {name}: no built-in composition; pass --model-zoo PATH")
    return BUILDERS[name], "composed-from-fuxictr-layers"


def apply_init_fix(model: nn.Module) -> list[str]:
    """Re-initialize unshared tables of shared-embedding features (see module doc)."""
    fixed = []
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, FeatureEmbeddingDict):
            continue
        for feat, layer in mod.embedding_layers.items():
            target = mod._feature_map.features[feat].get("share_embedding")
            if target is None or type(layer) is not nn.Embedding:
                continue
            if target in mod.embedding_layers and mod.embedding_layers[target] is layer:
                continue  # truly shared: initialized under the target's name
            with torch.no_grad():
                if layer.padding_idx is not None:
                    mod.embedding_initializer(layer.weight[1:, :])
                else:
                    mod.embedding_initializer(layer.weight)
            fixed.append(f"{mod_name}.embedding_layers.{feat}")
    return fixed


def long_tail_auc(model, test_gen, feature_map, test_file: Path, max_prior: int) -> dict:
    """Test AUC on the rows whose user had at most ``max_prior`` positives before the row (the
    length of the raw, untruncated ``history``). The test loader is not shuffled; we check that
    its label sequence equals the file's before trusting the row order."""
    from sklearn.metrics import roc_auc_score

    label = feature_map.labels[0]
    preds, labels = [], []
    model.eval()
    with torch.no_grad():
        for batch in test_gen:
            out = model.forward(batch)
            y = out["y_pred"] if "y_pred" in out else out[f"{label}_pred"]
            preds.append(y.detach().cpu().reshape(-1))
            labels.append(torch.as_tensor(batch[label]).reshape(-1).float())
    preds, labels = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    raw = pl.read_parquet(test_file, columns=[LABEL, HISTORY])
    info = {"max_prior_positives": max_prior, "auc": None}
    if len(raw) != len(labels) or not (raw[LABEL].to_numpy().astype("float32") == labels).all():
        info["error"] = "test loader order differs from the file; long-tail AUC not computed"
        return info
    seg = (raw[HISTORY].list.len() <= max_prior).to_numpy()
    info.update(rows=int(seg.sum()), positive_rate=float(labels[seg].mean()),
                auc=float(roc_auc_score(labels[seg], preds[seg])))
    return info


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
def prepare_splits(data_dir: Path, raw_dir: Path, history_max_len: int) -> dict:
    """Copy the splits into raw_dir in the form FuxiCTR's preprocessor expects."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for split in ("train", "valid", "test"):
        src = data_dir / f"{split}.parquet"
        if not src.exists():
            raise SystemExit(f"missing {src}")
        df = pl.read_parquet(src)
        missing = set(CATEGORICAL + MULTI_HOT + [HISTORY, LABEL]) - set(df.columns)
        if missing:
            raise SystemExit(f"{src}: missing columns {sorted(missing)}")
        df = df.select(
            # strings everywhere: parquet ints would be vocab keys of another type than
            # the "^"-joined history tokens, and share_embedding would then not share
            *[pl.col(c).cast(pl.String) for c in CATEGORICAL],
            # sequences as "^"-joined strings, as in FuxiCTR's CSV format: its preprocess
            # fills nulls before it joins list columns, and fill_null("") on a list column
            # fails ("cannot cast List type (inner: 'String', to: 'String')")
            *[pl.col(c).cast(pl.List(pl.String)).list.join("^") for c in MULTI_HOT],
            pl.col(HISTORY).list.tail(history_max_len).cast(pl.List(pl.String))
            .list.join("^"),
            pl.col(LABEL).cast(pl.Float64),
        )
        df.write_parquet(raw_dir / f"{split}.parquet")
        rows[split] = df.height
    return rows


def prepare_splits_table(data_dir: Path, raw_dir: Path, table: dict) -> dict:
    """A flat table (``--features``): categoricals as strings (nulls stay null; FuxiCTR fills
    them with ``""``, one more category), numerics as Float64, the label as Float64."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for split in ("train", "valid", "test"):
        src = data_dir / f"{split}.parquet"
        if not src.exists():
            raise SystemExit(f"missing {src}")
        df = pl.read_parquet(src)
        missing = set(table["categorical"] + table["numeric"] + [table["label"]]) - set(df.columns)
        if missing:
            raise SystemExit(f"{src}: missing columns {sorted(missing)}")
        df = df.select(*[pl.col(c).cast(pl.String) for c in table["categorical"]],
                       *[pl.col(c).cast(pl.Float64) for c in table["numeric"]],
                       pl.col(table["label"]).cast(pl.Float64).alias(LABEL))
        df.write_parquet(raw_dir / f"{split}.parquet")
        rows[split] = df.height
    return rows


def feature_cols_table(table: dict) -> list[dict]:
    """FuxiCTR feature columns of a flat table: categoricals, and numerics standardized
    (``StandardScaler`` fitted on train, nulls filled with 0 before) and embedded as ``x * v``."""
    cols = [{"name": list(table["categorical"]), "active": True, "dtype": "str", "type": "categorical"}]
    if table["numeric"]:
        cols.append({"name": list(table["numeric"]), "active": True, "dtype": "float", "type": "numeric",
                     "normalizer": "StandardScaler", "fill_na": 0.0})
    return cols


def feature_cols(spec: dict) -> list[dict]:
    cols = [{"name": CATEGORICAL, "active": True, "dtype": "str", "type": "categorical"}]
    for c in MULTI_HOT:
        cols.append({"name": c, "active": True, "dtype": "str", "type": "sequence",
                     "splitter": "^", "max_len": 0})
    hist = {"name": HISTORY, "active": True, "dtype": "str", "type": "sequence",
            "splitter": "^", "max_len": spec["history_max_len"],
            "share_embedding": "item_id",
            "feature_encoder": spec["history_encoder"]}  # None: unpooled [B, L, d]
    if "history_padding" in spec:  # FuxiCTR's default is "post" (real items first)
        hist["padding"] = spec["history_padding"]
    cols.append(hist)
    return cols


def preprocess(data_dir: Path, raw_dir: Path, data_root: Path, spec: dict, table: dict | None):
    """Steps 1-2 (module docstring): the splits of ``data_dir`` prepared in ``raw_dir`` (ml100k-ctr,
    or the flat ``table`` of ``--features``), FuxiCTR's vocabulary fitted on train and the three
    splits encoded under ``data_root/<dataset_id>``; returns (rows per split, the encoded splits'
    (train, valid, test) paths)."""
    if table is None:
        rows = prepare_splits(data_dir, raw_dir, spec["history_max_len"])
        cols, dataset_id = feature_cols(spec), DATASET_ID
    else:
        rows = prepare_splits_table(data_dir, raw_dir, table)
        cols, dataset_id = feature_cols_table(table), table["dataset_id"]
    processor = FeatureProcessor(feature_cols=cols, label_col={"name": LABEL, "dtype": "float"},
                                 dataset_id=dataset_id, data_root=str(data_root))
    paths = build_dataset(processor, train_data=str(raw_dir / "train.parquet"),
                          valid_data=str(raw_dir / "valid.parquet"), test_data=str(raw_dir / "test.parquet"),
                          data_format="parquet", min_categr_count=1)
    return rows, paths


def run_params(model: str, model_id: str, seed: int, dataset_id: str, data_root: Path, model_root: Path,
               verbose: int = 0) -> dict:
    """The keyword arguments of ``model``'s class and ``BaseModel.fit``: COMMON_PARAMS, the
    model's own (``MODELS``), and where the run's data and checkpoints live."""
    params = dict(COMMON_PARAMS)
    params.update(MODELS[model]["params"])
    params.update(model_id=model_id, dataset_id=dataset_id, data_root=str(data_root),
                  model_root=str(model_root), data_format="parquet", seed=seed, gpu=-1, verbose=verbose,
                  min_categr_count=1)
    return params


def load_feature_map(data_root: Path, dataset_id: str, params: dict) -> FeatureMap:
    """The feature map ``preprocess`` wrote under ``data_root/<dataset_id>``."""
    feature_map = FeatureMap(dataset_id, str(data_root / dataset_id))
    feature_map.load(str(data_root / dataset_id / "feature_map.json"), params)
    return feature_map


def duel_worker(model, train_gen, steps: int) -> dict:
    """Hold ``steps`` training batches in memory, print ``ready``, then for every ``go`` line on
    stdin run those steps (``train_step``: forward, loss, backward, clip, Adam) and print the
    seconds per step; ``stop`` ends (duel_protocol.py: the same loop as our side's)."""
    from duel_protocol import serve_held_steps

    model.train()
    if not hasattr(model, "_max_gradient_norm"):  # BaseModel.fit sets it (its default: 10)
        model._max_gradient_norm = 10.0
    serve_held_steps(train_gen, steps, model.train_step)
    return {}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path,
                    help="folder with train/valid/test.parquet (ml100k-ctr view)")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--model", default="DeepFM", choices=sorted(MODELS))
    ap.add_argument("--out", type=Path, default=None, help="result JSON path")
    ap.add_argument("--work", type=Path, default=None,
                    help="work folder (default: a temp dir, removed afterwards)")
    ap.add_argument("--model-zoo", default=os.environ.get("FUXICTR_MODEL_ZOO"),
                    help="a FuxiCTR checkout's model_zoo folder, to use its model classes")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's, i.e. OMP_NUM_THREADS)")
    ap.add_argument("--no-init-fix", action="store_true",
                    help="leave FuxiCTR's init as shipped (for showing the AUC ~0.59 bug)")
    ap.add_argument("--max-epochs", type=int, default=None, help="override 100 (smoke runs)")
    ap.add_argument("--batch-size", type=int, default=None, help="override the recipe's 4096")
    ap.add_argument("--long-tail-max-prior", type=int, default=10,
                    help="long-tail segment: test rows whose user has at most this many prior "
                         "positives (the raw history length); default 10")
    ap.add_argument("--features", type=Path, default=None,
                    help="a flat table instead of ml100k-ctr: JSON {dataset_id, categorical: [...], "
                         "numeric: [...], label}; no sequences, no long-tail AUC")
    ap.add_argument("--duel-steps", type=int, default=0,
                    help="no fit: serve compute-only timings of this many held batches (see duel_worker)")
    ap.add_argument("--verbose", action="store_true", help="FuxiCTR's tqdm bars")
    args = ap.parse_args(argv)
    table = json.loads(args.features.read_text()) if args.features else None
    if table is not None and args.model == "SDIM":
        raise SystemExit("--features (a flat table) has no history: SDIM needs ml100k-ctr")
    dataset_id = table["dataset_id"] if table else DATASET_ID

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    if not args.verbose:  # Ray Data logs every dataset execution at INFO
        logging.getLogger("ray").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = MODELS[args.model]
    cls, model_source = model_class(args.model, args.model_zoo)

    keep_work = args.work is not None
    work = args.work or Path(tempfile.mkdtemp(prefix="fuxictr_"))
    work.mkdir(parents=True, exist_ok=True)
    raw_dir, data_root, model_root = work / "raw", work / "data", work / "ckpt"
    shutil.rmtree(data_root / dataset_id, ignore_errors=True)  # fresh vocab every run
    # BaseModel saves its checkpoint to model_root/dataset_id/ but does not create it
    # (run_expid.py's set_logger does): "Parent directory ... does not exist"
    (model_root / dataset_id).mkdir(parents=True, exist_ok=True)

    params = run_params(args.model, f"{args.model}_seed{args.seed}", args.seed, dataset_id, data_root,
                        model_root, verbose=1 if args.verbose else 0)
    if args.max_epochs:
        params["epochs"] = args.max_epochs
    if args.batch_size:
        params["batch_size"] = args.batch_size

    try:
        # 1-2. preprocessing: FuxiCTR's fit-on-train vocabulary + transform (Ray)
        t0 = time.perf_counter()
        rows, (train_p, valid_p, test_p) = preprocess(args.data, raw_dir, data_root, spec, table)
        preprocess_s = time.perf_counter() - t0
        params.update(train_data=train_p, valid_data=valid_p, test_data=test_p)

        feature_map = load_feature_map(data_root, dataset_id, params)

        # 3. model
        seed_everything(seed=args.seed)
        model = cls(feature_map, **params)
        fixed = [] if args.no_init_fix else apply_init_fix(model)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

        # instrumentation: compute-only time, eval time inside fit, per-epoch valid AUC
        timers = {"compute": 0.0, "eval": 0.0}
        per_epoch = []
        train_step, evaluate, ckpt = model.train_step, model.evaluate, model.checkpoint_and_earlystop

        def timed_train_step(batch):
            t = time.perf_counter()
            out = train_step(batch)
            timers["compute"] += time.perf_counter() - t
            return out

        def timed_evaluate(gen, metrics=None):
            t = time.perf_counter()
            out = evaluate(gen, metrics)
            timers["eval"] += time.perf_counter() - t
            return out

        def logged_ckpt(logs, *a, **k):
            per_epoch.append(float(logs["AUC"]))
            return ckpt(logs, *a, **k)

        model.train_step, model.evaluate, model.checkpoint_and_earlystop = (
            timed_train_step, timed_evaluate, logged_ckpt)

        t1 = time.perf_counter()
        train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params)
        if args.duel_steps:  # compute-only steps on demand (ctr_models.py --duel drives it)
            return duel_worker(model, train_gen, args.duel_steps)
        model.fit(train_gen, validation_data=valid_gen, **params)
        train_s = time.perf_counter() - t1
        epochs = model._epoch_index + 1
        model.evaluate = evaluate  # no more timing

        # 4. evaluation of the best checkpoint (fit reloads it)
        valid = model.evaluate(valid_gen)
        test_gen = RankDataLoader(feature_map, stage="test", **params)
        test = model.evaluate(test_gen)
        long_tail = (long_tail_auc(model, test_gen, feature_map, args.data / "test.parquet",
                                   args.long_tail_max_prior) if table is None else {"auc": None})
    finally:
        try:
            import ray
            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # pragma: no cover - best effort
            pass
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)

    train_rows = rows["train"]
    result = {
        "model": args.model,
        "dataset_id": dataset_id,
        "seed": args.seed,
        "test_auc": float(test["AUC"]),
        "test_logloss": float(test["logloss"]),
        "test_auc_long_tail": long_tail["auc"],
        "long_tail": long_tail,
        "valid_auc": float(valid["AUC"]),
        "valid_logloss": float(valid["logloss"]),
        "epochs": epochs,
        "best_epoch": (per_epoch.index(max(per_epoch)) + 1) if per_epoch else None,
        "valid_auc_per_epoch": [round(x, 6) for x in per_epoch],
        "train_rows": train_rows,
        "train_seconds": round(train_s, 3),
        "train_samples_per_s": round(train_rows * epochs / train_s, 1),
        "compute_seconds": round(timers["compute"], 3),
        "compute_samples_per_s": round(train_rows * epochs / timers["compute"], 1),
        "eval_seconds_in_fit": round(timers["eval"], 3),
        "preprocess_seconds": round(preprocess_s, 3),
        "num_params": n_params,
        "init_fix": bool(fixed),
        "init_fix_tables": fixed,
        "model_source": model_source,
        "fuxictr_version": fuxictr.__version__ if hasattr(fuxictr, "__version__") else None,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "params": {k: params[k] for k in sorted(params)
                   if k not in ("train_data", "valid_data", "test_data", "data_root",
                                "model_root")},
        "notes": "train_seconds = RankDataLoader setup + BaseModel.fit (incl. per-epoch "
                 "valid eval and Ray data loading); compute = train_step only",
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()

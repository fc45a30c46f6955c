"""FuxiCTR 2.3.10's DCNv2 on the ml100k-ctr split (or a flat table with ``--features``): the driver of ``fuxictr_deepfm.py`` with a
``DCNv2`` model entry. Run with the PEER venv's python:

    experiments/bench/.venv-peers/bin/python experiments/bench/peers/fuxictr_dcnv2.py \\
        --data DIR --seed 2019 --model DCNv2 --out result.json

The wheel has no model zoo, so the model is composed from the wheel's layers the way FuxiCTR's
``model_zoo/DCNv2`` wires them: ``FeatureEmbedding`` (flattened) -> ``CrossNetV2`` (full rank) or
``CrossNetMix`` (``use_low_rank_mixture``) -> ``model_structure`` ``crossnet_only`` /
``stacked`` (a DNN on the cross output) / ``parallel`` (cross output concatenated with a DNN
on the embeddings) -> ``nn.Linear(final_dim, 1)`` -> sigmoid; ``reset_parameters()`` (Xavier
for every Linear). Widths as ``experiments/dcn_v2_ml100k.yaml``: embedding 16, 3 cross layers,
parallel DNN [256, 128], batch 1024 (``--batch-size``; the shared recipe's is 4096).
``experiments/bench/ctr_models.py --models dcn_v2`` runs it (``--features`` for Adult / the wide table).
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuxictr_deepfm as driver  # noqa: E402  (the shared driver: data prep, fit, evaluate, JSON)
from fuxictr.pytorch.layers import CrossNetMix, CrossNetV2, FeatureEmbedding, MLP_Block  # noqa: E402
from fuxictr.pytorch.models import BaseModel  # noqa: E402


class DCNv2(BaseModel):
    """DCNv2 from FuxiCTR's own layers (see the module docstring)."""

    def __init__(self, feature_map, model_id="DCNv2", gpu=-1, learning_rate=1e-3, embedding_dim=10,
                 model_structure="parallel", use_low_rank_mixture=False, low_rank=32, num_experts=4,
                 num_cross_layers=3, stacked_dnn_hidden_units=(), parallel_dnn_hidden_units=(),
                 dnn_activations="ReLU", net_dropout=0, batch_norm=False, embedding_regularizer=None,
                 net_regularizer=None, **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu, embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        if model_structure not in ("crossnet_only", "stacked", "parallel"):
            raise ValueError(f"model_structure {model_structure!r}")
        self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
        input_dim = feature_map.sum_emb_out_dim()
        self.crossnet = (CrossNetMix(input_dim, num_cross_layers, low_rank=low_rank, num_experts=num_experts)
                         if use_low_rank_mixture else CrossNetV2(input_dim, num_cross_layers))
        self.model_structure = model_structure
        self.dnn = None
        final_dim = input_dim
        units = list(stacked_dnn_hidden_units if model_structure == "stacked" else parallel_dnn_hidden_units)
        if model_structure != "crossnet_only":
            self.dnn = MLP_Block(input_dim=input_dim, output_dim=None, hidden_units=units,
                                 hidden_activations=dnn_activations, output_activation=None,
                                 dropout_rates=net_dropout, batch_norm=batch_norm)
            final_dim = units[-1] + (input_dim if model_structure == "parallel" else 0)
        self.fc = nn.Linear(final_dim, 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def forward(self, inputs):
        X = self.get_inputs(inputs)
        x0 = self.embedding_layer(X, flatten_emb=True)
        cross = self.crossnet(x0)
        if self.model_structure == "stacked":
            out = self.dnn(cross)
        elif self.model_structure == "parallel":
            out = driver.torch.cat([cross, self.dnn(x0)], dim=-1)
        else:
            out = cross
        return {"y_pred": self.output_activation(self.fc(out))}


driver.MODELS["DCNv2"] = {
    "zoo": ("DCNv2", "DCNv2"),
    "params": {
        "batch_size": 1024,
        "model_structure": "parallel",
        "use_low_rank_mixture": False,
        "low_rank": 32,
        "num_experts": 4,
        "num_cross_layers": 3,
        "parallel_dnn_hidden_units": [256, 128],
        "stacked_dnn_hidden_units": [256, 128],
        "dnn_activations": "relu",
        "net_dropout": 0,
        "batch_norm": False,
    },
    "history_max_len": 50,
    "history_encoder": "layers.MaskedAveragePooling()",
}
driver.BUILDERS["DCNv2"] = DCNv2

if __name__ == "__main__":
    driver.main()

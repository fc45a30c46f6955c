"""AutoInt and AutoInt+ (Song et al., CIKM 2019): multi-head self-attention over field embeddings.

Notation: B = batch, F = number of fields (pooled id fields in schema order, then numeric
fields), D = embedding width, H = heads, d = width of one head, L = interacting layers.

Every field becomes one vector ``e_f [D]``: a categorical field is its embedding, a multi-hot
field or a pooled behaviour sequence the mean (or the schema's ``sum``) of its values'
embeddings, a numeric field ``m`` is ``x_m * v_m`` (one learned vector per numeric field, the
paper's ``e_m = v_m x_m``). ``E [B, F, D]`` goes through ``L`` interacting layers
(:class:`InteractingLayer`, ``[B, F, D_in] -> [B, F, H*d]``); the output layer is a linear map
of the flattened result, ``[B, F*H*d] -> [B]``. AutoInt+ adds a DNN over the flattened
embeddings, ``[B, F*D] -> [B]``, whose logit is added (as in the official code and FuxiCTR).

One interacting layer, per head h, for query field m and key field k::

    a[h, m, k] = softmax_k( <W_Q[h] e_m, W_K[h] e_k> )          softmax over the KEY axis (last)
    out[m]     = concat_h( sum_k a[h, m, k] W_V[h] e_k )          [H*d]
    e'_m       = ReLU(out[m] + W_res e_m)

Where the paper and its official TF code disagree, the paper's form is the default and the
code's is a flag (see PAPERS.md section 2.3):

=====================  ==========================  ======================================
flag                   default (paper)             alternative
=====================  ==========================  ======================================
``use_scale``          ``False``: raw inner        ``True``: scores / sqrt(d) (official
                       products                    code; FuxiCTR's ``use_scale``)
``qkv_relu``           ``False``: linear Q, K, V   ``True``: ReLU on the Q, K, V and
                                                   residual projections (official code's
                                                   ``dense(..., activation=relu)``)
``layer_norm``         ``False``                   ``True``: LayerNorm after the final ReLU
                                                   (official code; FuxiCTR puts it before)
``residual``           ``"project"``: ``W_res e``  ``"auto"`` (FuxiCTR: identity where the
                       in every layer              widths match, else a projection),
                                                   ``"identity"`` (widths must match:
                                                   ``D == H*d``), ``"none"`` (no residual)
``attention_dropout``  ``0``                       dropout on the attention weights
                                                   (official code)
=====================  ==========================  ======================================

Projections have no bias (the paper's matrices; FuxiCTR and DeepCTR do the same; the official
code's ``dense`` layers have biases, which we do not offer). AutoInt and AutoInt+ are one
class, :class:`AutoInt`: ``dnn_hidden_units=()`` (default) is AutoInt, non-empty is AutoInt+.
:class:`AutoIntPlus` is the same class with ``dnn_hidden_units=(256, 128)`` as its default, so a
YAML can name either.

Inspection: after every forward pass :meth:`AutoInt.attention_weights` returns the attention of
that pass as ``[B, L, H, F, F]`` (query field x key field; each row sums to 1) and
``attention_fields`` names the F fields; the offline report averages it into a field x field map.

>>> from recsys.data import CTRDataModule
>>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
>>> batch = next(iter(dm.train_dataloader()))
>>> model = AutoInt(dm.features, embedding_dim=4, attention_layers=2, num_heads=2, head_dim=3)
>>> model(batch).logits.shape
torch.Size([8])
>>> w = model.attention_weights()
>>> w.shape == (8, 2, 2, len(model.attention_fields), len(model.attention_fields))
True
>>> bool(torch.allclose(w.sum(-1), torch.ones(())))
True
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.preprocess import FeatureEncoder
from recsys.models.base import ModelOutput, RankingModel
from recsys.models.baselines import FirstOrder
from recsys.models.embedding import FeatureEmbedding
from recsys.models.layers import MLP, init_linears

Residual = Literal["project", "auto", "identity", "none"]
_RESIDUALS = ("project", "auto", "identity", "none")


# Attention kernel by field count F, chosen by measurement (experiments/bench/attention_softmax.py,
# one training step of three interacting layers at batch 2,048-4,096, 2 heads of 32, torch 2.13 on
# one CPU thread): the exp/sum softmax between two matmuls took 0.82x the time of
# scaled_dot_product_attention at F = 10 and 14, while SDPA was 1.54x faster than it at F = 28 and
# 1.49x at F = 40 (1.28x faster than torch.softmax); F = 20 was within the noise of the shared
# machine. Below this many fields (and with attention dropout in training, which needs the
# weights) the exp/sum path runs, so ml100k-ctr (10 fields) and Adult (14) compute exactly what
# they did before.
SDPA_MIN_FIELDS = 20


def _softmax_last(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis as ``exp(s - max) / sum``: the same values as
    ``torch.softmax`` (to float rounding), several times faster on CPU for rows as short as
    AutoInt's (F keys), where the fused kernel is slow in forward and backward."""
    e = torch.exp(scores - scores.amax(dim=-1, keepdim=True).detach())
    return e / e.sum(dim=-1, keepdim=True)


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer over fields: ``[B, F, in_dim] -> [B, F, H*d]``.

    Args:
        in_dim: width of each input field vector.
        num_heads: H.
        head_dim: d, the width of one head; the output width is ``H*d``.
        residual: ``"project"`` (paper: ``W_res e``), ``"auto"`` (identity when
            ``in_dim == H*d``, else a projection; FuxiCTR), ``"identity"`` (needs
            ``in_dim == H*d``), ``"none"``.
        use_scale: divide the scores by ``sqrt(d)``.
        qkv_relu: ReLU on the Q, K, V (and residual) projections.
        layer_norm: LayerNorm of the output, after the ReLU.
        attention_dropout: dropout on the attention weights (training only).

    After ``forward``, ``last_attention`` holds the attention weights ``[B, H, F, F]``
    (detached), softmax-normalized over the last (key) axis.

    >>> layer = InteractingLayer(4, num_heads=2, head_dim=3)
    >>> layer(torch.randn(5, 7, 4)).shape
    torch.Size([5, 7, 6])
    >>> layer.last_attention.shape
    torch.Size([5, 2, 7, 7])
    """

    def __init__(self, in_dim: int, num_heads: int = 2, head_dim: int = 32, residual: Residual = "project",
                 use_scale: bool = False, qkv_relu: bool = False, layer_norm: bool = False,
                 attention_dropout: float = 0.0):
        super().__init__()
        if in_dim < 1 or num_heads < 1 or head_dim < 1:
            raise ValueError(f"in_dim, num_heads and head_dim must be >= 1, got {in_dim}, {num_heads}, {head_dim}")
        if residual not in _RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; choose from {list(_RESIDUALS)}")
        out_dim = num_heads * head_dim
        if residual == "identity" and in_dim != out_dim:
            raise ValueError(f"residual='identity' needs the input width {in_dim} to equal num_heads * head_dim "
                             f"= {out_dim}; use residual='project' or 'auto', or change the widths")
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {attention_dropout}")
        self.in_dim, self.num_heads, self.head_dim, self.out_dim = in_dim, num_heads, head_dim, out_dim
        self.use_scale, self.qkv_relu, self.residual = use_scale, qkv_relu, residual
        # W_Q, W_K, W_V of all heads in one bias-free map: [in_dim] -> [3 * H * d]
        self.qkv = nn.Linear(in_dim, 3 * out_dim, bias=False)
        project = residual == "project" or (residual == "auto" and in_dim != out_dim)
        self.res = nn.Linear(in_dim, out_dim, bias=False) if project else None
        self.dropout = nn.Dropout(attention_dropout) if attention_dropout > 0 else None
        self.norm = nn.LayerNorm(out_dim) if layer_norm else None
        self._scale = 1.0 / head_dim ** 0.5 if use_scale else 1.0
        self._qk: tuple[torch.Tensor, torch.Tensor] | None = None
        self._attn: torch.Tensor | None = None

    @property
    def last_attention(self) -> torch.Tensor | None:
        """Attention weights of the last forward pass, ``[B, H, F, F]`` (detached, rows sum to
        1), computed on first access from that pass's queries and keys; ``None`` before any."""
        if self._attn is None and self._qk is not None:
            q, k = self._qk
            with torch.no_grad():
                self._attn = _softmax_last(q @ k.transpose(-1, -2) * self._scale)
        return self._attn

    @torch.no_grad()
    def reset_parameters_xavier(self) -> None:
        """Xavier-normal init as FuxiCTR gives its separate ``W_q``, ``W_k``, ``W_v`` (and
        ``W_res``): each ``[H*d, in_dim]`` block of the fused ``qkv`` weight is drawn with
        std ``sqrt(2 / (in_dim + H*d))``, not with the fused ``[3*H*d, in_dim]`` matrix's fan-out
        (that would be ``sqrt(2 / (in_dim + 3*H*d))``, 1.4x smaller for 64 -> 3 x 64)."""
        for block in self.qkv.weight.split(self.out_dim, dim=0):
            nn.init.xavier_normal_(block)
        if self.res is not None:
            nn.init.xavier_normal_(self.res.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.in_dim:
            raise ValueError(f"expected [B, F, {self.in_dim}], got {list(x.shape)}")
        b, f, _ = x.shape
        # W_Q, W_K, W_V applied one by one (row blocks of the fused weight, so parameters and
        # checkpoints are unchanged): each of q, k, v comes out contiguous, and the backward adds
        # three input gradients where one fused map's would concatenate q, k and v's gradients
        # back into the [B, F, 3*H*d] layout, a transposing copy (a layer's step 2-6% faster at
        # F = 10-40, batch 4,096: experiments/bench/README.md, "Allocator and AutoInt projections")
        q, k, v = (F.linear(x, w) for w in self.qkv.weight.split(self.out_dim, dim=0))
        if self.qkv_relu:
            q, k, v = torch.relu(q), torch.relu(k), torch.relu(v)
        # 3 x [B, F, H*d] -> 3 x [B, H, F, d] (views)
        q, k, v = (t.view(b, f, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if f >= SDPA_MIN_FIELDS and (self.dropout is None or not self.training):
            # many fields: the fused kernel (one forward, one backward); the attention map is
            # recomputed from the kept q, k only when asked for (last_attention)
            out = F.scaled_dot_product_attention(q, k, v, scale=self._scale)  # [B, H, F, d]
            self._qk, self._attn = (q.detach(), k.detach()), None
        else:
            scores = q @ k.transpose(-1, -2)                   # [B, H, F, F]
            if self.use_scale:
                scores = scores / self.head_dim ** 0.5
            attn = _softmax_last(scores)                       # over the key axis, never the batch
            self._qk, self._attn = None, attn.detach()
            if self.dropout is not None:
                attn = self.dropout(attn)
            out = attn @ v
        out = out.transpose(1, 2).reshape(b, f, self.out_dim)  # heads concatenated
        if self.res is not None:
            r = self.res(x)
            out = out + (torch.relu(r) if self.qkv_relu else r)
        elif self.residual != "none":
            out = out + x
        out = torch.relu(out)
        if self.norm is not None:
            out = self.norm(out)
        return out


class AutoInt(RankingModel):
    """AutoInt (``dnn_hidden_units=()``) and AutoInt+ (non-empty ``dnn_hidden_units``).

    Shapes: ``E [B, F, D]`` (id fields, then numeric fields ``x * v``) -> ``L`` interacting
    layers -> ``[B, F, H*d]`` -> flatten -> ``Linear(F*H*d, 1)``; AutoInt+ adds
    ``MLP(flatten(E) [B, F*D])``; ``use_wide`` adds a first-order term. Logits ``[B]``.

    Args:
        features: fitted FeatureEncoder.
        embedding_dim: D, the width of every field vector.
        attention_layers: L (>= 1).
        num_heads: H.
        head_dim: d (paper: d' = 32 with H = 2); layer outputs are ``H*d`` wide.
        residual: see :class:`InteractingLayer` (paper: ``"project"``).
        use_scale: divide scores by sqrt(d) (official code; paper: no).
        qkv_relu: ReLU on Q/K/V/residual projections (official code; paper: no).
        layer_norm: LayerNorm after each layer's ReLU (official code; paper: no).
        attention_dropout: dropout on attention weights.
        dnn_hidden_units: AutoInt+'s DNN widths; empty = plain AutoInt.
        dnn_dropout: dropout in the DNN.
        batch_norm: batch norm in the DNN.
        use_wide: add a first-order (LR) logit (FuxiCTR's ``use_wide``; off in the paper).
        dims: table -> width overrides (each projected to D by a bias-free linear map unless
            ``project_fields=False``).
        project_fields: project fields whose width is not D to D. ``False`` with mismatched
            widths raises ``ValueError`` at construction.
        init_std: std of the N(0, std^2) embedding init (also the numeric field vectors).
        mlp_init: ``torch`` (default) or ``xavier`` init of the DNN.
        attention_init: ``torch`` (PyTorch's Linear init) or ``xavier`` (Xavier-normal weights,
            zero biases, as FuxiCTR) for the interacting layers and the output layer. Default:
            ``xavier`` for plain AutoInt, ``torch`` for :class:`AutoIntPlus` (chosen on valid AUC,
            ml100k-ctr and Adult, 3 seeds each: ``experiments/bench/init_defaults.py``; AutoInt
            +0.0013 / +0.0010 with Xavier; AutoInt+ -0.0010 / +0.0006, i.e. a mean loss). ``xavier``
            draws W_Q, W_K, W_V each with its own fans (``[H*d, in]``, as FuxiCTR's three
            separate Linear layers), see :meth:`InteractingLayer.reset_parameters_xavier`.
            FuxiCTR's AutoInt+ exactly (init and structure) is ``attention_init="xavier"``,
            ``mlp_init="xavier"``, ``residual="auto"``
            (``experiments/bench/peers/compare_autoint.py`` checks logits and gradients).
        numeric_init: ``xavier`` (default; FuxiCTR's) or ``embedding``: how the numeric fields'
            vectors are drawn; see :class:`~recsys.models.embedding.FeatureEmbedding`. Chosen on
            valid AUC (``init_defaults.py --option numeric_init --max-epochs 30``, 3 seeds): Xavier
            +0.0015 on Adult / +0.0040 on the wide table for AutoInt, +0.0002 / +0.0050 for AutoInt+.

    >>> from recsys.data import CTRDataModule
    >>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
    >>> plus = AutoInt(dm.features, embedding_dim=4, head_dim=2, dnn_hidden_units=[8])
    >>> plus(next(iter(dm.train_dataloader()))).logits.shape
    torch.Size([8])
    """

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, attention_layers: int = 3,
                 num_heads: int = 2, head_dim: int = 32, residual: Residual = "project", use_scale: bool = False,
                 qkv_relu: bool = False, layer_norm: bool = False, attention_dropout: float = 0.0,
                 dnn_hidden_units: Sequence[int] = (), dnn_dropout: float = 0.0, batch_norm: bool = False,
                 use_wide: bool = False, dims: dict[str, int] | None = None, project_fields: bool = True,
                 init_std: float = 1e-4, mlp_init: str = "torch", attention_init: str = "xavier",
                 numeric_init: str = "xavier"):
        super().__init__()
        if attention_init not in ("torch", "xavier"):
            raise ValueError(f"unknown attention_init {attention_init!r}; use 'torch' or 'xavier'")
        if attention_layers < 1:
            raise ValueError(f"attention_layers must be >= 1, got {attention_layers}")
        self.embedding = FeatureEmbedding(features, embedding_dim=embedding_dim, dims=dims,
                                          project_to=embedding_dim if project_fields else None, init_std=init_std,
                                          embed_numeric=True, numeric_init=numeric_init)
        if not project_fields:
            wrong = {n: self.embedding.field_dims[n] for n in self.embedding.pooled_names
                     if self.embedding.field_dims[n] != embedding_dim}
            if wrong:
                raise ValueError(f"AutoInt attends over fields of one width; fields {wrong} are not "
                                 f"embedding_dim={embedding_dim} wide: drop their dims or set project_fields=True")
        self.attention_fields: list[str] = list(self.embedding.field_names)
        n_fields = len(self.attention_fields)
        if n_fields < 1:
            raise ValueError("AutoInt needs at least one pooled id field or numeric field")
        layers = []
        width = embedding_dim
        for _ in range(attention_layers):
            layers.append(InteractingLayer(width, num_heads=num_heads, head_dim=head_dim, residual=residual,
                                           use_scale=use_scale, qkv_relu=qkv_relu, layer_norm=layer_norm,
                                           attention_dropout=attention_dropout))
            width = layers[-1].out_dim
        self.interacting = nn.Sequential(*layers)
        self.output = nn.Linear(n_fields * width, 1)
        if attention_init == "xavier":  # FuxiCTR's init of every Linear: Xavier-normal weights, zero bias
            for layer in self.interacting:
                layer.reset_parameters_xavier()
            init_linears("xavier", self.output)
        self.dnn = (MLP(n_fields * embedding_dim, list(dnn_hidden_units), out_dim=1, dropout=dnn_dropout,
                        batch_norm=batch_norm, init=mlp_init) if dnn_hidden_units else None)
        self.wide = FirstOrder(features, init_std=init_std) if use_wide else None

    def field_embeddings(self, batch) -> torch.Tensor:
        """``E [B, F, D]``: pooled id fields (schema order), then numeric fields ``x * v``."""
        return self.embedding(batch).stack()

    def attention_logit(self, e: torch.Tensor) -> torch.Tensor:
        """The interacting layers and the output layer alone: ``E [B, F, D] -> [B]``."""
        for layer in self.interacting:  # drop the previous pass's kept q, k before this one allocates
            layer._qk = layer._attn = None
        return self.output(self.interacting(e).flatten(1)).squeeze(1)

    def forward(self, batch) -> ModelOutput:
        e = self.field_embeddings(batch)
        logit = self.attention_logit(e)
        if self.dnn is not None:
            logit = logit + self.dnn(e.flatten(1)).squeeze(1)
        if self.wide is not None:
            logit = logit + self.wide(batch)
        return ModelOutput(logits=logit)

    def attention_weights(self) -> torch.Tensor | None:
        """Attention of the last forward pass, ``[B, L, H, F, F]`` (query x key field, rows sum
        to 1), detached; ``None`` before the first forward. Fields: ``attention_fields``."""
        maps = [layer.last_attention for layer in self.interacting]
        if any(m is None for m in maps):
            return None
        return torch.stack(maps, dim=1)


class AutoIntPlus(AutoInt):
    """AutoInt+: :class:`AutoInt` with a DNN logit, ``dnn_hidden_units=(256, 128)`` by default.
    Arguments as :class:`AutoInt`; ``attention_init`` defaults to ``torch`` here (measured, see
    :class:`AutoInt`).

    >>> from recsys.data import CTRDataModule
    >>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
    >>> AutoIntPlus(dm.features, embedding_dim=4, head_dim=2).dnn is not None
    True
    """

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, attention_layers: int = 3,
                 num_heads: int = 2, head_dim: int = 32, residual: Residual = "project", use_scale: bool = False,
                 qkv_relu: bool = False, layer_norm: bool = False, attention_dropout: float = 0.0,
                 dnn_hidden_units: Sequence[int] = (256, 128), dnn_dropout: float = 0.0, batch_norm: bool = False,
                 use_wide: bool = False, dims: dict[str, int] | None = None, project_fields: bool = True,
                 init_std: float = 1e-4, mlp_init: str = "torch", attention_init: str = "torch",
                 numeric_init: str = "xavier"):
        if not dnn_hidden_units:
            raise ValueError("AutoIntPlus needs dnn_hidden_units; use AutoInt for the model without a DNN")
        super().__init__(features, embedding_dim=embedding_dim, attention_layers=attention_layers,
                         num_heads=num_heads, head_dim=head_dim, residual=residual, use_scale=use_scale,
                         qkv_relu=qkv_relu, layer_norm=layer_norm, attention_dropout=attention_dropout,
                         dnn_hidden_units=dnn_hidden_units, dnn_dropout=dnn_dropout, batch_norm=batch_norm,
                         use_wide=use_wide, dims=dims, project_fields=project_fields, init_std=init_std,
                         mlp_init=mlp_init, attention_init=attention_init, numeric_init=numeric_init)

"""Mixture-of-experts rankers: AW-MoE (attention-weighted gate + contrastive loss) and plain MoE.

Notation: B = batch, F = number of fields (pooled id fields + numeric fields), D = embedding
width, L = behaviour-sequence length (the schema's ``max_len``), N = number of experts,
H = the experts' last hidden width.

**AW-MoE** (Gong et al., ICDE 2023, arXiv 2306.05011). Only the abstract is public (see
``shared/specs/PAPERS.md`` section 3); this module implements the spec's "implementable
reading", and every choice the abstract leaves open is listed in :class:`AWMoE`'s docstring
with what we chose. In short::

    E [B, F, D]       field embeddings (target item included; the history is *not* pooled)
    b [B, L, D], m    behaviour sequence (shares the target item's table) and its mask
    t [B, D]          target item embedding
    a_j  = ActivationUnit([b_j, t, b_j - t, b_j * t])        [B, L]  (DIN local activation)
    α    = softmax of a over the real behaviours (mask m)    [B, L]
    u_j  = W_g b_j                                            [B, L, N] (gate unit)
    z    = Σ_j α_j u_j + c = W_g s + c                        [B, N]  gate logits (computed as W_g s)
    g    = softmax(z)                                         [B, N]  expert weights
    s    = Σ_j α_j b_j                                        [B, D]  behaviour summary
    x    = [flatten(E), s]                                    [B, F*D + D]
    logit = Tower(Σ_n g_n Expert_n(x))                        [B]

In training, a second view of the sequence drops each real behaviour with probability
``mask_rate`` (a simulated long-tail user); its gate logits ``z'`` reuse ``a`` and ``u`` (they
depend on each behaviour alone) with the smaller mask. The aux loss is
``cl_weight * InfoNCE(z, z')`` with in-batch negatives; it is returned only when
``self.training``.

**MoE** is the ablation baseline: the same experts and tower, but the gate is
``softmax(MLP(x))`` over the flattened field embeddings, with the history mean-pooled as one
more field (one-task MMoE, Ma et al. 2018, as FuxiCTR's MMoE with one task).

>>> from recsys.data import CTRDataModule
>>> dm = CTRDataModule(dataset_options={"n_rows": 1000}, batch_size=8); dm.setup("fit")
>>> batch = next(iter(dm.train_dataloader()))
>>> model = AWMoE(dm.features, embedding_dim=4, expert_units=[8], n_experts=3)
>>> out = model(batch)
>>> out.logits.shape, sorted(out.aux_losses), out.extras["gate"].shape
(torch.Size([8]), ['contrastive'], torch.Size([8, 3]))
>>> _ = model.eval(); sorted(model(batch).aux_losses)
[]
>>> g = MoE(dm.features, embedding_dim=4, expert_units=[8]).gate_weights(batch)
>>> g.shape, torch.allclose(g.sum(1), torch.ones(8))
(torch.Size([8, 4]), True)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.data.preprocess import FeatureEncoder
from recsys.models.base import ModelOutput, RankingModel
from recsys.models.embedding import FeatureEmbedding, resolve_sequence_target
from recsys.models.layers import MLP, ActivationUnit, last_k, masked_softmax  # noqa: F401 - re-exported
from recsys.models.sdim import SDIMAttention

__all__ = ["AWMoE", "MoE", "ActivationUnit", "MixtureOfExperts", "info_nce", "masked_softmax",
           "random_behaviour_mask", "random_keep_mask"]


# ------------------------------------------------------------------------------------ functions
def random_behaviour_mask(mask: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The masked view's mask: each real behaviour (``mask`` True) is dropped independently with
    probability ``rate``; padding stays padding. Shapes ``[B, L] -> [B, L]`` (bool).

    A row may lose every behaviour (probability ``rate ** length``): it then looks like a user
    without history, the extreme long-tail case.

    >>> m = torch.tensor([[True, True, False]])
    >>> random_behaviour_mask(m, 0.0).tolist(), random_behaviour_mask(m, 1.0).tolist()
    ([[True, True, False]], [[False, False, False]])
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"mask rate must be in [0, 1], got {rate}")
    keep = torch.rand(mask.shape, generator=generator, device=mask.device) >= rate
    return mask & keep


def random_keep_mask(mask: torch.Tensor, max_keep: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A long-tail-looking view: each row keeps ``k`` of its real behaviours (``mask`` True),
    ``k`` drawn uniformly from ``1..max_keep`` per row (all of them when the row has fewer),
    chosen uniformly at random; padding stays padding. Shapes ``[B, L] -> [B, L]`` (bool).

    >>> m = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    >>> kept = random_keep_mask(m, 3, torch.Generator().manual_seed(0))
    >>> bool((kept & ~m).any()), 1 <= int(kept[0].sum()) <= 3, int(kept[1].sum()) <= 2
    (False, True, True)
    """
    if max_keep < 1:
        raise ValueError(f"max_keep must be >= 1, got {max_keep}")
    B, L = mask.shape
    k = torch.randint(1, max_keep + 1, (B, 1), generator=generator, device=mask.device)       # [B, 1]
    noise = torch.rand(mask.shape, generator=generator, device=mask.device).masked_fill(~mask, 2.0)
    rank = noise.argsort(dim=1).argsort(dim=1)                       # 0 = the smallest noise, real first
    return mask & (rank < k)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float = 0.1,
             similarity: str = "cosine", groups: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row ``i`` of ``anchor`` should match row ``i`` of
    ``positive`` among all rows ``k`` of ``positive``::

        L = mean_i  -log( exp(sim(a_i, p_i) / τ) / Σ_k exp(sim(a_i, p_k) / τ) )

    Shapes ``[B, N], [B, N] -> scalar``. ``similarity``: ``cosine`` (default) or ``dot``.
    The lower bound is 0 only in the limit; with ``B`` rows a loss of ``log(B)`` means the
    positives are no closer than the negatives. ``groups`` ``[B]`` (e.g. user ids): rows of the
    same group as row ``i`` (other than ``i`` itself) are removed from its negatives, since they
    are not true negatives (the same user's other rows).

    >>> g = torch.eye(4)
    >>> bool(info_nce(g, g) < info_nce(g, g[[1, 2, 3, 0]]))
    True
    >>> round(float(info_nce(g, g, groups=torch.tensor([0, 0, 0, 0]))), 6)  # no negatives left
    0.0
    """
    if similarity == "cosine":
        anchor, positive = F.normalize(anchor, dim=1), F.normalize(positive, dim=1)
    elif similarity != "dot":
        raise ValueError(f"unknown similarity {similarity!r}; use 'cosine' or 'dot'")
    logits = anchor @ positive.T / temperature
    if groups is not None:
        same = groups.unsqueeze(0) == groups.unsqueeze(1)
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


# --------------------------------------------------------------------------------------- layers
class MixtureOfExperts(nn.Module):
    """``N`` expert MLPs over the same input, mixed by given gate weights, then a tower.

    Shapes ``x [B, I], gate [B, N] -> logits [B]``: ``Tower(Σ_n gate_n * Expert_n(x))`` where
    each expert maps ``I -> H`` and the tower ``H -> ... -> 1``. With ``tower_units=()`` the tower
    is one linear layer, so (gates summing to 1) this equals ``Σ_n g_n E_n(x)`` with scalar
    experts that share their output layer.

    >>> moe = MixtureOfExperts(6, n_experts=3, expert_units=[8])
    >>> moe(torch.zeros(2, 6), torch.full((2, 3), 1 / 3)).shape
    torch.Size([2])
    """

    def __init__(self, in_dim: int, n_experts: int = 4, expert_units: Sequence[int] = (256, 128),
                 tower_units: Sequence[int] = (), dropout: float = 0.0, batch_norm: bool = False,
                 init: str = "torch"):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if not expert_units:
            raise ValueError("expert_units must name at least one hidden layer")
        self.experts = nn.ModuleList(
            MLP(in_dim, list(expert_units), dropout=dropout, batch_norm=batch_norm, init=init) for _ in range(n_experts))
        self.tower = MLP(expert_units[-1], list(tower_units), out_dim=1, dropout=dropout, batch_norm=batch_norm,
                         init=init)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``gate`` ``[B, N]`` (one weight per expert) or ``[B, N, H]`` (one per expert and
        hidden unit)."""
        h = torch.stack([e(x) for e in self.experts], dim=1)       # [B, N, H]
        mixed = ((gate.unsqueeze(-1) if gate.dim() == 2 else gate) * h).sum(dim=1)  # [B, H]
        return self.tower(mixed).squeeze(-1)


def _normalise_gate(z: torch.Tensor, how: str) -> torch.Tensor:
    """``z [B, N]`` or ``[B, N, H]``: softmax over the experts (axis 1) or an element-wise sigmoid."""
    return torch.softmax(z, dim=1) if how == "softmax" else torch.sigmoid(z)


# ---------------------------------------------------------------------------------------- models
class AWMoE(RankingModel):
    """AW-MoE: mixture of experts whose gate is target attention over the behaviour sequence,
    trained with an InfoNCE loss between the gates of the full and a randomly masked sequence.

    Shapes (see the module docstring for the formulas): field embeddings ``E [B, F, D]``,
    sequence ``[B, L, D]`` + mask ``[B, L]``, target ``[B, D]``; expert input
    ``[B, F*D + D]`` (one more ``D`` per extra summary); gate ``[B, N]``; output ``logits [B]``,
    ``aux_losses["contrastive"]`` (training only, already multiplied by ``cl_weight``),
    ``extras["gate"] [B, N]`` (expert weights; ``[B, N, H]`` with ``gate_granularity="unit"``),
    ``extras["attention"] [B, L]`` (α, zeros on
    padding; ``[B, k]`` with ``gate_window=k``) and, with ``long_hashes``,
    ``extras["long_interest"] [B, D]``.

    Choices the paper's public text leaves open, and ours:

    * **Activation unit**: DIN's ``MLP([b, t, b - t, b * t])`` (``attention_units``, ReLU by
      default; DIN used Dice/PReLU, ``attention_activation="prelu"`` is close). Its scores are
      normalised by a **softmax over the real behaviours** (DIN leaves them unnormalised); so
      the gate and the summary do not grow with the history length, and the masked view is
      comparable with the full one.
    * **Gate unit**: a bias-free linear map ``u_j = W_g b_j`` (``[B, L, N]``), one score per
      expert per behaviour; the gate logits are ``z = Σ_j α_j u_j + c`` (computed as
      ``W_g s + c`` with the summary ``s = Σ_j α_j b_j``: the same value) with a learned per-expert
      prior ``c``, which is the whole gate for a user without history.
    * **Normalisation**: ``gate_normalization="softmax"`` (default; the weights sum to 1 over the
      experts) or ``"sigmoid"`` (each weight in (0, 1) independently, no sum constraint).
    * **Granularity**: ``gate_granularity="expert"`` (default): one weight per expert, ``z``
      ``[B, N]``. ``"unit"``: the abstract's "fine-grained activation vector" read as one weight
      per expert *and* hidden unit of the experts' last layer: the gate unit maps each behaviour
      to ``u_j [N*H]``, ``z [B, N, H]`` is normalised over the experts for each unit, and the
      mixture is ``Σ_n g_n ⊙ h_n``. The contrastive loss then compares ``N*H``-dimensional
      vectors instead of ``N``-dimensional ones (with N = 4, InfoNCE against a batch of
      negatives has little room to separate rows in 3 centred dimensions).
    * **Other features in the gate**: off by default (the abstract feeds the gate the behaviour
      sequence); ``gate_features=True`` adds a linear map of ``flatten(E)`` to ``z``.
    * **Experts' view of the sequence**: ``expert_history="attention"`` (default) appends the
      attention-weighted summary ``s = Σ_j α_j b_j`` (the same α as the gate) to the flattened
      field embeddings; ``"mean"`` appends the plain mean of the real behaviours instead, and
      ``"both"`` appends both (``[B, F*D + 2D]``). The softmax-normalised summary forgets how
      long the history is; the mean keeps the user's general taste next to the target-specific
      summary. The target item and
      every other id field are fields of ``E``; numeric fields are embedded as ``x * v``.
    * **Long histories** (off by default): ``gate_window=k`` restricts the activation unit, the
      gate and the attention summary (and the masked view) to the last ``k`` real behaviours,
      so a history of hundreds of items costs O(k) attention per row; ``long_hashes=m`` adds
      SDIM's hashing-based long-term interest (:class:`recsys.models.sdim.SDIMAttention`,
      ``m`` hashes of ``long_tau`` bits, ``long_normalization``, fixed projection seeded by
      ``hash_seed``) over the *whole* sequence as one more ``[B, D]`` expert input. The gate
      stays target attention over recent behaviour; the experts see the long-term taste.
    * **Experts and tower**: each expert an MLP ``expert_units``; their last hidden vectors are
      mixed by the gate and a tower (``tower_units`` then a linear layer) gives the logit.
    * **Masking**: each real behaviour is dropped independently with probability ``mask_rate``
      (default 0.3), for every row, fresh each step; dropped behaviours leave the softmax over
      behaviours (no [MASK] token). A row can lose all behaviours.
    * **Contrastive target**: ``contrast_on="logits"`` (default) contrasts the gate logits
      centred over the experts (for the softmax gate, the log of the weights up to a constant,
      so identical weights give identical vectors); ``"weights"`` contrasts the normalised
      weights, which for N = 4 are nearly collinear positive vectors and separate rows poorly.
    * **InfoNCE**: anchor = full view, positives/negatives = masked views of the batch's rows
      (one direction, as the spec's formula), ``similarity="cosine"`` (or ``"dot"``),
      ``temperature`` τ = 0.1 by default, gradients through both views by default
      (``detach_full=True`` stops the gradient at the full view, so the loss only teaches the
      masked, long-tail-like view to find its own full-history gate). Rows whose full
      sequence is empty are left out (their two views are the same constant prior, which
      carries no signal and would count as false negatives); with fewer than 2 rows left the
      loss is 0.
    * **Which view feeds the BCE**: only the full view by default (training and inference see
      the same model); ``masked_click_weight=w > 0`` adds ``w * BCE`` of the masked view (its own
      gate and attention summary over the kept behaviours, the same experts and tower) as
      ``aux_losses["masked_click"]``, so the model also learns to rank with few behaviours.
    * **Long-tail-looking views** (issue 19): ``mask_keep=k > 0`` replaces the per-behaviour
      drop by keeping a random ``1..k`` of each row's behaviours (a user with at most ``k``
      behaviours, whatever the full length); ``mask_rate`` up to 0.9 also gives short views.
    * **Alignment-only losses**: ``cl_loss="mse"`` (mean squared difference of the centred gate
      logits, or of the weights with ``contrast_on="weights"``) or ``"kl"`` (``KL(g || g')``
      of the softmax over the experts) pull the masked view's gate toward the full view's gate
      held fixed (stop-gradient on the full view, always): no push-apart term. ``"infonce"``
      (default) is the contrastive loss above; ``exclude_same_user=True`` removes the rows of
      the same user (``batch.user_ids``) from each row's InfoNCE negatives.
    * **Weight**: ``cl_weight`` λ = 0.1 by default; the task adds ``λ · L_cl`` to the BCE.

    Measured (issue 19, ``experiments/bench/README.md``, 3 seeds, trained to early stopping,
    AUC overall and with each row's history cut to its last 3 behaviours, ``recsys report
    --history-cap``): ``experiments/aw_moe_ml100k.yaml`` ships ``cl_weight: 0``. InfoNCE on
    90%-masked views (``mask_rate=0.9``, λ = 0.01) lifts the synthetic long-tail set far above
    the MoE ablation (+0.092 overall, +0.058 at cap 3), but on ml100k-ctr it is at MoE's level
    (-0.0007 overall, -0.0002 at cap 3), below the issue's bar (>= MoE + 0.002 at cap 3), which
    no variant meets there (the best, ``cl_loss="kl"`` on ``mask_keep=10`` views: +0.0007 at
    cap 3, and below MoE at cap 3 on the synthetic set). So the extra losses are options, not
    the default.

    Args:
        features: fitted FeatureEncoder; its schema needs a ``sequence`` field that shares the
            target item's table.
        embedding_dim: D (other table widths in ``dims`` are projected to D).
        n_experts: N.
        expert_units: hidden widths of each expert MLP (the last is H).
        tower_units: hidden widths of the tower after the mixture (``()``: one linear layer).
        expert_history: the sequence summary the experts see: ``attention``, ``mean`` or ``both``.
        attention_units: hidden widths of the activation unit.
        attention_activation: activation of the activation unit (``relu``, ``prelu``, ...).
        sequence_field: the behaviour sequence (default: the schema's first sequence field).
        target_field: the target item field (default: the field whose table the sequence shares).
        gate_normalization: ``softmax`` or ``sigmoid``.
        gate_features: also feed ``flatten(E)`` to the gate.
        mask_rate: probability of dropping each behaviour in the masked view, in [0, 1).
        temperature: InfoNCE τ > 0.
        cl_weight: λ >= 0 (0: no contrastive loss).
        similarity: ``cosine`` or ``dot``.
        contrast_on: ``logits`` (centred gate logits) or ``weights``.
        detach_full: stop the contrastive gradient at the full view.
        cl_loss: ``infonce`` (contrastive), ``mse`` or ``kl`` (alignment only, full view fixed).
        mask_keep: k > 0: the masked view keeps a random 1..k behaviours per row (0: use
            ``mask_rate``).
        exclude_same_user: InfoNCE without same-user negatives (needs the schema's user key).
        masked_click_weight: w >= 0: add ``w * BCE`` of the masked view (not with ``long_hashes``).
        gate_granularity: ``expert`` (one weight per expert) or ``unit`` (per expert and unit).
        gate_window: k > 0: the gate attends over the last k behaviours only (0: all L).
        long_hashes: m > 0: add SDIM's long-term interest over all L to the experts' input.
        long_tau, long_normalization, hash_seed: of that SDIM long-term interest.
        dropout, batch_norm, mlp_init: of the expert and tower MLPs.
        dims: table -> width overrides.
        init_std: std of the N(0, std^2) embedding init.
        numeric_init: ``embedding`` (default) or ``xavier`` (FuxiCTR's): how the numeric fields'
            vectors are drawn; see :class:`~recsys.models.embedding.FeatureEmbedding`. Not measured
            for AW-MoE (it needs a history, which Adult and the wide table lack); plain MoE's
            default is ``embedding`` too.
    """

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, n_experts: int = 4,
                 expert_units: Sequence[int] = (256, 128), tower_units: Sequence[int] = (),
                 attention_units: Sequence[int] = (64, 32), attention_activation: str = "relu",
                 sequence_field: str | None = None, target_field: str | None = None,
                 gate_normalization: str = "softmax", gate_features: bool = False,
                 mask_rate: float = 0.3, temperature: float = 0.1, cl_weight: float = 0.1,
                 similarity: str = "cosine", contrast_on: str = "logits", detach_full: bool = False,
                 expert_history: str = "attention", gate_granularity: str = "expert",
                 gate_window: int = 0, long_hashes: int = 0, cl_loss: str = "infonce",
                 mask_keep: int = 0, exclude_same_user: bool = False, masked_click_weight: float = 0.0,
                 long_tau: int = 3, long_normalization: str = "l2", hash_seed: int = 0,
                 dropout: float = 0.0, batch_norm: bool = False, mlp_init: str = "torch",
                 dims: dict[str, int] | None = None, init_std: float = 1e-4, numeric_init: str = "embedding"):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if expert_history not in ("attention", "mean", "both"):
            raise ValueError(f"expert_history must be 'attention', 'mean' or 'both', got {expert_history!r}")
        if gate_granularity not in ("expert", "unit"):
            raise ValueError(f"gate_granularity must be 'expert' or 'unit', got {gate_granularity!r}")
        if not expert_units:
            raise ValueError("expert_units must name at least one hidden layer")
        self.gate_granularity = gate_granularity
        self.n_experts = n_experts
        gate_width = n_experts * (expert_units[-1] if gate_granularity == "unit" else 1)  # N or N*H
        if gate_window < 0:
            raise ValueError(f"gate_window must be >= 0 (0: the whole sequence), got {gate_window}")
        if long_hashes < 0:
            raise ValueError(f"long_hashes must be >= 0 (0: no long-term interest), got {long_hashes}")
        if cl_loss not in ("infonce", "mse", "kl"):
            raise ValueError(f"cl_loss must be 'infonce', 'mse' or 'kl', got {cl_loss!r}")
        if cl_loss == "kl" and gate_normalization != "softmax":
            raise ValueError("cl_loss='kl' compares softmax gates; use gate_normalization='softmax' or cl_loss='mse'")
        if mask_keep < 0:
            raise ValueError(f"mask_keep must be >= 0 (0: drop behaviours with mask_rate), got {mask_keep}")
        if masked_click_weight < 0:
            raise ValueError(f"masked_click_weight must be >= 0, got {masked_click_weight}")
        if masked_click_weight > 0 and long_hashes:
            raise ValueError("masked_click_weight > 0 is not supported with long_hashes > 0 "
                             "(the masked view would still see the long-term interest of the whole sequence)")
        if exclude_same_user and not features.schema.keys.get("user"):
            raise ValueError("exclude_same_user=True needs a user key in the schema (keys: {user: COLUMN})")
        self.cl_loss, self.mask_keep = cl_loss, mask_keep
        self.exclude_same_user, self.masked_click_weight = exclude_same_user, masked_click_weight
        self.expert_history = expert_history
        self.detach_full = detach_full
        self.gate_window = gate_window
        schema = features.schema
        sequence_field, target_field = resolve_sequence_target(schema, sequence_field, target_field, "AWMoE")
        if gate_normalization not in ("softmax", "sigmoid"):
            raise ValueError(f"gate_normalization must be 'softmax' or 'sigmoid', got {gate_normalization!r}")
        if contrast_on not in ("logits", "weights"):
            raise ValueError(f"contrast_on must be 'logits' or 'weights', got {contrast_on!r}")
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")
        if not 0.0 <= mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in [0, 1), got {mask_rate}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if cl_weight < 0:
            raise ValueError(f"cl_weight must be >= 0, got {cl_weight}")
        self.sequence_field, self.target_field = sequence_field, target_field
        self.gate_normalization, self.contrast_on, self.similarity = gate_normalization, contrast_on, similarity
        self.mask_rate, self.temperature, self.cl_weight = mask_rate, temperature, cl_weight
        self.embedding = FeatureEmbedding(features, embedding_dim=embedding_dim, dims=dims, unpooled=[sequence_field],
                                          project_to=embedding_dim, init_std=init_std, embed_numeric=True,
                                          numeric_init=numeric_init)
        n_fields = len(self.embedding.field_names)
        self.activation = ActivationUnit(embedding_dim, attention_units, attention_activation)
        self.gate_unit = nn.Linear(embedding_dim, gate_width, bias=False)
        self.gate_prior = nn.Parameter(torch.zeros(gate_width))
        self.gate_fields = nn.Linear(n_fields * embedding_dim, gate_width, bias=False) if gate_features else None
        n_summaries = 2 if expert_history == "both" else 1
        self.long = None
        if long_hashes:
            self.long = SDIMAttention(embedding_dim, long_hashes, long_tau, long_normalization, hash_seed)
            n_summaries += 1
        self.moe = MixtureOfExperts((n_fields + n_summaries) * embedding_dim, n_experts, expert_units, tower_units,
                                    dropout=dropout, batch_norm=batch_norm, init=mlp_init)

    def field_embeddings(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``E [B, F, D]``, sequence ``[B, L, D]``, mask ``[B, L]``, target ``[B, D]``."""
        emb = self.embedding(batch)
        seq, mask = emb.sequences[self.sequence_field]
        return emb.stack(), seq, mask, emb.pooled[self.target_field]

    def _gate_logits(self, scores: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor,
                     field_logits: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate logits ``z``, attention ``α [B, L]`` and summary ``s = Σ_j α_j b_j [B, D]``.

        ``Σ_j α_j (W_g b_j) = W_g (Σ_j α_j b_j)`` (the gate unit is linear and bias-free), so the
        gate unit is applied once to the summary, not to each of the L behaviours: O(B D N)
        instead of O(B L D N) (``N*H`` for the fine-grained gate)."""
        alpha = masked_softmax(scores, mask)                          # [B, L]
        summary = (alpha.unsqueeze(-1) * seq).sum(dim=1)              # [B, D]
        z = self.gate_unit(summary) + self.gate_prior                 # [B, N] or [B, N*H]
        if field_logits is not None:
            z = z + field_logits
        if self.gate_granularity == "unit":
            z = z.view(len(z), self.n_experts, -1)                    # [B, N, H]
        return z, alpha, summary

    def _expert_input(self, flat: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor, summary: torch.Tensor,
                      long: torch.Tensor | None) -> torch.Tensor:
        """``[flatten(E), s (and/or the mean of the real behaviours), long]`` ``[B, F*D + k*D]``."""
        parts = [flat]
        if self.expert_history in ("attention", "both"):
            parts.append(summary)                                      # [B, D] attention summary
        if self.expert_history in ("mean", "both"):
            count = mask.sum(dim=1, keepdim=True).clamp(min=1)
            parts.append((seq * mask.unsqueeze(-1)).sum(dim=1) / count)  # [B, D] mean of behaviours
        if long is not None:
            parts.append(long)                                         # [B, D] SDIM long-term interest
        return torch.cat(parts, dim=1)

    def masked_view(self, mask: torch.Tensor) -> torch.Tensor:
        """The second view's mask ``[B, L]``: a random 1..``mask_keep`` behaviours per row, or each
        behaviour dropped with probability ``mask_rate``."""
        if self.mask_keep:
            return random_keep_mask(mask, self.mask_keep)
        return random_behaviour_mask(mask, self.mask_rate)

    def forward_embedded(self, e: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor,
                         target: torch.Tensor, users: torch.Tensor | None = None,
                         labels: torch.Tensor | None = None) -> ModelOutput:
        """The model after the embedding lookup (shapes as :meth:`field_embeddings`).

        Padded positions (``mask`` False) are zeroed first, so whatever they hold never reaches
        the output. ``users`` ``[B]`` (for ``exclude_same_user``) and ``labels`` ``[B]`` (for
        ``masked_click_weight``) are used in training only."""
        seq = seq.masked_fill(~mask.unsqueeze(-1), 0.0)
        flat = e.flatten(1)                                           # [B, F*D]
        long = self.long(seq, mask, target) if self.long is not None else None  # [B, D] over all L
        if self.gate_window:
            seq, mask = last_k(seq, mask, self.gate_window)           # [B, k, D]: the gate's window
        scores = self.activation(seq, target)                         # [B, L]
        field_logits = self.gate_fields(flat) if self.gate_fields is not None else None
        z, alpha, summary = self._gate_logits(scores, seq, mask, field_logits)
        gate = _normalise_gate(z, self.gate_normalization)
        logits = self.moe(self._expert_input(flat, seq, mask, summary, long), gate)
        extras = {"gate": gate, "attention": alpha}
        if long is not None:
            extras["long_interest"] = long
        out = ModelOutput(logits=logits, extras=extras)
        if self.training and (self.cl_weight > 0 or self.masked_click_weight > 0):
            masked = self.masked_view(mask)
            z2, _, summary2 = self._gate_logits(scores, seq, masked, field_logits)
            if self.cl_weight > 0:
                out.aux_losses["contrastive"] = self.cl_weight * self.contrastive_loss(z, z2, mask.any(dim=1), users)
            if self.masked_click_weight > 0:
                if labels is None:
                    raise ValueError("masked_click_weight > 0 needs the labels in training (forward(batch) passes them)")
                logits2 = self.moe(self._expert_input(flat, seq, masked, summary2, long),
                                   _normalise_gate(z2, self.gate_normalization))
                out.aux_losses["masked_click"] = self.masked_click_weight * F.binary_cross_entropy_with_logits(
                    logits2, labels.to(logits2.dtype))
        return out

    def contrastive_loss(self, z: torch.Tensor, z_masked: torch.Tensor, rows: torch.Tensor,
                         users: torch.Tensor | None = None) -> torch.Tensor:
        """The gate loss between the two views (``[B, N]`` or ``[B, N, H]`` logits each) over
        ``rows`` (``[B]`` bool: rows with a non-empty sequence): InfoNCE (``users`` ``[B]``: the
        same user's rows are not negatives with ``exclude_same_user``), or the alignment-only
        MSE / KL toward the detached full view; 0 when fewer than 2 rows qualify."""
        if int(rows.sum()) < 2:
            return z.sum() * 0.0
        a, p = z[rows], z_masked[rows]
        if self.cl_loss == "kl":  # KL(g_full || g_masked) over the experts (axis 1), full view fixed
            log_a, log_p = F.log_softmax(a.detach(), dim=1), F.log_softmax(p, dim=1)
            return (log_a.exp() * (log_a - log_p)).sum(dim=1).mean()
        if self.detach_full or self.cl_loss == "mse":
            a = a.detach()
        if self.contrast_on == "logits":  # centred over the experts (axis 1), per unit for "unit"
            a, p = a - a.mean(dim=1, keepdim=True), p - p.mean(dim=1, keepdim=True)
        else:
            a, p = _normalise_gate(a, self.gate_normalization), _normalise_gate(p, self.gate_normalization)
        if self.cl_loss == "mse":
            return (a - p).pow(2).flatten(1).sum(dim=1).mean()
        groups = None
        if self.exclude_same_user:
            if users is None:
                raise ValueError("exclude_same_user=True needs batch.user_ids (the schema's user key)")
            groups = users[rows]
        return info_nce(a.flatten(1), p.flatten(1), self.temperature, self.similarity, groups)

    def forward(self, batch) -> ModelOutput:
        return self.forward_embedded(*self.field_embeddings(batch), users=getattr(batch, "user_ids", None),
                                     labels=getattr(batch, "labels", None))

    @torch.no_grad()
    def gate_weights(self, batch) -> torch.Tensor:
        """Expert weights of the full sequence, ``[B, N]`` (``[B, N, H]`` for
        ``gate_granularity="unit"``); softmax: they sum to 1 over the experts (axis 1)."""
        return self.forward(batch).extras["gate"]


class MoE(RankingModel):
    """Plain softmax-gated mixture of experts (one-task MMoE): the AW-MoE ablation baseline.

    ``x = flatten(E)`` with ``E [B, F, D]`` every id field pooled (the behaviour sequence
    mean-pooled as one field, as the schema says) plus numeric fields as ``x * v``;
    ``g = softmax(GateMLP(x))`` ``[B, N]`` (rows sum to 1; ``gate_units=()`` is a linear gate);
    ``logits = Tower(Σ_n g_n Expert_n(x))`` ``[B]``. No auxiliary loss. ``extras["gate"]``
    holds ``g``.

    Args:
        features: fitted FeatureEncoder.
        embedding_dim: D.
        n_experts: N.
        expert_units: hidden widths of each expert MLP.
        tower_units: hidden widths of the tower (``()``: one linear layer).
        gate_units: hidden widths of the gate MLP (``()``: linear).
        dropout, batch_norm, mlp_init: of the expert and tower MLPs.
        dims: table -> width overrides (projected to D).
        init_std: std of the N(0, std^2) embedding init.
        numeric_init: ``embedding`` (default) or ``xavier`` (FuxiCTR's): how the numeric fields'
            vectors are drawn; see :class:`~recsys.models.embedding.FeatureEmbedding`. Measured
            (valid AUC, 3 seeds, ``init_defaults.py --option numeric_init --max-epochs 30``):
            ``xavier`` -0.0006 on Adult, +0.0041 on the wide table; not better on both, so the
            default stays ``embedding``.
    """

    def __init__(self, features: FeatureEncoder, embedding_dim: int = 16, n_experts: int = 4,
                 expert_units: Sequence[int] = (256, 128), tower_units: Sequence[int] = (),
                 gate_units: Sequence[int] = (), dropout: float = 0.0, batch_norm: bool = False,
                 mlp_init: str = "torch", dims: dict[str, int] | None = None, init_std: float = 1e-4,
                 numeric_init: str = "embedding"):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        self.embedding = FeatureEmbedding(features, embedding_dim=embedding_dim, dims=dims,
                                          project_to=embedding_dim, init_std=init_std, embed_numeric=True,
                                          numeric_init=numeric_init)
        in_dim = len(self.embedding.field_names) * embedding_dim
        self.gate = MLP(in_dim, list(gate_units), out_dim=n_experts)
        self.moe = MixtureOfExperts(in_dim, n_experts, expert_units, tower_units, dropout=dropout,
                                    batch_norm=batch_norm, init=mlp_init)

    def field_embeddings(self, batch) -> torch.Tensor:
        """``E [B, F, D]``: id fields (schema order) then numeric fields."""
        return self.embedding(batch).stack()

    def forward(self, batch) -> ModelOutput:
        x = self.field_embeddings(batch).flatten(1)
        gate = torch.softmax(self.gate(x), dim=-1)
        return ModelOutput(logits=self.moe(x, gate), extras={"gate": gate})

    @torch.no_grad()
    def gate_weights(self, batch) -> torch.Tensor:
        """Expert weights ``[B, N]``; each row sums to 1."""
        return self.forward(batch).extras["gate"]

"""VBPR (He & McAuley, AAAI 2016, "VBPR: Visual Bayesian Personalized Ranking from Implicit
Feedback"), after the paper's Section "The VBPR model".

Preference predictor (the paper's Eq. 2, without the terms that cancel in a BPR difference):

    x_ui = beta_i + gamma_u . gamma_i + theta_u . (E f_i) + beta' . f_i

* ``gamma_u``, ``gamma_i``: latent (ID) factors of size K = ``embedding_dim``;
* ``theta_u``: the user's visual factors of size K' = ``visual_dim``;
* ``E``: the K' x F embedding of the raw item features f_i (no bias, as in the paper);
* ``beta_i``: the item bias (``item_bias``), ``beta'``: the visual bias vector
  (``feature_bias``), both initialised at 0.
The global offset alpha and the user bias beta_u are the same for the positive and the negative
item of a pair, so they cancel in x_uij = x_ui - x_uj and are left out (they would not change any
ranking either).

Scores are inner products of u = [gamma_u, theta_u, 1] and i = [gamma_i, E f_i,
beta_i + beta' . f_i]: ``final_embeddings`` returns these, so the shared full-ranking scorer and a
denoiser's distillation see exactly the predictor above.

Loss: per-sample BPR -log sigmoid(x_ui - x_uj) (softplus form) as the main term; auxiliary
``reg`` = ``reg_weight`` (lambda_Theta) times the L2 term of the batch's rows (gamma_u, theta_u,
gamma_i, gamma_j, beta_i, beta_j; 0.5 * squared norms / batch size, as every backbone here), and
``proj_reg`` = ``proj_reg_weight`` (lambda_E) times 0.5 * (||E||^2 + ||beta'||^2).

Several modalities. The paper has one (visual) feature vector per item. With M modalities the
raw feature rows are concatenated, f_i = [f_i^1, ..., f_i^M] (in the dataset's modality order),
and one E maps the concatenation. This is exactly the sum of one projection per modality,
E f_i = sum_m E_m f_i^m with E = [E_1 ... E_M], so both readings of "VBPR on several modalities"
are the same model; 1, 2 or 3 (or more) modalities all work. The features are used raw, as in
the paper (no centring or scaling).

Batch representations for a denoiser. The representations are a deterministic function of the
parameters (no propagation, no randomness), and projecting the whole catalogue every step would
cost n_items x F x K' for nothing when no denoiser asks (F = 4480 on the Amazon sets). So
``losses`` remembers the batch and computes each x_ui - x_uj directly, projecting the feature
differences f_i - f_j (E and beta' are linear, so E f_i - E f_j = E (f_i - f_j): half the
arithmetic of projecting both items, the same model); the full, differentiable
representations of that step are built on the first ``batch_embeddings(batch)`` call of the step
and reused by later calls, so a distillation term still joins the same backward.

Feature scale. The default lambda_E = 0.01 departs from the authors, who leave E and beta'
unregularised (the TVBPR paper, WWW 2016; they trained with SGD on sparse, non-negative CNN
features), and follows the reference toolbox's behaviour (MMRec's VBPR penalises the batch's
projected item embeddings). With Adam, every entry of E moves at the learning rate whatever its
gradient, so on large raw features without a penalty the visual term theta_u . E f_i grows much
faster than the ID term and the model fits the training pairs through the features alone: on
TikTok (raw 128-d image rows of norm ~33) test Recall@20 is 0.0230 on average over seeds 0-2 with
lambda_E = 0, below MF's 0.048, and 0.0512 with 0.01 (paired +0.0282 ± 0.0033); on MicroLens
(unit-norm text embeddings) 0.0393 vs 0.0391 on seed 0 (docs/backbones.md). ``proj_reg_weight=0``
gives the paper's unregularised projection.

Deviations from the paper: Adam on mini-batches (the trainer's optimiser) instead of SGD with
bootstrap sampling; the L2 terms are scaled per batch like the other backbones here; K and K'
default to 64 each (the code base's common size; the paper compares at small equal splits of
K + K'); multi-modal features are concatenated (above).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from .losses import bpr_terms, l2_reg


@dataclass
class VBPRConfig(BackboneConfig):
    name: str = "vbpr"
    embedding_dim: int = 64
    visual_dim: int = 64
    reg_weight: float = 1e-4
    proj_reg_weight: float = 0.01
    item_bias: bool = True
    feature_bias: bool = True

    def check(self) -> None:
        super().check()
        require_at_least(self, 1, "embedding_dim", "visual_dim")
        require_at_least(self, 0, "reg_weight", "proj_reg_weight")


def concatenated_features(data: Interactions) -> torch.Tensor:
    """The dataset's modality features side by side (modality order of the dataset), float32."""
    parts = []
    for m, f in data.features.items():
        f = torch.as_tensor(f, dtype=torch.float32)
        if f.ndim != 2 or f.shape[0] != data.n_items:
            raise ValueError(f"features '{m}' have shape {tuple(f.shape)} for {data.n_items} items")
        parts.append(f)
    return torch.cat(parts, dim=1)


@BACKBONES.register("vbpr", VBPRConfig)
class VBPR(Backbone):
    uses_features = True

    def __init__(self, cfg: VBPRConfig, data: Interactions):
        super().__init__(cfg, data)
        feats = concatenated_features(data)
        self.register_buffer("feats", feats.to(self.feature_dtype), persistent=False)
        k, kv = cfg.embedding_dim, cfg.visual_dim
        self.init_id_embeddings(k + kv, k)  # users [gamma_u, theta_u], items gamma_i
        # E (K' rows) and beta' (one more row) as one map: a single product per batch
        self.proj = nn.Linear(feats.shape[1], kv + 1, bias=False)
        with torch.no_grad():
            self.proj.weight[kv:].zero_()  # beta' starts at 0
        self.item_bias = nn.Embedding(data.n_items, 1)
        nn.init.zeros_(self.item_bias.weight)
        # keep the switched-off terms at exactly 0 (their gradient is masked in the forward pass)
        self.register_buffer("_bias_on", torch.tensor(float(cfg.item_bias)), persistent=False)
        self.register_buffer("_fbias_on", torch.tensor(float(cfg.feature_bias)), persistent=False)

    # -- representations --------------------------------------------------------------------

    def item_vectors(self) -> torch.Tensor:
        """[gamma_i, E f_i, beta_i + beta'.f_i] for every item."""
        kv = self.cfg.visual_dim
        p = self.project(self.proj, self.feats)
        b = self._bias_on * self.item_bias.weight + self._fbias_on * p[:, kv:]
        return torch.cat([self.item_emb.weight, p[:, :kv], b], dim=1)

    def user_vectors(self, users: torch.Tensor | None = None) -> torch.Tensor:
        """[gamma_u, theta_u, 1] for ``users`` (all users when None)."""
        e = self.user_emb.weight if users is None else self.user_emb(users)
        return torch.cat([e, e.new_ones(e.shape[0], 1)], dim=1)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_vectors(), self.item_vectors()

    def batch_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._batch_cache
        if cache is not None and cache[0]() is batch:
            if cache[1] is None:  # first request this step: build once, differentiable
                self.remember(batch, *self.final_embeddings())
            return self._batch_cache[1], self._batch_cache[2]
        return self.final_embeddings()

    # -- training ---------------------------------------------------------------------------

    def losses(self, batch: Batch) -> Losses:
        # full representations on demand only (see the module docstring)
        self.remember(batch, None, None)
        k, kv = self.cfg.embedding_dim, self.cfg.visual_dim
        users = self.user_emb(batch.users)  # [gamma_u, theta_u]
        items = torch.cat([batch.pos, batch.neg])
        gamma_i, gamma_j = self.item_emb(items).chunk(2)
        b_i, b_j = self.item_bias(items).chunk(2)
        # x_ui - x_uj with one product of the feature differences: [E, beta'](f_i - f_j)
        p = self.project_difference(self.proj, self.feats, batch.pos, batch.neg)
        x_uij = ((users[:, :k] * (gamma_i - gamma_j)).sum(-1)
                 + (users[:, k:] * p[:, :kv]).sum(-1)
                 + self._fbias_on * p[:, kv] + self._bias_on * (b_i - b_j).squeeze(-1))
        main = bpr_terms(x_uij, torch.zeros_like(x_uij))
        aux = {}
        if self.cfg.item_bias:
            reg = l2_reg(users, gamma_i, gamma_j, b_i, b_j)
        else:
            reg = l2_reg(users, gamma_i, gamma_j)
        aux["reg"] = self.cfg.reg_weight * reg
        if self.cfg.proj_reg_weight:
            w = self.proj.weight if self.cfg.feature_bias else self.proj.weight[: self.cfg.visual_dim]
            aux["proj_reg"] = self.cfg.proj_reg_weight * 0.5 * w.pow(2).sum()
        return Losses(main, aux)

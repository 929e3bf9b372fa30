"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal
Recommendation"), after the paper's Section 3.

* Encoders. ID embeddings of users and items go through LightGCN on the symmetric-normalised
  user-item graph (``n_layers`` layers, mean over layers 0..L) giving h_u, h_i; as in the
  authors' code the item ID embedding is added to the item output (``item_residual``). Each
  modality's raw features are projected into the same latent space, h^m_i = f^m_i W_m + b_m
  (nn.Linear(dim_m, d)).
* Latent views, no negatives. The online view is a shared linear predictor,
  h~ = h W_p + b_p (for users, items and every modality); the target view is the encoder output
  perturbed by dropout with ratio ``dropout`` and stopped from gradient, h. = sg(dropout(h)).
* Losses, with C(a, b) = 1 - cos(a, b) (the paper's negative cosine plus a constant, as in the
  authors' code, so every term is >= 0):
  - graph reconstruction, per training pair (u, i): C(h~_u, h._i) + C(h._u, h~_i). This is the
    main term, one value per sample, unreduced, so a denoiser can weight it;
  - inter-modality alignment (modality vs ID): sum over modalities of the batch mean of
    C(h~^m_i, h._i), reported as aux ``align``;
  - intra-modality masked alignment (modality vs its own dropped-out view): sum over modalities
    of the batch mean of C(h~^m_i, h.^m_i), aux ``mask``;
  - regularisation of the online encoder outputs: ``reg_weight`` (lambda) times
    (||H_u||_F + ||H_i||_F) / n_items over the full user and item output matrices, aux ``reg``.
    This is the authors' form (MMRec's EmbLoss), the one their reported lambda values (0.1 on
    Baby, 0.01 on Sports) were tuned for; a batch-mean squared L2 with lambda = 0.1 over-shrinks
    the representations (test Recall@20 0.15 instead of 0.22 on the tiny synthetic set).
  The two alignment terms are scaled by ``align_weight`` (the paper adds them with weight 1).
* Scores: inner products of the predictor outputs, h~_u . h~_i (the paper's Eq. for
  prediction); ``final_embeddings`` returns (h~_u for all users, h~_i for all items). For a
  denoiser's distillation, ``losses`` remembers the step: the first ``batch_embeddings(batch)``
  call applies the predictor to that step's encoder outputs (differentiable, built once, reused
  by later calls), so the predictor runs on the whole catalogue only when a denoiser asks.
* The batch carries a sampled negative (the trainer's sampler always draws one); BM3 ignores it.

Several modalities: the alignment and masked terms are summed over the dataset's modalities
(the paper's text + image pair generalised); 1, 2 or 3 (or more) modalities all work.

Determinism. The dropout masks of the target views come from a CPU ``torch.Generator`` owned by
the model, seeded from ``torch.initial_seed()`` when the model is built (the run's seed); its
state lives in the persistent buffer ``dropout_rng_state``, loaded before and stored after every
draw, so a checkpoint holds it and a resumed run draws exactly as an uninterrupted one, on any
device.

Deviations from the authors' code (BM3 repository / MMRec): the dropout masks are drawn
for the batch's rows only (their code drops out the full matrices, then indexes: identical in
distribution, except that a user appearing twice in a batch gets two independent masks here); the
modality projections are applied to the batch's items only (identical values); the raw features
are fixed buffers (their code makes them trainable embedding tables); ``align_weight`` defaults
to 1 as in the paper (their code exposes it as ``cl_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from ..graphs import lightgcn_propagate, take


@dataclass
class BM3Config(BackboneConfig):
    name: str = "bm3"
    n_layers: int = 1
    dropout: float = 0.5
    reg_weight: float = 0.1
    align_weight: float = 1.0
    item_residual: bool = True

    def check(self) -> None:
        super().check()
        check_config(self)


def check_config(cfg: BM3Config) -> None:
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"backbone.dropout={cfg.dropout}: the dropout ratio must lie in [0, 1)")
    require_at_least(cfg, 1, "embedding_dim")
    require_at_least(cfg, 0, "n_layers", "reg_weight", "align_weight")


def cosine_loss(a: torch.Tensor, b_unit: torch.Tensor) -> torch.Tensor:
    """C(a, b) = 1 - cos(a, b) per row, for a target ``b_unit`` already scaled to unit rows."""
    return 1.0 - (F.normalize(a, dim=-1) * b_unit).sum(-1)


@BACKBONES.register("bm3", BM3Config)
class BM3(Backbone):
    uses_features = True

    def __init__(self, cfg: BM3Config, data: Interactions):
        super().__init__(cfg, data)
        n_users, n_items, d = data.n_users, data.n_items, cfg.embedding_dim

        self.embedding = nn.Embedding(n_users + n_items, d)  # users then items
        with torch.no_grad():
            nn.init.xavier_uniform_(self.embedding.weight[:n_users])
            nn.init.xavier_uniform_(self.embedding.weight[n_users:])
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.proj = nn.ModuleList()
        for k, m in enumerate(self.modalities):
            feats = self.load_features(data, k)
            proj = nn.Linear(feats.shape[1], d)
            nn.init.xavier_normal_(proj.weight)
            self.proj.append(proj)
        self.register_edge_buffers(data)  # adj
        self.generator = torch.Generator().manual_seed(torch.initial_seed())
        self.register_buffer("dropout_rng_state", self.generator.get_state())
        self._step_encoding: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- representations --------------------------------------------------------------------

    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online encoder outputs h_u (all users), h_i (all items)."""
        ego = self.embedding.weight
        out = lightgcn_propagate(self.adj, ego, self.cfg.n_layers)
        items = out[self.n_users:]
        if self.cfg.item_residual:
            items = items + ego[self.n_users:]
        return out[: self.n_users], items

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.encode()
        return self.predictor(users), self.predictor(items)

    def dropout_masks(self, n_rows: int, n_masks: int, device: torch.device) -> list[torch.Tensor]:
        """``n_masks`` inverted-dropout masks of shape [n_rows, d] from the model's own RNG."""
        p = self.cfg.dropout
        if p <= 0.0:
            return [None] * n_masks
        self.generator.set_state(self.dropout_rng_state.cpu())
        u = torch.rand(n_masks, n_rows, self.cfg.embedding_dim, generator=self.generator)
        self.dropout_rng_state.copy_(self.generator.get_state())
        keep = (u >= p).to(device=device, dtype=torch.float32) / (1.0 - p)
        return list(keep.unbind(0))

    @staticmethod
    def _target(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """sg(dropout(h)), scaled to unit rows (only its direction enters a cosine)."""
        h = h.detach()
        return F.normalize(h if mask is None else h * mask, dim=-1)

    def batch_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._batch_cache
        if cache is not None and cache[0]() is batch:
            if cache[1] is None:  # first request this step: the predictor on this step's encoding
                users, items = self._step_encoding
                self.remember(batch, self.predictor(users), self.predictor(items))
            return self._batch_cache[1], self._batch_cache[2]
        return self.final_embeddings()

    # -- training ---------------------------------------------------------------------------

    def losses(self, batch: Batch) -> Losses:
        users, items = self.encode()
        # the full online view h~ (the ranking representations) only if a denoiser asks for it
        self.remember(batch, None, None)
        self._step_encoding = (users, items)
        h_u, h_i = take(users, batch.users), take(items, batch.pos)
        masks = self.dropout_masks(len(batch), 2 + len(self.modalities), h_u.device)
        t_u, t_i = self._target(h_u, masks[0]), self._target(h_i, masks[1])
        main = cosine_loss(self.predictor(h_u), t_i) + cosine_loss(self.predictor(h_i), t_u)
        align = main.new_zeros(())
        mask_loss = main.new_zeros(())
        for k, proj in enumerate(self.proj):
            h_m = self.project(proj, getattr(self, f"feat_{k}"), batch.pos)
            online_m = self.predictor(h_m)
            align = align + cosine_loss(online_m, t_i).mean()
            mask_loss = mask_loss + cosine_loss(online_m, self._target(h_m, masks[2 + k])).mean()
        reg = (users.norm() + items.norm()) / self.n_items
        w = self.cfg.align_weight
        return Losses(main, {"align": w * align, "mask": w * mask_loss,
                             "reg": self.cfg.reg_weight * reg})

"""Matrix factorisation trained with BPR (Rendle et al., UAI 2009)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses
from .losses import bpr_terms, l2_reg


@dataclass
class MFConfig(BackboneConfig):
    name: str = "mf"
    reg_weight: float = 1e-2  # as conf/backbone/mf.yaml: reproduces the reference BPR on Baby


@BACKBONES.register("mf", MFConfig)
class MF(Backbone):
    def __init__(self, cfg: MFConfig, data: Interactions):
        super().__init__(cfg, data)
        self.init_id_embeddings(cfg.embedding_dim)

    def losses(self, batch: Batch) -> Losses:
        u = self.user_emb(batch.users)
        i = self.item_emb(batch.pos)
        j = self.item_emb(batch.neg)
        main = bpr_terms((u * i).sum(-1), (u * j).sum(-1))
        return Losses(main, {"reg": self.cfg.reg_weight * l2_reg(u, i, j)})

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb.weight, self.item_emb.weight

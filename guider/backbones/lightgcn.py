"""LightGCN (He et al., SIGIR 2020): linear propagation on the normalised user-item graph,
layer outputs averaged, BPR with L2 on the ego (layer-0) embeddings of the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from ..graphs import lightgcn_propagate
from .losses import bpr_terms, l2_reg


@dataclass
class LightGCNConfig(BackboneConfig):
    name: str = "lightgcn"
    n_layers: int = 3

    def check(self) -> None:
        super().check()
        require_at_least(self, 0, "n_layers")


@BACKBONES.register("lightgcn", LightGCNConfig)
class LightGCN(Backbone):
    def __init__(self, cfg: LightGCNConfig, data: Interactions):
        super().__init__(cfg, data)
        self.embedding = nn.Embedding(data.n_users + data.n_items, cfg.embedding_dim)
        nn.init.xavier_uniform_(self.embedding.weight)
        self.register_edge_buffers(data)  # adj

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = lightgcn_propagate(self.adj, self.embedding.weight, self.cfg.n_layers)
        return out[: self.n_users], out[self.n_users:]

    def losses(self, batch: Batch) -> Losses:
        out = lightgcn_propagate(self.adj, self.embedding.weight, self.cfg.n_layers)
        self.remember(batch, out[: self.n_users], out[self.n_users:])
        # one gather for users, positives and negatives: its backward is a single scatter
        nodes = torch.cat([batch.users, batch.pos + self.n_users, batch.neg + self.n_users])
        u, i, j = out.index_select(0, nodes).chunk(3)
        main = bpr_terms((u * i).sum(-1), (u * j).sum(-1))
        reg = l2_reg(*self.embedding(nodes).chunk(3))
        return Losses(main, {"reg": self.cfg.reg_weight * reg})

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()

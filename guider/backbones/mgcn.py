"""MGCN (Yu et al., ACM MM 2023, "Multi-View Graph Convolutional Network for Multimedia
Recommendation"), after the paper's Section 3.

* Behaviour-guided purifier (Eq. 1-2). Per modality m the raw features are transformed,
  x~^m = W_m x^m + b_m (nn.Linear(dim_m, d)), and gated by the item ID embeddings:
  E^m_i = E_id,i * sigmoid(W2_m x~^m + b2_m), so preference-irrelevant feature directions are
  suppressed by the behaviour (ID) signal.
* Item-item view per modality (Eq. 3-4): a frozen kNN graph of the raw features (cosine, top
  ``knn_k`` per row, the item itself included, 0/1, D^-1/2 S D^-1/2 with row degrees; shared
  ``graphs.knn_graph``, built block by block, never n x n), ``n_layers_ii`` convolutions on the
  purified item features; the user modality view is the aggregation of the item views over the
  user-item graph, e^m_u = sum_i 1/sqrt(d_u d_i) e^m_i (the user-item block of the
  symmetric-normalised adjacency).
* User-item (ID) view (Eq. 5): LightGCN on the user and item ID embeddings over the training
  graph, ``n_layers_ui`` layers, mean over layers 0..L.
* Behaviour-aware fuser (Eq. 6-9). Modality-shared part: attention over the M modality views,
  a_m = softmax_m(q^T tanh(W E^m + b)), E_s = sum_m a_m E^m; modality-specific parts
  E~^m = E^m - E_s, each weighted by a user-preference gate from the ID view,
  P^m = sigmoid(W3_m E_id + b3_m); the modality view E_mm = mean(E_s, P^1*E~^1, ..., P^M*E~^M)
  (the authors' mean of shared + specific parts). Final representation: E = E_id + E_mm.
* Loss (Eq. 10-12): per-sample BPR on E (the main term), ``cl_weight`` (lambda_C = 0.01, the
  middle of the authors' grid {0.001, 0.01, 0.1}) times InfoNCE (temperature
  ``cl_temperature`` = 0.2, in-batch negatives) between the modality view E_mm and the ID view
  E_id for the batch's users plus the same for its positive items, and
  ``reg_weight`` (1e-4) times the L2 term of the batch's final representations (u, i, j;
  0.5 * squared norms / batch size, as the authors' code).

Any number of modalities. The paper has image + text; here every modality of the dataset gets
its own transform, purifier gate, kNN graph and preference gate, the attention runs over all M
views, and E_mm is the mean of the shared part and the M gated specific parts (M + 1 terms, 3 in
the paper). With a single modality the attention weight is 1, the shared part is that modality's
view and its specific part is zero, so E_mm = E^1 / 2.

Deviations from the authors' code: the raw features are fixed buffers (they are trainable
embedding tables there); the user-item aggregation uses the shared sparse toolkit; BPR uses
softplus (= -log sigmoid). The model is deterministic (no dropout or sampling of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from ..graphs import (knn_graph, lightgcn_propagate, spmm, take, transpose_csr, unit_rows,
                     user_item_graphs)
from .losses import bpr_terms, info_nce, l2_reg


@dataclass
class MGCNConfig(BackboneConfig):
    name: str = "mgcn"
    knn_k: int = 10
    n_layers_ii: int = 1
    n_layers_ui: int = 2
    cl_weight: float = 0.01
    cl_temperature: float = 0.2
    reg_weight: float = 1e-4
    knn_block_size: int = 2048

    def check(self) -> None:
        super().check()
        check_config(self)


def check_config(cfg: MGCNConfig) -> None:
    require_at_least(cfg, 1, "knn_k", "knn_block_size", "embedding_dim")
    require_at_least(cfg, 0, "n_layers_ii", "n_layers_ui")
    if not cfg.cl_temperature > 0:
        raise ValueError(f"backbone.cl_temperature={cfg.cl_temperature}: must be > 0")
    require_at_least(cfg, 0, "cl_weight")


@BACKBONES.register("mgcn", MGCNConfig)
class MGCN(Backbone):
    uses_features = True

    def __init__(self, cfg: MGCNConfig, data: Interactions):
        super().__init__(cfg, data)
        d = cfg.embedding_dim
        self.init_id_embeddings(d)

        self.proj = nn.ModuleList()         # feature transforms W_m x + b_m
        self.purify = nn.ModuleList()       # behaviour-guided gates (Eq. 2)
        self.prefer = nn.ModuleList()       # user-preference gates on specific parts (Eq. 8)
        for k in range(len(self.modalities)):
            feats = self.load_features(data, k)
            self.proj.append(nn.Linear(feats.shape[1], d))
            self.purify.append(nn.Linear(d, d))
            self.prefer.append(nn.Linear(d, d))
            graph = knn_graph(unit_rows(feats), cfg.knn_k, cfg.knn_block_size)
            self.register_buffer(f"ii_{k}", graph, persistent=False)
            self.register_buffer(f"ii_t_{k}", transpose_csr(graph), persistent=False)
        # attention of the modality-shared part (Eq. 6)
        self.att = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

        self.register_edge_buffers(data)  # adj, r_norm, r_norm_t (user_item_graphs)

    def edge_buffers(self, weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return user_item_graphs(self.edge_users, self.edge_items, self.n_users, self.n_items,
                                weights)

    # -- views ------------------------------------------------------------------------------

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_id, E_mm), both (U + I, d): the ID view and the fused modality view."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        e_id = lightgcn_propagate(self.adj, ego, self.cfg.n_layers_ui)
        mods = []
        for k in range(len(self.modalities)):
            x = self.project(self.proj[k], getattr(self, f"feat_{k}"))
            h = self.item_emb.weight * torch.sigmoid(self.purify[k](x))
            for _ in range(self.cfg.n_layers_ii):
                h = spmm(getattr(self, f"ii_{k}"), getattr(self, f"ii_t_{k}"), h)
            u = spmm(self.r_norm, self.r_norm_t, h)
            mods.append(torch.cat([u, h]))
        stacked = torch.stack(mods)                         # (M, U + I, d)
        weights = torch.softmax(self.att(stacked), dim=0)   # (M, U + I, 1)
        shared = (weights * stacked).sum(0)
        parts = [shared] + [(mods[k] - shared) * torch.sigmoid(self.prefer[k](e_id))
                            for k in range(len(mods))]
        e_mm = torch.stack(parts).mean(0)
        return e_id, e_mm

    # -- training and scoring ---------------------------------------------------------------

    def losses(self, batch: Batch) -> Losses:
        e_id, e_mm = self.views()
        out = e_id + e_mm
        users, items = out[: self.n_users], out[self.n_users:]
        self.remember(batch, users, items)
        u = take(users, batch.users)
        i, j = take(items, torch.cat([batch.pos, batch.neg])).chunk(2)
        main = bpr_terms((u * i).sum(-1), (u * j).sum(-1))
        t = self.cfg.cl_temperature
        pos = batch.pos + self.n_users
        cl = (info_nce(take(e_mm, batch.users), take(e_id, batch.users), t)
              + info_nce(take(e_mm, pos), take(e_id, pos), t))
        reg = l2_reg(u, i, j)
        return Losses(main, {"cl": self.cfg.cl_weight * cl, "reg": self.cfg.reg_weight * reg})

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        e_id, e_mm = self.views()
        out = e_id + e_mm
        return out[: self.n_users], out[self.n_users:]

"""LATTICE (Zhang et al., ACM MM 2021, "Mining Latent Structures for Multimedia
Recommendation"), after the paper's Section 3.

* Original (frozen) modality graphs. Per modality m, cosine similarities of the raw feature rows
  S^m_ij = cos(e^m_i, e^m_j) (Eq. 1), kNN-sparsified keeping the similarity VALUES of each row's
  top ``knn_k`` entries (Eq. 2; the row's own item included, as a top-k over the full row does),
  normalised D^-1/2 S D^-1/2 with D the row sums (Eq. 3). Built once, block by block
  (``knn_block_size`` rows at a time), never as an n x n matrix.
* Learned modality graphs. The features are projected, e~^m_i = W_m e^m_i + b_m
  (nn.Linear(dim_m, ``feat_embed_dim``)), and the same three steps give A~^m (Eq. 4-5): the
  top-k neighbours are found block-wise without gradient, then the kept edges' cosine VALUES are
  recomputed from the projected rows with gradient, so the projections learn through the learned
  graph's edge values (n_items x k pairs, never an n x n matrix).
* Skip connection with the original structure (Eq. 6): A^m = lambda S^m + (1 - lambda) A~^m,
  ``lambda_coeff`` = 0.9 on the original graph.
* Modality aggregation (Eq. 7): A = sum_m alpha_m A^m with alpha = softmax of learnable logits
  (equal at the start).
* Item-item convolution (Eq. 8): h^(l) = A h^(l-1), h^(0) = the item ID embeddings,
  ``n_layers_ii`` layers.
* Combination with the collaborative backbone (Eq. 9): LightGCN (``n_layers_ui`` layers, mean
  over layers 0..L, on the symmetric-normalised user-item graph; 0 layers is MF) on the user and
  item ID embeddings; item representation = CF item + h^(L) / ||h^(L)||_2, user = CF user.
* Loss: per-sample BPR on these representations (main term) plus ``reg_weight`` times the L2
  term of the batch's final representations (u, i, j; 0.5 * squared norms / batch size, as the
  authors' code).

When the learned graphs are rebuilt. ``rebuild: epoch`` (default) follows the authors' code:
the learned graphs are rebuilt from the current projections in the first training batch of every
epoch (``pre_epoch`` marks it), whose loss back-propagates through their edge values into the
projections; the other batches of the epoch reuse those edge values, detached. ``rebuild: batch``
rebuilds them (with gradient) in every batch, the paper's fully end-to-end reading, at the price
of one block-wise kNN search per modality per batch. The modality weights alpha enter every
batch with gradient either way (each modality graph is applied separately and mixed by alpha).
In evaluation mode the learned graphs are rebuilt from the current parameters (as the authors'
test does), cached while the projections are unchanged, so scores depend on the parameters
alone: a reloaded best state scores exactly as it did when it was selected.

Several modalities: every modality of the dataset gets its original and learned graph and an
alpha logit; 1, 2 or 3 (or more) modalities work the same way (one modality: alpha = 1).

Deviations from the authors' code (CRIPAC-DIG/LATTICE, MMRec): each modality's learned graph is
normalised on its own before the alpha mixing, as the paper's Eq. 5-7 say (their code mixes the
unnormalised learned kNN graphs, then normalises once); alpha gets a gradient in every batch
(their code mixes alpha into the graph, which is detached after the epoch's first batch); no
NGCF variant (LightGCN, or MF with ``n_layers_ui: 0``); the raw features are fixed buffers (their
code makes them trainable embedding tables); a row whose kept similarities do not sum to a
positive degree (an all-zero feature row) gets no edges instead of inf/NaN; no learning-rate decay
(their code multiplies the rate by 0.96 every 50 epochs); BPR in softplus form.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from ..graphs import (frozen_knn_topk, knn_topk, lightgcn_propagate, spmm, take,
                     transpose_csr, unit_rows)
from .losses import bpr_terms, l2_reg

log = logging.getLogger(__name__)

REBUILD = ("epoch", "batch")


@dataclass
class LatticeConfig(BackboneConfig):
    name: str = "lattice"
    feat_embed_dim: int = 64
    knn_k: int = 10
    lambda_coeff: float = 0.9
    n_layers_ii: int = 1
    n_layers_ui: int = 2
    reg_weight: float = 1e-5
    rebuild: str = "epoch"
    knn_block_size: int = 2048

    def check(self) -> None:
        super().check()
        check_config(self)


def sym_norm_knn(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Values of D^-1/2 S D^-1/2 for a kNN graph stored as (values, indices) [n, k] rows, with D
    the row sums of S (LATTICE Eq. 3). Differentiable in ``values``; a row whose degree is not
    positive (an all-zero feature row) gets weight 0."""
    deg = values.sum(1)
    dinv = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
    return dinv[:, None] * values * take(dinv, indices)


def knn_csr(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The (n, n) sparse CSR matrix whose row r holds ``values[r]`` at columns ``indices[r]``."""
    n, k = indices.shape
    cols, order = indices.sort(dim=1)  # CSR invariant: sorted, distinct columns in a row
    vals = values.detach().gather(1, order)
    crow = torch.arange(0, n * k + 1, k, device=indices.device)
    return torch.sparse_csr_tensor(crow, cols.reshape(-1), vals.reshape(-1), (n, n),
                                   check_invariants=False)


def knn_matmul(values: torch.Tensor, indices: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y_r = sum_t values[r, t] x[indices[r, t]]: a kNN-graph product differentiable in both the
    edge values and x (memory n x k x d)."""
    return torch.einsum("nk,nkd->nd", values, take(x, indices))


@BACKBONES.register("lattice", LatticeConfig)
class Lattice(Backbone):
    uses_features = True

    def __init__(self, cfg: LatticeConfig, data: Interactions):
        super().__init__(cfg, data)
        n_users, n_items, d = data.n_users, data.n_items, cfg.embedding_dim

        self.embedding = nn.Embedding(n_users + n_items, d)  # users then items (one gather)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.embedding.weight[:n_users])
            nn.init.xavier_uniform_(self.embedding.weight[n_users:])
        self.proj = nn.ModuleList()
        for k, m in enumerate(self.modalities):
            feats = self.load_features(data, k)
            self.proj.append(nn.Linear(feats.shape[1], cfg.feat_embed_dim))
            # the original graph S^m: built once here, frozen, not in the state dict
            vals, idx = frozen_knn_topk(unit_rows(feats), cfg.knn_k, cfg.knn_block_size,
                                        exclude_self=False, knob="backbone.knn_block_size")
            s = knn_csr(sym_norm_knn(vals, idx), idx)
            self.register_buffer(f"orig_{k}", s, persistent=False)
            self.register_buffer(f"orig_t_{k}", transpose_csr(s), persistent=False)
        self.modal_logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.register_edge_buffers(data)  # adj
        # learned graphs of the current training epoch: per modality (values, indices,
        # detached CSR, its transpose); the eval-mode graphs with the parameter key they came from
        self._train_graphs: list | None = None
        self._rebuild_pending = True
        self._eval_graphs: tuple | None = None

    # -- graphs -----------------------------------------------------------------------------

    def pre_epoch(self, epoch: int) -> None:
        self._rebuild_pending = True

    def learned_graph(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality k's learned graph A~^k as (normalised values [n, knn_k], indices): the
        neighbours come from a block-wise top-k without gradient, the kept values are recomputed
        from the projected rows (differentiable when grad is enabled)."""
        z = unit_rows(self.project(self.proj[k], getattr(self, f"feat_{k}")))
        with torch.no_grad():
            vals, idx = knn_topk(z.detach(), self.cfg.knn_k, self.cfg.knn_block_size,
                                 exclude_self=False, knob="backbone.knn_block_size")
        if torch.is_grad_enabled():
            vals = (z.unsqueeze(1) * take(z, idx)).sum(-1)
        return sym_norm_knn(vals, idx), idx

    def _detached(self, vals: torch.Tensor, idx: torch.Tensor) -> tuple:
        csr = knn_csr(vals.detach(), idx)
        return vals.detach(), idx, csr, transpose_csr(csr)

    def _param_key(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.proj.parameters())

    def item_graph_conv(self, h: torch.Tensor, graphs: list, live: list | None) -> torch.Tensor:
        """h^(L) = A^L h with A = sum_m alpha_m (lambda S^m + (1 - lambda) A~^m). ``graphs``:
        detached learned graphs per modality; ``live``: (values, indices) with gradient, used
        instead where given."""
        alpha = torch.softmax(self.modal_logits, 0)
        lam = self.cfg.lambda_coeff
        for _ in range(self.cfg.n_layers_ii):
            out = 0
            for k in range(len(self.modalities)):
                orig = spmm(getattr(self, f"orig_{k}"), getattr(self, f"orig_t_{k}"), h)
                if live is not None:
                    learned = knn_matmul(live[k][0], live[k][1], h)
                else:
                    _, _, csr, csr_t = graphs[k]
                    learned = spmm(csr, csr_t, h)
                out = out + alpha[k] * (lam * orig + (1.0 - lam) * learned)
            h = out
        return h

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item representations. Training: rebuild the learned graphs where due (with
        gradient), else reuse this epoch's; evaluation: graphs of the current parameters."""
        live = None
        if self.training:
            due = self.cfg.rebuild == "batch" or self._rebuild_pending
            if torch.is_grad_enabled() and due:
                live = [self.learned_graph(k) for k in range(len(self.modalities))]
                self._train_graphs = [self._detached(v, i) for v, i in live]
                self._rebuild_pending = False
            elif self._train_graphs is None:  # a no-grad call before any training step
                with torch.no_grad():
                    self._train_graphs = [self._detached(*self.learned_graph(k))
                                          for k in range(len(self.modalities))]
            graphs = self._train_graphs
        else:
            key = self._param_key()
            if self._eval_graphs is None or self._eval_graphs[0] != key:
                with torch.no_grad():
                    built = [self._detached(*self.learned_graph(k))
                             for k in range(len(self.modalities))]
                self._eval_graphs = (key, built)
            graphs = self._eval_graphs[1]
        ego = self.embedding.weight
        h = self.item_graph_conv(ego[self.n_users:], graphs, live)
        out = lightgcn_propagate(self.adj, ego, self.cfg.n_layers_ui)
        return out[: self.n_users], out[self.n_users:] + F.normalize(h, p=2, dim=1)

    def modality_weights(self) -> dict[str, float]:
        alpha = torch.softmax(self.modal_logits.detach(), 0).tolist()
        return dict(zip(self.modalities, alpha))

    # -- training and scoring ---------------------------------------------------------------

    def losses(self, batch: Batch) -> Losses:
        users, items = self.propagate()
        self.remember(batch, users, items)
        u = take(users, batch.users)
        i, j = take(items, torch.cat([batch.pos, batch.neg])).chunk(2)
        main = bpr_terms((u * i).sum(-1), (u * j).sum(-1))
        return Losses(main, {"reg": self.cfg.reg_weight * l2_reg(u, i, j)})

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate()


def check_config(cfg: LatticeConfig) -> None:
    if not 0.0 <= cfg.lambda_coeff <= 1.0:
        raise ValueError(f"backbone.lambda_coeff={cfg.lambda_coeff}: must lie in [0, 1]")
    if cfg.rebuild not in REBUILD:
        raise ValueError(f"backbone.rebuild={cfg.rebuild!r}: choose {' or '.join(REBUILD)}")
    require_at_least(cfg, 1, "knn_k", "knn_block_size", "embedding_dim", "feat_embed_dim")
    require_at_least(cfg, 0, "n_layers_ii", "n_layers_ui", "reg_weight")

"""FREEDOM (Zhou & Shen, ACM MM 2023, "A Tale of Two Graphs: Freezing and Denoising Graph
Structures for Multimodal Recommendation"), after the paper's Section 3 and the authors' code.

* Frozen item-item graph. Per modality m, the raw feature rows are scaled to unit length
  (cosine similarity, no centring), each item keeps its top ``knn_k`` most similar items
  (itself included, as in the paper's top-k over the full similarity row), the 0/1 graph is
  normalised D^-1/2 S^m D^-1/2 (row degrees), and the modality graphs are mixed into one
  S = sum_m alpha_m S^m, built once before training and never updated. The similarity matrix is
  computed block by block (``knn_block_size`` rows at a time), never as an n x n matrix.
* Item-item convolution: h~ = S^{L_ii} e_item on the item ID embeddings (``n_layers_ii``).
* Denoised user-item graph. Before every training epoch (``pre_epoch``), degree-sensitive edge
  pruning keeps a share 1 - ``dropout`` of the training interactions, drawn without replacement
  with probability proportional to 1 / (sqrt(d_u) sqrt(d_i)), and renormalises the kept graph.
  LightGCN propagation (``n_layers_ui`` layers, mean over layers 0..L) runs on that pruned graph
  in training and on the full training graph in evaluation (``model.eval()``).
* Representations: user = propagated user; item = propagated item + h~.
* Loss: per-sample BPR on these representations (the main term a denoiser may weight), plus
  ``mm_bpr_weight`` (the paper's lambda) times, summed over modalities, a BPR between the user
  representation and a linear projection nn.Linear(dim_m, d) of the raw features of the positive
  and negative items; plus an optional L2 term on the batch's ID embeddings (``reg_weight``;
  FREEDOM itself has none, hence the default 0).

Modality weights alpha_m. ``modality_weights`` maps modality names to weights (the paper's
image 0.1 / text 0.9 by default). When every modality of the dataset is listed, their weights
are used, rescaled to sum to 1 (a text-only dataset gets text = 1). When a dataset has a modality
that is not listed (TikTok's image + audio with the default), all of its modalities get equal
weights 1/M. Any number of modalities (1, 2, 3, ...) works.

Determinism. The pruning RNG is a CPU ``torch.Generator`` owned by the model, seeded from
``torch.initial_seed()`` when the model is built (the run's seed). Its state lives in the
persistent buffer ``prune_rng_state``, loaded before and stored after every draw, so a checkpoint
holds it and a resumed run prunes exactly as an uninterrupted one.

Deviations from the authors' code (FREEDOM repository / MMRec): the raw features are fixed
buffers (their code wraps them in trainable ``nn.Embedding.from_pretrained(freeze=False)``
tables, although the item-item graph is frozen); the modality BPR term u.(W f_i + b) -
u.(W f_j + b) is computed as u.W(f_i - f_j), one product of the batch's feature differences
(the bias cancels; the same values in exact arithmetic, half the work of projecting both items
and far less than projecting the whole catalogue as their code does); the
kept edge count is round(keep_ratio * |E|) rather than int(); BPR terms use softplus (the same
function as -log sigmoid, numerically safer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from ..graphs import (bipartite_adjacency, degree_sensitive_prune, knn_graph, lightgcn_propagate,
                     mix_graphs, spmm, take, transpose_csr, unit_rows)
from .losses import bpr_terms, l2_reg

log = logging.getLogger(__name__)


@dataclass
class FreedomConfig(BackboneConfig):
    name: str = "freedom"
    knn_k: int = 10
    n_layers_ii: int = 1
    n_layers_ui: int = 2
    dropout: float = 0.8
    modality_weights: dict[str, float] = field(
        default_factory=lambda: {"image": 0.1, "text": 0.9})
    mm_bpr_weight: float = 1e-4
    reg_weight: float = 0.0
    knn_block_size: int = 2048

    def check(self) -> None:
        super().check()
        check_config(self)


def mixing_weights(modalities: list[str], configured: dict[str, float]) -> list[float]:
    """alpha_m for the dataset's modalities (see the module docstring)."""
    if not modalities:
        raise ValueError("FREEDOM needs at least one item-feature modality")
    for m, w in configured.items():
        if not w >= 0.0:
            raise ValueError(f"backbone.modality_weights.{m}={w}: weights must be >= 0")
    if all(m in configured for m in modalities):
        ws = [float(configured[m]) for m in modalities]
        total = sum(ws)
        if total <= 0.0:
            raise ValueError(f"backbone.modality_weights gives weight 0 to every modality of the "
                             f"dataset ({', '.join(modalities)})")
        return [w / total for w in ws]
    return [1.0 / len(modalities)] * len(modalities)


def check_config(cfg: FreedomConfig) -> None:
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"backbone.dropout={cfg.dropout}: the pruned share must lie in [0, 1)")
    require_at_least(cfg, 1, "knn_k", "knn_block_size", "embedding_dim")
    require_at_least(cfg, 0, "n_layers_ii", "n_layers_ui")


@BACKBONES.register("freedom", FreedomConfig)
class Freedom(Backbone):
    uses_features = True

    def __init__(self, cfg: FreedomConfig, data: Interactions):
        super().__init__(cfg, data)
        self.mix_weights = mixing_weights(self.modalities, dict(cfg.modality_weights))
        log.info("FREEDOM item-item graph weights: %s",
                 {m: round(w, 4) for m, w in zip(self.modalities, self.mix_weights)})
        d = cfg.embedding_dim
        n_users, n_items = data.n_users, data.n_items

        # users then items in one table (one gather per batch); each part xavier-initialised
        # on its own, as two separate tables would be
        self.embedding = nn.Embedding(n_users + n_items, d)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.embedding.weight[:n_users])
            nn.init.xavier_uniform_(self.embedding.weight[n_users:])
        self.proj = nn.ModuleList()
        graphs = []
        for k in range(len(self.modalities)):
            feats = self.load_features(data, k)
            self.proj.append(nn.Linear(feats.shape[1], d))
            graphs.append(knn_graph(unit_rows(feats), cfg.knn_k, cfg.knn_block_size,
                                    knob="backbone.knn_block_size"))
        mm_adj = mix_graphs(graphs, self.mix_weights)
        self.register_buffer("mm_adj", mm_adj, persistent=False)
        self.register_buffer("mm_adj_t", transpose_csr(mm_adj), persistent=False)

        self.register_edge_buffers(data)  # adj: the full training graph, for evaluation
        self.generator = torch.Generator().manual_seed(torch.initial_seed())
        self.register_buffer("prune_rng_state", self.generator.get_state())
        self.pruned_adj: torch.Tensor | None = None

    # -- graphs ---------------------------------------------------------------------------

    def pre_epoch(self, epoch: int) -> None:
        """Degree-sensitive pruning of the user-item graph for the coming epoch."""
        self.prune()

    def prune(self) -> torch.Tensor:
        device = self.embedding.weight.device
        if self.cfg.dropout <= 0.0:
            self.pruned_adj = self.adj
            return self.pruned_adj
        self.generator.set_state(self.prune_rng_state.cpu())
        w = self.edge_weights  # a denoiser's (set_edge_weights): kept with probability ~ w
        kept = degree_sensitive_prune(self.edge_users, self.edge_items, self.n_users,
                                      self.n_items, 1.0 - self.cfg.dropout, self.generator, w)
        self.prune_rng_state.copy_(self.generator.get_state())
        self.pruned_adj = bipartite_adjacency(self.edge_users[kept], self.edge_items[kept],
                                              self.n_users, self.n_items,
                                              None if w is None else w[kept], device=device)
        return self.pruned_adj

    def ui_graph(self) -> torch.Tensor:
        """The pruned graph in training, the full training graph in evaluation."""
        if not self.training:
            return self.adj
        if self.pruned_adj is None or self.pruned_adj.device != self.adj.device:
            self.prune()
        return self.pruned_adj

    def propagate(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ego = self.embedding.weight
        h = ego[self.n_users:]
        for _ in range(self.cfg.n_layers_ii):
            h = spmm(self.mm_adj, self.mm_adj_t, h)
        out = lightgcn_propagate(adj, ego, self.cfg.n_layers_ui)
        return out[: self.n_users], out[self.n_users:] + h

    # -- training and scoring ---------------------------------------------------------------

    def losses(self, batch: Batch) -> Losses:
        users, items = self.propagate(self.ui_graph())
        self.remember(batch, users, items)
        u = take(users, batch.users)
        i, j = take(items, torch.cat([batch.pos, batch.neg])).chunk(2)
        main = bpr_terms((u * i).sum(-1), (u * j).sum(-1))
        mm = main.new_zeros(())
        for k, proj in enumerate(self.proj):
            feats = getattr(self, f"feat_{k}")
            # u.(W f_i + b) - u.(W f_j + b) = u.W(f_i - f_j): one product of the differences
            d = self.project_difference(proj, feats, batch.pos, batch.neg)
            x = (u * d).sum(-1)
            mm = mm + bpr_terms(x, torch.zeros_like(x)).mean()
        reg = main.new_zeros(())
        if self.cfg.reg_weight:  # FREEDOM's default is 0: skip the gather and its backward
            nodes = torch.cat([batch.users, batch.pos + self.n_users, batch.neg + self.n_users])
            reg = l2_reg(*self.embedding(nodes).chunk(3))
        return Losses(main, {"mm_bpr": self.cfg.mm_bpr_weight * mm,
                             "reg": self.cfg.reg_weight * reg})

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.propagate(self.ui_graph())

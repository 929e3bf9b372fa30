"""LGMRec (Guo et al., AAAI 2024, "LGMRec: Local and Global Graph Learning for Multimodal
Recommendation"), after the paper's Section 3.

* Local graph embedding (Sec. 3.2).
  - Collaborative graph embedding (CGE): LightGCN on the user and item ID embeddings over the
    symmetric-normalised training graph, ``n_layers_ui`` layers, mean over layers 0..L.
  - Modality graph embedding (MGE), per modality m: item features projected to d,
    E^m_i = X^m W_m (nn.Linear(dim_m, d, bias=False)); a user starts from the mean of the projected
    features of the items it interacted with; then ``n_layers_mm`` propagations on the same
    normalised user-item graph, the last layer kept.
  - Local embedding: E_lge = E_cge + sum_m normalize(E^m_mge) (rows scaled to unit length).
* Global hypergraph embedding (Sec. 3.3), per modality m: ``n_hyperedges`` (A) learnable
  hyperedge embeddings V^m (dim_m x A); item-hyperedge dependencies H^m_i = X^m V^m, user-hyperedge
  dependencies H^m_u = R H^m_i (sum over the user's items, R the 0/1 training matrix); each
  turned into a distribution over hyperedges by a Gumbel-softmax (temperature ``tau``) in
  training and dropped out with keep probability ``keep_rate``; hypergraph convolution
  (``n_layers_hyper`` layers) on the CGE item embeddings: L = H^m_i^T E_i, E^m_i <- H^m_i L,
  E^m_u = H^m_u L. Global embedding E_ghe = sum_m [E^m_u; E^m_i].
* Fusion: E = E_lge + ``alpha`` * normalize(E_ghe).
* Loss: per-sample BPR on E (the main term); ``cl_weight`` (beta) times the hypergraph
  contrastive loss: InfoNCE (temperature ``cl_temperature``) aligning a node's global embeddings
  across modalities, for the batch's users (all users as negatives) and its positive items (all
  items as negatives), summed over the batch as in the authors' code; ``reg_weight`` (1e-6) times
  the authors' regulariser (||u||_2 + ||i||_2 + ||j||_2) / batch size: the Frobenius norms, not
  squared, of the batch's final user, positive and negative item representations.

Any number of modalities. The paper has image + text and contrasts the two global views. Here
every modality gets its projection, hyperedges and global view; the contrastive loss is averaged
over all unordered modality pairs (m, n), m < n in dataset order, with m's view as anchor and n's
as target (the paper's image -> text direction for image + text). With a single modality there is
no second global view to align: the contrastive term is then 0 (reported, so the aux keys stay
the same), and the model is LGMRec without its cross-modal self-supervision.

Randomness and evaluation. The Gumbel noise and the hyperedge dropout are drawn from a CPU
``torch.Generator`` owned by the model, seeded from ``torch.initial_seed()`` when the model is
built, its state kept in the persistent buffer ``rng_state`` (a checkpoint resumes the same
draws). In evaluation (``model.eval()``) neither is applied: the dependencies are the noise-free
softmax(H / tau) and no dropout, so scores are deterministic (the authors' code samples Gumbel
noise at test time too).

Defaults are the authors' settings for Amazon Baby (n_layers_ui = n_layers_mm = 2, one hypergraph
layer, 4 hyperedges, keep_rate 0.5, alpha 0.3, cl_weight 1e-4, reg_weight 1e-6, tau 0.2 for both
the Gumbel-softmax and the InfoNCE; Sports: keep_rate 0.4, alpha 0.6; Clothing: 2 hypergraph
layers, 64 hyperedges, keep_rate 0.2, alpha 0.2).

Deviations from the authors' code: the raw features are fixed buffers (frozen tables there, the
same thing); the eval-time Gumbel noise is dropped (above); the InfoNCE is computed as a
cross-entropy over the logits (the same value, numerically safer than exp / sum / log); BPR uses
softplus (= -log sigmoid).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from ..graphs import (bipartite_adjacency, lightgcn_propagate, spmm, sym_spmm, take,
                     transpose_csr, user_item_matrix)
from .losses import bpr_terms


@dataclass
class LGMRecConfig(BackboneConfig):
    name: str = "lgmrec"
    n_layers_ui: int = 2
    n_layers_mm: int = 2
    n_hyperedges: int = 4
    n_layers_hyper: int = 1
    keep_rate: float = 0.5
    alpha: float = 0.3
    tau: float = 0.2
    cl_weight: float = 1e-4
    cl_temperature: float = 0.2
    reg_weight: float = 1e-6

    def check(self) -> None:
        super().check()
        check_config(self)


def check_config(cfg: LGMRecConfig) -> None:
    require_at_least(cfg, 1, "embedding_dim", "n_hyperedges")
    require_at_least(cfg, 0, "n_layers_ui", "n_layers_mm", "n_layers_hyper")
    if not 0.0 < cfg.keep_rate <= 1.0:
        raise ValueError(f"backbone.keep_rate={cfg.keep_rate}: must lie in (0, 1]")
    for key in ("tau", "cl_temperature"):
        if not getattr(cfg, key) > 0:
            raise ValueError(f"backbone.{key}={getattr(cfg, key)}: must be > 0")
    require_at_least(cfg, 0, "alpha", "cl_weight")


def info_nce_sum(anchor: torch.Tensor, candidates: torch.Tensor, targets: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Sum over rows k of -log softmax_j(cos(anchor_k, candidates_j) / t) at j = targets[k]:
    the positive of anchor k is candidate ``targets[k]``, every other candidate a negative."""
    a = F.normalize(anchor, dim=1) * (1.0 / temperature)  # scale the small side, not the logits
    logits = a @ F.normalize(candidates, dim=1).t()
    return F.cross_entropy(logits, targets, reduction="sum")


@BACKBONES.register("lgmrec", LGMRecConfig)
class LGMRec(Backbone):
    uses_features = True

    def __init__(self, cfg: LGMRecConfig, data: Interactions):
        super().__init__(cfg, data)
        d = cfg.embedding_dim
        self.init_id_embeddings(d)
        self.proj = nn.ModuleList()
        self.hyper = nn.ParameterList()
        for k in range(len(self.modalities)):
            feats = self.load_features(data, k)
            proj = nn.Linear(feats.shape[1], d, bias=False)
            nn.init.xavier_uniform_(proj.weight)
            self.proj.append(proj)
            self.hyper.append(nn.Parameter(nn.init.xavier_uniform_(
                torch.empty(feats.shape[1], cfg.n_hyperedges))))

        self.register_edge_buffers(data)  # adj, r, r_t, r_mean, r_mean_t
        self.generator = torch.Generator().manual_seed(torch.initial_seed())
        self.register_buffer("rng_state", self.generator.get_state())

    def edge_buffers(self, weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The adjacency, the user x item matrix R (ones, or the edge weights) and its row-mean
        form (each user's row divided by its (weighted) degree), each with its transpose."""
        users, items, n_users, n_items = self.edge_users, self.edge_items, self.n_users, self.n_items
        r = user_item_matrix(users, items, n_users, n_items, values=weights)
        w = torch.ones(len(users)) if weights is None else weights.float()
        du = torch.zeros(n_users).index_add_(0, users, w)
        r_mean = user_item_matrix(users, items, n_users, n_items,
                                  values=w / du[users].clamp(min=1e-12))
        return {"adj": bipartite_adjacency(users, items, n_users, n_items, weights=weights),
                "r": r, "r_t": transpose_csr(r), "r_mean": r_mean,
                "r_mean_t": transpose_csr(r_mean)}

    # -- random draws -------------------------------------------------------------------------

    def _rand(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        self.generator.set_state(self.rng_state.cpu())
        u = torch.rand(shape, generator=self.generator)
        self.rng_state.copy_(self.generator.get_state())
        return u.to(device)

    def _dependency(self, logits: torch.Tensor) -> torch.Tensor:
        """Soft assignment of nodes to hyperedges: Gumbel-softmax + dropout in training,
        plain softmax(logits / tau) in evaluation."""
        if not self.training:
            return torch.softmax(logits / self.cfg.tau, dim=1)
        u = self._rand(tuple(logits.shape), logits.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
        h = torch.softmax((logits + gumbel) / self.cfg.tau, dim=1)
        keep = self.cfg.keep_rate
        if keep < 1.0:
            mask = self._rand(tuple(h.shape), h.device) < keep
            h = h * mask / keep
        return h

    # -- embeddings ---------------------------------------------------------------------------

    def embed(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(E_cge, E_final, [E^m_ghe]), each (U + I, d)."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        cge = lightgcn_propagate(self.adj, ego, self.cfg.n_layers_ui)
        cge_items = cge[self.n_users:]
        local = cge
        ghe = []
        for k in range(len(self.modalities)):
            feats = getattr(self, f"feat_{k}")
            # local: modality graph embedding
            item_f = self.project(self.proj[k], feats)
            x = torch.cat([spmm(self.r_mean, self.r_mean_t, item_f), item_f])
            for _ in range(self.cfg.n_layers_mm):
                x = sym_spmm(self.adj, x)
            local = local + F.normalize(x, dim=1)
            # global: hypergraph embedding
            hi_logits = self.feature_product(feats, self.hyper[k])
            hu_logits = spmm(self.r, self.r_t, hi_logits)
            hi, hu = self._dependency(hi_logits), self._dependency(hu_logits)
            e_i, e_u = cge_items, None
            for _ in range(self.cfg.n_layers_hyper):
                lat = hi.t() @ e_i
                e_i, e_u = hi @ lat, hu @ lat
            if e_u is None:  # no hypergraph layer: the global view is empty
                e_u, e_i = cge.new_zeros(self.n_users, cge.shape[1]), torch.zeros_like(e_i)
            ghe.append(torch.cat([e_u, e_i]))
        final = local + self.cfg.alpha * F.normalize(sum(ghe), dim=1)
        return cge, final, ghe

    # -- training and scoring -----------------------------------------------------------------

    def losses(self, batch: Batch) -> Losses:
        _, final, ghe = self.embed()
        users, items = final[: self.n_users], final[self.n_users:]
        self.remember(batch, users, items)
        u = take(users, batch.users)
        i, j = take(items, torch.cat([batch.pos, batch.neg])).chunk(2)
        main = bpr_terms((u * i).sum(-1), (u * j).sum(-1))
        cl = main.new_zeros(())
        pairs = list(itertools.combinations(range(len(ghe)), 2))
        t = self.cfg.cl_temperature
        for m, n in pairs:
            gu_m, gi_m = ghe[m][: self.n_users], ghe[m][self.n_users:]
            gu_n, gi_n = ghe[n][: self.n_users], ghe[n][self.n_users:]
            cl = cl + (info_nce_sum(take(gu_m, batch.users), gu_n, batch.users, t)
                       + info_nce_sum(take(gi_m, batch.pos), gi_n, batch.pos, t))
        if pairs:
            cl = cl / len(pairs)
        reg = (u.norm() + i.norm() + j.norm()) / len(u)  # authors' form: unsquared norms
        return Losses(main, {"cl": self.cfg.cl_weight * cl, "reg": self.cfg.reg_weight * reg})

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        final = self.embed()[1]
        return final[: self.n_users], final[self.n_users:]

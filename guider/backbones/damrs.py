"""DA-MRS (Xu et al., KDD 2024, "Improving Multi-modal Recommender Systems by Denoising and
Aligning Multi-modal Content and User Feedback") on LightGCN, the authors' main configuration
(DA-MRS+LightGCN), after the paper and the authors' code (XMUDM/DA-MRS, read, not copied).

* **Denoised item-item graphs.** Per modality m, cosine similarities S^m of the raw feature rows;
  an entry (i, j) below the mean of S^m in *any* modality is removed from *every* modality's
  graph (cross-modal consistency); each item keeps its ``knn_k`` most similar remaining items
  (itself included), a 0/1 graph normalised with its row sums
  (``guider.graphs.consistent_knn_graphs``, block-wise). ``consistency_pruning=false`` keeps the
  plain per-modality kNN graphs (the paper's "IIG" ablation).
* **Behaviour graph.** Items linked when at least ``min_common`` users share them in the training
  interactions after noise injection (never valid/test), top ``behaviour_k`` partners per item,
  plus self-loops (``guider.graphs.cooccurrence_graph``). ``behaviour_graph=false`` drops it.
* **Views.** h_v = S_v^L e_item on the item ID embeddings (``n_mm_layers``) for every modality
  graph and the behaviour graph; the user-item part is LightGCN (``n_ui_layers``, layer mean).
  Representations: user = u_g; item = i_g + mean_v h_v.
* **Denoised feedback** (weighted BPR). For a sample (u, i, j), with p_v = sigmoid(u_g . h_v[i] /
  |h_v[i]|) per view and n_v likewise for j: positive weight w+ = mean_v p_v * exp(-var_v p_v)^2
  (in [0, 1]); negative weight w- = clip(max_v p_v - mean(n), 0, 1) when mean_v p_v < mean(n) (the
  negatives' mean over the whole batch and every view), else 0. The main term is
  w+ softplus(-(x_ui - x_uj)) + w- softplus(x_ui - x_uj): a positive that every view doubts
  weighs less, and one the views rank below the batch's negatives is pushed *down*. Weights carry
  no gradient. ``feedback_weights=false``: plain BPR. 1 - w+ is the model's noise score of a
  training interaction (``noise_scores``), so the detection metrics apply to it.
* **Alignment.** ``kl_weight`` x the symmetric KL between the Bernoulli preferences
  sigmoid(u . i_g/|i_g|) (behaviour) and sigmoid(u . c_i/|c_i|) (content, c = mean_v h_v) over the
  batch's distinct users x distinct items; ``neighbor_weight`` x the neighbour discrimination:
  per view, pseudo-positive neighbours of each batch item are the ``n_pseudo`` items with the
  highest summed softmax-similarity over all views (the view itself counted twice) and the next
  ``n_pseudo`` of the view alone; an InfoNCE-style loss at ``temperature`` pulls both sets
  towards the item against the whole catalogue (the second against the catalogue minus the
  first), averaged over views. Both terms are computed a block of rows at a time with their
  gradients written out (``_SymmetricBernoulliKL``, ``_NeighbourLoss``): the same values and
  gradients as the dense definitions, without holding a [batch, catalogue] matrix.

Departures from the authors' code: any number of modalities (their code is written for image +
text, TikTok's image + audio and MicroLens's text alone work here); the consistency masks use the
exact mean of each similarity matrix computed without forming it, and the kNN is block-wise (their
code forms the n x n matrices); an item with fewer than ``knn_k`` consistent neighbours keeps all
of them in every modality (their code counts the text graph's nonzeros for both); the Bernoulli
probabilities of the KL are clipped to [1e-6, 1 - 1e-6] (theirs can give NaN at saturation); the
positive scores of the neighbour discrimination are read from the same similarity block as the
catalogue term instead of being recomputed; the behaviour graph is built from the training
interactions inside the run (their script builds it offline from the training file) with
ties broken by the lower item index; an optional L2 term (``reg_weight``, 0 by default: theirs
has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Batch, Interactions
from ..graphs import (consistent_knn_graphs, cooccurrence_graph, knn_graph, lightgcn_propagate,
                      spmm, take, transpose_csr, unit_rows)
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from .losses import l2_reg

PROB_EPS = 1e-6
LOG_EPS = 1e-9
SCORE_BLOCK = 65536  # training interactions scored at once by noise_scores
TERM_BLOCK = 1 << 20  # scores per block of the alignment and neighbour terms


@dataclass
class DAMRSConfig(BackboneConfig):
    name: str = "damrs"
    n_ui_layers: int = 2
    n_mm_layers: int = 1
    knn_k: int = 10
    behaviour_k: int = 10
    min_common: int = 2
    kl_weight: float = 1.0
    neighbor_weight: float = 1e-3
    n_pseudo: int = 10
    temperature: float = 0.2
    consistency_pruning: bool = True
    behaviour_graph: bool = True
    feedback_weights: bool = True
    reg_weight: float = 0.0
    knn_block_size: int = 2048

    def check(self) -> None:
        super().check()
        require_at_least(self, 0, "n_ui_layers", "n_mm_layers", "kl_weight", "neighbor_weight")
        require_at_least(self, 1, "knn_k", "behaviour_k", "min_common", "n_pseudo",
                         "knn_block_size")
        if not self.temperature > 0:
            raise ValueError(f"backbone.temperature={self.temperature}: must be > 0")


def feedback_weights(u: torch.Tensor, pos_views: list[torch.Tensor],
                     neg_views: list[torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DA-MRS's weights of a batch: ``u`` [B, d] user representations, ``pos_views`` /
    ``neg_views`` one [B, d] tensor per view with the positives' / negatives' view embeddings
    (unnormalised). Returns (w+, w-) detached, w- None without negatives (module docstring)."""
    with torch.no_grad():
        p = torch.stack([torch.sigmoid((u * F.normalize(h, dim=-1)).sum(-1)) for h in pos_views])
        p_mean = p.mean(0)
        p_var = p.var(0) if len(pos_views) > 1 else torch.zeros_like(p_mean)
        w_pos = (p_mean * torch.exp(-p_var).pow(2)).clamp(0.0, 1.0)
        if neg_views is None:
            return w_pos, None
        n = torch.stack([torch.sigmoid((u * F.normalize(h, dim=-1)).sum(-1)) for h in neg_views])
        n_mean = n.mean()
        doubted = (p_mean < n_mean).float()
        w_neg = ((p.max(0).values - n_mean) * doubted).clamp(0.0, 1.0)
        return w_pos, w_neg


PROB_LOGIT = math.log((1 - PROB_EPS) / PROB_EPS)  # the clip of the probabilities, as logits


class _SymmetricBernoulliKL(torch.autograd.Function):
    """Sum over users r and items j of KL(p || q) + KL(q || p) for p = sigmoid(a_rj), q =
    sigmoid(b_rj), a = users @ behaviour^T, b = users @ content^T, the probabilities clipped to
    [PROB_EPS, 1 - PROB_EPS]. For Bernoulli laws the symmetric KL is (p - q)(logit p - logit q),
    and clipping p is clipping its logit to +-PROB_LOGIT, so each entry is (sigmoid(a') -
    sigmoid(b'))(a' - b') with a', b' the clipped scores: no logarithm, finite at saturation, and
    the gradient (zero where a score is clipped, as for the clipped probability) is written out.
    Computed ``rows`` users at a time, the gradient in the same sweep as the value (the output
    is a scalar, so the backward pass only scales it): no [users, items] matrix is held whole
    (the dense form's ~20 full-size temporaries cost seconds per MicroLens batch)."""

    @staticmethod
    def forward(ctx, rows: int, users: torch.Tensor, behaviour: torch.Tensor,
                content: torch.Tensor):
        want_grad = any(ctx.needs_input_grad[1:])
        total = users.new_zeros(())
        if want_grad:
            grads = (torch.empty_like(users), torch.zeros_like(behaviour),
                     torch.zeros_like(content))
        for start in range(0, users.shape[0], rows):
            u = users[start:start + rows]
            a, b = u @ behaviour.t(), u @ content.t()
            if want_grad:
                inside_a = (a >= -PROB_LOGIT) & (a <= PROB_LOGIT)
                inside_b = (b >= -PROB_LOGIT) & (b <= PROB_LOGIT)
            a.clamp_(-PROB_LOGIT, PROB_LOGIT)
            b.clamp_(-PROB_LOGIT, PROB_LOGIT)
            sa, sb = torch.sigmoid(a), torch.sigmoid(b)
            gap, diff = a.sub_(b), sa - sb
            total += (diff * gap).sum()
            if want_grad:
                # d/da = sigma'(a)(a - b) + (sigma(a) - sigma(b)); d/db = -sigma'(b)(a - b) - (...)
                ga = (sa - sa.square()).mul_(gap).add_(diff).mul_(inside_a)
                gb = (sb - sb.square()).mul_(gap).add_(diff).mul_(inside_b).neg_()
                grads[0][start:start + rows] = ga @ behaviour + gb @ content
                grads[1].addmm_(ga.t(), u)
                grads[2].addmm_(gb.t(), u)
        if want_grad:
            ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        return (None, *(g * grad_total for g in ctx.saved_tensors))


def alignment_kl(users: torch.Tensor, behaviour: torch.Tensor, content: torch.Tensor,
                 rows: int | None = None) -> torch.Tensor:
    """Mean symmetric KL between sigmoid(u . b_i/|b_i|) and sigmoid(u . c_i/|c_i|) over every
    (user, item) of the given rows, the probabilities clipped to [PROB_EPS, 1 - PROB_EPS],
    computed without forming the matrix (``_SymmetricBernoulliKL``). ``rows``: users at once
    (speed and memory only)."""
    rows = rows or max(1, TERM_BLOCK // max(1, behaviour.shape[0]))
    total = _SymmetricBernoulliKL.apply(rows, users, F.normalize(behaviour, dim=-1),
                                        F.normalize(content, dim=-1))
    return total / (users.shape[0] * behaviour.shape[0])


class _NeighbourLoss(torch.autograd.Function):
    """The neighbour discrimination (``neighbour_discrimination``) of the batch rows ``queries``
    (one [B, d] tensor per view, unit rows) against the catalogues (one [n, d] per view, unit
    rows): per view v and row r, with e_rj = exp(cos(r, j) / T) and the pseudo-positive sets
    chosen without gradient, E = sum_j e_rj, M = sum over the multi-view set, S = sum over the
    single-view set, and the loss -log(M / E) - log(S / (E - M)), averaged over rows and views.
    Computed ``rows`` batch rows at a time, the gradient in the same sweep as the value (the
    output is a scalar, so the backward pass only scales it): no [batch, catalogue] matrix is
    held whole. The dense form made ~8 full-size temporaries per view, and on the CPU their
    memory traffic cost ~10x the matrix products (MicroLens, 7,000 items x 19,220: 12 s a
    batch)."""

    @staticmethod
    def forward(ctx, k: int, temperature: float, rows: int, *tensors: torch.Tensor):
        n_views = len(tensors) // 2
        queries, catalogues = tensors[:n_views], tensors[n_views:]
        want_grad = any(ctx.needs_input_grad[3:])
        n_rows = queries[0].shape[0]
        scale = 1.0 / (n_views * n_rows)  # the mean over rows and views
        total = queries[0].new_zeros(())
        if want_grad:
            grad_q = [torch.empty_like(q) for q in queries]
            grad_c = [torch.zeros_like(c) for c in catalogues]
        for start in range(0, n_rows, rows):
            stop = min(start + rows, n_rows)
            sims = [q[start:stop] @ c.t() for q, c in zip(queries, catalogues)]
            probs = [torch.softmax(s, dim=1) for s in sims]
            together = probs[0].clone()
            for p in probs[1:]:
                together += p
            for v, (s, prob) in enumerate(zip(sims, probs)):
                mm_idx = (together + prob).topk(k, dim=1).indices
                single_idx = prob.scatter_(1, mm_idx, 0.0).topk(k, dim=1).indices
                idx = torch.cat([mm_idx, single_idx], dim=1)
                e = s.div_(temperature).exp_()
                picked = e.gather(1, idx)
                everything, mm, single = e.sum(1), picked[:, :k].sum(1), picked[:, k:].sum(1)
                rest = (everything - mm).clamp(min=LOG_EPS)
                ratio_m, ratio_s = mm / everything + LOG_EPS, single / rest + LOG_EPS
                loss = -(ratio_m.log() + ratio_s.log()).sum()
                total += loss
                if not want_grad:
                    continue
                # d loss / d (E, M, S) per row; the clip of E - M passes no gradient below LOG_EPS
                c = single / (rest.square() * ratio_s) * (everything - mm >= LOG_EPS)
                g_e = mm / (everything.square() * ratio_m) + c
                g_m = -1.0 / (everything * ratio_m) - c
                g_s = -1.0 / (rest * ratio_s)
                # d/ds_rj = (g_E + g_M [j in mm] + g_S [j in single]) e_rj / T, times the mean
                extra = torch.cat([g_m[:, None].expand(-1, k), g_s[:, None].expand(-1, k)], 1)
                grad_s = e.mul_(g_e[:, None]).scatter_add_(1, idx, picked.mul_(extra))
                grad_s.mul_(scale / temperature)
                grad_q[v][start:stop] = grad_s @ catalogues[v]
                grad_c[v].addmm_(grad_s.t(), queries[v][start:stop])
        if want_grad:
            ctx.save_for_backward(*grad_q, *grad_c)
        return total * scale

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        return (None, None, None, *(g * grad_total for g in ctx.saved_tensors))


def neighbour_discrimination(views: list[torch.Tensor], items: torch.Tensor, n_pseudo: int,
                             temperature: float, rows: int | None = None) -> torch.Tensor:
    """DA-MRS's neighbour discrimination of the batch's ``items`` (module docstring), averaged
    over the views. ``rows``: batch items scored against the catalogue at once (memory and speed
    only; by default about TERM_BLOCK similarities)."""
    n = views[0].shape[0]
    k = max(1, min(n_pseudo, n // 2))
    rows = rows or max(1, TERM_BLOCK // n)
    normed = [F.normalize(h, dim=-1) for h in views]
    queries = [take(hn, items) for hn in normed]
    return _NeighbourLoss.apply(k, temperature, rows, *queries, *normed)


@BACKBONES.register("damrs", DAMRSConfig)
class DAMRS(Backbone):
    uses_features = True

    def __init__(self, cfg: DAMRSConfig, data: Interactions):
        super().__init__(cfg, data)
        self.init_id_embeddings(cfg.embedding_dim)
        zs = [unit_rows(self.read_features(data, k)) for k in range(len(self.modalities))]
        knob = "backbone.knn_block_size"
        if cfg.consistency_pruning:
            graphs = consistent_knn_graphs(zs, cfg.knn_k, cfg.knn_block_size, knob=knob)
        else:
            graphs = [knn_graph(z, cfg.knn_k, cfg.knn_block_size, knob=knob) for z in zs]
        if cfg.behaviour_graph:
            graphs.append(cooccurrence_graph(data.train.users, data.train.items, self.n_users,
                                             self.n_items, cfg.behaviour_k, cfg.min_common))
        self.view_names = list(self.modalities) + (["behaviour"] if cfg.behaviour_graph else [])
        for v, g in enumerate(graphs):
            self.register_buffer(f"view_{v}", g, persistent=False)
            self.register_buffer(f"view_t_{v}", transpose_csr(g), persistent=False)
        self.register_edge_buffers(data)  # adj

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(users, items from the user-item graph, one item view per item-item graph)."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        out = lightgcn_propagate(self.adj, ego, self.cfg.n_ui_layers)
        views = []
        for v in range(len(self.view_names)):
            h = self.item_emb.weight
            for _ in range(self.cfg.n_mm_layers):
                h = spmm(getattr(self, f"view_{v}"), getattr(self, f"view_t_{v}"), h)
            views.append(h)
        return out[: self.n_users], out[self.n_users:], views

    def losses(self, batch: Batch) -> Losses:
        cfg = self.cfg
        users, items_g, views = self.propagate()
        content = torch.stack(views).mean(0)
        items = items_g + content
        self.remember(batch, users, items)
        u = take(users, batch.users)
        x = (u * take(items, batch.pos)).sum(-1) - (u * take(items, batch.neg)).sum(-1)
        if cfg.feedback_weights:
            w_pos, w_neg = feedback_weights(u, [take(h, batch.pos) for h in views],
                                            [take(h, batch.neg) for h in views])
            main = w_pos * F.softplus(-x) + w_neg * F.softplus(x)
        else:
            main = F.softplus(-x)
        aux: dict[str, torch.Tensor] = {}
        item_ids = torch.unique(torch.cat([batch.pos, batch.neg]))
        if cfg.kl_weight:
            user_ids = torch.unique(batch.users)
            aux["align_kl"] = cfg.kl_weight * alignment_kl(
                take(users, user_ids), take(items_g, item_ids), take(content, item_ids))
        if cfg.neighbor_weight:
            aux["neighbour"] = cfg.neighbor_weight * neighbour_discrimination(
                views, item_ids, cfg.n_pseudo, cfg.temperature)
        if cfg.reg_weight:
            aux["reg"] = cfg.reg_weight * l2_reg(self.user_emb(batch.users),
                                                 self.item_emb(batch.pos),
                                                 self.item_emb(batch.neg))
        return Losses(main, aux)

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items_g, views = self.propagate()
        return users, items_g + torch.stack(views).mean(0)

    @torch.no_grad()
    def noise_scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """1 - w+ of every given (user, item) pair at the current state (module docstring)."""
        u_all, _, views = self.propagate()
        users = torch.as_tensor(users, dtype=torch.long, device=u_all.device)
        items = torch.as_tensor(items, dtype=torch.long, device=u_all.device)
        out = []
        for start in range(0, len(users), SCORE_BLOCK):
            u, i = users[start:start + SCORE_BLOCK], items[start:start + SCORE_BLOCK]
            w_pos, _ = feedback_weights(u_all[u], [h[i] for h in views])
            out.append(1.0 - w_pos)
        return torch.cat(out).cpu().numpy() if out else np.zeros(0)

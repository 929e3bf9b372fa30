"""BOD (Wang et al., KDD 2023, "Efficient Bi-Level Optimization for Recommendation Denoising").

Denoising as a bi-level problem over per-interaction weights W:

    inner:  theta*(W) = argmin_theta  sum_(u,i) w_ui * l_ui(theta)        (the recommender)
    outer:  W* = argmin_W  L_outer(theta*(W), W)                             (the weights)

Two devices make it cheap. (1) A **weight generator** w_ui = g_phi(e_u, e_i), a small network on
the user's and item's representations, replaces the |U| x |I| weight table; the outer problem
trains phi, and weights carry over from one iteration to the next through phi (the paper's
"considering the impact of previous weights"). (2) **One-step gradient matching** replaces the
unrolled inner optimisation: one step theta' = theta - eta * grad_theta L_inner(theta, phi) changes
the outer objective, to first order, by -eta * <grad L_outer, grad L_inner(phi)>, so the outer step
trains phi to make the gradient of the weighted inner loss match (in direction) the gradient of the
outer objective. The distance is that of gradient matching in dataset condensation (Zhao et al.,
ICLR 2021), which BOD builds on: the sum over output nodes of 1 - cosine between the two
gradients' rows; a node here is a user or item representation, so
D(G, H) = mean over the batch's users and items r of 1 - cos(G_r, H_r).

Per batch (one outer step every ``outer_every`` batches, default every batch):
- inner weights: w_k = g_phi(e_u, e_i) for each triple (u, i, j), generator inputs detached;
  the trainer minimises sum(w l) / sum(w) (+ the backbone's other terms);
- outer step (``outer_target=consensus``, default): the batch is split by position into halves A
  and B (the sampler shuffles, so they are random halves); phi minimises
  (D(grad sum_{k in A} w_k l_k, grad sum_{k in B} l_k) + D(grad sum_{k in B} w_k l_k,
  grad sum_{k in A} l_k)) / 2, gradients with respect to the batch's user and item representations:
  an interaction whose BPR gradient disagrees with what the other interactions of the same user or
  item ask for is down-weighted. The outer objective is the plain recommendation loss on held-apart
  interactions, so no clean data or prior is needed.
- ``outer_target=alignment``: the comparison of the authors' released code (github.com/CoderWZW/BOD,
  model/graph/BOD.py): D(grad sum_k w_k l_k, grad sum_k w_k a_k) on the whole batch, a_k the
  alignment loss ||e_u/|e_u| - e_i/|e_i|||^2 of DirectAU, with the released code's bugs fixed (see
  below). Kept for comparison: on the synthetic set it ranks injected noise *above* clean
  interactions (docs/baselines.md).

Adaptations (docs/baselines.md):
- *source of the equations:* the method section of the paper could not be read here (only the
  abstract and introduction of arXiv 2210.10321 were retrievable); the bi-level formulation,
  generator and one-step gradient matching follow the abstract, the generator's architecture and
  defaults the released code, and the outer target ``consensus`` is the one-step reading of the
  bi-level problem above with the recommendation loss as outer objective. Check against the paper.
- *pointwise to pairwise:* one weight per BPR triple, the generator's weight of the observed
  interaction (u, i); the released code also weights the negative's score by g(e_u, e_j).
- *weights on the loss:* the trainer weights each triple's BPR term, sum(w l) / sum(w); the
  released code multiplies the *scores* by the weights inside the sigmoid,
  -log sigmoid(w_ui s_ui - w_uj s_uj), which is not a weighting of the loss.
- *gradients in representation space:* the matched gradients are taken with respect to the batch's
  final user and item representations (the rows the BPR terms read), not the backbone's
  parameters: backbone-agnostic, closed-form, no second-order pass through the backbone. For MF
  the two coincide.
- *outer step placement:* done inside ``weights`` on the detached representations the backbone just
  computed (``batch_embeddings``), after the inner weights of the batch are taken: the same
  alternation as an outer step at the start of the next batch, without a second forward pass.
  Nothing of it reaches the backbone's gradients.
- *the released code's bugs, fixed:* its generator returns [B, 1] weights that broadcast against
  [B] scores into a [B, B] loss; its outer step feeds (user, user) instead of (user, item) to the
  generator for the positive weight; its generator "regulariser" is a norm of the recommender's
  embeddings, which has no gradient with respect to the generator (omitted here); and it runs
  one outer step per epoch (``outer_every`` = batches per epoch approximates that).
- *not implemented:* the released code also trains the recommender with DirectAU's weighted
  alignment and uniformity terms next to BPR (from the paper's first version, QGrace); here the
  backbone's own loss is kept and only weighted.
- *detection (not in the paper):* ``noise_scores`` is an exponential moving average over epochs
  (``score_momentum``) of 1 - w for each interaction. BOD drops nothing: no ``flagged`` set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..backbones import Backbone
from ..data import Batch, Interactions
from ..optim import make_adam
from .base import DENOISERS, Denoiser, DenoiseConfig, check_choice, check_rate
from .tce import RunningScore

OUTER_TARGETS = ("consensus", "alignment")


@dataclass
class BODConfig(DenoiseConfig):
    name: str = "bod"
    generator_dim: int = 64  # hidden width of the weight generator
    generator_lr: float = 0.001  # Adam learning rate of the generator (the outer step)
    outer_every: int = 1  # one outer step every this many batches; 0 = none (untrained generator)
    outer_target: str = "consensus"  # consensus | alignment (the released code's comparison)
    score_momentum: float = 0.5  # detection only: EMA momentum of 1 - w per interaction

    def check(self) -> None:
        """Value checks, run when the config is validated (before any data are loaded)."""
        check_choice(self.outer_target, OUTER_TARGETS, "outer_target")
        if self.generator_dim < 1:
            raise ValueError(f"denoise.generator_dim={self.generator_dim} must be >= 1")
        if self.generator_lr < 0:
            raise ValueError(f"denoise.generator_lr={self.generator_lr} must be >= 0")
        if self.outer_every < 0:
            raise ValueError(f"denoise.outer_every={self.outer_every} must be >= 0 "
                             f"(0 = no outer steps)")
        check_rate(self.score_momentum, "score_momentum")


LOGIT_BOUND = 20.0


class WeightGenerator(nn.Module):
    """w = sigmoid(dec(enc([e_u, e_i]))), enc = Linear(2d, h) -> ReLU -> Linear(h, h),
    dec = Linear(h, 1): the released code's generator (its variational branch is unused)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden))
        self.decoder = nn.Linear(hidden, 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        z = self.encoder(torch.cat([users, items], dim=-1))
        # logits kept in [-LOGIT_BOUND, LOGIT_BOUND] (w >= 2e-9): the gradient-matching distance
        # is scale-free per row, so its gradient grows like 1 / |row|; weights that collapse to
        # ~1e-40 made it overflow float32 and the generator NaN (TikTok, noise >= 0.1)
        return torch.sigmoid(self.decoder(z).clamp(-LOGIT_BOUND, LOGIT_BOUND)).squeeze(-1)


@dataclass
class BatchRows:
    """A batch's triples as rows of its distinct users and items (the matched gradients' nodes)."""

    user_row: torch.Tensor  # [B] row of each triple's user among the batch's distinct users
    pos_row: torch.Tensor  # [B] row of each positive among the batch's distinct items
    neg_row: torch.Tensor  # [B] row of each negative
    n_users: int
    n_items: int

    @staticmethod
    def of(batch: Batch) -> "BatchRows":
        users, user_row = torch.unique(batch.users, return_inverse=True)
        items, item_row = torch.unique(torch.cat([batch.pos, batch.neg]), return_inverse=True)
        b = len(batch)
        return BatchRows(user_row, item_row[:b], item_row[b:], len(users), len(items))


def bpr_gradients(rows: BatchRows, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                  w: torch.Tensor, group: torch.Tensor | None = None,
                  n_groups: int = 1) -> torch.Tensor:
    """Gradient of sum_k w_k softplus(s_uj - s_ui), s = inner product, with respect to each
    distinct user's and item's representation: [n_groups, n_users + n_items, d] (users first),
    the triples summed separately per ``group`` (all in group 0 by default). Per triple:
    d/de_u = c (e_j - e_i), d/de_i = -c e_u, d/de_j = c e_u, c = sigmoid(s_uj - s_ui).
    Linear and differentiable in ``w``."""
    n_rows, d = rows.n_users + rows.n_items, u.shape[1]
    c = torch.sigmoid((u * j).sum(-1) - (u * i).sum(-1)).detach()
    cw = (c * w).unsqueeze(-1)
    offset = 0 if group is None else group * n_rows
    user_rows = rows.user_row + offset
    item_rows = torch.cat([rows.pos_row, rows.neg_row]) + rows.n_users + (
        0 if group is None else torch.cat([offset, offset]))
    out = u.new_zeros(n_groups * n_rows, d).index_add(0, user_rows, cw * (j - i))
    cu = cw * u
    out = out.index_add(0, item_rows, torch.cat([-cu, cu]))
    return out.view(n_groups, n_rows, d)


def alignment_gradients(rows: BatchRows, u: torch.Tensor, i: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
    """Gradient of sum_k w_k ||e_u/|e_u| - e_i/|e_i|||^2 per distinct user and item row (the
    negatives' rows get zero): d/de_u = -2 (i^ - (u^.i^) u^) / |e_u|, symmetric for e_i.
    [n_users + n_items, d]."""
    nu, ni = u.norm(dim=-1, keepdim=True), i.norm(dim=-1, keepdim=True)
    uh, ih = u / nu, i / ni
    cos = (uh * ih).sum(-1, keepdim=True)
    wk = w.unsqueeze(-1)
    g_users = u.new_zeros(rows.n_users, u.shape[1]).index_add(
        0, rows.user_row, wk * (-2.0 * (ih - cos * uh) / nu))
    g_items = u.new_zeros(rows.n_items, u.shape[1]).index_add(
        0, rows.pos_row, wk * (-2.0 * (uh - cos * ih) / ni))
    return torch.cat([g_users, g_items])


def row_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 1 - cos(a_r, b_r), over the rows where both are non-zero (a zero row has
    no direction); 0 when there is none."""
    dtype = a.dtype
    # float64: when the generator pushes weights towards 0, weighted rows reach ~1e-20, whose
    # squares and norm products underflow float32 and made the gradient inf/NaN (seen on TikTok)
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    keep = (na > 0) & (nb > 0)
    if not bool(keep.any()):
        return a.sum().to(dtype) * 0.0
    cos = (a[keep] * b[keep]).sum(-1) / (na[keep] * nb[keep])
    return (1.0 - cos).mean().to(dtype)


@DENOISERS.register("bod", BODConfig)
class BOD(Denoiser):
    def __init__(self, cfg: BODConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        super().__init__(cfg, data, backbone, device, seed)
        cfg.check()
        self.backbone = backbone
        with torch.no_grad():
            users, items = backbone.final_embeddings()
        if users.shape[1] != items.shape[1]:
            raise ValueError(f"denoise=bod needs user and item representations of one width; "
                             f"backbone={backbone.cfg.name} gives {users.shape[1]} and "
                             f"{items.shape[1]}")
        # own RNG stream: the backbone's init and the sampler are those of a run without BOD
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 9001)
            self.generator = WeightGenerator(users.shape[1], cfg.generator_dim).to(device)
        self.opt = make_adam(self.generator.parameters(), cfg.generator_lr)
        self.iteration = 0
        self.outer_steps = 0
        self.noise = RunningScore(len(data.train), cfg.score_momentum, device)
        # this epoch's n weights, sum w, sum w^2, outer steps, sum of outer losses (for summary)
        # (a device tensor: no host synchronisation per batch)
        self.epoch_stats = torch.zeros(5, dtype=torch.float64, device=device)

    def on_epoch(self, epoch: int) -> None:
        self.epoch_stats.zero_()

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor:
        users, items = self.backbone.batch_embeddings(batch)
        u = users[batch.users].detach()
        i = items[batch.pos].detach()
        j = items[batch.neg].detach()
        every = self.cfg.outer_every
        if every > 0 and self.iteration % every == 0:
            w = self.generator(u, i)  # one forward for the inner weights and the outer step
            self.epoch_stats[3] += 1
            self.epoch_stats[4] += self.outer_step(batch, u, i, j, w)
            w = w.detach()
        else:
            with torch.no_grad():
                w = self.generator(u, i)
        self.noise.update(batch.idx, 1.0 - w)
        self.epoch_stats[0] += len(w)
        self.epoch_stats[1] += w.sum()
        self.epoch_stats[2] += (w * w).sum()
        self.iteration += 1
        return w.to(main.dtype)

    def outer_loss(self, batch: Batch, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                   w: torch.Tensor) -> torch.Tensor:
        """The gradient-matching loss of the outer step for generator weights ``w`` of the
        batch's triples (u, i, j given as detached representations)."""
        rows = BatchRows.of(batch)
        if self.cfg.outer_target == "alignment":
            return row_cosine_distance(bpr_gradients(rows, u, i, j, w)[0],
                                       alignment_gradients(rows, u, i, w))
        half = torch.arange(len(batch), device=u.device) % 2  # the sampler shuffles: random halves
        weighted = bpr_gradients(rows, u, i, j, w, half, 2)
        with torch.no_grad():
            plain = bpr_gradients(rows, u, i, j, torch.ones_like(w), half, 2)
        return 0.5 * (row_cosine_distance(weighted[0], plain[1])
                      + row_cosine_distance(weighted[1], plain[0]))

    def outer_step(self, batch: Batch, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                   w: torch.Tensor) -> torch.Tensor:
        """One Adam step of the generator on the gradient-matching loss; returns the loss.
        Gradients go to the generator's parameters only (its inputs are detached)."""
        loss = self.outer_loss(batch, u, i, j, w)
        params = list(self.generator.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.outer_steps += 1
        return loss.detach()

    def noise_scores(self) -> np.ndarray | None:
        return self.noise.scores()

    def summary(self) -> dict:
        n, s, s2, n_outer, outer = self.epoch_stats.tolist()
        mean = s / n if n else None
        return {
            "iterations": self.iteration, "outer_steps": self.outer_steps,
            "weight_mean_last_epoch": mean,
            "weight_std_last_epoch": (max(0.0, s2 / n - mean * mean) ** 0.5) if n else None,
            "outer_loss_last_epoch": outer / n_outer if n_outer else None,
        }

    def state_dict(self) -> dict:
        # copies: the optimiser's state tensors would otherwise be shared with a loaded twin
        return copy.deepcopy({
            "iteration": self.iteration, "outer_steps": self.outer_steps,
            "generator": self.generator.state_dict(), "opt": self.opt.state_dict(),
            "noise": self.noise.state_dict(), "epoch_stats": self.epoch_stats})

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.outer_steps = int(state["outer_steps"])
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])
        self.noise.load_state_dict(state["noise"])
        self.epoch_stats = state["epoch_stats"].to(device=self.device, dtype=torch.float64).clone()

"""Guided knowledge distillation by optimal transport (GUIDER, part 3).

Per batch: up to ``kd.users`` distinct batch users and a candidate item set C of ``kd.items``
items (the batch's positives and negatives, topped up with uniform random items). Student and
teacher score C; p_u = softmax(s_u / tau), q_u = softmax(t_u / tau). The cost between candidate
items lives in the teacher's item space: M_jk = 1 - cos(e_j, e_k), scaled to [0, 1].
L_KD = mean_u OT_eps(p_u, q_u; M).

All users share M, so one Sinkhorn runs for the whole batch of users with matrix products
(the same iterations as POT's ``ot.sinkhorn2``, which a test checks user by user). The value
is the transport cost <P, M> (what ``ot.sinkhorn2`` returns); its gradient with respect to p_u
is the dual potential f_u = eps log(u_u), the envelope gradient of the entropic problem (POT's
``grad="envelope"``), so no backward pass through the iterations is needed.

Cost per batch: kd.users x kd.items scores and kd.items^2 for M and the Sinkhorn kernels,
independent of the dataset's size; ``Distiller`` checks that memory before training starts
(``guider.sizecheck``, naming kd.items and kd.users).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ...data import Batch
from ...graphs import take
from ...sizecheck import check_size

@dataclass
class KDConfig:
    type: str = "kl"  # kl | ot | none
    weight: float = 1.0  # gamma
    users: int = 2048
    items: int = 1024  # candidate items per batch (candidates=batch or teacher)
    # batch: the batch's positives and negatives, topped up with uniform random items;
    # teacher: the teacher's top_k items of each distilled user plus the batch's positives and
    # negatives (a uniform subset of them when more than kd.items); all: the whole catalogue
    # (the authors' release; kd.items is ignored: users x n_items scores, n_items^2 for OT)
    candidates: str = "teacher"
    top_k: int = 20  # candidates=teacher: the teacher's top items per distilled user
    # candidates=teacher: the top lists from the teacher's current scores at every batch (batch),
    # or from its evaluation-mode scores once at the start of each epoch (epoch: no users x items
    # teacher block per batch; lists up to an epoch old)
    top_refresh: str = "epoch"
    # top_refresh=epoch: epochs between two computations of the lists (at epochs 0, k, 2k, ...;
    # lists up to k epochs old; a lever on cost that may change results)
    top_every: int = 1
    warmup_epochs: int = 0  # gamma ramps linearly from 0 to kd.weight over these epochs

    def check(self) -> None:
        """Value checks, run when the config is validated (before any data are loaded)."""
        if self.type not in ("ot", "kl", "none"):
            raise ValueError(f"denoise.kd.type={self.type!r}: choose ot, kl or none")
        if self.top_refresh not in ("batch", "epoch"):
            raise ValueError(f"denoise.kd.top_refresh={self.top_refresh!r}: choose batch or epoch")
        if self.candidates not in CANDIDATES:
            raise ValueError(f"denoise.kd.candidates={self.candidates!r}: choose one of "
                             f"{', '.join(CANDIDATES)}")
        ranges = [("weight", self.weight >= 0, ">= 0"), ("users", self.users >= 1, ">= 1"),
                  ("items", self.items >= 1, ">= 1"), ("top_k", self.top_k >= 1, ">= 1"),
                  ("top_every", self.top_every >= 1, ">= 1"),
                  ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"), ("tau", self.tau > 0, "> 0"),
                  ("eps", self.eps > 0, "> 0"), ("sinkhorn_iters", self.sinkhorn_iters >= 1, ">= 1")]
        for key, ok, bound in ranges:
            if not ok:
                raise ValueError(f"denoise.kd.{key}={getattr(self, key)}: must be {bound}")
    tau: float = 1.0
    eps: float = 0.05
    sinkhorn_iters: int = 20
    sinkhorn_tol: float = 1e-4  # max over users of the L2 error of the second marginal


def sinkhorn(p: torch.Tensor, q: torch.Tensor, M: torch.Tensor, eps: float, max_iter: int,
             tol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Batched Sinkhorn-Knopp for rows of p and q (each summing to 1) sharing the cost M.

    Returns (transport cost <P_b, M> per row, dual potential f = eps log u per row, iterations).
    Same update order and stopping rule as POT's sinkhorn_knopp (checked every 10 iterations).
    Runs in p's dtype: float32 in training (twice as fast; after 20 iterations the potentials
    already point within cos 0.99997 of the converged ones), float64 in the test against POT.
    """
    M = M.to(p.dtype)
    q = q.to(p.dtype)
    tiny = torch.finfo(p.dtype).tiny
    K = torch.exp(-M / eps)
    Kt = K.t().contiguous()
    n = M.shape[0]
    u = torch.full_like(p, 1.0 / n)
    v = torch.full_like(q, 1.0 / n)
    it = 0
    for it in range(1, max_iter + 1):
        v = q / (u @ K).clamp(min=tiny)  # v = q / (K^T u)
        u = p / (v @ Kt).clamp(min=tiny)  # u = p / (K v)
        if it % 10 == 0:
            err = (v * (u @ K) - q).norm(dim=1).max()
            if err < tol:
                break
    cost = (u * (v @ (K * M).t())).sum(1)
    f = eps * torch.log(u.clamp(min=tiny))
    return cost, f, it


def ot_loss(s: torch.Tensor, t: torch.Tensor, M: torch.Tensor, cfg: KDConfig) -> torch.Tensor:
    """mean_u OT_eps(softmax(s_u / tau), softmax(t_u / tau); M); gradients reach s only."""
    p = torch.softmax(s / cfg.tau, dim=1)
    q = torch.softmax(t.detach() / cfg.tau, dim=1)
    with torch.no_grad():
        cost, f, _ = sinkhorn(p.detach(), q, M.detach(), cfg.eps, cfg.sinkhorn_iters, cfg.sinkhorn_tol)
    f = f.to(p.dtype)
    # value = cost; d value / d p = f (envelope theorem)
    surrogate = (f * p).sum(1) - (f * p.detach()).sum(1)
    return (cost.to(p.dtype) + surrogate).mean()


def kl_loss(s: torch.Tensor, t: torch.Tensor, cfg: KDConfig) -> torch.Tensor:
    """mean_u KL(q_u || p_u) over the same candidates and temperature."""
    log_p = F.log_softmax(s / cfg.tau, dim=1)
    log_q = F.log_softmax(t.detach() / cfg.tau, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(1).mean()


def transport_cost(item_emb: torch.Tensor) -> torch.Tensor:
    """M_jk = 1 - cos(e_j, e_k) in the teacher's item space, scaled to [0, 1]."""
    e = F.normalize(item_emb.detach(), dim=1)
    M = (1.0 - e @ e.t()).clamp(min=0.0)
    top = M.max()
    return M / top if top > 0 else M


CANDIDATES = ("batch", "teacher", "all")


def n_candidates(cfg: KDConfig, n_items: int) -> int:
    return n_items if cfg.candidates == "all" else min(cfg.items, n_items)


# candidates=teacher: the teacher's users x catalogue score block for the top lists is computed
# for at most this many scores at a time (users in blocks), whatever the catalogue's size
TOP_BLOCK_SCORES = 1 << 22


def top_block_users(n_items: int) -> int:
    return max(1, TOP_BLOCK_SCORES // max(n_items, 1))


@torch.no_grad()
def top_items(users: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
    """Each row of ``users``' top ``k`` items by the scores users @ items^T, computed for a block
    of users at a time (at most TOP_BLOCK_SCORES scores)."""
    items_t = items.t()
    step = top_block_users(items.shape[0])
    return torch.cat([(users[s:s + step] @ items_t).topk(k, dim=1).indices
                      for s in range(0, users.shape[0], step)])


class TopLists:
    """The teacher's top ``k`` items of every user, from one snapshot of its representations,
    computed on demand: a user's list the first time a batch distils that user, then kept until
    the next snapshot. Every list is what ``top_items`` gives for the whole snapshot; only the
    users a batch distils are ever scored (kd.users per batch), so a large user base pays for the
    lists it reads, not for every user's at every refresh."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, k: int):
        self.users, self.items, self.k = users.detach(), items.detach(), k
        self.top = torch.zeros(users.shape[0], k, dtype=torch.long)
        self.known = torch.zeros(users.shape[0], dtype=torch.bool)

    def __getitem__(self, users: torch.Tensor) -> torch.Tensor:
        users = users.cpu()
        missing = torch.unique(users[~self.known[users]])
        if len(missing):
            rows = missing.to(self.users.device)
            self.top[missing] = top_items(self.users[rows], self.items, self.k).cpu()
            self.known[missing] = True
        return self.top[users]

    def all(self) -> torch.Tensor:
        """Every user's list (those not read yet are computed now)."""
        return self[torch.arange(self.users.shape[0])]

    def state_dict(self) -> dict:
        return {"users": self.users, "items": self.items, "k": self.k, "top": self.top,
                "known": self.known}

    @classmethod
    def from_state(cls, state: dict) -> "TopLists":
        lists = cls(state["users"], state["items"], state["k"])
        lists.top, lists.known = state["top"], state["known"]
        return lists


def step_bytes(cfg: KDConfig, n_items: int) -> int:
    """Memory of one distillation step: the candidates' cost matrix M and the Sinkhorn kernels
    K, K^T, K*M (candidates x candidates), about a dozen users x candidates rows (scores of
    student and teacher, p, q, the scalings u and v, gradients), float32, and with
    candidates=teacher one block of the teacher's top-list scores. It depends only on kd.users
    and kd.items (and the catalogue for candidates=all), never on the number of users."""
    c = n_candidates(cfg, n_items)
    square = 5 * c * c if cfg.type == "ot" else 0
    top = 2 * min(cfg.users, top_block_users(n_items)) * n_items if cfg.candidates == "teacher" else 0
    return 4 * (square + 12 * cfg.users * c + top)


class Distiller:
    def __init__(self, cfg: KDConfig, n_items: int, seed: int):
        cfg.check()
        if cfg.type != "none":
            knob = ("denoise.kd.users (or candidates=batch|teacher)" if cfg.candidates == "all"
                    else "denoise.kd.items and denoise.kd.users")
            check_size(f"GUIDER's distillation step ({cfg.users:,} users x "
                       f"{n_candidates(cfg, n_items):,} candidate items)",
                       step_bytes(cfg, n_items), knob)
        self.cfg = cfg
        self.n_items = n_items
        self.generator = torch.Generator().manual_seed(seed)
        # kd.top_refresh=epoch: every user's top_k items by the teacher's snapshot, set by GUIDER
        # each (kd.top_every-th) epoch, each list computed when a batch first distils its user
        self.lists: TopLists | None = None

    def uses_epoch_top(self) -> bool:
        return (self.cfg.type != "none" and self.cfg.candidates == "teacher"
                and self.cfg.top_refresh == "epoch")

    def lists_due(self, epoch: int) -> bool:
        """kd.top_refresh=epoch: whether the teacher's snapshot for the lists is taken at the
        start of ``epoch`` (every kd.top_every epochs, and whenever there is none yet)."""
        return self.uses_epoch_top() and (self.lists is None or epoch % self.cfg.top_every == 0)

    def cache_teacher_top(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Every user's top_k items by the scores users @ items^T (this snapshot's), each
        computed when first read."""
        self.lists = TopLists(users, items, min(self.cfg.top_k, self.n_items))

    def weight(self, epoch: int) -> float:
        """gamma at ``epoch``: kd.weight, ramped linearly from 0 over kd.warmup_epochs."""
        w = self.cfg.warmup_epochs
        return self.cfg.weight * (min(1.0, epoch / w) if w > 0 else 1.0)

    def sample(self, batch: Batch, teacher_top: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, candidate items) for this batch, drawn with the distiller's own generator.
        ``teacher_top(users)``: the teacher's top kd.top_k items of each user (candidates=teacher)."""
        g = self.generator
        users = torch.unique(batch.users.cpu())
        if len(users) > self.cfg.users:
            users = users[torch.randperm(len(users), generator=g)[: self.cfg.users]]
        if self.cfg.candidates == "all":
            return users, torch.arange(self.n_items)
        size = min(self.cfg.items, self.n_items)
        parts = [batch.pos.cpu(), batch.neg.cpu()]
        if self.cfg.candidates == "teacher" and teacher_top is not None:
            parts.insert(0, teacher_top(users).reshape(-1).cpu())
        cand = torch.unique(torch.cat(parts))
        if len(cand) > size:
            cand = cand[torch.randperm(len(cand), generator=g)[:size]]
        elif len(cand) < size:
            mask = torch.ones(self.n_items, dtype=torch.bool)
            mask[cand] = False
            pool = torch.nonzero(mask).squeeze(1)
            extra = pool[torch.randperm(len(pool), generator=g)[: size - len(cand)]]
            cand = torch.cat([cand, extra])
        return users, cand

    def loss(self, batch: Batch, student_users: torch.Tensor, student_items: torch.Tensor,
             teacher_users: torch.Tensor, teacher_items: torch.Tensor) -> torch.Tensor:
        k = min(self.cfg.top_k, self.n_items)

        def teacher_top(users: torch.Tensor) -> torch.Tensor:
            if self.lists is not None:  # kd.top_refresh=epoch (set by GUIDER's on_epoch)
                return self.lists[users]
            return top_items(teacher_users[users.to(teacher_users.device)], teacher_items, k)

        users, cand = self.sample(batch, teacher_top)
        dev = student_users.device
        users, cand = users.to(dev), cand.to(dev)
        s = take(student_users, users) @ take(student_items, cand).t()
        with torch.no_grad():
            t = teacher_users[users] @ teacher_items[cand].t()
        if self.cfg.type == "kl":
            return kl_loss(s, t, self.cfg)
        return ot_loss(s, t, transport_cost(teacher_items[cand]), self.cfg)

    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state()}
        if self.cfg.top_every > 1 and self.lists is not None:
            state["lists"] = self.lists.state_dict()  # lists kept across epochs: exact resume
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        lists = state.get("lists")
        if lists is None and state.get("cached_top") is not None:  # checkpoints before TopLists
            lists = {"users": torch.zeros(len(state["cached_top"]), 0), "items": torch.zeros(0, 0),
                     "k": state["cached_top"].shape[1], "top": state["cached_top"],
                     "known": torch.ones(len(state["cached_top"]), dtype=torch.bool)}
        self.lists = None if lists is None else TopLists.from_state(lists)

"""AMSC: Adaptive Modality Similarity Calibration (GUIDER, part 1).

Decides, for every training interaction (u, i), whether i is consistent with the rest of u's
history. Everything is computed with sparse user-item aggregations in O(|R| d); no pairwise loop
and no n_items x n_items matrix (the kNN for the cross-modal confidence is block-wise).
See docs/guider.md for the equations next to this code.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from ...graphs import centred_unit, knn_indices, user_item_matrix

CHUNK = 1 << 20  # interactions per chunk of row-wise dot products


@dataclass
class AMSCConfig:
    conf_k: int = 10  # neighbours per modality for the cross-modal confidence
    conf_power: float = 0.5  # w_i = (conf_i / max conf)^power
    alpha_temp: float = 0.05  # softmax temperature of the adaptive modality weights
    calibrate: bool = True  # false: w = 1, equal alpha, no collaborative term
    warmup_epochs: int = 10  # lambda(t) and rho(t) ramp linearly to their maxima over this
    rho_max: float = 0.1  # final share of interactions reclassified as I_false
    per_user: bool = False  # standardise scores within each user (n_u >= 3) before the quantile
    refresh_every: int = 1  # epochs between refreshes
    knn_block: int = 2048  # rows per block in the kNN
    # the levers of docs/guider.md ("AMSC's fixes"); their defaults leave AMSC as specified
    conf_floor: float = 0.0  # w_i = floor + (1 - floor) (conf_i / max conf)^power: content kept
    user_cap: float = 1.0  # at most floor(user_cap x n_u) flags per user, lowest scores first
    score_ema: float = 0.0  # scores averaged over refreshes (c <- ema c_prev + (1 - ema) c)

    def check(self) -> None:
        """Value checks, run when the config is validated (before any data are loaded)."""
        ranges = [("conf_k", self.conf_k >= 1, ">= 1"), ("conf_power", self.conf_power >= 0, ">= 0"),
                  ("alpha_temp", self.alpha_temp > 0, "> 0"),
                  ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
                  ("rho_max", 0.0 <= self.rho_max < 1.0, "in [0, 1)"),
                  ("refresh_every", self.refresh_every >= 1, ">= 1"),
                  ("knn_block", self.knn_block >= 1, ">= 1"),
                  ("conf_floor", 0.0 <= self.conf_floor <= 1.0, "in [0, 1]"),
                  ("user_cap", 0.0 <= self.user_cap <= 1.0, "in [0, 1]"),
                  ("score_ema", 0.0 <= self.score_ema < 1.0, "in [0, 1)")]
        for key, ok, bound in ranges:
            if not ok:
                raise ValueError(f"denoise.amsc.{key}={getattr(self, key)}: must be {bound}")


def rowwise_dot(a: torch.Tensor, rows_a: torch.Tensor, b: torch.Tensor,
                rows_b: torch.Tensor) -> torch.Tensor:
    """(a[rows_a] * b[rows_b]).sum(-1), chunked so memory stays O(CHUNK x d)."""
    out = torch.empty(len(rows_a), dtype=a.dtype)
    for s in range(0, len(rows_a), CHUNK):
        out[s:s + CHUNK] = (a[rows_a[s:s + CHUNK]] * b[rows_b[s:s + CHUNK]]).sum(-1)
    return out


def cross_modal_confidence(z: dict[str, torch.Tensor], k: int, block: int) -> torch.Tensor:
    """conf_i = mean over modality pairs of |N_k^m(i) & N_k^m'(i)| / k (1 with one modality)."""
    names = list(z)
    n = next(iter(z.values())).shape[0]
    if len(names) < 2:
        return torch.ones(n)
    nbrs = {m: knn_indices(z[m], k, block, knob="denoise.amsc.knn_block") for m in names}
    total = torch.zeros(n)
    pairs = list(combinations(names, 2))
    for a, b in pairs:
        # |A & B| per row via a k x k equality table (k is small)
        overlap = (nbrs[a][:, :, None] == nbrs[b][:, None, :]).any(-1).sum(-1)
        total += overlap.float() / nbrs[a].shape[1]
    return total / len(pairs)


def confidence_weights(conf: torch.Tensor, power: float, floor: float = 0.0) -> torch.Tensor:
    """w_i = floor + (1 - floor) (conf_i / max conf)^power: with floor > 0 no item's content is
    switched off wholesale (on TikTok the image and audio kNN sets rarely overlap: conf ~ 0)."""
    top = conf.max()
    base = torch.zeros_like(conf) if top <= 0 else (conf / top).pow(power)
    return floor + (1.0 - floor) * base


def capped_per_user(flagged: torch.Tensor, c: torch.Tensor, users: torch.Tensor,
                    n_u: torch.Tensor, cap: float, tie: torch.Tensor | None = None) -> torch.Tensor:
    """Keep at most floor(cap x n_u) flags per user: those with the lowest scores ``c``, equal
    scores ordered by ``tie`` (lower first; e.g. the teacher's user-item score, so that the two
    items of a two-item user, whose consistency scores are equal by symmetry, are told apart),
    then by position. Vectorised: one lexicographic sort, ranks within users from the sort."""
    if cap >= 1.0 or not flagged.any():
        return flagged
    n = len(c)
    order = torch.arange(n)
    if tie is not None:
        order = order[torch.argsort(tie[order], stable=True)]
    cv = torch.where(torch.isnan(c), torch.full_like(c, torch.inf), c)
    order = order[torch.argsort(cv[order], stable=True)]
    order = order[torch.argsort(users[order], stable=True)]  # by user, then score, then tie
    f_sorted = flagged[order].long()
    u_sorted = users[order]
    # rank of each flag among its user's flags: cumulative count minus the count before the user
    csum = torch.cumsum(f_sorted, 0)
    first = torch.ones(n, dtype=torch.bool)
    first[1:] = u_sorted[1:] != u_sorted[:-1]
    start = torch.cummax(torch.where(first, torch.arange(n), torch.zeros(n, dtype=torch.long)),
                         0).values
    before = torch.where(start > 0, csum[(start - 1).clamp(min=0)], torch.zeros_like(csum))
    rank = csum - before  # 1-based among the user's flags
    allowed = torch.floor(cap * n_u[u_sorted]).long()
    keep_sorted = f_sorted.bool() & (rank <= allowed)
    out = torch.zeros(n, dtype=torch.bool)
    out[order] = keep_sorted
    return out


class AMSC:
    """Holds the static parts (centred features, confidence weights, modality weights) and
    computes consistency scores c_u(i) for every training interaction on demand."""

    def __init__(self, cfg: AMSCConfig, features: dict[str, np.ndarray], users: np.ndarray,
                 items: np.ndarray, n_users: int, n_items: int, seed: int):
        if not features:
            raise ValueError(
                "denoise=guider needs item features (AMSC compares a user's items by content), "
                "but the dataset has none loaded; choose a dataset with feature files or "
                "dataset=synthetic"
            )
        self.cfg = cfg
        self.users = torch.as_tensor(users, dtype=torch.long)
        self.items = torch.as_tensor(items, dtype=torch.long)
        self.n_users, self.n_items = n_users, n_items
        self.R = user_item_matrix(self.users, self.items, n_users, n_items)
        self.n_u = torch.bincount(self.users, minlength=n_users).float()
        self.z = {m: centred_unit(torch.as_tensor(f)) for m, f in features.items()}
        self.conf = cross_modal_confidence(self.z, cfg.conf_k, cfg.knn_block)
        cfg.check()
        self.w = confidence_weights(self.conf, cfg.conf_power, cfg.conf_floor)
        self.previous: torch.Tensor | None = None  # the last refresh's scores (score_ema)
        gen = torch.Generator().manual_seed(seed)
        self.random_items = torch.randint(n_items, (len(self.items),), generator=gen)
        self.gap = self.modality_gaps()
        self.alpha = torch.softmax(self.gap / cfg.alpha_temp, dim=0)
        self._modal: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.z)

    def modality_gaps(self) -> torch.Tensor:
        """g_m: mean consistency of observed (u, i) with the rest of u's history under modality
        m, minus the same for uniformly random (u, j)."""
        multi = self.n_u[self.users] >= 2
        u, i, j = self.users[multi], self.items[multi], self.random_items[multi]
        n_u = self.n_u[u]
        gaps = []
        for m, z in self.z.items():
            agg = self.R @ z  # sum of z over each user's items
            observed = (rowwise_dot(z, i, agg, u) - (z[i] * z[i]).sum(-1)) / (n_u - 1)
            random = rowwise_dot(z, j, agg, u) / n_u
            gaps.append(observed.mean() - random.mean())
        return torch.stack(gaps)

    def schedule(self, epoch: int) -> tuple[float, float]:
        """(lambda(t), rho(t)): both ramp linearly over the warm-up."""
        ramp = min(1.0, epoch / self.cfg.warmup_epochs) if self.cfg.warmup_epochs > 0 else 1.0
        return ramp, self.cfg.rho_max * ramp

    def modal_terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The content part of sum_{i'} S(i, i') and of the i' = i term, per interaction. It
        depends only on the features, w and alpha, which are fixed for the run: computed once."""
        if self._modal is None:
            if self.cfg.calibrate:
                w, alpha = self.w, self.alpha
            else:
                w = torch.ones(self.n_items)
                alpha = torch.full((len(self.z),), 1.0 / len(self.z))
            u, i = self.users, self.items
            w_i = w[i]
            total = torch.zeros(len(i))
            self_term = torch.zeros(len(i))
            for a, z in zip(alpha, self.z.values()):
                A = self.R @ (w[:, None] * z)
                total += a * w_i * rowwise_dot(z, i, A, u)
                self_term += a * w_i * w_i * (z[i] * z[i]).sum(-1)
            self._modal = (total, self_term)
        return self._modal

    def consistency(self, item_emb: torch.Tensor | None, lam: float) -> torch.Tensor:
        """c_u(i) for every training interaction; NaN where n_u = 1 (clean by definition).

        sum_{i' in I(u)} S(i, i') = w_i sum_m alpha_m z_i^m . A_u^m
                                   + lam (e_i . E_u - w_i e_i . W_u)
        with A_u^m = sum w_i' z_i'^m, E_u = sum e_i', W_u = sum w_i' e_i'; minus the i' = i term.
        """
        cfg = self.cfg
        u, i = self.users, self.items
        if not cfg.calibrate:
            lam = 0.0
        w = self.w if cfg.calibrate else torch.ones(self.n_items)
        w_i = w[i]
        total, self_term = self.modal_terms()
        total, self_term = total.clone(), self_term.clone()
        if lam > 0 and item_emb is not None:
            e = torch.nn.functional.normalize(item_emb.detach().float().cpu(), dim=1)
            E = self.R @ e
            W = self.R @ (w[:, None] * e)
            total += lam * (rowwise_dot(e, i, E, u) - w_i * rowwise_dot(e, i, W, u))
            self_term += lam * (1.0 - w_i * w_i) * (e[i] * e[i]).sum(-1)
        n_u = self.n_u[u]
        c = (total - self_term) / (n_u - 1).clamp(min=1.0)
        c[n_u < 2] = torch.nan
        return c

    def standardise_per_user(self, c: torch.Tensor) -> torch.Tensor:
        """z-score c within each user with n_u >= 3 (others unchanged)."""
        u = self.users
        valid = ~torch.isnan(c)
        cv = torch.where(valid, c, torch.zeros_like(c))
        s1 = torch.zeros(self.n_users).index_add_(0, u, cv)
        s2 = torch.zeros(self.n_users).index_add_(0, u, cv * cv)
        n = self.n_u
        mean = s1 / n.clamp(min=1)
        std = (s2 / n.clamp(min=1) - mean * mean).clamp(min=0).sqrt()
        ok = (self.n_u[u] >= 3) & (std[u] > 1e-12)
        out = c.clone()
        out[ok] = (c[ok] - mean[u][ok]) / std[u][ok]
        return out

    def reclassify(self, c: torch.Tensor, rho: float) -> torch.Tensor:
        """I_false: interactions whose score is below the rho-quantile of all scores (users with
        one interaction are never flagged)."""
        valid = ~torch.isnan(c)
        flagged = torch.zeros(len(c), dtype=torch.bool)
        if rho <= 0 or not valid.any():
            return flagged
        threshold = float(np.quantile(c[valid].double().numpy(), rho))
        flagged[valid] = c[valid] < threshold
        return flagged

    def refresh(self, item_emb: torch.Tensor | None, epoch: int,
                affinity: torch.Tensor | None = None,
                scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (higher = more consistent; NaN = clean by definition) and the I_false mask.
        ``affinity``: the teacher's score of each training interaction, the tie-break of the
        per-user cap. ``scores``: another signal in place of the consistency (one per training
        interaction, higher = more trusted; GUIDER's dbpr.flags=student), passed through the
        same schedule, standardisation, averaging and cap; users with one interaction stay
        unflagged."""
        cfg = self.cfg
        lam, rho = self.schedule(epoch)
        if scores is None:
            c = self.consistency(item_emb, lam)
        else:
            c = scores.detach().float().cpu().clone()
            c[self.n_u[self.users] < 2] = torch.nan
        if cfg.per_user:
            c = self.standardise_per_user(c)
        if cfg.score_ema > 0 and self.previous is not None:
            c = cfg.score_ema * self.previous + (1.0 - cfg.score_ema) * c
        self.previous = c
        flagged = self.reclassify(c, rho)
        flagged = capped_per_user(flagged, c, self.users, self.n_u, cfg.user_cap, affinity)
        return c, flagged

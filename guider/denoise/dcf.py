"""DCF (He et al., KDD 2024, "Double Correction Framework for Denoising Recommendation").

Two corrections of loss-based sample dropping:

1. **Sample dropping correction.** A sample is judged by its loss over time, not by one
   iteration's loss. Its losses are damped by phi(l) = log(1 + l + l^2 / 2) (non-decreasing,
   about l for small l, logarithmic for outliers) and averaged over a time window of
   ``window_epochs`` epochs: mu = (1/s) sum phi(l). A lower confidence bound from a concentration
   inequality then gives hard samples (high variance, rarely kept) the benefit of the doubt:
   l* = max(0, mu - sigma2 * (s + sigma2 * log(2 s) / s^2) / (k + 1 - sigma2)), with s the losses
   seen in the window and k the times the sample was kept in it. Each batch drops the share
   drop_rate(t) of samples with the largest l* (the T-CE schedule, ``guider.denoise.tce``).
2. **Progressive label correction.** The most confidently noisy of the would-be-dropped samples,
   the top ``relabel_ratio * drop_rate(t)`` share of the batch by l*, are not discarded but
   relabelled and trained on with the corrected label; the relabelled share grows with drop_rate(t).

Adaptations (docs/baselines.md):
- *pointwise to pairwise:* the paper scores the binary cross-entropy of positive interactions;
  here l is the per-sample BPR term -log sigmoid(y_ui - y_uj) of the triple (u, i, j). The loss of
  an interaction is seen once per epoch (with a fresh negative each time), so the window mean is
  over the epochs of the window, and "the loss over time" includes the negative-sampling noise.
- *relabelling, pairwise:* relabelling a positive (u, i) to 0 becomes reversing its pair: with
  ``relabel=flip`` (default) the relabelled triple's term is -log sigmoid(y_uj - y_ui), computed
  from the backbone's representations of the same forward pass (``batch_embeddings``).
  ``relabel=drop`` only drops them (no label correction: the sample-dropping correction alone).
- *normalisation:* kept terms and flipped terms are summed and divided by the number kept (the
  trainer's ``weighted_mean`` denominator); the paper divides by kept + relabelled, which is larger
  by a factor of at most 1 + relabel_ratio * drop_rate (1.01 at the defaults).
- *the bound's counters:* the released code is ambiguous about s and k (it resets the loss means
  every ``time_step`` epochs but counts s from the start of training, and keeps k by batch
  position); here both are per interaction and reset with the window: s = losses seen in the
  window, k = times kept (trained as a positive) in the window. With the paper's
  sigma2 = 1e-4 the bound moves l* by at most about 1e-4 * s: it breaks near-ties only.
- *sigma2 schedule:* sigma2 is a constant by default; the released code decays it linearly to 0
  over its 10 training epochs. ``sigma2_decay_epochs`` = 0 (default) keeps it fixed;
  = E reproduces the code's sigma2 * (1 - epoch / (E - 1)), 0 from epoch E - 1 on.
- *detection (not in the paper):* ``noise_scores`` is each interaction's latest l*;
  ``flagged`` is the set dropped or relabelled the last time each was seen (the latest epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..data import Batch, Interactions
from ..graphs import take
from .base import DENOISERS, Denoiser, DenoiseConfig, check_choice, check_rate
from .tce import drop_rate_at, n_kept

RELABEL = ("flip", "drop")
KEPT, DROPPED, RELABELLED = 0, 1, 2


@dataclass
class DCFConfig(DenoiseConfig):
    name: str = "dcf"
    drop_rate: float = 0.2  # maximum share of each batch dropped (relabelled ones included)
    num_gradual: int = 30000  # iterations over which the drop rate rises linearly to drop_rate
    relabel_ratio: float = 0.05  # share of the dropped samples (the highest l*) relabelled
    relabel: str = "flip"  # flip: train the relabelled pair reversed | drop: discard them too
    window_epochs: int = 3  # epochs per time window of the damped loss mean (time_step)
    sigma2: float = 1.0e-4  # sigma^2 of the concentration bound
    sigma2_decay_epochs: int = 0  # 0: fixed sigma2; E: linear decay to 0 over E epochs

    def check(self) -> None:
        """Value checks, run when the config is validated (before any data are loaded)."""
        check_rate(self.drop_rate, "drop_rate")
        check_rate(self.relabel_ratio, "relabel_ratio", upper_open=False)
        check_choice(self.relabel, RELABEL, "relabel")
        if self.num_gradual < 0:
            raise ValueError(f"denoise.num_gradual={self.num_gradual} must be >= 0")
        if self.window_epochs < 1:
            raise ValueError(f"denoise.window_epochs={self.window_epochs} must be >= 1")
        if not 0.0 <= self.sigma2 < 1.0:
            raise ValueError(f"denoise.sigma2={self.sigma2} must be in [0, 1)")
        if self.sigma2_decay_epochs < 0:
            raise ValueError(f"denoise.sigma2_decay_epochs={self.sigma2_decay_epochs} must be >= 0")


def damp(loss: torch.Tensor) -> torch.Tensor:
    """phi(l) = log(1 + l + l^2 / 2)."""
    return torch.log1p(loss + 0.5 * loss * loss)


def lower_bound(mu: torch.Tensor, s: torch.Tensor, kept: torch.Tensor,
                sigma2: float) -> torch.Tensor:
    """l* = max(0, mu - sigma2 (s + sigma2 log(2 s) / s^2) / (k + 1 - sigma2))."""
    bound = sigma2 * (s + sigma2 * torch.log(2 * s) / (s * s)) / (kept + 1 - sigma2)
    return F.relu(mu - bound)


@DENOISERS.register("dcf", DCFConfig)
class DCF(Denoiser):
    def __init__(self, cfg: DCFConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        super().__init__(cfg, data, backbone, device, seed)
        cfg.check()
        n = len(data.train)
        self.iteration = 0
        self.epoch = 0
        self.phi_sum = torch.zeros(n, device=device)  # sum of phi(l) in the window
        self.seen = torch.zeros(n, device=device)  # s: losses seen in the window
        self.kept = torch.zeros(n, device=device)  # k: times kept in the window
        self.score = torch.full((n,), float("nan"), device=device)  # latest l*
        self.status = torch.full((n,), KEPT, dtype=torch.int8, device=device)
        self._flip: tuple[Batch, torch.Tensor, int] | None = None

    def current_rate(self) -> float:
        return drop_rate_at(self.iteration, self.cfg.drop_rate, self.cfg.num_gradual)

    def current_sigma2(self) -> float:
        e = self.cfg.sigma2_decay_epochs
        if e == 0:
            return self.cfg.sigma2
        if e == 1:
            return 0.0 if self.epoch >= 1 else self.cfg.sigma2
        return self.cfg.sigma2 * max(0.0, 1.0 - self.epoch / (e - 1))

    def on_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if epoch % self.cfg.window_epochs == 0:
            self.phi_sum.zero_()
            self.seen.zero_()
            self.kept.zero_()

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor | None:
        cfg, idx = self.cfg, batch.idx
        main = main.detach().to(self.phi_sum.dtype)
        phi = damp(main)
        s = self.seen[idx] + 1
        total = self.phi_sum[idx] + phi
        lstar = lower_bound(total / s, s, self.kept[idx], self.current_sigma2())
        self.phi_sum[idx] = total
        self.seen[idx] = s
        self.score[idx] = lstar

        rate = self.current_rate()
        self.iteration += 1
        n = len(main)
        n_drop = n - n_kept(n, rate)
        n_relabel = min(n_drop, n - n_kept(n, cfg.relabel_ratio * rate))
        order = torch.argsort(lstar, descending=True, stable=True)
        status = torch.full((n,), KEPT, dtype=torch.int8, device=main.device)
        status[order[:n_relabel]] = RELABELLED
        status[order[n_relabel:n_drop]] = DROPPED
        keep = status == KEPT
        self.status[idx] = status
        self.kept[idx] += keep.to(self.kept.dtype)
        self._flip = None
        if cfg.relabel == "flip" and n_relabel > 0:
            self._flip = (batch, order[:n_relabel], int(keep.sum()))
        if n_drop == 0:
            return None  # the plain mean, exactly as without a denoiser
        return keep.to(main.dtype)

    def extra_loss(self, batch: Batch, backbone: Backbone) -> dict[str, torch.Tensor]:
        pending, self._flip = self._flip, None
        if pending is None or pending[0] is not batch:
            return {}
        _, rows, n_keep = pending
        users, items = backbone.batch_embeddings(batch)
        u = take(users, batch.users[rows])
        y_ui = (u * take(items, batch.pos[rows])).sum(-1)
        y_uj = (u * take(items, batch.neg[rows])).sum(-1)
        # the relabelled pair, reversed: -log sigmoid(y_uj - y_ui)
        return {"relabel": F.softplus(y_ui - y_uj).sum() / max(1, n_keep)}

    def noise_scores(self) -> np.ndarray | None:
        seen = ~torch.isnan(self.score)
        if not bool(seen.any()):
            return None
        v = self.score.clone()
        v[~seen] = v[seen].min()
        return v.cpu().numpy()

    def flagged(self) -> np.ndarray | None:
        return (self.status != KEPT).cpu().numpy()

    def summary(self) -> dict:
        return {"iterations": self.iteration, "drop_rate_now": self.current_rate(),
                "n_dropped": int((self.status == DROPPED).sum()),
                "n_relabelled": int((self.status == RELABELLED).sum())}

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "epoch": self.epoch, "phi_sum": self.phi_sum,
                "seen": self.seen, "kept": self.kept, "score": self.score, "status": self.status}

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        for key in ("phi_sum", "seen", "kept", "score", "status"):
            setattr(self, key, state[key].to(self.device))
        self._flip = None

"""T-CE (Wang et al., WSDM 2021, "Denoising Implicit Feedback for Recommendation"): truncated loss.

Per batch, the share drop_rate(t) of samples with the largest loss gets weight 0, the rest weight
1; drop_rate(t) = min(t / num_gradual, 1) * drop_rate rises linearly with the training iteration t
(batches seen before this one, counted from 0) and then stays at drop_rate. As in the authors'
code, floor((1 - drop_rate(t)) * n) samples of a batch of n are kept; ties in the loss are broken
by position in the batch (stable sort), so the choice is deterministic.

Adaptations (docs/baselines.md):
- *pointwise to pairwise:* the paper truncates the binary cross-entropy of positive interactions;
  here the loss of a training interaction (u, i) is the backbone's per-sample BPR term
  -log sigmoid(y_ui - y_uj) with the sampled negative j, and dropping it drops the whole triple.
- *normalisation:* the trainer averages the kept terms, sum(w l) / max(1, sum w), as the paper
  averages over the kept samples.
- *detection (not in the paper):* ``noise_scores`` is an exponential moving average over epochs of
  each interaction's loss (``score_momentum``); ``flagged`` is the set dropped the last time each
  interaction was seen, i.e. in the most recent epoch. Neither changes training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..backbones import Backbone
from ..data import Batch, Interactions
from .base import DENOISERS, Denoiser, DenoiseConfig, check_rate


@dataclass
class TCEConfig(DenoiseConfig):
    name: str = "tce"
    drop_rate: float = 0.2  # maximum share of each batch dropped
    num_gradual: int = 30000  # iterations (batches) over which the drop rate rises to drop_rate
    score_momentum: float = 0.5  # detection only: EMA momentum of the per-interaction loss

    def check(self) -> None:
        """Value checks, run when the config is validated (before any data are loaded)."""
        check_rate(self.drop_rate, "drop_rate")
        check_rate(self.score_momentum, "score_momentum")
        if self.num_gradual < 0:
            raise ValueError(f"denoise.num_gradual={self.num_gradual} must be >= 0")


def drop_rate_at(t: int, drop_rate: float, num_gradual: int) -> float:
    """min(t / num_gradual, 1) * drop_rate; num_gradual = 0 means the full rate from the start."""
    if num_gradual <= 0:
        return drop_rate
    return min(t / num_gradual, 1.0) * drop_rate


def n_kept(n: int, rate: float) -> int:
    """floor((1 - rate) * n), with a guard against 0.29 * 100 = 28.999..."""
    return min(n, max(0, int(math.floor((1.0 - rate) * n + 1e-9))))


def largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest values (stable: earlier positions win ties)."""
    mask = torch.zeros(len(values), dtype=torch.bool, device=values.device)
    if k > 0:
        order = torch.argsort(values, descending=True, stable=True)
        mask[order[:k]] = True
    return mask


class RunningScore:
    """A per-interaction exponential moving average: the first value is taken as is, later ones
    as m * old + (1 - m) * new."""

    def __init__(self, n: int, momentum: float, device: torch.device):
        self.momentum = momentum
        self.value = torch.zeros(n, device=device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)

    def update(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        x = x.detach().to(self.value.dtype)
        old = self.value[idx]
        m = self.momentum
        self.value[idx] = torch.where(self.seen[idx], m * old + (1 - m) * x, x)
        self.seen[idx] = True

    def scores(self) -> np.ndarray | None:
        """The averages, unseen interactions the least suspicious; None before any update."""
        if not bool(self.seen.any()):
            return None
        v = self.value.clone()
        v[~self.seen] = v[self.seen].min()
        return v.cpu().numpy()

    def state_dict(self) -> dict:
        return {"value": self.value, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].to(self.value.device)
        self.seen = state["seen"].to(self.seen.device)


@DENOISERS.register("tce", TCEConfig)
class TCE(Denoiser):
    def __init__(self, cfg: TCEConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        super().__init__(cfg, data, backbone, device, seed)
        cfg.check()
        n = len(data.train)
        self.iteration = 0
        self.loss = RunningScore(n, cfg.score_momentum, device)
        self.dropped = torch.zeros(n, dtype=torch.bool, device=device)

    def current_rate(self) -> float:
        return drop_rate_at(self.iteration, self.cfg.drop_rate, self.cfg.num_gradual)

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor | None:
        rate = self.current_rate()
        self.iteration += 1
        n = len(main)
        drop = largest(main, n - n_kept(n, rate))
        self.loss.update(batch.idx, main)
        self.dropped[batch.idx] = drop
        if not bool(drop.any()):
            return None  # the plain mean, exactly as without a denoiser
        return (~drop).to(main.dtype)

    def noise_scores(self) -> np.ndarray | None:
        return self.loss.scores()

    def flagged(self) -> np.ndarray | None:
        return self.dropped.cpu().numpy()

    def summary(self) -> dict:
        return {"iterations": self.iteration, "drop_rate_now": self.current_rate(),
                "n_flagged": int(self.dropped.sum())}

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "loss": self.loss.state_dict(),
                "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.loss.load_state_dict(state["loss"])
        self.dropped = state["dropped"].to(self.device)

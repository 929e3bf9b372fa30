"""R-CE (Wang et al., WSDM 2021, "Denoising Implicit Feedback for Recommendation"): reweighted loss.

Each sample's loss is multiplied by the model's detached confidence in its label to the power
beta, so hard samples (low confidence, which noisy interactions tend to be) are down-weighted;
beta = 0 is plain training.

Adaptations (docs/baselines.md):
- *pointwise to pairwise:* the paper weights the binary cross-entropy of a positive (u, i) by
  sigmoid(y_ui)^beta (and of a sampled negative by (1 - sigmoid(y_uj))^beta). Here the sample is
  the BPR triple (u, i, j) and the confidence is the model's detached probability of the observed
  ordering, sigmoid(y_ui - y_uj) = exp(-l), l the per-sample BPR term; the weight is
  exp(-beta * l) = sigmoid(y_ui - y_uj)^beta. One weight per triple replaces the paper's two.
- *normalisation:* the paper averages w * l over the batch (divides by n); the trainer divides by
  sum(w) (``weighted_mean``). Within a batch the weights' ratios, hence the direction of the
  gradient, are the same; the step is larger by n / sum(w) >= 1.
- *detection (not in the paper):* ``noise_scores`` is an exponential moving average over epochs of
  each interaction's -confidence (``score_momentum``). R-CE drops nothing: no ``flagged`` set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..backbones import Backbone
from ..data import Batch, Interactions
from .base import DENOISERS, Denoiser, DenoiseConfig, check_rate
from .tce import RunningScore


@dataclass
class RCEConfig(DenoiseConfig):
    name: str = "rce"
    beta: float = 0.2  # weight = confidence^beta; 0 = plain BPR
    score_momentum: float = 0.5  # detection only: EMA momentum of the per-interaction -confidence

    def check(self) -> None:
        """Value checks, run when the config is validated (before any data are loaded)."""
        if self.beta < 0:
            raise ValueError(f"denoise.beta={self.beta} must be >= 0 (it down-weights hard pairs)")
        check_rate(self.score_momentum, "score_momentum")


@DENOISERS.register("rce", RCEConfig)
class RCE(Denoiser):
    def __init__(self, cfg: RCEConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        super().__init__(cfg, data, backbone, device, seed)
        cfg.check()
        self.neg_confidence = RunningScore(len(data.train), cfg.score_momentum, device)

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor | None:
        main = main.detach()
        self.neg_confidence.update(batch.idx, -torch.exp(-main))
        return torch.exp(-self.cfg.beta * main)  # sigmoid(y_ui - y_uj) ** beta

    def noise_scores(self) -> np.ndarray | None:
        return self.neg_confidence.scores()

    def state_dict(self) -> dict:
        return {"neg_confidence": self.neg_confidence.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.neg_confidence.load_state_dict(state["neg_confidence"])

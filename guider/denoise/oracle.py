"""The oracle: a measurement ceiling, never a method.

It reads the labels of the injected noise (``Interactions.train_noise``), which no real denoiser
can see, and gives the interactions labelled as noise the weight ``false_weight`` (default 0) in
the backbone's main term, 1 elsewhere. With ``graph=true`` it also takes them out of every graph
the backbone builds from training interactions (the user-item adjacency, FREEDOM's pruned graph,
LGMRec's hypergraph input, ...): the backbone is built from the training split without them,
while the sampler still visits every training interaction (at weight ``false_weight``).

What a denoiser gains under noise is measured against ``none`` (the floor) and ``oracle`` (what
perfect detection would give with the same backbone, seed and budget). Its scores are the
labels themselves, so its detection AUC is 1 by construction. See docs/measuring.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..backbones import Backbone
from ..data import Batch, Interactions
from .base import DENOISERS, Denoiser, DenoiseConfig


@dataclass
class OracleConfig(DenoiseConfig):
    name: str = "oracle"
    false_weight: float = 0.0  # weight of an interaction labelled as injected noise
    graph: bool = False  # true: labelled interactions are also left out of the backbone's graphs

    def check(self) -> None:
        if not 0.0 <= self.false_weight <= 1.0:
            raise ValueError(f"denoise.false_weight={self.false_weight}: must lie in [0, 1]")


def require_labels(data: Interactions, who: str = "denoise=oracle",
                   otherwise: str = "choose another denoiser") -> None:
    if not data.has_noise_labels:
        raise ValueError(
            f"{who} needs noise labels, but dataset '{data.name}' carries none (no noise "
            f"was injected). Inject noise (noise=random|popular|modal with noise.ratio > 0), use "
            f"dataset=synthetic (labelled by construction), or {otherwise}.")


def imperfect_flags(labels: np.ndarray, recall: float, precision: float,
                    seed: int) -> np.ndarray:
    """Flags made from the noise labels with a chosen recall and precision: a random
    round(recall x |noise|) of the labelled interactions, plus as many random clean ones as
    bring the flagged set's precision to ``precision`` (round(k (1 - p) / p) of them). A
    measurement of how good a detector must be, never a method. recall = precision = 1 gives
    the labels themselves. Deterministic in ``seed``."""
    labels = np.asarray(labels, dtype=bool)
    if not (0.0 < recall <= 1.0 and 0.0 < precision <= 1.0):
        raise ValueError(f"oracle flags: recall={recall} and precision={precision} must lie in "
                         f"(0, 1]")
    noisy, clean = np.flatnonzero(labels), np.flatnonzero(~labels)
    k = int(round(recall * len(noisy)))
    n_false = int(round(k * (1.0 - precision) / precision))
    if n_false > len(clean):
        raise ValueError(f"oracle flags: precision={precision} at recall={recall} needs "
                         f"{n_false} false flags, but only {len(clean)} interactions are clean; "
                         f"raise the precision or lower the recall")
    rng = np.random.default_rng(seed)
    flags = np.zeros(len(labels), dtype=bool)
    flags[rng.choice(noisy, size=k, replace=False)] = True
    flags[rng.choice(clean, size=n_false, replace=False)] = True
    return flags


@DENOISERS.register("oracle", OracleConfig)
class Oracle(Denoiser):
    """Weight ``false_weight`` on labelled noise, 1 elsewhere; optionally no noisy graph edges."""

    @classmethod
    def graph_edges(cls, cfg: OracleConfig, data: Interactions) -> np.ndarray | None:
        cfg.check()
        require_labels(data)
        return ~data.train_noise if cfg.graph else None

    def __init__(self, cfg: OracleConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        super().__init__(cfg, data, backbone, device, seed)
        cfg.check()
        require_labels(data)
        labels = torch.as_tensor(data.train_noise, dtype=torch.bool)
        self.omega = torch.where(labels, torch.tensor(float(cfg.false_weight)),
                                 torch.tensor(1.0)).to(device)

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor | None:
        return self.omega[batch.idx]

    def noise_scores(self) -> np.ndarray | None:
        return self.data.train_noise.astype(np.float64)

    def flagged(self) -> np.ndarray | None:
        return self.data.train_noise.copy()

    def summary(self) -> dict:
        return {"n_labelled": int(self.data.train_noise.sum()),
                "graph_edges_removed": int(self.data.train_noise.sum()) if self.cfg.graph else 0}

"""The denoiser interface the trainer knows, and the denoiser registry.

A denoiser may (1) weight the backbone's unreduced main term per sample, (2) add loss terms,
(3) train models of its own with their own optimisers in ``step``, (4) react to epochs, and
(5) score training interactions as likely noise for detection metrics. ``none`` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from omegaconf import MISSING

from ..backbones import Backbone
from ..data import Batch, Interactions
from ..registry import Registry


@dataclass
class DenoiseConfig:
    name: str = MISSING

    def check(self) -> None:
        """Value checks (ranges, choices) of the denoiser's keys: run by the registry when the
        config is validated, before any data are loaded, and by the denoiser's constructor."""


class Denoiser:
    # True when ``scorers`` returns recommenders of its own: the trainer then keeps the
    # denoiser's state at the student's best epoch, so they are also measured there
    has_scorers: ClassVar[bool] = False

    @classmethod
    def graph_edges(cls, cfg: DenoiseConfig, data: Interactions) -> np.ndarray | None:
        """Boolean mask over the training interactions: those the backbone's graphs are built
        from (None: all of them). Asked before the backbone is built; the sampler and the loss
        still see every training interaction."""
        return None

    @classmethod
    def embedding_tables(cls, cfg: DenoiseConfig) -> list[tuple[str, int, str]]:
        """The user + item embedding tables of the denoiser's own models, as (what, width, the
        key that shrinks it), so that their memory is checked before anything is built."""
        return []

    def __init__(self, cfg: DenoiseConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        self.cfg = cfg
        self.data = data
        self.device = device
        self.seed = seed

    def on_epoch(self, epoch: int) -> None:
        """Called before each training epoch."""

    def edge_weights(self) -> torch.Tensor | None:
        """Per training interaction weights for the backbone's user-item graph (asked after
        ``on_epoch``; ``Backbone.set_edge_weights`` rebuilds the graph when a new tensor comes),
        so that flags reach the propagation, not only the loss. None: the graph as built."""
        return None

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor | None:
        """Per-sample weights for the main term (``main`` is detached); None means all ones."""
        return None

    def extra_loss(self, batch: Batch, backbone: Backbone) -> dict[str, torch.Tensor]:
        """Extra terms added to the backbone's loss, by name."""
        return {}

    def step(self, batch: Batch) -> None:
        """Train the denoiser's own models on this batch (called before the backbone's step)."""

    def on_validation(self, validate: Callable[..., dict[str, float]],
                      metric: str) -> dict[str, float]:
        """Called after each of the student's validations with ``validate`` (a block scorer ->
        the valid metrics, on the student's valid users; ``validate(scorer, users=N)``: on a fixed
        sample of N of them) and the early-stopping metric's name;
        returns extra columns for that row of history.csv (e.g. the teacher's metric)."""
        return {}

    def noise_scores(self) -> np.ndarray | None:
        """One score per training interaction, higher = more likely noise; None if it has none."""
        return None

    def flagged(self) -> np.ndarray | None:
        """Boolean mask of the training interactions it currently treats as noise, if any."""
        return None

    def scorers(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Block scorers of the denoiser's own recommenders (GUIDER's teacher), evaluated
        after training next to the student for diagnosis."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Extra numbers for metrics.json (e.g. modality weights)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def weighted_mean(terms: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sum(w * l) / max(1, sum(w)); the plain mean when ``weights`` is None."""
    if weights is None:
        return terms.mean()
    return (weights * terms).sum() / weights.sum().clamp(min=1.0)


def check_choice(value: str, choices: Sequence[str], key: str) -> None:
    """Raise ``ValueError`` naming ``denoise.<key>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"denoise.{key}={value!r}: choose one of {', '.join(choices)}")


def check_rate(value: float, key: str, upper_open: bool = True) -> None:
    """Raise ``ValueError`` naming ``denoise.<key>`` unless 0 <= value < 1 (<= 1 when not
    ``upper_open``)."""
    ok = 0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0
    if not ok:
        bound = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"denoise.{key}={value} must be in {bound}")


DENOISERS: Registry[Denoiser] = Registry("denoise")


@dataclass
class NoDenoiseConfig(DenoiseConfig):
    name: str = "none"


@DENOISERS.register("none", NoDenoiseConfig)
class NoDenoiser(Denoiser):
    """The identity: every interaction weighs 1, nothing is added."""

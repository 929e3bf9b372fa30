"""Denoisers behind one interface, found by config name."""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..data import Interactions
from . import guider as _guider  # noqa: F401  (registers denoise=guider)
from . import bod, dcf, deca, oracle, rce, tce  # noqa: F401  (register the baselines, the oracle)
from .base import DENOISERS, Denoiser, DenoiseConfig, weighted_mean

__all__ = ["DENOISERS", "Denoiser", "DenoiseConfig", "weighted_mean", "build_denoiser"]


def build_denoiser(cfg: DenoiseConfig, data: Interactions, backbone: Backbone,
                   device: torch.device, seed: int) -> Denoiser:
    return DENOISERS.get(cfg.name).cls(cfg, data, backbone, device, seed)

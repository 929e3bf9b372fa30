"""Denoisers behind one interface, found by config name. A new denoiser is one module (or
subpackage) of this package that registers itself (``@DENOISERS.register``) and one yaml in
conf/denoise/; nothing else lists it."""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..data import Interactions
from ..registry import import_all
from .base import DENOISERS, Denoiser, DenoiseConfig, weighted_mean

import_all(__name__, __path__)  # every module and subpackage registers itself (guider/, tce, ...)

__all__ = ["DENOISERS", "Denoiser", "DenoiseConfig", "weighted_mean", "build_denoiser"]


def build_denoiser(cfg: DenoiseConfig, data: Interactions, backbone: Backbone,
                   device: torch.device, seed: int) -> Denoiser:
    return DENOISERS.get(cfg.name).cls(cfg, data, backbone, device, seed)

"""Backbones: one module per model over the shared graph toolkit, found by config name."""

from __future__ import annotations

import torch

from ..data import Interactions
from . import bm3, freedom, lattice, lgmrec, lightgcn, mf, mgcn, smore, vbpr  # noqa: F401  (registers)
from .base import BACKBONES, Backbone, BackboneConfig, Losses, Scorer

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "Losses", "Scorer", "build_backbone"]


def build_backbone(cfg: BackboneConfig, data: Interactions, device: torch.device) -> Backbone:
    return BACKBONES.get(cfg.name).cls(cfg, data).to(device)

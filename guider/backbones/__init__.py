"""Backbones: one module per model over the shared graph toolkit, found by config name.

Every module of this package is imported here, so a new model is one module that registers
itself (``@BACKBONES.register``) and one yaml in conf/backbone/; nothing else lists it."""

from __future__ import annotations

import torch

from ..data import Interactions
from ..registry import import_all
from .base import BACKBONES, Backbone, BackboneConfig, Losses, Scorer

import_all(__name__, __path__)

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "Losses", "Scorer", "build_backbone"]


def build_backbone(cfg: BackboneConfig, data: Interactions, device: torch.device) -> Backbone:
    return BACKBONES.get(cfg.name).cls(cfg, data).to(device)

"""Optimiser construction shared by the trainer and by denoisers with models of their own."""

from __future__ import annotations

import torch


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam; the fused kernel where this torch has it (same update, ~30% faster on CPU)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)

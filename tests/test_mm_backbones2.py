"""MGCN and LGMRec: loss shapes, gradients, determinism (learning and 1/3 modalities are in
tests/test_training.py and tests/test_mm_backbones.py)."""

from __future__ import annotations

import pytest
import torch

from .helpers import (ONE_MODALITY, THREE_MODALITIES, assert_same_seed_same_losses, tiny_data,
                      training_step_outputs)

MODELS = ["mgcn", "lgmrec"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("modalities", [ONE_MODALITY, THREE_MODALITIES], ids=["one", "three"])
def test_main_term_per_sample_aux_scalars_and_gradients(tiny_cfg, name, modalities):
    data = tiny_data(modalities)
    model, losses, _, _ = training_step_outputs(tiny_cfg, name, data)
    assert all(torch.isfinite(v) for v in losses.aux.values())
    (losses.main.mean() + sum(losses.aux.values())).backward()
    for p in model.proj.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.eval()
    scores = model.scorer()(torch.arange(5))
    assert scores.shape == (5, data.n_items) and torch.isfinite(scores).all()
    torch.testing.assert_close(model.scorer()(torch.arange(5)), scores)  # eval is deterministic


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_model_and_losses(tiny_cfg, name):
    assert_same_seed_same_losses(tiny_cfg, name, tiny_data(THREE_MODALITIES))

"""Same seed, same numbers, with several torch threads: every backbone's (and GUIDER's) gradients
are bit-identical from one step to the next. On the CPU the backward pass of advanced indexing
(``x[idx]``, an accumulating ``index_put_``) adds duplicate rows in a thread-dependent order when
more than one thread runs; ``index_select`` (whose backward is ``index_add_``) does not, and with
one thread both give the same bits, so the models gather rows with ``index_select``."""

from __future__ import annotations

import copy

import pytest
import torch

from guider.backbones import BACKBONES
from guider.data import BPRSampler

from .conftest import compose_config, TINY
from .helpers import THREE_MODALITIES, build, tiny_data


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def gradients(model, denoiser, batch, start: tuple) -> dict[str, torch.Tensor]:
    # the models' own RNG states (dropout, Gumbel noise, candidate sampling) included
    model.load_state_dict(start[0])
    denoiser.load_state_dict(copy.deepcopy(start[1]))
    model.pre_epoch(0)  # the same per-epoch structures (FREEDOM's pruned graph, LATTICE's graphs)
    model.zero_grad()
    torch.manual_seed(0)
    out = model.losses(batch)
    loss = out.main.mean() + sum(out.aux.values())
    for term in denoiser.extra_loss(batch, model).values():
        loss = loss + term
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_deterministic(overrides: list[str]):
    data = tiny_data(THREE_MODALITIES)
    cfg = compose_config(TINY + overrides)
    _, model, denoiser = build(cfg, data)
    model.train()
    sampler = BPRSampler(data.train.users, data.train.items, data.n_items, 512,
                         torch.Generator().manual_seed(0))
    batch = next(iter(sampler.epoch()))
    start = copy.deepcopy((model.state_dict(), denoiser.state_dict()))
    first = gradients(model, denoiser, batch, start)
    for _ in range(3):
        again = gradients(model, denoiser, batch, start)
        for name, grad in first.items():
            assert torch.equal(grad, again[name]), f"{name}: gradient differs between two passes"


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_backbone_gradients_are_bit_identical_with_two_threads(backbone, two_threads):
    assert_deterministic([f"backbone={backbone}"])


@pytest.mark.parametrize("denoiser", ["guider", "dcf", "deca"])
def test_denoiser_terms_are_bit_identical_with_two_threads(denoiser, two_threads):
    """GUIDER's distillation (the default and the authors' whole-catalogue KL) gathers the
    student's rows too; DCF and DeCA gather them for their terms."""
    assert_deterministic(["backbone=freedom", f"denoise={denoiser}"])
    if denoiser == "guider":
        assert_deterministic(["backbone=freedom", "denoise=guider", "denoise.kd.type=kl",
                              "denoise.kd.candidates=all"])

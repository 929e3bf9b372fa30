"""VBPR, LATTICE and BM3: learning, 1 and 3 modalities, loss shapes, LATTICE's block-wise learned
graph, determinism and resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from guider.backbones.bm3 import BM3
from guider.backbones.lattice import Lattice, sym_norm_knn
from guider.backbones.vbpr import VBPR
from guider.graphs import knn_topk, unit_rows
from guider.pipeline import prepare, run
from guider.training import fit

from .conftest import run_interrupted_then_resumed
from .helpers import (LR_FAST, ONE_MODALITY, THREE_MODALITIES, LargestDense,
                      assert_same_seed_same_losses, build, first_batch, tiny_data,
                      training_step_outputs)

MODELS = ["vbpr", "lattice", "bm3"]


def dense_knn(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: the full n x n similarity matrix, top-k per row with values."""
    return (z @ z.t()).topk(k, dim=1)


# -- every model --------------------------------------------------------------------------------


# (that each registered model learns is tests/test_training.py::test_every_backbone_learns)
@pytest.mark.parametrize("name", MODELS + ["mgcn", "lgmrec"])
def test_one_and_three_modalities(tiny_cfg, tmp_path, name):
    cfg = tiny_cfg(f"backbone={name}", LR_FAST, "train.epochs=10", "train.patience=100")
    for label, modalities in (("one", ONE_MODALITY), ("three", THREE_MODALITIES)):
        data = tiny_data(modalities)
        root, model, denoiser = build(cfg, data)
        assert model.modalities == list(modalities)
        result = fit(model, denoiser, data, root.train, root.eval, torch.device("cpu"),
                     root.seed, tmp_path / label)
        losses = [h["loss"] for h in result.history]
        assert all(map(torch.isfinite, torch.tensor(losses)))
        assert losses[-1] < losses[0]
        assert result.test["Recall@20"] > 1.2 * 20 / data.n_items


@pytest.mark.parametrize("name", MODELS)
def test_main_term_per_sample_aux_scalars_and_gradients(tiny_cfg, name):
    model, losses, users, items = training_step_outputs(tiny_cfg, name, tiny_data(THREE_MODALITIES))
    (losses.main.mean() + sum(losses.aux.values()) + (users[:3] @ items[:5].t()).sum()).backward()
    for p in model.proj.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_model_and_losses(tiny_cfg, name):
    assert_same_seed_same_losses(tiny_cfg, name, tiny_data(ONE_MODALITY))


@pytest.mark.parametrize("name", ["lattice", "bm3"])
def test_resume_matches_uninterrupted_run(tiny_cfg, tmp_path, name):
    overrides = (f"backbone={name}", "train.epochs=3", LR_FAST, "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=0)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)


def test_bad_settings_fail_naming_the_key(tiny_cfg):
    for override, key in (("backbone=lattice", "backbone.rebuild=often"),
                          ("backbone=lattice", "backbone.lambda_coeff=1.5"),
                          ("backbone=bm3", "backbone.dropout=1.0"),
                          ("backbone=vbpr", "backbone.visual_dim=0")):
        with pytest.raises(ValueError, match=key.split("=")[0].replace(".", r"\.")):
            prepare(tiny_cfg(override, key))


# -- VBPR -------------------------------------------------------------------------------------


def test_vbpr_scores_are_the_papers_predictor(tiny_cfg):
    data = tiny_data(THREE_MODALITIES)
    _, model, _ = build(tiny_cfg("backbone=vbpr"), data)
    assert isinstance(model, VBPR) and model.proj.in_features == 40 + 24 + 16
    with torch.no_grad():  # non-zero biases, so every term of the predictor is tested
        model.item_bias.weight.normal_()
        model.proj.weight[-1].normal_()
    k = model.cfg.embedding_dim
    f = torch.cat([torch.as_tensor(data.features[m]) for m in THREE_MODALITIES], 1)
    gamma_u, theta_u = model.user_emb.weight[:, :k], model.user_emb.weight[:, k:]
    e, beta_f = model.proj.weight[:-1], model.proj.weight[-1]
    expected = (model.item_bias.weight[:, 0] + gamma_u @ model.item_emb.weight.t()
                + theta_u @ (f @ e.t()).t() + f @ beta_f)
    model.eval()
    users = torch.arange(7)
    torch.testing.assert_close(model.scorer()(users), expected[users].detach())
    batch = first_batch(data)
    x_ui = expected[batch.users, batch.pos]
    x_uj = expected[batch.users, batch.neg]
    torch.testing.assert_close(model.losses(batch).main, torch.nn.functional.softplus(x_uj - x_ui))


# -- LATTICE ----------------------------------------------------------------------------------


def test_lattice_knn_blocks_are_size_checked(tiny_cfg, monkeypatch):
    """LATTICE's kNN graphs go through the shared block-wise top-k, so a block that cannot fit
    fails before it is built, naming LATTICE's own knob."""
    from guider.sizecheck import ENV, SizeError

    data = tiny_data(ONE_MODALITY)
    monkeypatch.setenv(ENV, "1K")
    with pytest.raises(SizeError, match="backbone.knn_block_size"):
        build(tiny_cfg("backbone=lattice"), data)
    monkeypatch.setenv(ENV, "off")
    build(tiny_cfg("backbone=lattice"), data)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_topk_equals_dense_brute_force(exclude_self):
    z = unit_rows(torch.randn(37, 6, generator=torch.Generator().manual_seed(0)))
    vals, idx = knn_topk(z, k=4, block_size=5, exclude_self=exclude_self)
    sims = z @ z.t()
    if exclude_self:
        sims.fill_diagonal_(-torch.inf)
    ref_vals, ref_idx = sims.topk(4, dim=1)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(vals, ref_vals)


def test_lattice_learned_graph_is_block_wise_and_equals_brute_force(tiny_cfg):
    data = tiny_data(ONE_MODALITY)
    n, block = data.n_items, 16
    _, model, _ = build(tiny_cfg("backbone=lattice", f"backbone.knn_block_size={block}"), data)
    assert isinstance(model, Lattice) and block < n
    z = unit_rows(model.proj[0](model.feat_0)).detach()
    ref_vals, ref_idx = dense_knn(z, 10)
    ref = torch.zeros(n, n).scatter_(1, ref_idx, sym_norm_knn(ref_vals, ref_idx))
    vals, idx = model.learned_graph(0)  # with gradient: values recomputed from the indices
    assert vals.requires_grad and idx.shape == (n, 10)
    torch.testing.assert_close(torch.zeros(n, n).scatter_(1, idx, vals.detach()), ref)
    with torch.no_grad(), LargestDense() as spy:
        vals0, idx0 = model.learned_graph(0)
    assert torch.equal(idx0, idx)
    torch.testing.assert_close(vals0, vals.detach())
    assert 0 < spy.largest <= max(block * n, n * 64) < n * n
    # the frozen original graph: the same construction on the raw features
    raw_vals, raw_idx = dense_knn(unit_rows(model.feat_0), 10)
    orig = torch.zeros(n, n).scatter_(1, raw_idx, sym_norm_knn(raw_vals, raw_idx))
    torch.testing.assert_close(model.orig_0.to_dense(), orig)


def test_lattice_rebuilds_once_per_epoch_with_gradient_to_projections(tiny_cfg):
    data = tiny_data(THREE_MODALITIES)
    _, model, _ = build(tiny_cfg("backbone=lattice"), data)
    model.train()
    batch = first_batch(data)
    grads = []
    for step in range(3):
        if step in (0, 2):
            model.pre_epoch(step)
        model.zero_grad()
        model.losses(batch).main.mean().backward()
        grads.append((model.proj[0].weight.grad, model.modal_logits.grad))
    # first batch of an epoch: the projections learn through the edge values; later batches
    # reuse the detached graph; the modality weights learn in every batch
    assert grads[0][0].abs().sum() > 0 and grads[2][0].abs().sum() > 0
    assert grads[1][0] is None or grads[1][0].abs().sum() == 0
    assert all(g[1].abs().sum() > 0 for g in grads)
    assert sum(model.modality_weights().values()) == pytest.approx(1.0)
    # evaluation: graphs of the current parameters, identical to a fresh training rebuild
    model.eval()
    users, items = model.final_embeddings()
    model.train()
    model.pre_epoch(3)
    _, train_items = model.propagate()
    torch.testing.assert_close(items, train_items.detach())


# -- BM3 --------------------------------------------------------------------------------------


def test_bm3_ignores_negatives_and_scores_with_the_predictor(tiny_cfg):
    data = tiny_data(THREE_MODALITIES)
    _, model, _ = build(tiny_cfg("backbone=bm3"), data)
    assert isinstance(model, BM3) and set(model.losses(first_batch(data)).aux) == {
        "align", "mask", "reg"}
    batch = first_batch(data, seed=1)
    other = dataclasses.replace(batch, neg=torch.roll(batch.neg, 1))
    state = model.dropout_rng_state.clone()
    a = model.losses(batch).main
    model.dropout_rng_state.copy_(state)  # same dropout draws
    b = model.losses(other).main
    assert torch.equal(a, b) and bool((a >= 0).all()) and bool((a <= 4).all())
    model.eval()
    h_u, h_i = model.encode()
    users = torch.arange(5)
    expected = model.predictor(h_u[users]) @ model.predictor(h_i).t()
    torch.testing.assert_close(model.scorer()(users), expected.detach())
    assert "dropout_rng_state" in model.state_dict()

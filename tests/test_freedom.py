"""FREEDOM: frozen kNN item-item graph, graph mixing, degree-sensitive pruning, the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from guider.backbones.freedom import Freedom, mixing_weights
from guider.data import BPRSampler
from guider.graphs import (degree_sensitive_prune, knn_graph, mix_graphs, spmm, transpose_csr,
                           unit_rows)
from guider.pipeline import prepare, run
from guider.training import fit

from .conftest import run_interrupted_then_resumed
from .helpers import LR_FAST, ONE_MODALITY, THREE_MODALITIES, LargestDense, build, tiny_data


def dense_knn_graph(z: torch.Tensor, k: int, exclude_self: bool) -> torch.Tensor:
    """Brute force: full similarity matrix, top-k per row, 0/1, D^-1/2 S D^-1/2 (row sums)."""
    sims = z @ z.t()
    if exclude_self:
        sims.fill_diagonal_(-torch.inf)
    nbrs = sims.topk(k, dim=1).indices
    s = torch.zeros(len(z), len(z)).scatter_(1, nbrs, 1.0)
    dinv = s.sum(1).pow(-0.5)
    return dinv[:, None] * s * dinv[None, :]


# -- graph toolkit ------------------------------------------------------------------------------


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_graph_equals_dense_brute_force(exclude_self):
    gen = torch.Generator().manual_seed(0)
    z = unit_rows(torch.randn(37, 6, generator=gen))
    s = knn_graph(z, k=4, block_size=5, exclude_self=exclude_self)
    assert s.layout == torch.sparse_csr and s.shape == (37, 37)
    torch.testing.assert_close(s.to_dense(), dense_knn_graph(z, 4, exclude_self))
    assert torch.all(s.to_dense().gt(0).sum(1) == 4)  # exactly k neighbours per row
    if not exclude_self:  # top-k over the full row: each item is its own first neighbour
        assert torch.all(s.to_dense().diagonal() > 0)


def test_knn_graph_never_forms_an_n_by_n_matrix():
    n, block = 120, 8
    z = unit_rows(torch.randn(n, 5, generator=torch.Generator().manual_seed(1)))
    with LargestDense() as spy:
        knn_graph(z, k=3, block_size=block)
    assert 0 < spy.largest <= block * n < n * n


def test_unit_rows_keeps_missing_rows_zero():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(unit_rows(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_mix_graphs_is_the_weighted_sum():
    gen = torch.Generator().manual_seed(2)
    a = knn_graph(unit_rows(torch.randn(20, 4, generator=gen)), 3, block_size=7)
    b = knn_graph(unit_rows(torch.randn(20, 9, generator=gen)), 5, block_size=7)
    mixed = mix_graphs([a, b], [0.1, 0.9])
    assert mixed.layout == torch.sparse_csr
    torch.testing.assert_close(mixed.to_dense(), 0.1 * a.to_dense() + 0.9 * b.to_dense())
    torch.testing.assert_close(transpose_csr(mixed).to_dense(), mixed.to_dense().t())
    with pytest.raises(ValueError, match="one weight per graph"):
        mix_graphs([a, b], [1.0])


def test_mixing_weights_rule():
    paper = {"image": 0.1, "text": 0.9}
    assert mixing_weights(["image", "text"], paper) == pytest.approx([0.1, 0.9])
    assert mixing_weights(["text", "image"], paper) == pytest.approx([0.9, 0.1])
    assert mixing_weights(["text"], paper) == pytest.approx([1.0])  # rescaled to sum to 1
    assert mixing_weights(["image", "audio"], paper) == pytest.approx([0.5, 0.5])  # unlisted
    assert mixing_weights(["image", "text", "audio"], paper) == pytest.approx([1 / 3] * 3)
    assert mixing_weights(["a", "b"], {"a": 2.0, "b": 6.0}) == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="modality_weights.image"):
        mixing_weights(["image"], {"image": -1.0})
    with pytest.raises(ValueError, match="weight 0 to every modality"):
        mixing_weights(["image"], {"image": 0.0})


def test_spmm_gradient_uses_the_transpose():
    gen = torch.Generator().manual_seed(3)
    s = mix_graphs([knn_graph(unit_rows(torch.randn(15, 4, generator=gen)), 3)], [1.0])
    dense = s.to_dense()
    assert not torch.allclose(dense, dense.t())  # a kNN graph is not symmetric
    x = torch.randn(15, 6, generator=gen, requires_grad=True)
    w = torch.randn(15, 6, generator=gen)
    (spmm(s, transpose_csr(s), x) * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (dense @ x2 * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def _toy_edges():
    """Edge 0 joins a degree-1 user and a degree-1 item; 400 edges form a 20 x 20 biclique of
    hubs (degree 20 each)."""
    hub_u = torch.arange(1, 21).repeat_interleave(20)
    hub_i = torch.arange(1, 21).repeat(20)
    return torch.cat([torch.tensor([0]), hub_u]), torch.cat([torch.tensor([0]), hub_i])


def test_degree_sensitive_prune_count_uniqueness_determinism():
    users, items = _toy_edges()
    kept = degree_sensitive_prune(users, items, 21, 21, 0.2, torch.Generator().manual_seed(5))
    assert len(kept) == round(0.2 * 401) == len(torch.unique(kept))
    assert kept.min() >= 0 and kept.max() < 401
    again = degree_sensitive_prune(users, items, 21, 21, 0.2, torch.Generator().manual_seed(5))
    other = degree_sensitive_prune(users, items, 21, 21, 0.2, torch.Generator().manual_seed(6))
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    assert len(degree_sensitive_prune(users, items, 21, 21, 1.0)) == 401
    assert len(degree_sensitive_prune(users, items, 21, 21, 0.0)) == 0


def test_degree_sensitive_prune_prefers_low_degree_edges():
    users, items = _toy_edges()
    gen = torch.Generator().manual_seed(7)
    draws = 1000
    counts = torch.zeros(401)
    for _ in range(draws):
        counts[degree_sensitive_prune(users, items, 21, 21, 0.1, gen)] += 1
    freq = counts / draws
    # the same law drawn sequentially by torch.multinomial (weights 1 and 1/20)
    w = torch.cat([torch.ones(1), torch.full((400,), 1 / 20)])
    ref = sum(float((torch.multinomial(w, 40, generator=gen) == 0).any()) for _ in range(draws))
    assert freq[0] == pytest.approx(ref / draws, abs=0.06)
    assert freq[0] > 0.75 and freq[1:].mean() < 0.1
    assert freq[0] > 5 * freq[1:].max()


# -- the model --------------------------------------------------------------------------------


def test_freedom_learns_with_one_and_three_modalities(tiny_cfg, tmp_path):
    cfg = tiny_cfg("backbone=freedom", LR_FAST, "train.epochs=12", "train.patience=100")
    for name, modalities in (("one", ONE_MODALITY), ("three", THREE_MODALITIES)):
        data = tiny_data(modalities)
        root, model, denoiser = build(cfg, data)
        assert model.modalities == list(modalities)
        result = fit(model, denoiser, data, root.train, root.eval, torch.device("cpu"),
                     root.seed, tmp_path / name)
        losses = [h["loss"] for h in result.history]
        assert losses[-1] < losses[0] - 0.05
        assert result.test["Recall@20"] > 2 * 20 / data.n_items


def test_three_modality_model_weights_and_aux_terms(tiny_cfg):
    data = tiny_data(THREE_MODALITIES)
    _, model, _ = build(tiny_cfg("backbone=freedom", "backbone.reg_weight=1e-4"), data)
    assert model.modalities == ["image", "text", "audio"]
    assert model.mix_weights == pytest.approx([1 / 3] * 3)  # audio is not listed
    assert [p.in_features for p in model.proj] == [40, 24, 16]
    # the item-item graph is the equal mix of three 10-NN graphs: 10 to 30 entries a row
    counts = model.mm_adj.crow_indices().diff()
    assert counts.min() >= 10 and counts.max() <= 30
    assert "feat_0" not in model.state_dict() and "mm_adj" not in model.state_dict()
    model.train()
    model.pre_epoch(0)
    sampler = BPRSampler(data.train.users, data.train.items, data.n_items, 64,
                         torch.Generator().manual_seed(0))
    batch = next(iter(sampler.epoch()))
    losses = model.losses(batch)
    assert losses.main.shape == (64,) and set(losses.aux) == {"mm_bpr", "reg"}
    assert float(losses.aux["reg"].detach()) > 0 and float(losses.aux["mm_bpr"].detach()) > 0
    (losses.main.mean() + 1e4 * losses.aux["mm_bpr"]).backward()
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in model.proj)
    assert model.embedding.weight.grad.abs().sum() > 0


def test_training_uses_a_pruned_graph_and_evaluation_the_full_one(tiny_cfg):
    model = prepare(tiny_cfg("backbone=freedom")).model
    n_edges = len(model.edge_users)
    model.train()
    model.pre_epoch(0)
    first = model.pruned_adj
    n_unique = len(torch.unique(model.edge_users * model.n_items + model.edge_items))
    assert model.adj._nnz() == 2 * n_unique
    expected = 2 * round(0.2 * n_edges)  # both directions; fewer only if duplicates were kept
    assert 0.95 * expected <= first._nnz() <= expected
    with torch.no_grad():
        train_u, train_i = model.final_embeddings()
        torch.testing.assert_close((train_u, train_i), model.propagate(first))
        model.eval()
        eval_u, eval_i = model.final_embeddings()
        torch.testing.assert_close((eval_u, eval_i), model.propagate(model.adj))
        assert not torch.allclose(train_u, eval_u)
        users = torch.arange(10)
        torch.testing.assert_close(model.scorer()(users), eval_u[users] @ eval_i.t())
    model.train()
    model.pre_epoch(1)
    assert not torch.equal(model.pruned_adj.col_indices(), first.col_indices())  # redrawn


def test_pruning_rng_follows_the_seed_and_the_checkpoint(tiny_cfg):
    a = prepare(tiny_cfg("backbone=freedom", "seed=3")).model
    b = prepare(tiny_cfg("backbone=freedom", "seed=3")).model
    c = prepare(tiny_cfg("backbone=freedom", "seed=4")).model
    for m in (a, b, c):
        m.pre_epoch(0)
    assert torch.equal(a.pruned_adj.col_indices(), b.pruned_adj.col_indices())
    assert not torch.equal(a.pruned_adj.col_indices(), c.pruned_adj.col_indices())
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert "prune_rng_state" in state
    a.pre_epoch(1)
    c.load_state_dict(state)  # c now continues a's pruning sequence
    c.pre_epoch(1)
    assert torch.equal(a.pruned_adj.col_indices(), c.pruned_adj.col_indices())


def test_freedom_resume_matches_uninterrupted_run(tiny_cfg, tmp_path):
    overrides = ("backbone=freedom", "train.epochs=4", LR_FAST, "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")

    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=1)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "history.csv"),
                                  pd.read_csv(tmp_path / "resumed" / "history.csv"))


def test_bad_freedom_settings_fail_naming_the_key(tiny_cfg):
    with pytest.raises(ValueError, match="backbone.dropout"):
        prepare(tiny_cfg("backbone=freedom", "backbone.dropout=1.0"))
    with pytest.raises(ValueError, match="modality_weights.text"):
        prepare(tiny_cfg("backbone=freedom", "backbone.modality_weights.text=-0.5"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_freedom_runs_on_cuda(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg("backbone=freedom", "device=cuda", LR_FAST, "train.epochs=6"), tmp_path)
    assert metrics["device"].startswith("cuda")
    assert metrics["test"]["Recall@20"] > 2 * 20 / metrics["dataset"]["n_items"]


def test_freedom_is_a_feature_model():
    assert Freedom.uses_features
    assert np.isclose(sum(mixing_weights(["x", "y", "z"], {})), 1.0)

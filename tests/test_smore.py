"""SMORE: the spectral filter and fusion, the weighted kNN and max-pooled fusion graphs, loss
shapes and gradients, 1/2/3 modalities, determinism, resume, and learning on the tiny set."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from guider.graphs import knn_graph, max_pool_graphs, unit_rows
from guider.backbones.smore import SMORE, spectral_filter, spectral_fusion
from guider.config import ModalityConfig
from guider.evaluation import build_eval_set, evaluate
from guider.pipeline import prepare, run
from guider.training import fit

from .conftest import run_interrupted_then_resumed
from .helpers import (LR_FAST, ONE_MODALITY, THREE_MODALITIES, assert_same_seed_same_losses, build,
                      first_batch, tiny_data)

TWO_MODALITIES = {"image": ModalityConfig(40, 0.6), "text": ModalityConfig(24, 0.5)}
MODALITY_SETS = [ONE_MODALITY, TWO_MODALITIES, THREE_MODALITIES]
IDS = ["one", "two", "three"]


# -- spectral operations ------------------------------------------------------------------------


@pytest.mark.parametrize("d", [8, 9, 64])
def test_all_ones_filter_is_the_identity_and_dc_only_gives_the_row_mean(d):
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(0))
    n_freq = d // 2 + 1
    ones = torch.zeros(n_freq, 2)
    ones[:, 0] = 1.0
    torch.testing.assert_close(spectral_filter(x, ones), x, atol=1e-5, rtol=1e-5)
    # only the zero frequency kept: every entry becomes its row's mean
    dc = torch.zeros(n_freq, 2)
    dc[0, 0] = 1.0
    torch.testing.assert_close(spectral_filter(x, dc), x.mean(1, keepdim=True).expand(5, d),
                               atol=1e-5, rtol=1e-5)
    assert spectral_filter(x, torch.zeros(n_freq, 2)).abs().max() < 1e-6
    # a constant complex gain c scales the signal by c (real c) on every frequency
    torch.testing.assert_close(spectral_filter(x, 2.5 * ones), 2.5 * x, atol=1e-5, rtol=1e-5)


def test_fusion_is_circular_convolution_and_one_view_is_the_filter():
    d = 7
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, d, generator=gen), torch.randn(3, d, generator=gen)
    ones = torch.zeros(d // 2 + 1, 2)
    ones[:, 0] = 1.0
    # (a (*) b)_k = sum_j a_j b_(k - j mod d); the orthonormal DFT adds a factor 1 / sqrt(d)
    idx = (torch.arange(d)[:, None] - torch.arange(d)[None, :]) % d    # [k, j]
    conv = (a[:, None, :] * b[:, idx]).sum(-1) / math.sqrt(d)
    torch.testing.assert_close(spectral_fusion([a, b], ones), conv, atol=1e-5, rtol=1e-5)
    w = torch.randn(d // 2 + 1, 2, generator=gen)
    torch.testing.assert_close(spectral_fusion([a], w), spectral_filter(a, w))
    # fusion is symmetric in the views
    torch.testing.assert_close(spectral_fusion([a, b], w), spectral_fusion([b, a], w))


# -- graph toolkit additions --------------------------------------------------------------------


def test_weighted_knn_graph_equals_dense_brute_force():
    z = unit_rows(torch.randn(23, 5, generator=torch.Generator().manual_seed(2)) + 0.5)
    s = knn_graph(z, k=4, block_size=6, weighted=True)
    sims = z @ z.t()
    vals, nbrs = sims.topk(4, dim=1)
    w = torch.zeros(23, 23).scatter_(1, nbrs, vals.clamp(min=0))
    dinv = w.sum(1).pow(-0.5)
    torch.testing.assert_close(s.to_dense(), dinv[:, None] * w * dinv[None, :])
    # the unweighted graph is unchanged by the new option
    ones = torch.zeros(23, 23).scatter_(1, nbrs, 1.0)
    torch.testing.assert_close(knn_graph(z, 4, 6).to_dense(), ones / 4.0)


def test_weighted_knn_graph_clamps_negative_similarities():
    # 3 unit rows; row 2 points away from the others, so its 2nd neighbour has cosine -1
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    s = knn_graph(z, k=2, weighted=True).to_dense()
    assert torch.isfinite(s).all()
    # row 2 keeps only itself (weight 1, degree 1); rows 0 and 1 are each other's and own neighbour
    assert s[2].tolist() == [0.0, 0.0, 1.0]
    torch.testing.assert_close(s[:2, :2], torch.full((2, 2), 0.5))


def test_max_pool_graphs_by_hand():
    a = torch.tensor([[0.5, 0.0, 0.2], [0.0, 1.0, 0.0], [0.3, 0.0, 0.0]]).to_sparse_csr()
    b = torch.tensor([[0.1, 0.4, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.7]]).to_sparse_csr()
    expected = torch.tensor([[0.5, 0.4, 0.2], [0.0, 2.0, 0.0], [0.3, 0.0, 0.7]])
    pooled = max_pool_graphs([a, b])
    assert pooled.layout == torch.sparse_csr
    torch.testing.assert_close(pooled.to_dense(), expected)
    assert pooled.to_sparse_coo()._nnz() == 6  # the union of the edges, nothing else
    torch.testing.assert_close(max_pool_graphs([a]).to_dense(), a.to_dense())
    # a negative entry present in one graph only keeps its value (absent is not 0)
    c = torch.tensor([[-0.5, 0.0], [0.0, 0.0]]).to_sparse_csr()
    d = torch.tensor([[0.0, 0.3], [0.0, 0.0]]).to_sparse_csr()
    torch.testing.assert_close(max_pool_graphs([c, d]).to_dense(),
                               torch.tensor([[-0.5, 0.3], [0.0, 0.0]]))


# -- the model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("modalities", MODALITY_SETS, ids=IDS)
def test_main_term_per_sample_aux_scalars_and_gradients(tiny_cfg, modalities):
    data = tiny_data(modalities)
    _, model, _ = build(tiny_cfg("backbone=smore"), data)
    assert isinstance(model, SMORE) and model.modalities == list(modalities)
    m = len(modalities)
    assert len(model.filters) == len(model.item_gates) == len(model.prefer) == m + 1
    assert len(model.queries) == len(model.proj) == m
    assert all(f.shape == (model.cfg.embedding_dim // 2 + 1, 2) for f in model.filters)
    model.train()
    model.pre_epoch(0)
    batch = first_batch(data)
    losses = model.losses(batch)
    assert losses.main.shape == (64,) and losses.main.requires_grad
    assert bool((losses.main >= 0).all())
    assert set(losses.aux) == {"cl", "reg"}
    assert all(v.shape == () and torch.isfinite(v) for v in losses.aux.values())
    users, items = model.batch_embeddings(batch)
    assert users.shape == (data.n_users, 64) and items.shape == (data.n_items, 64)
    assert model.batch_embeddings(batch)[1] is items  # computed once per step
    # the main term is BPR on the final representations, unreduced
    u = users[batch.users]
    expected = torch.nn.functional.softplus((u * items[batch.neg]).sum(-1)
                                            - (u * items[batch.pos]).sum(-1))
    torch.testing.assert_close(losses.main, expected)
    (losses.main.mean() + sum(losses.aux.values())).backward()
    # every spectral filter (the fusion one last), projection, gate and query gets a gradient
    for name, module in (("filters", model.filters), ("proj", model.proj),
                         ("item_gates", model.item_gates), ("prefer", model.prefer),
                         ("queries", model.queries)):
        for p in module.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    for emb in (model.user_emb, model.item_emb):
        assert emb.weight.grad.abs().sum() > 0
    model.eval()
    scores = model.scorer()(torch.arange(5))
    assert scores.shape == (5, data.n_items) and torch.isfinite(scores).all()
    torch.testing.assert_close(model.scorer()(torch.arange(5)), scores)  # eval is deterministic


def test_graphs_knn_per_modality_and_fusion(tiny_cfg):
    data = tiny_data(THREE_MODALITIES)
    _, model, _ = build(tiny_cfg("backbone=smore", "backbone.knn_k.image=6",
                                 "backbone.knn_k.text=3", "backbone.knn_k_default=2"), data)
    assert model.knn_k == {"image": 6, "text": 3, "audio": 2}
    n = data.n_items
    for k, kk in enumerate((6, 3, 2)):
        g = getattr(model, f"ii_{k}")
        assert g.layout == torch.sparse_csr and g.shape == (n, n)
        assert torch.equal(g.crow_indices().diff(), torch.full((n,), kk))
        ref = knn_graph(unit_rows(getattr(model, f"feat_{k}")), kk, weighted=True)
        torch.testing.assert_close(g.to_dense(), ref.to_dense())
    dense = torch.stack([getattr(model, f"ii_{k}").to_dense() for k in range(3)])
    present = dense != 0
    fused = torch.where(present, dense, torch.full_like(dense, -torch.inf)).amax(0)
    fused = torch.where(present.any(0), fused, torch.zeros_like(fused))
    torch.testing.assert_close(model.ii_f.to_dense(), fused)
    # one modality: the fusion graph is that modality's graph
    data1 = tiny_data(ONE_MODALITY)
    _, one, _ = build(tiny_cfg("backbone=smore"), data1)
    torch.testing.assert_close(one.ii_f.to_dense(), one.ii_0.to_dense())


def test_one_modality_fusion_is_a_second_filter_of_that_modality(tiny_cfg):
    data = tiny_data(ONE_MODALITY)
    _, model, _ = build(tiny_cfg("backbone=smore"), data)
    with torch.no_grad():
        projected = model.proj[0](model.feat_0)
        denoised, fused = model.spectra()
        torch.testing.assert_close(denoised[0], spectral_filter(projected, model.filters[0]))
        torch.testing.assert_close(fused, spectral_filter(projected, model.filters[1]))
        model.filters[1].copy_(model.filters[0])
        torch.testing.assert_close(model.spectra()[1], denoised[0])


def test_dropout_only_in_training_from_the_models_own_generator(tiny_cfg):
    data = tiny_data(TWO_MODALITIES)
    _, model, _ = build(tiny_cfg("backbone=smore", "backbone.dropout=0.5"), data)
    assert "dropout_rng_state" in model.state_dict()
    model.train()
    state = model.dropout_rng_state.clone()
    with torch.no_grad():
        a = model.final_embeddings()[1]
        b = model.final_embeddings()[1]
        model.dropout_rng_state.copy_(state)
        c = model.final_embeddings()[1]
    assert not torch.equal(a, b)      # fresh masks each step
    assert torch.equal(a, c)          # the same masks from the same generator state
    model.eval()
    with torch.no_grad():
        e1, e2 = model.final_embeddings()[1], model.final_embeddings()[1]
        torch.testing.assert_close(e1, e2)
    _, nodrop, _ = build(tiny_cfg("backbone=smore", "backbone.dropout=0"), data)
    nodrop.train()
    with torch.no_grad():
        torch.testing.assert_close(nodrop.final_embeddings()[1], nodrop.final_embeddings()[1])


def test_same_seed_same_model_and_losses(tiny_cfg):
    assert_same_seed_same_losses(tiny_cfg, "smore", tiny_data(TWO_MODALITIES))


def test_resume_matches_uninterrupted_run(tiny_cfg, tmp_path):
    overrides = ("backbone=smore", "train.epochs=3", LR_FAST, "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=0)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)


def popularity_recall(data, topk=(20,)) -> dict:
    """Test metrics of ranking every user's unseen items by training popularity."""
    pop = torch.bincount(torch.as_tensor(data.train.items), minlength=data.n_items).float()
    es = build_eval_set(data.train.users, data.train.items, data.test.users, data.test.items,
                        data.n_users, data.n_items)
    return evaluate(lambda u: pop.expand(len(u), -1).clone(), es, list(topk), 128)


@pytest.mark.parametrize("modalities", [ONE_MODALITY, THREE_MODALITIES], ids=["one", "three"])
def test_learns_better_than_popularity_and_chance(tiny_cfg, tmp_path, modalities):
    cfg = tiny_cfg("backbone=smore", LR_FAST, "train.epochs=20", "train.patience=100")
    data = tiny_data(modalities)
    root, model, denoiser = build(cfg, data)
    result = fit(model, denoiser, data, root.train, root.eval, torch.device("cpu"), root.seed,
                 tmp_path)
    losses = [h["loss"] for h in result.history]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05
    chance = 20 / data.n_items
    reference = popularity_recall(data)["Recall@20"]
    assert result.test["Recall@20"] > max(2 * chance, 1.3 * reference), (result.test, reference)


def test_bad_settings_fail_naming_the_key(tiny_cfg):
    for key in ("backbone.knn_k.image=0", "backbone.dropout=1.0", "backbone.cl_temperature=0",
                "backbone.n_layers_ui=-1", "backbone.knn_k_default=0", "backbone.cl_weight=-1"):
        with pytest.raises(ValueError, match=key.split("=")[0].replace(".", r"\.")):
            prepare(tiny_cfg("backbone=smore", key))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_and_matches_cpu(tiny_cfg, tmp_path):
    data = tiny_data(THREE_MODALITIES)
    batch = first_batch(data)
    _, cpu, _ = build(tiny_cfg("backbone=smore", "backbone.dropout=0"), data)
    gpu = SMORE(cpu.cfg, data).to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    gpu.train()
    cpu.train()
    on_gpu = gpu.losses(dataclasses.replace(batch, users=batch.users.cuda(), pos=batch.pos.cuda(),
                                            neg=batch.neg.cuda(), idx=batch.idx.cuda()))
    on_cpu = cpu.losses(batch)
    torch.testing.assert_close(on_gpu.main.cpu(), on_cpu.main, atol=1e-4, rtol=1e-4)
    assert all(v.device.type == "cuda" for v in (on_gpu.main, *on_gpu.aux.values()))
    metrics = run(tiny_cfg("backbone=smore", "device=cuda", LR_FAST, "train.epochs=6"), tmp_path)
    assert metrics["device"].startswith("cuda")
    assert metrics["test"]["Recall@20"] > 2 * 20 / metrics["dataset"]["n_items"]

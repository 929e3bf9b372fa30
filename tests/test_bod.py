"""BOD: the closed-form gradients against autograd, the gradient-matching distance, the weighting
rule (the generator's output is the weight), the outer step touching only the generator, a
disagreeing pair losing weight, exact state round trips and resume, bad values, and end-to-end
detection better than chance on the synthetic set with random noise."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guider.backbones.mf import MF, MFConfig
from guider.data import Batch
from guider.denoise.bod import (BOD, BatchRows, BODConfig, alignment_gradients, bpr_gradients,
                                row_cosine_distance)
from guider.pipeline import prepare, run

from .conftest import run_interrupted_then_resumed

CPU = torch.device("cpu")


def fake_data(n_train: int, n_users: int, n_items: int):
    return SimpleNamespace(train=np.zeros(n_train), n_users=n_users, n_items=n_items)


def random_batch(n: int, n_users: int, n_items: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randint(n_users, (n,), generator=g),
                 torch.randint(n_items, (n,), generator=g),
                 torch.randint(n_items, (n,), generator=g), torch.arange(n))


def make_bod(n_train: int = 40, n_users: int = 6, n_items: int = 9, dim: int = 4, **cfg):
    data = fake_data(n_train, n_users, n_items)
    torch.manual_seed(0)
    mf = MF(MFConfig(embedding_dim=dim), data)
    return BOD(BODConfig(**cfg), data, mf, CPU, 0), mf


def leaves(batch: Batch, users: torch.Tensor, items: torch.Tensor):
    """The batch's distinct user and item rows as autograd leaves, and the triples they give."""
    uu = torch.unique(batch.users)
    ii = torch.unique(torch.cat([batch.pos, batch.neg]))
    lu = users[uu].clone().requires_grad_(True)
    li = items[ii].clone().requires_grad_(True)
    ru = BatchRows.of(batch).user_row
    ri = torch.searchsorted(ii, torch.cat([batch.pos, batch.neg]))
    n = len(batch)
    return lu, li, lu[ru], li[ri[:n]], li[ri[n:]]


# --- the pieces ------------------------------------------------------------------------------

def test_bpr_and_alignment_gradients_match_autograd():
    g = torch.Generator().manual_seed(1)
    users, items = torch.randn(5, 3, generator=g), torch.randn(8, 3, generator=g)
    batch = random_batch(30, 5, 8, seed=2)
    w = torch.rand(30, generator=g)
    rows = BatchRows.of(batch)
    lu, li, u, i, j = leaves(batch, users, items)
    bpr = (w * F.softplus((u * j).sum(-1) - (u * i).sum(-1))).sum()
    expect = torch.cat(torch.autograd.grad(bpr, [lu, li]))
    ours = bpr_gradients(rows, u.detach(), i.detach(), j.detach(), w)
    assert ours.shape == (1, rows.n_users + rows.n_items, 3)
    assert torch.allclose(ours[0], expect, atol=1e-6)
    # triples summed per group: the groups add up to the whole, each matches its own autograd
    group = torch.arange(30) % 3
    parts = bpr_gradients(rows, u.detach(), i.detach(), j.detach(), w, group, 3)
    assert torch.allclose(parts.sum(0), expect, atol=1e-6)
    lu, li, u, i, j = leaves(batch, users, items)
    sel = (group == 1).float()
    part = (sel * w * F.softplus((u * j).sum(-1) - (u * i).sum(-1))).sum()
    assert torch.allclose(parts[1], torch.cat(torch.autograd.grad(part, [lu, li])), atol=1e-6)

    lu, li, u, i, j = leaves(batch, users, items)
    align = (w * (F.normalize(u, dim=-1) - F.normalize(i, dim=-1)).pow(2).sum(-1)).sum()
    expect = torch.cat(torch.autograd.grad(align, [lu, li]))
    assert torch.allclose(alignment_gradients(rows, u.detach(), i.detach(), w), expect, atol=1e-5)


def test_row_cosine_distance_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, 3.0]])
    b = torch.tensor([[2.0, 0.0], [5.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])
    # rows: cos 1, cos 0, excluded (a has no direction), cos -1 -> mean of 0, 1, 2
    assert row_cosine_distance(a, b).item() == pytest.approx(1.0)
    assert row_cosine_distance(a, 7.0 * a).item() == pytest.approx(0.0, abs=1e-7)  # scale-free
    assert row_cosine_distance(torch.zeros(2, 2), b[:2]).item() == 0.0


# --- the weighting rule and the outer step --------------------------------------------------

def test_weights_are_the_generator_output_and_only_the_generator_learns():
    bod, mf = make_bod(outer_every=1, generator_lr=0.05)
    batch = random_batch(40, 6, 9)
    u, i = mf.user_emb.weight[batch.users], mf.item_emb.weight[batch.pos]
    with torch.no_grad():
        expect = bod.generator(u, i)
    backbone_before = [p.detach().clone() for p in mf.parameters()]
    gen_before = [p.detach().clone() for p in bod.generator.parameters()]
    main = mf.losses(batch).main
    w = bod.weights(batch, main.detach())
    # the weights of this batch come from the generator before its outer step, exactly
    assert torch.equal(w, expect)
    assert bool(((w > 0) & (w < 1)).all())
    assert bod.noise_scores()[:40].tolist() == pytest.approx((1 - expect).tolist())
    # the outer step moved the generator and nothing of the backbone
    assert bod.outer_steps == 1 and bod.iteration == 1
    assert any(not torch.equal(a, p) for a, p in zip(gen_before, bod.generator.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(backbone_before, mf.parameters()))
    assert all(p.grad is None for p in mf.parameters())
    # the backbone's gradient is that of the weighted mean with those weights, nothing more
    (w * main).sum().div(w.sum()).backward()
    grads = [p.grad.clone() for p in mf.parameters()]
    mf.zero_grad(set_to_none=True)
    ref = mf.losses(batch).main
    (expect * ref).sum().div(expect.sum()).backward()
    assert all(torch.allclose(a, p.grad) for a, p in zip(grads, mf.parameters()))
    # outer_every: the next outer step comes 3 batches later; weights in between change nothing
    bod3, _ = make_bod(outer_every=3)
    for _ in range(4):
        bod3.weights(batch, main.detach())
    assert bod3.outer_steps == 2 and bod3.iteration == 4
    frozen, _ = make_bod(outer_every=0)
    params = [p.detach().clone() for p in frozen.generator.parameters()]
    frozen.weights(batch, main.detach())
    assert frozen.outer_steps == 0
    assert all(torch.equal(a, p) for a, p in zip(params, frozen.generator.parameters()))


def disagreeing_batch(n_clean: int = 12):
    """Item 0 is the positive of every triple. Clean users lie along +x, like the item; the odd
    user (triple 1, in half B) along -x: its BPR gradient on item 0's row, -c e_u, points against
    the rest's. Every negative is its own item, so only item 0's row is shared between halves."""
    n = n_clean + 1
    users = torch.zeros(n, 2)
    users[:, 0] = 1.0
    users[:, 1] = torch.linspace(-0.3, 0.3, n)
    users[1] = torch.tensor([-1.0, 0.0])
    items = torch.zeros(1 + n, 2)
    items[0] = torch.tensor([1.0, 0.2])
    items[1:, 1] = torch.linspace(-1.0, 1.0, n)
    batch = Batch(torch.arange(n), torch.zeros(n, dtype=torch.long), torch.arange(1, n + 1),
                  torch.arange(n))
    return batch, users, items


def test_outer_step_down_weights_the_pair_whose_gradient_disagrees():
    batch, users, items = disagreeing_batch()
    bod, _ = make_bod(n_train=len(batch), n_users=len(users), n_items=len(items), dim=2,
                      generator_lr=0.01)
    u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
    with torch.no_grad():
        w0 = bod.generator(u, i)
    losses = []
    for _ in range(60):
        w = bod.generator(u, i)
        losses.append(float(bod.outer_step(batch, u, i, j, w)))
    with torch.no_grad():
        w1 = bod.generator(u, i)
    rest = torch.ones(len(batch), dtype=torch.bool)
    rest[1] = False
    # the odd pair ends with the smallest weight, far below the others, and the matching improved
    assert w1[1] < 0.5 * w1[rest].min()
    assert (w1[1] / w1[rest].mean()) < 0.5 * (w0[1] / w0[rest].mean())
    assert losses[-1] < losses[0]


def test_alignment_target_compares_weighted_bpr_and_weighted_alignment_gradients():
    bod, mf = make_bod(outer_target="alignment")
    batch = random_batch(40, 6, 9, seed=3)
    users, items = mf.final_embeddings()
    users, items = users.detach(), items.detach()
    u, i, j = users[batch.users], items[batch.pos], items[batch.neg]
    w = bod.generator(u, i)
    lu, li, uu, ii, jj = leaves(batch, users, items)
    wd = w.detach()
    bpr = (wd * F.softplus((uu * jj).sum(-1) - (uu * ii).sum(-1))).sum()
    align = (wd * (F.normalize(uu, dim=-1) - F.normalize(ii, dim=-1)).pow(2).sum(-1)).sum()
    expect = row_cosine_distance(torch.cat(torch.autograd.grad(bpr, [lu, li], retain_graph=True)),
                                 torch.cat(torch.autograd.grad(align, [lu, li])))
    assert bod.outer_loss(batch, u, i, j, w).item() == pytest.approx(expect.item(), rel=1e-5)


# --- state and configuration ------------------------------------------------------------------

def test_state_dict_round_trip_is_exact():
    a, mf = make_bod()
    batches = [random_batch(20, 6, 9, seed=s) for s in range(6)]
    for epoch, b in enumerate(batches[:3]):
        a.on_epoch(epoch)
        a.weights(b, mf.losses(b).main.detach())
    b_, _ = make_bod()
    b_.load_state_dict(a.state_dict())
    for epoch, b in enumerate(batches[3:], start=3):
        a.on_epoch(epoch)
        b_.on_epoch(epoch)
        main = mf.losses(b).main.detach()
        assert torch.equal(a.weights(b, main), b_.weights(b, main))
    assert np.array_equal(a.noise_scores(), b_.noise_scores())
    assert a.summary() == b_.summary() and a.summary()["outer_steps"] == 6


@pytest.mark.parametrize("override,key", [
    ("denoise.outer_target=validation", "outer_target"),
    ("denoise.generator_dim=0", "generator_dim"),
    ("denoise.generator_lr=-1", "generator_lr"),
    ("denoise.outer_every=-1", "outer_every"),
    ("denoise.score_momentum=1.0", "score_momentum"),
])
def test_bad_values_fail_naming_key(tiny_cfg, override, key):
    with pytest.raises(ValueError, match=f"denoise.{key}"):
        prepare(tiny_cfg("denoise=bod", override))


def test_generator_keeps_the_backbone_init(tiny_cfg):
    plain = prepare(tiny_cfg())
    job = prepare(tiny_cfg("denoise=bod"))
    assert torch.equal(plain.model.embedding.weight, job.model.embedding.weight)


# --- end to end -------------------------------------------------------------------------------

NOISY = ("denoise=bod", "noise=random", "noise.ratio=0.2", "train.lr=0.01")


def test_trains_and_detects_noise_better_than_chance(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg(*NOISY, "train.epochs=8"), tmp_path)
    assert metrics["status"] == "completed" and metrics["test"]["Recall@20"] > 0
    det = metrics["detection"]
    assert det["n_noisy"] > 0 and det["auc"] > 0.55
    summary = metrics["denoiser"]
    assert summary["outer_steps"] == summary["iterations"] > 0
    assert summary["weight_std_last_epoch"] > 0.05  # the generator learned to tell pairs apart


def test_bod_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    overrides = (*NOISY, "train.epochs=2", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=0)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    assert resumed["detection"] == full["detection"]
    assert resumed["denoiser"] == full["denoiser"]


def test_row_cosine_distance_finite_for_tiny_rows():
    """Weights near 0 give weighted-gradient rows ~1e-20: the distance and its gradient stay
    finite (in float32 the norm products underflowed and the generator became NaN)."""
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 1e-20, 1e-22, 1e-30):
        a = (torch.randn(5, 8, generator=g) * scale).requires_grad_(True)
        b = torch.randn(5, 8, generator=g) * scale
        d = row_cosine_distance(a, b)
        d.backward()
        assert torch.isfinite(d) and torch.isfinite(a.grad).all()
        assert 0.0 <= d.detach().item() <= 2.0


def test_generator_weights_stay_in_the_bounded_range():
    """Extreme inputs cannot push a weight to 0 or 1 (where the matching gradient overflows)."""
    from guider.denoise.bod import LOGIT_BOUND, WeightGenerator

    torch.manual_seed(0)
    gen = WeightGenerator(4, 8)
    w = gen(torch.randn(64, 4) * 1e6, torch.randn(64, 4) * 1e6)
    low, high = torch.sigmoid(torch.tensor([-LOGIT_BOUND, LOGIT_BOUND]))
    assert torch.all(w >= low) and torch.all(w <= high) and torch.all(w > 0)

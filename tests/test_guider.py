"""GUIDER: AMSC scores, the sparse consistency identity, OT distillation against POT, the in-sync
loop and every ablation switch."""

from __future__ import annotations

import logging

import numpy as np
import ot
import pandas as pd
import pytest
import torch

from guider.graphs import centred_unit, knn_indices
from guider.backbones.mf import MF
from guider.data import Batch
from guider.denoise.guider.amsc import (AMSC, AMSCConfig, capped_per_user, confidence_weights,
                                       cross_modal_confidence)
from guider.denoise.guider.distill import (Distiller, KDConfig, kl_loss, ot_loss, sinkhorn,
                                           transport_cost)
from guider.denoise.base import weighted_mean
from guider.evaluation import evaluate, sample_users
from guider.evaluation.detection import detection_auc, detection_metrics
from guider.pipeline import prepare, run
from guider.reporting.cost import frozen_epoch
from guider.training.loop import Trainer

from .conftest import run_interrupted_then_resumed


def brute_force_consistency(amsc: AMSC, item_emb, lam, calibrate=True):
    """c_u(i) = 1/(n_u - 1) sum_{i' in I(u), i' != i} S(i, i') with a dense S."""
    n = amsc.n_items
    if calibrate:
        w, alpha = amsc.w.double(), amsc.alpha.double()
    else:
        w, alpha, lam = torch.ones(n, dtype=torch.float64), torch.full((len(amsc.z),), 1 / len(amsc.z)), 0.0
    s_modal = sum(a * (z.double() @ z.double().t()) for a, z in zip(alpha, amsc.z.values()))
    ww = w[:, None] * w[None, :]
    S = ww * s_modal
    if lam > 0:
        e = torch.nn.functional.normalize(item_emb.double(), dim=1)
        S = S + (1 - ww) * lam * (e @ e.t())
    out = []
    users, items = amsc.users.tolist(), amsc.items.tolist()
    history: dict[int, list[int]] = {}
    for u, i in zip(users, items):
        history.setdefault(u, []).append(i)
    for u, i in zip(users, items):
        others = [j for j in history[u] if j != i]
        out.append(float("nan") if not others else float(S[i, others].sum() / len(others)))
    return torch.tensor(out, dtype=torch.float64)


def random_amsc(cfg=None, n_users=25, n_items=40, seed=0, modalities=("image", "text")):
    rng = np.random.default_rng(seed)
    pairs = set()
    while len(pairs) < 160:
        pairs.add((int(rng.integers(n_users - 1)), int(rng.integers(n_items))))
    pairs.add((n_users - 1, 0))  # the last user has a single interaction
    pairs = np.array(sorted(pairs))
    feats = {m: rng.normal(size=(n_items, 6 + k)).astype(np.float32) + 2.0
             for k, m in enumerate(modalities)}
    return AMSC(cfg or AMSCConfig(conf_k=4), feats, pairs[:, 0], pairs[:, 1], n_users, n_items, seed)


# --- AMSC ---------------------------------------------------------------------------------

def test_odd_item_in_a_history_is_flagged():
    """One user, five items: four share a direction in both modalities, one points elsewhere."""
    base = np.array([1.0, 0.0, 0.0, 0.0])
    odd = np.array([0.0, 0.0, 1.0, 0.0])
    rng = np.random.default_rng(1)
    rows = [base + 0.05 * rng.normal(size=4) for _ in range(4)] + [odd]
    # other items make the centring meaningful
    rows += [rng.normal(size=4) for _ in range(15)]
    feats = np.array(rows, dtype=np.float32)
    users = np.zeros(5, dtype=np.int64)
    items = np.arange(5)
    amsc = AMSC(AMSCConfig(conf_k=3, warmup_epochs=1, rho_max=0.2), {"image": feats, "text": feats},
                users, items, 1, 20, 0)
    c, false_mask = amsc.refresh(None, epoch=1)
    assert int(torch.argmin(c)) == 4
    assert false_mask.tolist() == [False, False, False, False, True]


def test_sparse_consistency_equals_brute_force():
    amsc = random_amsc()
    emb = torch.randn(amsc.n_items, 5)
    for lam in (0.0, 0.4, 1.0):
        fast = amsc.consistency(emb, lam)
        slow = brute_force_consistency(amsc, emb, lam)
        assert torch.allclose(fast.double(), slow, atol=1e-5, equal_nan=True)
    assert torch.isnan(fast).any()  # some users have a single interaction


def test_uncalibrated_is_plain_mean_modal_similarity_and_ignores_teacher():
    amsc = random_amsc(AMSCConfig(conf_k=4, calibrate=False))
    a = amsc.consistency(torch.randn(amsc.n_items, 5), 1.0)
    b = amsc.consistency(torch.randn(amsc.n_items, 5), 1.0)
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    slow = brute_force_consistency(amsc, None, 1.0, calibrate=False)
    assert torch.allclose(a.double(), slow, atol=1e-5, equal_nan=True)
    calibrated = random_amsc(AMSCConfig(conf_k=4, calibrate=True))
    c1 = calibrated.consistency(torch.randn(amsc.n_items, 5), 1.0)
    c2 = calibrated.consistency(torch.randn(amsc.n_items, 5), 1.0)
    assert not torch.allclose(torch.nan_to_num(c1), torch.nan_to_num(c2))


def test_cross_modal_confidence_matches_set_overlap():
    rng = np.random.default_rng(3)
    z = {m: centred_unit(torch.tensor(rng.normal(size=(30, 5)), dtype=torch.float32))
         for m in ("a", "b", "c")}
    conf = cross_modal_confidence(z, 4, block=7)
    dense = {m: (v @ v.t()).fill_diagonal_(-np.inf).topk(4, dim=1).indices for m, v in z.items()}
    for i in range(30):
        pairs = [("a", "b"), ("a", "c"), ("b", "c")]
        expect = np.mean([len(set(dense[x][i].tolist()) & set(dense[y][i].tolist())) / 4
                          for x, y in pairs])
        assert conf[i].item() == pytest.approx(expect)


def test_blockwise_knn_equals_dense_topk():
    z = centred_unit(torch.randn(50, 8))
    dense = (z @ z.t()).fill_diagonal_(-np.inf).topk(5, dim=1).indices
    for block in (1, 7, 50, 1000):
        assert torch.equal(knn_indices(z, 5, block), dense)


def test_centring_keeps_missing_rows_zero():
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0], [2.0, 2.0]])
    z = centred_unit(x)
    assert torch.equal(z[1], torch.zeros(2))
    assert torch.allclose(z[[0, 2, 3]].norm(dim=1), torch.ones(3))


def test_informative_modality_gets_more_weight():
    from guider.config import ModalityConfig, SyntheticConfig
    from guider.data import generate

    data = generate(SyntheticConfig(n_users=400, n_items=300, seed=1, modalities={
        "good": ModalityConfig(16, 0.9), "noise": ModalityConfig(16, 0.0)}))
    amsc = AMSC(AMSCConfig(), data.features, data.train.users, data.train.items,
                data.n_users, data.n_items, 0)
    gaps = dict(zip(amsc.modalities, amsc.gap.tolist()))
    alpha = dict(zip(amsc.modalities, amsc.alpha.tolist()))
    assert gaps["good"] > 0.05 > abs(gaps["noise"])
    assert alpha["good"] > 0.8


def test_schedule_and_per_user_standardisation():
    amsc = random_amsc(AMSCConfig(conf_k=4, warmup_epochs=10, rho_max=0.2, per_user=True))
    assert amsc.schedule(0) == (0.0, 0.0)
    assert amsc.schedule(5) == pytest.approx((0.5, 0.1))
    assert amsc.schedule(50) == pytest.approx((1.0, 0.2))
    c, flagged = amsc.refresh(torch.randn(amsc.n_items, 4), epoch=0)
    assert not flagged.any()  # rho(0) = 0
    c, flagged = amsc.refresh(torch.randn(amsc.n_items, 4), epoch=10)
    big = amsc.n_u[amsc.users] >= 3
    for u in torch.unique(amsc.users[big]).tolist():
        cu = c[amsc.users == u]
        assert abs(float(cu.mean())) < 1e-4
    valid = ~torch.isnan(c)
    assert abs(float(flagged.sum()) / int(valid.sum()) - 0.2) < 0.05



# --- AMSC's levers (docs/guider.md): each off by default, each shown on a hand-made case ----

def test_conf_floor_keeps_content_where_modalities_disagree():
    conf = torch.tensor([0.0, 0.5, 1.0])
    assert confidence_weights(conf, 0.5).tolist() == pytest.approx([0.0, 0.5 ** 0.5, 1.0])
    assert confidence_weights(conf, 0.5, 0.4).tolist() == pytest.approx(
        [0.4, 0.4 + 0.6 * 0.5 ** 0.5, 1.0])
    # two unrelated modalities: their kNN sets barely overlap, yet no w falls below the floor
    amsc = random_amsc(AMSCConfig(conf_k=4, conf_floor=0.3))
    assert float(amsc.w.min()) >= 0.3 and float(amsc.w.max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="conf_floor"):
        random_amsc(AMSCConfig(conf_k=4, conf_floor=1.5))


def test_user_cap_keeps_the_lowest_scores_and_splits_tied_two_item_users():
    users = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    c = torch.tensor([0.1, 0.1, 0.0, 0.2, 0.3, 0.5, 0.6])  # user 0: a tie (two items)
    n_u = torch.bincount(users).float()
    flagged = torch.tensor([True, True, True, True, False, False, True])
    tie = torch.tensor([5.0, 1.0, 0, 0, 0, 0, 0])  # the teacher prefers item 0 of user 0
    out = capped_per_user(flagged, c, users, n_u, 0.5, tie)
    # user 0: floor(0.5 x 2) = 1 flag, the tie goes to the lower teacher score (index 1);
    # user 1: floor(1.5) = 1, the lowest score (index 2); user 2: its one flag stays
    assert out.tolist() == [False, True, True, False, False, False, True]
    assert capped_per_user(flagged, c, users, n_u, 1.0).tolist() == flagged.tolist()
    assert not capped_per_user(flagged, c, users, n_u, 0.0).any()
    # through AMSC: no user with two items keeps both flagged
    amsc = random_amsc(AMSCConfig(conf_k=4, warmup_epochs=1, rho_max=0.5, user_cap=0.5))
    _, f = amsc.refresh(torch.randn(amsc.n_items, 4), epoch=1)
    per_user = torch.zeros(amsc.n_users).index_add_(0, amsc.users, f.float())
    assert (per_user <= torch.floor(0.5 * amsc.n_u)).all() and f.any()


def test_score_ema_averages_refreshes_so_one_noisy_refresh_flips_fewer_flags():
    cfg = AMSCConfig(conf_k=4, warmup_epochs=1, rho_max=0.2, score_ema=0.8)
    amsc = random_amsc(cfg)
    e1, e2 = torch.randn(amsc.n_items, 4), torch.randn(amsc.n_items, 4)
    c1, f1 = amsc.refresh(e1, epoch=1)
    c2, f2 = amsc.refresh(e2, epoch=2)
    raw = amsc.consistency(e2, 1.0)
    valid = ~torch.isnan(c2)
    torch.testing.assert_close(c2[valid], (0.8 * c1 + 0.2 * raw)[valid])
    plain = random_amsc(AMSCConfig(conf_k=4, warmup_epochs=1, rho_max=0.2))
    _, g1 = plain.refresh(e1, epoch=1)
    _, g2 = plain.refresh(e2, epoch=2)
    assert int((f1 != f2).sum()) < int((g1 != g2).sum())

# --- distillation -----------------------------------------------------------------------

def test_batched_sinkhorn_matches_pot_per_user():
    torch.manual_seed(0)
    M = transport_cost(torch.randn(40, 8)).double()
    p = torch.softmax(torch.randn(6, 40, dtype=torch.float64) * 2, 1)
    q = torch.softmax(torch.randn(6, 40, dtype=torch.float64) * 2, 1)
    cost, f, _ = sinkhorn(p, q, M, 0.05, 5000, 1e-10)
    for b in range(6):
        ref = ot.sinkhorn2(p[b], q[b], M, 0.05, numItermax=5000, stopThr=1e-10)
        assert float(cost[b]) == pytest.approx(float(ref), rel=1e-6)
        # the envelope gradient: POT's dual potential, defined up to a constant
        pb = p[b].clone().requires_grad_(True)
        ot.solve(M, pb, q[b], reg=0.05, grad="envelope", max_iter=5000, tol=1e-10).value.backward()
        g = pb.grad - pb.grad.mean()
        assert torch.allclose(f[b] - f[b].mean(), g, atol=1e-6)


def test_ot_loss_value_matches_pot_and_gradient_reaches_only_the_student():
    torch.manual_seed(1)
    cfg = KDConfig(type="ot", candidates="batch", users=4, items=12, sinkhorn_iters=3000, sinkhorn_tol=1e-10)
    su = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    si = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    tu = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    ti = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    batch = Batch(torch.tensor([0, 1, 2, 3, 4, 5]), torch.arange(6), torch.arange(6, 12),
                  torch.arange(6))
    distiller = Distiller(cfg, 20, seed=0)
    loss = distiller.loss(batch, su, si, tu, ti)
    # recompute with POT on the same users and candidates
    users, cand = Distiller(cfg, 20, seed=0).sample(batch)
    p = torch.softmax((su[users] @ si[cand].t()).detach(), 1)
    q = torch.softmax((tu[users] @ ti[cand].t()).detach(), 1)
    M = transport_cost(ti[cand].detach())
    ref = np.mean([float(ot.sinkhorn2(p[b], q[b], M, cfg.eps, numItermax=3000, stopThr=1e-10))
                   for b in range(len(users))])
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-6)
    loss.backward()
    assert su.grad is not None and su.grad.abs().sum() > 0
    assert si.grad is not None and si.grad.abs().sum() > 0
    assert tu.grad is None and ti.grad is None


def test_ot_loss_pulls_student_toward_teacher():
    torch.manual_seed(2)
    M = transport_cost(torch.randn(30, 6))
    t = torch.randn(8, 30) * 3
    s = torch.randn(8, 30, requires_grad=True)
    opt = torch.optim.SGD([s], lr=50.0)  # the envelope gradients are of the order of eps
    cfg = KDConfig(type="ot", candidates="batch", sinkhorn_iters=200)

    def gap():
        return float((torch.softmax(s.detach(), 1) - torch.softmax(t, 1)).abs().sum(1).mean())

    first_gap, first_loss = gap(), float(ot_loss(s, t, M, cfg).detach())
    for _ in range(200):
        opt.zero_grad()
        ot_loss(s, t, M, cfg).backward()
        opt.step()
    assert float(ot_loss(s, t, M, cfg).detach()) < 0.3 * first_loss
    assert gap() < 0.5 * first_gap


def test_kl_loss_is_kl_of_teacher_to_student():
    s, t = torch.randn(3, 7), torch.randn(3, 7)
    p, q = torch.softmax(s, 1), torch.softmax(t, 1)
    expect = (q * (q.log() - p.log())).sum(1).mean()
    assert float(kl_loss(s, t, KDConfig())) == pytest.approx(float(expect), rel=1e-5)


def test_candidates_include_batch_items_and_top_up():
    batch = Batch(torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 7]),
                  torch.arange(3))
    users, cand = Distiller(KDConfig(users=256, items=10, candidates="batch"), 50, seed=0).sample(batch)
    assert sorted(users.tolist()) == [0, 1]
    assert len(cand) == 10 and len(set(cand.tolist())) == 10
    assert {2, 3, 4, 5, 6, 7} <= set(cand.tolist())


def test_teacher_candidates_hold_each_users_teacher_favourites():
    batch = Batch(torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 7]),
                  torch.arange(3))
    # the teacher scores user 0 highest on items 40, 41 and user 1 on items 45, 46
    t_items = torch.zeros(50, 2)
    t_items[[40, 41], 0] = torch.tensor([2.0, 1.0])
    t_items[[45, 46], 1] = torch.tensor([2.0, 1.0])
    t_users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cfg = KDConfig(users=256, items=12, candidates="teacher", top_k=2)
    top = lambda u: (t_users[u] @ t_items.t()).topk(2, dim=1).indices  # noqa: E731
    users, cand = Distiller(cfg, 50, seed=0).sample(batch, top)
    assert len(cand) == 12 and {2, 3, 4, 5, 6, 7, 40, 41, 45, 46} <= set(cand.tolist())
    # more than kd.items: a uniform subset of that union, no random top-up
    users, cand = Distiller(KDConfig(items=4, candidates="teacher", top_k=2), 50, 0).sample(batch, top)
    assert len(cand) == 4 and set(cand.tolist()) <= {2, 3, 4, 5, 6, 7, 40, 41, 45, 46}
    # the whole catalogue
    _, cand = Distiller(KDConfig(candidates="all", type="kl"), 50, 0).sample(batch)
    assert cand.tolist() == list(range(50))
    with pytest.raises(ValueError, match="kd.candidates"):
        Distiller(KDConfig(candidates="popular"), 50, 0)


def test_teacher_top_lists_in_user_blocks_equal_the_whole_block(monkeypatch):
    """candidates=teacher scores the catalogue for a bounded block of users at a time: the same
    candidates (and loss) as one users x items block."""
    import guider.denoise.guider.distill as distill

    torch.manual_seed(0)
    su, si, tu, ti = (torch.randn(n, 4) for n in (40, 30, 40, 30))
    batch = Batch(torch.arange(40), torch.arange(40) % 30, (torch.arange(40) + 7) % 30,
                  torch.arange(40))
    cfg = KDConfig(users=40, items=24, candidates="teacher", top_k=3)
    whole = Distiller(cfg, 30, seed=0).loss(batch, su, si, tu, ti)
    monkeypatch.setattr(distill, "TOP_BLOCK_SCORES", 7 * 30)  # 7 users per block
    assert distill.top_block_users(30) == 7
    blocked = Distiller(cfg, 30, seed=0).loss(batch, su, si, tu, ti)
    assert torch.equal(whole, blocked)


def test_kd_warmup_ramps_gamma():
    d = Distiller(KDConfig(weight=0.4, warmup_epochs=10), 50, 0)
    assert [d.weight(e) for e in (0, 5, 10, 30)] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    assert Distiller(KDConfig(weight=0.4), 50, 0).weight(0) == pytest.approx(0.4)


def test_guider_user_cap_reaches_the_flags(tiny_cfg):
    _, g = switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.amsc.user_cap=0.5", "denoise.amsc.rho_max=0.4")
    g.on_epoch(5)
    a = g.amsc
    per_user = torch.zeros(a.n_users).index_add_(0, a.users, g.false_mask.float())
    assert g.false_mask.any() and (per_user <= torch.floor(0.5 * a.n_u)).all()


def test_guider_with_teacher_candidates_and_warmup_trains(tiny_cfg, tmp_path):
    m = run(tiny_cfg(*GUIDER_FAST, "denoise.kd.candidates=teacher", "denoise.kd.warmup_epochs=2",
                     "train.epochs=3"), tmp_path)
    assert m["status"] == "completed" and m["test"]["Recall@20"] > 0


def test_teacher_top_lists_once_per_epoch(tiny_cfg, tmp_path):
    """kd.top_refresh=epoch: the lists are the teacher's evaluation-mode top_k at the start of the
    epoch, and the distillation reads them instead of scoring the catalogue per batch."""
    _, g = switches(tiny_cfg, "denoise.kd.candidates=teacher", "denoise.kd.top_refresh=epoch",
                    "denoise.kd.top_k=5")
    g.on_epoch(0)
    lists = g.distiller.lists
    assert not lists.known.any()  # nothing scored until a batch distils its users
    g.teacher.eval()
    with torch.no_grad():
        u, i = g.teacher.final_embeddings()
    eager = (u @ i.t()).topk(5, dim=1).indices
    read = torch.tensor([7, 3, 7])
    assert torch.equal(lists[read], eager[read])
    assert lists.known.nonzero().squeeze(1).tolist() == [3, 7]  # only the users read
    top = lists.all()
    assert top.shape == (g.data.n_users, 5) and torch.equal(top, eager)
    users = torch.tensor([0, 3, 7])
    batch_users, cand = g.distiller.sample(
        Batch(users, torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.arange(3)),
        lambda us: top[us])
    assert len(cand) == min(g.distiller.cfg.items, g.data.n_items)
    # per batch keeps no lists
    _, plain = switches(tiny_cfg, "denoise.kd.candidates=teacher", "denoise.kd.top_refresh=batch")
    plain.on_epoch(0)
    assert plain.distiller.lists is None
    with pytest.raises(ValueError, match="kd.top_refresh"):
        KDConfig(top_refresh="weekly").check()
    m = run(tiny_cfg(*GUIDER_FAST, "denoise.kd.candidates=teacher", "denoise.kd.top_refresh=epoch",
                     "train.epochs=2"), tmp_path)
    assert m["status"] == "completed" and m["test"]["Recall@20"] > 0


def test_teacher_top_lists_are_computed_for_the_distilled_users_only(tiny_cfg):
    """A batch that distils kd.users=4 users scores the catalogue for those 4 users (their lists
    then kept for the epoch), and each list is the one the whole snapshot gives."""
    job, g = switches(tiny_cfg, "denoise.kd.users=4", "denoise.kd.top_k=5")
    batch, _ = one_batch(job)
    g.on_epoch(0)
    g.teacher.eval()
    with torch.no_grad():  # the snapshot the epoch's lists come from
        u, i = g.teacher.final_embeddings()
    g.step(batch)  # the teacher moves; the lists stay the snapshot's
    job.model.train()
    job.model.losses(batch)  # the student's forward, whose representations the KD reads
    g.extra_loss(batch, job.model)
    lists = g.distiller.lists
    scored = lists.known.nonzero().squeeze(1)
    assert len(scored) == 4 and set(scored.tolist()) <= set(batch.users.tolist())
    assert torch.equal(lists.top[scored], (u[scored] @ i.t()).topk(5, dim=1).indices)


def test_teacher_top_lists_every_kth_epoch(tiny_cfg, tmp_path):
    """kd.top_every=2: the lists are computed at epochs 0, 2, 4 and kept in between (the
    teacher's scores of the refresh epoch, not of the current one); resume stays exact because
    the checkpoint keeps them."""
    job, g = switches(tiny_cfg, "denoise.kd.top_every=2", "denoise.kd.top_k=5")
    batch, _ = one_batch(job)
    computed = []
    for epoch in range(5):
        before = g.distiller.lists
        g.on_epoch(epoch)
        computed.append(g.distiller.lists is not before)
        g.teacher.eval()
        with torch.no_grad():
            u, i = g.teacher.final_embeddings()
        fresh = (u @ i.t()).topk(5, dim=1).indices
        if epoch % 2 == 0:
            assert torch.equal(g.distiller.lists.all(), fresh)
        g.step(batch)  # the teacher moves, so the next epoch's fresh lists would differ
    assert computed == [True, False, True, False, True]
    assert "lists" in g.distiller.state_dict()
    _, every = switches(tiny_cfg, "denoise.kd.top_k=5")
    every.on_epoch(0)
    assert "lists" not in every.distiller.state_dict()  # top_every=1: nothing to keep
    with pytest.raises(ValueError, match="top_every"):
        KDConfig(top_every=0).check()
    # few candidates, so that the lists decide which items are distilled
    overrides = (*GUIDER_FAST, "denoise.kd.top_every=2", "denoise.kd.items=24",
                 "denoise.kd.top_k=3", "train.epochs=4", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    # interrupted after epoch 0: epoch 1 resumes with the lists of epoch 0, from the checkpoint
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=0)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)


def assert_lever_resumes_exactly_and_changes_the_run(tiny_cfg, tmp_path, lever: str, epochs: int,
                                                     stop_epoch: int) -> None:
    """A run with ``lever`` interrupted after ``stop_epoch`` and resumed ends exactly as the same
    run uninterrupted, and differently from the defaults' run (the lever does something)."""
    overrides = (*GUIDER_FAST, lever, f"train.epochs={epochs}", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed",
                                           stop_epoch=stop_epoch)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    defaults = run(tiny_cfg(*GUIDER_FAST, f"train.epochs={epochs}", "train.patience=100"),
                   tmp_path / "defaults")
    assert defaults["test"] != full["test"]


def test_teacher_every_steps_the_teacher_on_every_kth_batch_only(tiny_cfg, tmp_path):
    """denoise.teacher_every=2: batches 0, 2, 4 of an epoch step the teacher, 1 and 3 distil from
    its last representations; a new epoch starts with a step; resume stays exact."""
    job, g = switches(tiny_cfg, "denoise.teacher_every=2")
    batch, _ = one_batch(job)
    g.on_epoch(0)
    stepped = []
    for _ in range(5):
        before = [p.detach().clone() for p in g.teacher.parameters()]
        g.step(batch)
        after = list(g.teacher.parameters())
        stepped.append(any(not torch.equal(a, b) for a, b in zip(before, after)))
    assert stepped == [True, False, True, False, True]
    g.on_epoch(1)
    before = [p.detach().clone() for p in g.teacher.parameters()]
    g.step(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, g.teacher.parameters()))
    with pytest.raises(ValueError, match="teacher_every"):
        switches(tiny_cfg, "denoise.teacher_every=0")
    assert_lever_resumes_exactly_and_changes_the_run(tiny_cfg, tmp_path, "denoise.teacher_every=3",
                                                     epochs=3, stop_epoch=1)


def test_teacher_epochs_freezes_the_teacher_and_distils_from_its_final_representations(
        tiny_cfg, tmp_path, caplog):
    """denoise.teacher_epochs=2: the teacher steps in epochs 0 and 1; from epoch 2 on it no longer
    moves, every batch distils from its evaluation-mode representations computed at the freeze,
    its top lists are those representations' and are not recomputed; resume after the freeze is
    exact and the run differs from a teacher that keeps training."""
    job, g = switches(tiny_cfg, "denoise.teacher_epochs=2", "denoise.kd.top_k=5")
    batch, _ = one_batch(job)

    def moved(epoch):
        g.on_epoch(epoch)
        before = [p.detach().clone() for p in g.teacher.parameters()]
        g.step(batch)
        return any(not torch.equal(a, b) for a, b in zip(before, g.teacher.parameters()))

    with caplog.at_level(logging.INFO, logger="guider"):
        assert [moved(0), moved(1)] == [True, True]
        assert [moved(2), moved(3)] == [False, False]
    assert g.summary()["teacher_frozen_epoch"] == 2
    said = [r.getMessage() for r in caplog.records if "teacher is frozen" in r.getMessage()]
    assert len(said) == 1 and "from epoch 2 on (teacher_epochs=2)" in said[0]  # once, with why
    g.teacher.eval()
    with torch.no_grad():
        u, i = g.teacher.final_embeddings()
    t_users, t_items = g.teacher_embeddings
    assert torch.equal(t_users, u) and torch.equal(t_items, i)
    lists = g.distiller.lists
    assert torch.equal(lists.all(), (u @ i.t()).topk(5, dim=1).indices)
    g.on_epoch(4)
    assert g.distiller.lists is lists  # one snapshot, taken at the freeze
    # the distillation's gradient reaches the student, from the frozen targets
    g.teacher_opt.zero_grad(set_to_none=True)  # what the teacher's last step left
    kd = g.extra_loss(batch, job.model)["kd"]
    kd.backward()
    assert all(p.grad is None for p in g.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in job.model.parameters())
    with pytest.raises(ValueError, match="teacher_epochs"):
        switches(tiny_cfg, "denoise.teacher_epochs=-1")
    with pytest.raises(ValueError, match="mean teacher"):
        switches(tiny_cfg, "denoise.teacher_epochs=3", "denoise.teacher_update=ema")
    assert_lever_resumes_exactly_and_changes_the_run(tiny_cfg, tmp_path, "denoise.teacher_epochs=1",
                                                     epochs=4, stop_epoch=2)


def test_teacher_patience_freezes_the_teacher_at_its_best_validation(tiny_cfg, tmp_path, caplog):
    """denoise.teacher_patience=2: the teacher is validated after each of the student's
    validations; after two without a gain it takes back the weights of its best one and is frozen
    from the next epoch (no step, distillation from those weights); its metric is a history
    column until then; resume after the freeze is exact; a patience never reached leaves the run
    exactly as the defaults'."""
    job, g = switches(tiny_cfg, "denoise.teacher_patience=2")
    batch, _ = one_batch(job)
    values = iter([0.10, 0.30, 0.20, 0.25])
    seen = []

    def validate(scorer, users=0):  # a hand-made validation curve: best at the second validation
        seen.append({k: v.detach().clone() for k, v in g.teacher.state_dict().items()})
        return {"Recall@20": next(values)}

    for epoch in range(4):
        g.on_epoch(epoch)
        assert not g.frozen
        g.step(batch)
        row = g.on_validation(validate, "Recall@20")
        assert set(row) == {"teacher_Recall@20"}
    assert g.frozen  # two validations (0.20, 0.25) below the best (0.30)
    for key, value in g.teacher.state_dict().items():
        assert torch.equal(value, seen[1][key])  # the weights of the best validation
    with caplog.at_level(logging.INFO, logger="guider"):
        g.on_epoch(4)
        g.on_epoch(5)  # still frozen: said once
    said = [r.getMessage() for r in caplog.records if "teacher is frozen" in r.getMessage()]
    assert len(said) == 1 and "from epoch 4 on (teacher_patience=2: its best validation 0.30000" \
        in said[0]
    before = [p.detach().clone() for p in g.teacher.parameters()]
    g.step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, g.teacher.parameters()))
    g.teacher.eval()
    with torch.no_grad():
        u, i = g.teacher.final_embeddings()
    assert torch.equal(g.teacher_embeddings[0], u) and torch.equal(g.teacher_embeddings[1], i)
    assert g.on_validation(validate, "Recall@20") == {}  # frozen: no more teacher validations
    with pytest.raises(ValueError, match="teacher_patience"):
        switches(tiny_cfg, "denoise.teacher_patience=-1")
    with pytest.raises(ValueError, match="mean teacher"):
        switches(tiny_cfg, "denoise.teacher_patience=3", "denoise.teacher_update=ema")
    # in a run: the teacher's metric is logged until it freezes; resume is exact
    # (a teacher at ten times the rate peaks at the third validation here, then declines)
    overrides = (*GUIDER_FAST, "denoise.teacher_lr=0.1", "denoise.teacher_patience=1",
                 "train.epochs=6", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    history = pd.read_csv(tmp_path / "full" / "history.csv")
    logged = history["teacher_Recall@20"].notna().to_numpy()
    assert logged.tolist() == [True] * 4 + [False] * 2  # best at 2, frozen after 3
    assert full["denoiser"]["teacher_frozen_epoch"] == 4  # what prices the run (reporting/cost.py)
    older = {**full, "denoiser": {"amsc": None}}  # a run made before the key: read off the history
    assert frozen_epoch(tmp_path / "full", older) == 4
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=4)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    assert resumed["denoiser"]["teacher_frozen_epoch"] == 4  # kept across the resume
    never = run(tiny_cfg(*GUIDER_FAST, "denoise.teacher_patience=100", "train.epochs=3",
                         "train.patience=100"), tmp_path / "never")
    defaults = run(tiny_cfg(*GUIDER_FAST, "train.epochs=3", "train.patience=100"),
                   tmp_path / "defaults")
    assert never["test"] == defaults["test"]
    assert never["denoiser"]["teacher_frozen_epoch"] is None


def test_teacher_valid_users_validates_the_teacher_on_a_fixed_sample_of_users(tiny_cfg, tmp_path):
    """denoise.teacher_valid_users=N: the teacher's patience reads its metric over a fixed sample
    of N valid users (the trainer's valid_metrics(scorer, users=N): the same users at every call,
    drawn with eval.sample_seed), the student's validation keeps every user; 0 asks for every
    user; N without teacher_patience is refused."""
    job, g = switches(tiny_cfg, "denoise.teacher_patience=2", "denoise.teacher_valid_users=5")
    asked = []

    def validate(scorer, users=0):
        asked.append(users)
        return {"Recall@20": 0.1}

    g.on_epoch(0)
    assert g.on_validation(validate, "Recall@20") == {"teacher_Recall@20": 0.1}
    assert asked == [5]
    _, plain = switches(tiny_cfg, "denoise.teacher_patience=2")
    plain.on_epoch(0)
    plain.on_validation(validate, "Recall@20")
    assert asked == [5, 0]
    root = job.root
    trainer = Trainer(job.model, g, job.data, root.train, root.eval, job.device, root.seed,
                      tmp_path / "trainer")
    valid = trainer.valid_set
    assert len(valid.users) > 5
    scorer = g.teacher.scorer()
    chosen = sample_users([valid], 5, root.eval.sample_seed)
    expected = evaluate(scorer, valid.restrict(chosen), root.eval.topk, root.eval.batch_users)
    assert trainer.valid_metrics(scorer, users=5) == expected
    assert torch.equal(trainer.valid_samples[5].users, torch.as_tensor(chosen))
    assert trainer.valid_metrics(scorer, users=5) == expected  # the same sample at every call
    assert trainer.valid_metrics(scorer) == evaluate(scorer, valid, root.eval.topk,
                                                     root.eval.batch_users)
    assert trainer.valid_metrics(scorer) != expected  # 5 users are not the whole set here
    with pytest.raises(ValueError, match="teacher_valid_users"):
        switches(tiny_cfg, "denoise.teacher_valid_users=-1")
    with pytest.raises(ValueError, match="teacher_patience=P > 0"):
        switches(tiny_cfg, "denoise.teacher_valid_users=5")


def test_teacher_min_epochs_keeps_the_patience_from_counting_on_an_early_plateau(tiny_cfg):
    """denoise.teacher_min_epochs=3 with teacher_patience=2: the validations of epochs 0-2 keep
    the teacher's best weights but do not count, so a teacher whose best came at its first
    validation is frozen after epoch 4 (two counted validations without a gain), not after epoch
    2 as without the floor, and it takes back the weights of that first validation."""
    def frozen_after(*overrides):
        job, g = switches(tiny_cfg, "denoise.teacher_patience=2", *overrides)
        batch, _ = one_batch(job)
        values = iter([0.30, 0.10, 0.20, 0.25, 0.28, 0.29, 0.29])
        seen = []

        def validate(scorer, users=0):
            seen.append({k: v.detach().clone() for k, v in g.teacher.state_dict().items()})
            return {"Recall@20": next(values)}

        for epoch in range(7):
            g.on_epoch(epoch)
            if g.frozen:
                for key, value in g.teacher.state_dict().items():
                    assert torch.equal(value, seen[0][key])  # the first validation's weights
                return epoch - 1
            g.step(batch)
            g.on_validation(validate, "Recall@20")
        return None

    assert frozen_after() == 2
    assert frozen_after("denoise.teacher_min_epochs=3") == 4
    assert frozen_after("denoise.teacher_min_epochs=6") is None  # counting starts at epoch 6
    with pytest.raises(ValueError, match="teacher_min_epochs"):
        switches(tiny_cfg, "denoise.teacher_min_epochs=-1", "denoise.teacher_patience=2")
    with pytest.raises(ValueError, match="teacher_patience=P > 0"):
        switches(tiny_cfg, "denoise.teacher_min_epochs=3")


def test_mean_teacher_follows_the_student_by_its_moving_average(tiny_cfg, tmp_path):
    """denoise.teacher_update=ema: the teacher starts as a copy of the student, has no optimiser
    and no gradient, and each step moves it by exactly (1 - teacher_ema) toward the student's
    current weights; a resumed run is exact and the run differs from the in-sync teacher's."""
    job, g = switches(tiny_cfg, "denoise.teacher_update=ema", "denoise.teacher_ema=0.75")
    student = job.model
    assert g.teacher_opt is None and g.teacher is not student
    for t, s in zip(g.teacher.parameters(), student.parameters()):
        assert torch.equal(t, s) and not t.requires_grad
    with torch.no_grad():  # the student moves (as its optimiser would)
        for p in student.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in g.teacher.parameters()]
    batch, _ = one_batch(job)
    g.on_epoch(0)
    g.step(batch)
    for t, b, s in zip(g.teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.75 * b + 0.25 * s, atol=1e-6)
    # the distillation's gradient reaches the student only
    kd = g.extra_loss(batch, student)["kd"]
    kd.backward()
    assert all(p.grad is None for p in g.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    for bad, match in (("denoise.teacher_update=twin", "teacher_update"),
                       ("denoise.teacher_ema=1.0", "teacher_ema")):
        with pytest.raises(ValueError, match=match):
            switches(tiny_cfg, bad)
    with pytest.raises(ValueError, match="mean teacher"):
        switches(tiny_cfg, "denoise.teacher_update=ema", "denoise.dbpr.enabled=true")
    overrides = (*GUIDER_FAST, "denoise.teacher_update=ema", "train.epochs=3",
                 "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=1)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    sync = run(tiny_cfg(*GUIDER_FAST, "train.epochs=3", "train.patience=100"), tmp_path / "sync")
    assert sync["test"] != full["test"]


# --- detection metrics ------------------------------------------------------------------

def test_detection_auc_hand_worked():
    # positives score 0.9 and 0.4; negatives 0.8, 0.3, 0.1 -> pairs won: (0.9 > all 3) + (0.4 > 2) = 5 of 6
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.1])
    labels = np.array([True, False, True, False, False])
    assert detection_auc(scores, labels) == pytest.approx(5 / 6)
    assert detection_auc(np.ones(4), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    out = detection_metrics(scores, scores > 0.35, labels)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == pytest.approx(1.0)


# --- the in-sync loop and the ablation switches --------------------------------------------

GUIDER_FAST = ("denoise=guider", "denoise.amsc.warmup_epochs=2", "train.lr=0.01",
               "denoise.teacher_lr=0.01")


def test_without_kd_and_dbpr_student_trains_exactly_as_no_denoiser(tiny_cfg, tmp_path):
    plain = run(tiny_cfg("train.lr=0.01"), tmp_path / "none")
    guided = run(tiny_cfg(*GUIDER_FAST, "denoise.kd.type=none", "denoise.dbpr.enabled=false"),
                 tmp_path / "guider")
    assert plain["test"] == guided["test"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "none" / "history.csv"),
                                  pd.read_csv(tmp_path / "guider" / "history.csv"))


def test_full_guider_changes_training_and_reports_detection(tiny_cfg, tmp_path):
    plain = run(tiny_cfg("train.lr=0.01"), tmp_path / "none")
    guided = run(tiny_cfg(*GUIDER_FAST, "denoise.dbpr.enabled=true"), tmp_path / "guider")
    assert plain["test"] != guided["test"]
    det = guided["detection"]
    assert det["n_noisy"] > 0 and det["auc"] > 0.5
    assert 0 < det["n_flagged"] < det["n_train"]
    assert set(guided["denoiser"]["modality_weights"]) == {"image", "text"}
    teacher = guided["auxiliary"]["teacher"]
    assert teacher["test"]["Recall@20"] > 0 and teacher["test"] != guided["test"]
    assert plain["auxiliary"] == {}


def test_guider_flags_noise_better_than_chance(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*GUIDER_FAST, "denoise.dbpr.enabled=true", "dataset.synthetic.n_users=800", "dataset.synthetic.n_items=400",
                   "dataset.synthetic.mean_interactions=20", "train.epochs=6")
    metrics = run(cfg, tmp_path)
    det = metrics["detection"]
    assert det["auc"] > 0.65
    base_rate = det["n_noisy"] / det["n_train"]
    assert det["precision"] > 2 * base_rate


def switches(tiny_cfg, *extra):
    job = prepare(tiny_cfg(*GUIDER_FAST, *extra))
    return job, job.denoiser


def one_batch(job):
    d = job.data
    n = len(d.train)
    return Batch(torch.as_tensor(d.train.users[:64]), torch.as_tensor(d.train.items[:64]),
                 torch.as_tensor((d.train.items[:64] + 1) % d.n_items), torch.arange(64)), n


def test_ablation_dbpr_disabled_means_omega_one_and_no_amsc(tiny_cfg):
    job, g = switches(tiny_cfg, "denoise.dbpr.enabled=false")
    g.on_epoch(5)
    batch, _ = one_batch(job)
    assert g.amsc is None and bool((g.omega == 1).all())
    assert g.weights(batch, torch.zeros(64)) is None
    assert g.noise_scores() is None


def test_default_has_no_amsc_and_switches_that_need_flags_say_so(tiny_cfg):
    # the default since docs/guider.md section 7: distillation only, AMSC not built, omega = 1
    job, g = switches(tiny_cfg)
    g.on_epoch(5)
    assert g.amsc is None and bool((g.omega == 1).all()) and g.noise_scores() is None
    for key in ("student_dbpr=true", "graph=true", "dbpr.flags=oracle"):
        with pytest.raises(ValueError, match="denoise.dbpr.enabled=true"):
            switches(tiny_cfg, f"denoise.{key}")
        assert switches(tiny_cfg, f"denoise.{key}", "denoise.dbpr.enabled=true")[1].flags_on


def test_oracle_flags_are_the_labels_and_weight_what_the_switches_say(tiny_cfg, monkeypatch):
    # dbpr.flags=oracle: I_false = the injected noise from the first epoch, AMSC never built
    job, g = switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.flags=oracle",
                      "denoise.student_dbpr=true", "denoise.graph=true")
    labels = job.data.train_noise
    assert g.amsc is None and labels.any() and not labels.all()
    for epoch in (0, 5):  # fixed: no warm-up, no refresh
        g.on_epoch(epoch)
        assert np.array_equal(g.flagged(), labels)
        assert np.array_equal(g.omega.numpy(), np.where(labels, 0.0, 1.0))
    batch, _ = one_batch(job)
    assert torch.equal(g.weights(batch, torch.zeros(64)), g.omega[:64])  # the student's term
    assert torch.equal(g.edge_weights(), g.omega)  # both graphs
    assert detection_auc(g.noise_scores(), labels) == 1.0
    assert g.summary()["flags"] == "oracle" and g.summary()["n_flagged"] == int(labels.sum())
    # the teacher's DBPR: its main term is weighted by the batch's omega
    import guider.denoise.guider as module

    seen = []
    monkeypatch.setattr(module, "weighted_mean", lambda x, w: seen.append(w) or weighted_mean(x, w))
    g.step(batch)
    assert len(seen) == 1 and torch.equal(seen[0], g.omega[:64])


def test_imperfect_oracle_flags_have_the_recall_and_precision_asked_for(tiny_cfg):
    from guider.denoise.oracle import imperfect_flags

    labels = np.zeros(1000, dtype=bool)
    labels[::5] = True  # 200 noisy, 800 clean
    flags = imperfect_flags(labels, 0.4, 0.8, seed=3)
    assert (flags & labels).sum() == 80 and (flags & ~labels).sum() == 20  # 80 / 100 = 0.8
    assert np.array_equal(flags, imperfect_flags(labels, 0.4, 0.8, seed=3))
    assert not np.array_equal(flags, imperfect_flags(labels, 0.4, 0.8, seed=4))
    assert np.array_equal(imperfect_flags(labels, 1.0, 1.0, seed=3), labels)
    with pytest.raises(ValueError, match="needs 1800 false flags, but only 800"):
        imperfect_flags(labels, 1.0, 0.1, seed=0)
    # in GUIDER: fixed from the first epoch, the flags the teacher's DBPR drops
    job, g = switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.flags=oracle",
                      "denoise.dbpr.oracle_recall=0.5", "denoise.dbpr.oracle_precision=0.5")
    truth = job.data.train_noise
    g.on_epoch(5)
    hit, false = (g.flagged() & truth).sum(), (g.flagged() & ~truth).sum()
    assert hit == round(0.5 * truth.sum()) and false == hit
    assert np.array_equal(g.omega.numpy(), np.where(g.flagged(), 0.0, 1.0))
    with pytest.raises(ValueError, match="shape the label flags only.*dbpr.flags=oracle"):
        switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.oracle_recall=0.5")
    with pytest.raises(ValueError, match=r"oracle_precision=0.0: must lie in \(0, 1\]"):
        switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.flags=oracle",
                 "denoise.dbpr.oracle_precision=0")


def test_student_flags_are_the_students_lowest_scores_on_amscs_schedule(tiny_cfg):
    """dbpr.flags=student: at a refresh past the warm-up, I_false is the rho_max share of the
    training interactions the student (in evaluation mode) scores lowest, users with a single
    interaction never flagged; the student is left in the mode it was in; the teacher's DBPR
    weights them out; the flags need dbpr.enabled."""
    job, g = switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.flags=student",
                      "denoise.amsc.rho_max=0.2")
    student, data = job.model, job.data

    def no_teacher_forward():
        raise AssertionError("the student's flags need no teacher embeddings")

    g.teacher.item_embeddings = no_teacher_forward
    g.on_epoch(0)
    assert not g.false_mask.any()  # rho(0) = 0: nothing flagged before the warm-up
    with torch.no_grad():
        for p in student.parameters():  # a student that ranks something
            p.normal_()
    student.train()
    g.on_epoch(2)  # warmup_epochs=2 in GUIDER_FAST: rho at its maximum
    assert student.training
    student.eval()
    with torch.no_grad():
        u, i = student.final_embeddings()
    own = (u[data.train.users] * i[data.train.items]).sum(-1).double().numpy()
    n_u = np.bincount(data.train.users, minlength=data.n_users)[data.train.users]
    own[n_u < 2] = np.nan
    threshold = np.nanquantile(own, 0.2)
    expected = np.nan_to_num(own, nan=np.inf) < threshold
    assert expected.sum() > 0
    assert np.array_equal(g.flagged(), expected)
    assert np.array_equal(g.omega.numpy(), np.where(expected, 0.0, 1.0))
    assert detection_auc(g.noise_scores(), expected) > 0.99  # its scores are the student's
    with pytest.raises(ValueError, match="dbpr.flags=student needs"):
        switches(tiny_cfg, "denoise.dbpr.flags=student")


def test_flags_that_weight_only_the_teachers_loss_stop_with_the_frozen_teacher(tiny_cfg):
    """denoise.teacher_epochs=1 with the student's flags: from the freeze on, flags that weight
    only the teacher's loss can change nothing, so they are not refreshed (the run's detection
    reports those that acted); flags that also weight the student's loss keep being refreshed."""
    def scores_by_epoch(*extra):
        job, g = switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.flags=student",
                          "denoise.amsc.rho_max=0.2", "denoise.teacher_epochs=1", *extra)
        out = []
        for epoch in range(4):
            with torch.no_grad():
                for p in job.model.parameters():  # the student moves between refreshes
                    p.normal_()
            g.on_epoch(epoch)
            out.append(g.scores.clone())
        assert g.frozen
        return out

    only_teacher = scores_by_epoch()  # epoch 0 the one refresh: frozen from epoch 1
    assert all(torch.equal(later, only_teacher[0]) for later in only_teacher[1:])
    student_too = scores_by_epoch("denoise.student_dbpr=true")  # a refresh at every epoch
    assert all(not torch.equal(a, b) for a, b in zip(student_too, student_too[1:]))


def test_oracle_flags_refuse_data_without_labels(tiny_cfg):
    from guider.denoise import build_denoiser
    from guider.pipeline import validate

    job = prepare(tiny_cfg(*GUIDER_FAST))
    job.data.has_noise_labels = False
    cfg = validate(tiny_cfg(*GUIDER_FAST, "denoise.dbpr.enabled=true",
                            "denoise.dbpr.flags=oracle"))[4]
    with pytest.raises(ValueError, match="dbpr.flags=oracle needs noise labels.*flags=amsc"):
        build_denoiser(cfg, job.data, job.model, torch.device("cpu"), 0)
    with pytest.raises(ValueError, match="dbpr.flags"):
        switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.flags=labels")


def test_ablation_false_weight_and_student_dbpr(tiny_cfg):
    job, g = switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.dbpr.false_weight=0.5",
                    "denoise.student_dbpr=true")
    g.on_epoch(5)
    assert set(torch.unique(g.omega).tolist()) == {0.5, 1.0}
    assert int((g.omega == 0.5).sum()) == int(g.false_mask.sum()) > 0
    batch, _ = one_batch(job)
    assert torch.equal(g.weights(batch, torch.zeros(64)), g.omega[:64])
    job, g = switches(tiny_cfg, "denoise.dbpr.enabled=true")  # by default the student's loss is untouched
    g.on_epoch(5)
    assert g.weights(batch, torch.zeros(64)) is None and (g.omega == 0).any()


def test_ablation_kd_types(tiny_cfg):
    job, g = switches(tiny_cfg, "denoise.kd.type=none")
    batch, _ = one_batch(job)
    g.step(batch)
    job.model.losses(batch)
    assert g.extra_loss(batch, job.model) == {}
    values = {}
    for kind in ("ot", "kl"):
        job, g = switches(tiny_cfg, f"denoise.kd.type={kind}")
        g.step(batch)
        job.model.losses(batch)
        values[kind] = float(g.extra_loss(batch, job.model)["kd"].detach())
    assert values["ot"] > 0 and values["kl"] > 0 and values["ot"] != values["kl"]


def test_ablation_teacher_choice(tiny_cfg):
    _, g = switches(tiny_cfg, "denoise/teacher=mf")
    assert isinstance(g.teacher, MF)
    _, g = switches(tiny_cfg)  # the default: the authors' FREEDOM teacher
    assert type(g.teacher).__name__ == "Freedom" and g.teacher.cfg.knn_k == 20
    assert g.teacher.cfg.n_layers_ui == 2 and g.teacher.cfg.dropout == pytest.approx(0.1)
    _, g = switches(tiny_cfg, "denoise/teacher=lightgcn")
    assert type(g.teacher).__name__ == "LightGCN" and g.teacher.cfg.n_layers == 2
    with pytest.raises(ValueError, match="denoise.teacher"):
        switches(tiny_cfg, "denoise.teacher=vbpr")


def test_ablation_calibrate_flag_reaches_amsc(tiny_cfg):
    _, g = switches(tiny_cfg, "denoise.dbpr.enabled=true", "denoise.amsc.calibrate=false")
    assert g.amsc.cfg.calibrate is False


def test_teacher_does_not_shift_student_initialisation(tiny_cfg):
    a = prepare(tiny_cfg())
    b = prepare(tiny_cfg(*GUIDER_FAST))
    assert torch.equal(a.model.embedding.weight, b.model.embedding.weight)
    assert not torch.equal(b.model.embedding.weight[:10, :5], b.denoiser.teacher.embedding.weight[:10, :5])


def test_guider_needs_features():
    with pytest.raises(ValueError, match="needs item features"):
        AMSC(AMSCConfig(), {}, np.array([0, 0]), np.array([0, 1]), 1, 2, 0)


def test_guider_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    overrides = (*GUIDER_FAST, "train.epochs=4", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")

    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=1)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    assert resumed["detection"] == full["detection"]


def test_amsc_levers_script_scores_a_saved_run(tiny_cfg, tmp_path):
    """scripts/amsc_levers.py: every lever scored from the teacher a GUIDER run saved."""
    import importlib.util

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("amsc_levers", REPO / "scripts" / "amsc_levers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run(tiny_cfg(*GUIDER_FAST, "train.epochs=3"), tmp_path)
    table = script.levers_of_run(tmp_path, None)
    signals = [label for label, *_ in script.SIGNALS]
    content = [label for label in script.CONTENT_SIGNALS if label in set(table["lever"])]
    assert list(table["lever"]) == list(script.LEVERS) + signals + content
    assert "mean feature cosine to the user's other items" in content
    assert table[[f"item q{b}" for b in range(1, 6)]].notna().any(axis=None)
    assert table["auc"].between(0, 1).all() and table["auc"].nunique() > 1
    plain = table.set_index("lever")
    assert plain.loc["conf_floor=1 (content only, calibrated alpha)", "mean_w"] == 1.0
    # the student's signal is the AUC of minus its own scores (users with one item unscored)
    job = prepare(tiny_cfg(*GUIDER_FAST, "train.epochs=3"))
    state = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    job.model.load_state_dict(state["model"])
    job.model.eval()
    with torch.no_grad():
        u, i = job.model.final_embeddings()
    d = job.data
    own = (u[d.train.users] * i[d.train.items]).sum(-1).double().numpy()
    n_u = np.bincount(d.train.users, minlength=d.n_users)[d.train.users]
    own[n_u < 2] = own[n_u >= 2].max() + 1.0
    assert plain.loc["student score", "auc"] == pytest.approx(detection_auc(-own, d.train_noise))
    # --rho: every row at each flagged share; the AUCs unchanged, the flagged sets growing
    by_rho = script.levers_of_run(tmp_path, None, [0.05, 0.2])
    assert len(by_rho) == 2 * len(table) and set(by_rho["rho"]) == {0.05, 0.2}
    student = by_rho[by_rho["lever"] == "student score"].set_index("rho")
    assert student["auc"].tolist() == pytest.approx([plain.loc["student score", "auc"]] * 2)
    assert 0 < student.loc[0.05, "n_flagged"] < student.loc[0.2, "n_flagged"]
    # --only: the rows whose label has one of the words, the same numbers
    some = script.levers_of_run(tmp_path, None, only=["centred"]).set_index("lever")
    assert list(some.index) == ["student score, double-centred",
                                "mean feature cosine, centred features"]
    assert some["auc"].tolist() == pytest.approx(plain.loc[some.index, "auc"].tolist())
    # any other run: the student's signals only
    run(tiny_cfg("train.epochs=2"), tmp_path / "none")
    other = script.levers_of_run(tmp_path / "none", None)
    student = [label for label, who, *_ in script.SIGNALS if who == "student"]
    assert list(other["lever"])[:len(student)] == student
    assert set(list(other["lever"])[len(student):]) <= set(script.CONTENT_SIGNALS)


def test_amsc_levers_centred_scores_match_the_dense_block():
    """scripts/amsc_levers.py's centred scores equal their definitions on the full users x items
    score block: standardised along the user's row, along the item's column, double-centred."""
    import importlib.util

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("amsc_levers", REPO / "scripts" / "amsc_levers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    g = torch.Generator().manual_seed(0)
    U, V = torch.randn(7, 4, generator=g), torch.randn(9, 4, generator=g) + 0.5
    users, items = torch.tensor([0, 0, 3, 6, 2]), torch.tensor([1, 8, 8, 0, 4])
    S = U @ V.T  # every user's score of every item
    row = (S - S.mean(1, keepdim=True)) / S.std(1, correction=0, keepdim=True)
    col = (S - S.mean(0, keepdim=True)) / S.std(0, correction=0, keepdim=True)
    both = S - S.mean(1, keepdim=True) - S.mean(0, keepdim=True) + S.mean()
    for how, dense in ((None, S), ("catalogue", row), ("item", col), ("both", both)):
        got = script.centred_scores(U, V, users, items, how)
        assert got == pytest.approx(dense[users, items], abs=1e-5), how


def test_amsc_levers_content_signals_on_a_hand_made_case():
    """The content rows of scripts/amsc_levers.py: the mean cosine to the user's other items
    (leave-one-out, summed over modalities, NaN for a single item), the student's content score
    e_u . W f_i without the bias."""
    import importlib.util

    from torch import nn

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("amsc_levers", REPO / "scripts" / "amsc_levers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    f = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])  # unit rows: e1, e2, (e1 + e2) / sqrt 2
    users, items = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 2])
    got = script.feature_cosine({"text": f, "image": f}, users, items, n_users=2)
    r = 1 / np.sqrt(2)
    # user 0, item 0 (e1): cosines 0 with e2 and r with (e1 + e2)/sqrt 2, mean r / 2; item 2:
    # r with each; two identical modalities double it
    expected = 2 * np.array([r / 2, r / 2, r])
    assert got[:3].numpy() == pytest.approx(expected, abs=1e-6)
    assert torch.isnan(got[3])  # user 1 has a single item
    # a missing (all-zero) feature row: no cosine with anything, and no self term to remove
    holed = f.copy()
    holed[1] = 0.0
    got = script.feature_cosine({"text": holed}, users, items, n_users=2)
    assert got[:3].numpy() == pytest.approx([r / 2, 0.0, r / 2], abs=1e-6)
    # centred first: the mean row (4/3, 5/3) subtracted leaves (-1, -5)/3, (-4, 1)/3, (5, 4)/3
    ab, ac, bc = -1 / np.sqrt(26 * 17), -25 / np.sqrt(26 * 41), -16 / np.sqrt(17 * 41)
    got = script.feature_cosine({"text": f}, users, items, n_users=2, centre=True)
    assert got[:3].numpy() == pytest.approx([(ab + ac) / 2, (ab + bc) / 2, (ac + bc) / 2],
                                            abs=1e-6)
    # the item's popularity: log(1 + its training degree), items 0 and 1 once, item 2 twice
    assert script.item_popularity(items, 3).numpy() == pytest.approx(
        np.log([2.0, 2.0, 3.0, 3.0]), abs=1e-6)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.ModuleList([nn.Linear(2, 3)])
            self.register_buffer("feat_0", torch.tensor(f, dtype=torch.float32))

    model = Model()
    U = torch.randn(2, 3)
    score = script.content_score(model, U, users, items)
    W = model.proj[0].weight.detach()
    want = (U[users] * (model.feat_0[items] @ W.T)).sum(-1)  # no bias
    assert score == pytest.approx(want.numpy(), abs=1e-6)
    assert script.content_score(nn.Module(), U, users, items) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("extra", [
    (),  # the defaults: a FREEDOM teacher in sync, distillation over the teacher's top items
    ("denoise.dbpr.enabled=true", "denoise.graph=true", "denoise.amsc.user_cap=0.5",
     "denoise.kd.top_refresh=epoch", "denoise.kd.type=ot"),  # AMSC flags reaching the graphs
])
def test_guider_runs_on_cuda(tiny_cfg, tmp_path, extra):
    metrics = run(tiny_cfg("denoise=guider", "device=cuda", "train.epochs=4", *extra), tmp_path)
    assert metrics["device"].startswith("cuda")
    assert np.isfinite(metrics["test"]["Recall@20"]) and metrics["test"]["Recall@20"] > 0

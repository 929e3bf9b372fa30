"""Denoising baselines: each weighting rule on hand-made batches, exact state round trips, and
end-to-end training with detection better than chance on the synthetic set with random noise."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guider.backbones.mf import MF, MFConfig
from guider.data import Batch
from guider.denoise.dcf import DCF, DCFConfig, damp, lower_bound
from guider.denoise.deca import deca_terms
from guider.denoise.rce import RCE, RCEConfig
from guider.denoise.tce import TCE, TCEConfig, drop_rate_at
from guider.pipeline import prepare, run

from .conftest import run_interrupted_then_resumed

CPU = torch.device("cpu")


def fake_data(n_train: int, n_users: int = 4, n_items: int = 10):
    return SimpleNamespace(train=np.zeros(n_train), n_users=n_users, n_items=n_items)


def make(cls, cfg, n_train):
    return cls(cfg, fake_data(n_train), None, CPU, 0)


def batch_of(n: int, idx=None) -> Batch:
    idx = torch.arange(n) if idx is None else torch.as_tensor(idx)
    return Batch(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                 torch.ones(n, dtype=torch.long), idx)


# --- T-CE --------------------------------------------------------------------------------

def test_tce_schedule():
    assert drop_rate_at(0, 0.2, 30000) == 0.0
    assert drop_rate_at(15000, 0.2, 30000) == pytest.approx(0.1)
    assert drop_rate_at(30000, 0.2, 30000) == pytest.approx(0.2)
    assert drop_rate_at(90000, 0.2, 30000) == pytest.approx(0.2)
    assert drop_rate_at(0, 0.2, 0) == 0.2


def test_tce_drops_the_largest_losses_at_the_schedule_step():
    n = 40
    losses = torch.rand(n, generator=torch.Generator().manual_seed(0))
    tce = make(TCE, TCEConfig(drop_rate=0.2, num_gradual=100), n)
    assert tce.weights(batch_of(n), losses) is None  # iteration 0: rate 0, nothing dropped
    tce.iteration = 50  # num_gradual / 2: drop rate 0.1, i.e. 4 of 40
    w = tce.weights(batch_of(n), losses)
    top = set(torch.topk(losses, 4).indices.tolist())
    assert set(torch.nonzero(w == 0).squeeze(1).tolist()) == top
    assert bool(((w == 0) | (w == 1)).all()) and int(w.sum()) == 36
    tce.iteration = 1000  # past num_gradual: the full 20%
    w = tce.weights(batch_of(n), losses)
    top = set(torch.topk(losses, 8).indices.tolist())
    assert set(torch.nonzero(w == 0).squeeze(1).tolist()) == top
    assert tce.flagged().sum() == 8 and tce.iteration == 1001


def test_tce_scores_and_flags_follow_batch_indices():
    tce = make(TCE, TCEConfig(drop_rate=0.5, num_gradual=0, score_momentum=0.5), 6)
    # rate 0.5 keeps floor(1.5) = 1 of 3
    tce.weights(batch_of(3, [4, 0, 2]), torch.tensor([1.0, 3.0, 2.0]))
    assert tce.flagged().tolist() == [True, False, True, False, False, False]
    tce.weights(batch_of(3, [4, 0, 2]), torch.tensor([5.0, 1.0, 2.0]))
    assert tce.flagged().tolist() == [False, False, True, False, True, False]
    scores = tce.noise_scores()
    assert scores[[4, 0, 2]].tolist() == pytest.approx([3.0, 2.0, 2.0])  # EMA, momentum 0.5
    assert scores[[1, 3, 5]].tolist() == pytest.approx([2.0] * 3)  # unseen: least suspicious


# --- R-CE --------------------------------------------------------------------------------

def test_rce_down_weights_the_wrongly_ordered_pair_by_confidence_power_beta():
    y_ui = torch.tensor([2.0, -1.0])
    y_uj = torch.tensor([0.5, 1.0])  # pair 0 ordered right (margin 1.5), pair 1 wrong (-2)
    main = F.softplus(y_uj - y_ui)  # the backbone's BPR term
    rce = make(RCE, RCEConfig(beta=0.2), 2)
    w = rce.weights(batch_of(2), main)
    conf = torch.sigmoid(y_ui - y_uj)
    assert w.tolist() == pytest.approx((conf ** 0.2).tolist(), rel=1e-6)
    assert w[1] < w[0] < 1
    assert rce.noise_scores().tolist() == pytest.approx((-conf).tolist(), rel=1e-6)
    assert rce.flagged() is None
    plain = make(RCE, RCEConfig(beta=0.0), 2).weights(batch_of(2), main)
    assert plain.tolist() == [1.0, 1.0]


# --- DCF ---------------------------------------------------------------------------------

def test_dcf_damping_and_bound():
    loss = torch.tensor([0.0, 0.1, 1.0, 10.0])
    expect = [math.log(1 + x + x * x / 2) for x in loss.tolist()]
    assert damp(loss).tolist() == pytest.approx(expect)
    assert damp(torch.tensor(1e-3)).item() == pytest.approx(1e-3, rel=1e-3)  # linear near 0
    s, k, sig = torch.tensor([2.0]), torch.tensor([1.0]), 0.1
    expect = 1.0 - sig * (2 + sig * math.log(4) / 4) / (1 + 1 - sig)
    assert lower_bound(torch.tensor([1.0]), s, k, sig).item() == pytest.approx(expect)
    # rarely kept samples get a larger margin (a lower bound), and the bound is never negative
    assert lower_bound(torch.tensor([1.0]), s, torch.tensor([0.0]), sig) < lower_bound(
        torch.tensor([1.0]), s, torch.tensor([5.0]), sig)
    assert lower_bound(torch.tensor([0.0]), s, k, sig).item() == 0.0


def test_dcf_ranks_by_the_damped_loss_over_the_window_not_the_latest_loss():
    cfg = DCFConfig(drop_rate=0.5, num_gradual=0, relabel_ratio=0.0, window_epochs=2, sigma2=0.0)
    dcf = make(DCF, cfg, 2)
    dcf.on_epoch(0)
    dcf.weights(batch_of(2), torch.tensor([3.0, 1.0]))  # interaction 0: one very high loss
    dcf.on_epoch(1)
    w = dcf.weights(batch_of(2), torch.tensor([0.1, 1.0]))  # now interaction 1 is higher
    assert w.tolist() == [0.0, 1.0]  # the window mean still condemns interaction 0
    mean0 = (damp(torch.tensor(3.0)) + damp(torch.tensor(0.1))) / 2
    expect = [mean0.item(), damp(torch.tensor(1.0)).item()]
    assert dcf.noise_scores().tolist() == pytest.approx(expect)
    dcf.on_epoch(2)  # a new window forgets the old losses: T-CE's choice again
    w = dcf.weights(batch_of(2), torch.tensor([0.1, 1.0]))
    assert w.tolist() == [1.0, 0.0]


def test_dcf_relabels_the_highest_share_and_trains_them_reversed():
    n = 20
    data = fake_data(n, n_users=3, n_items=8)
    torch.manual_seed(0)
    mf = MF(MFConfig(embedding_dim=4), data)
    cfg = DCFConfig(drop_rate=0.5, num_gradual=0, relabel_ratio=0.4, sigma2=0.0)
    dcf = DCF(cfg, data, mf, CPU, 0)
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randint(3, (n,), generator=g), torch.randint(4, (n,), generator=g),
                  torch.randint(4, 8, (n,), generator=g), torch.arange(n))
    losses = mf.losses(batch)
    w = dcf.weights(batch, losses.main.detach())
    # drop rate 0.5: 10 of 20 leave the main term; the top 0.4 * 0.5 * 20 = 4 by loss are relabelled
    order = torch.argsort(losses.main.detach(), descending=True)
    assert set(torch.nonzero(w == 0).squeeze(1).tolist()) == set(order[:10].tolist())
    assert dcf.summary()["n_relabelled"] == 4 and dcf.summary()["n_dropped"] == 6
    extra = dcf.extra_loss(batch, mf)["relabel"]
    rows = order[:4]
    u, i, j = (mf.user_emb.weight[batch.users[rows]], mf.item_emb.weight[batch.pos[rows]],
               mf.item_emb.weight[batch.neg[rows]])
    expect = -F.logsigmoid((u * j).sum(-1) - (u * i).sum(-1)).sum() / 10
    assert extra.item() == pytest.approx(expect.item(), rel=1e-5)
    # a step on the reversed pairs lowers y_ui - y_uj of the relabelled pairs
    def margin():
        with torch.no_grad():
            u = mf.user_emb.weight[batch.users[rows]]
            return float((u * (mf.item_emb.weight[batch.pos[rows]]
                               - mf.item_emb.weight[batch.neg[rows]])).sum())

    before = margin()
    extra.backward()
    with torch.no_grad():
        for p in mf.parameters():
            p -= 0.1 * p.grad
    assert margin() < before
    assert dcf.extra_loss(batch, mf) == {}  # consumed
    assert dcf.flagged().sum() == 10
    relabel_drop = DCF(DCFConfig(drop_rate=0.5, num_gradual=0, relabel_ratio=0.4, relabel="drop"),
                       data, mf, CPU, 0)
    relabel_drop.weights(batch, losses.main.detach())
    assert relabel_drop.extra_loss(batch, mf) == {}


# --- DeCA --------------------------------------------------------------------------------

def reference_deca(f, g, h, channel, alpha, c1, c2):
    """The authors' formulation, in probabilities: mean over positives and over negatives of
    alpha KL(g || f) + (1 - alpha) KL(f || g) - E_f[log P(r | y)]."""
    def kl(a, b):
        return a * a.log() - a * b.log() + (1 - a) * (1 - a).log() - (1 - a) * (1 - b).log()

    total = 0.0
    for r in (0, 1):
        pf, pg, ph = torch.sigmoid(f[r]), torch.sigmoid(g[r]), torch.sigmoid(h[r])
        agree = alpha * kl(pg, pf) + (1 - alpha) * kl(pf, pg)
        if channel == "dp":
            loglik = ph.log() * (1 - pf) if r == 0 else (1 - ph).log() * (1 - pf) - c1 * pf
        else:
            loglik = ph.log() * pf - c2 * (1 - pf) if r == 0 else (1 - ph).log() * pf
        total = total + (agree - loglik).mean()
    return total


@pytest.mark.parametrize("channel", ["dp", "dn"])
def test_deca_loss_matches_the_authors_formulation(channel):
    g = torch.Generator().manual_seed(3)
    logits = [tuple(torch.randn(7, generator=g, dtype=torch.float64) for _ in range(2))
              for _ in range(3)]
    for alpha in (0.0, 0.5, 1.0):
        ours = deca_terms(*logits, channel, alpha, 100.0, 10.0)
        ref = reference_deca(*logits, channel, alpha, 100.0, 10.0)
        assert ours.item() == pytest.approx(ref.item(), rel=1e-9)


def test_deca_replaces_bpr_trains_its_models_and_keeps_the_student_init(tiny_cfg):
    plain = prepare(tiny_cfg())
    job = prepare(tiny_cfg("denoise=deca", "denoise.aux_lr=0.01"))
    deca = job.denoiser
    assert torch.equal(plain.model.embedding.weight, job.model.embedding.weight)
    d = job.data
    batch = Batch(torch.as_tensor(d.train.users[:64]), torch.as_tensor(d.train.items[:64]),
                  torch.as_tensor((d.train.items[:64] + 1) % d.n_items), torch.arange(64))
    before = {k: m.user_emb.weight.detach().clone() for k, m in deca.models.items()}
    for t, channel in enumerate(["dp", "dn"]):
        deca.step(batch)
        losses = job.model.losses(batch)
        assert torch.equal(deca.weights(batch, losses.main.detach()), torch.zeros(64))
        assert deca.channel_at(t) == channel
        deca.extra_loss(batch, job.model)["deca"].backward()
        used = "h1" if channel == "dp" else "h2"
        unused = "h2" if channel == "dp" else "h1"
        assert deca.models[used].user_emb.weight.grad is not None
        assert deca.models[unused].user_emb.weight.grad is None
        assert job.model.embedding.weight.grad.abs().sum() > 0
        job.model.zero_grad(set_to_none=True)
    deca.step(batch)  # applies the last batch's gradients
    for key in ("g", "h1", "h2"):
        assert not torch.equal(before[key], deca.models[key].user_emb.weight)
    scores = deca.noise_scores()
    assert scores.shape == (len(d.train),) and np.isfinite(scores).all()


# --- state and configuration -----------------------------------------------------------------

@pytest.mark.parametrize("cls,cfg", [
    (TCE, TCEConfig(num_gradual=3)),
    (RCE, RCEConfig()),
    (DCF, DCFConfig(num_gradual=3, relabel_ratio=0.5, window_epochs=2, sigma2=0.01)),
])
def test_state_dict_round_trip(cls, cfg):
    n = 30
    g = torch.Generator().manual_seed(0)
    batches = [(batch_of(10, torch.randperm(n, generator=g)[:10]), torch.rand(10, generator=g) * 2)
               for _ in range(8)]
    a = make(cls, cfg, n)
    for epoch, (b, l) in enumerate(batches[:5]):
        a.on_epoch(epoch)
        a.weights(b, l)
    b_ = make(cls, cfg, n)
    b_.load_state_dict(a.state_dict())
    for epoch, (b, l) in enumerate(batches[5:], start=5):
        a.on_epoch(epoch)
        b_.on_epoch(epoch)
        wa, wb = a.weights(b, l), b_.weights(b, l)
        assert (wa is None and wb is None) or torch.equal(wa, wb)
    assert np.array_equal(a.noise_scores(), b_.noise_scores())
    fa, fb = a.flagged(), b_.flagged()
    assert (fa is None and fb is None) or np.array_equal(fa, fb)


@pytest.mark.parametrize("override,key", [
    ("denoise=tce denoise.drop_rate=1.0", "drop_rate"),
    ("denoise=tce denoise.num_gradual=-1", "num_gradual"),
    ("denoise=rce denoise.beta=-0.5", "beta"),
    ("denoise=dcf denoise.relabel=swap", "relabel"),
    ("denoise=dcf denoise.window_epochs=0", "window_epochs"),
    ("denoise=deca denoise.channel=both", "channel"),
    ("denoise=deca denoise.aux_model=vbpr", "aux_model"),
])
def test_bad_values_fail_naming_key(tiny_cfg, override, key):
    with pytest.raises(ValueError, match=f"denoise.{key}"):
        prepare(tiny_cfg(*override.split()))


# --- end to end --------------------------------------------------------------------------

NOISY = ("noise=random", "noise.ratio=0.2", "train.lr=0.01", "train.epochs=8")
FAST = {"tce": ("denoise.num_gradual=15",), "rce": (), "dcf": ("denoise.num_gradual=15",),
        "deca": ("denoise.aux_lr=0.01", "denoise.c1=10")}


@pytest.mark.parametrize("name", sorted(FAST))
def test_trains_and_detects_noise_better_than_chance(tiny_cfg, tmp_path, name):
    metrics = run(tiny_cfg(f"denoise={name}", *NOISY, *FAST[name]), tmp_path)
    assert metrics["status"] == "completed" and metrics["test"]["Recall@20"] > 0
    det = metrics["detection"]
    assert det["n_noisy"] > 0 and det["auc"] > 0.55
    if name != "rce":
        assert 0 < det["n_flagged"] < det["n_train"]
        assert det["precision"] > det["n_noisy"] / det["n_train"]
    if name == "deca":
        assert metrics["auxiliary"]["aux"]["test"]["Recall@20"] > 0


def test_dcf_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    overrides = ("denoise=dcf", "denoise.num_gradual=10", "denoise.relabel_ratio=0.5",
                 "denoise.window_epochs=2", "train.lr=0.01", "train.epochs=4", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=2)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    assert resumed["detection"] == full["detection"]


def test_deca_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    overrides = ("denoise=deca", "denoise.aux_lr=0.01", "denoise.c1=10", "train.lr=0.01",
                 "train.epochs=4", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=1)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    # the running detection scores are float32 averages of model outputs; with two CPU threads a
    # scatter-add in the backward pass may round differently between runs (seen once: AUC
    # 0.5887559 vs 0.5887567), so every AUC (overall, band, per band) is compared to 1e-5 and
    # the rest exactly
    det_r, det_f = resumed["detection"], full["detection"]

    def split(det: dict, prefix: str = "") -> tuple[dict, dict]:
        aucs, rest = {}, {}
        for key, value in det.items():
            if isinstance(value, dict):
                a, r = split(value, f"{prefix}{key}.")
                aucs.update(a)
                rest.update(r)
            elif (key.endswith("auc") and value is not None
                  and not key.startswith(("degree", "popularity"))):
                aucs[prefix + key] = value
            else:
                rest[prefix + key] = value
        return aucs, rest

    (auc_r, rest_r), (auc_f, rest_f) = split(det_r), split(det_f)
    assert "auc" in auc_r and "band_auc" in auc_r
    assert auc_r == pytest.approx(auc_f, rel=1e-5)
    assert rest_r == rest_f  # counts, flags, and the trivial scores (which depend on data only)
    assert resumed["auxiliary"] == full["auxiliary"]

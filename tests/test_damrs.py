"""DA-MRS: consistency pruning on hand-made similarities, the behaviour graph on a hand-made
history and never from valid/test, the feedback weights equal to their definition and in [0, 1],
the alignment and neighbour terms on hand-made cases, the model's noise scores, exact resume, and
end-to-end detection better than chance on the synthetic set with random noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from guider.backbones.damrs import (DAMRS, DAMRSConfig, alignment_kl, feedback_weights,
                                    neighbour_discrimination)
from guider.data import Interactions, Split
from guider.graphs import consistent_knn_graphs, cooccurrence_graph, mean_cosine
from guider.pipeline import run

from .conftest import run_interrupted_then_resumed
from .helpers import ONE_MODALITY, THREE_MODALITIES, tiny_data

NOISY = ("backbone=damrs", "noise=random", "noise.ratio=0.2", "train.lr=0.01")


def bernoulli_kl(p, q):
    """Element-wise KL(Bernoulli(p) || Bernoulli(q)): the alignment term's definition."""
    return p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def edges(g: torch.Tensor) -> set[tuple[int, int]]:
    d = g.to_dense()
    return {(int(i), int(j)) for i, j in (d > 0).nonzero().tolist()}


def test_mean_cosine_is_the_mean_of_the_similarity_matrix():
    z = F.normalize(torch.randn(37, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    assert mean_cosine(z) == pytest.approx(float((z @ z.t()).mean()), abs=1e-6)


def test_consistency_pruning_removes_an_entry_below_either_mean_from_both_graphs():
    # modality a: items 0 and 1 identical, 2 orthogonal to both, 3 opposite to 0
    a = unit([1, 0], [1, 0], [0, 1], [-1, 0])
    # modality b: items 0 and 2 identical, 1 orthogonal; so (0, 1) is similar in a only and
    # (0, 2) in b only: both are below the other modality's mean and vanish from both graphs
    b = unit([1, 0], [0, 1], [1, 0], [1, 1])
    mu_a, mu_b = mean_cosine(a), mean_cosine(b)
    sa, sb = a @ a.t(), b @ b.t()
    assert sa[0, 1] >= mu_a and sb[0, 1] < mu_b
    assert sb[0, 2] >= mu_b and sa[0, 2] < mu_a
    ga, gb = consistent_knn_graphs([a, b], k=3, block_size=2)
    expected = {(i, j) for i in range(4) for j in range(4) if sa[i, j] >= mu_a and sb[i, j] >= mu_b}
    for g in (ga, gb):
        assert (0, 1) not in edges(g) and (0, 2) not in edges(g)
        assert edges(g) <= expected
        assert all((i, i) in edges(g) for i in range(4))  # self-similarity 1 is above any mean
    # fewer than k consistent neighbours: all are kept, in both graphs
    assert edges(ga) == edges(gb) == expected
    # rows normalised by the row sums: every kept entry is 1/sqrt(d_i d_j)
    d = ga.to_dense()
    deg = (d > 0).sum(1).float()
    for i, j in edges(ga):
        assert d[i, j] == pytest.approx(1 / math.sqrt(deg[i] * deg[j]))


def test_consistency_pruning_keeps_the_top_k_and_does_not_depend_on_the_block_size():
    g = torch.Generator().manual_seed(1)
    zs = [F.normalize(torch.randn(60, 6, generator=g), dim=1) for _ in range(2)]
    one = consistent_knn_graphs(zs, k=4, block_size=60)
    blocks = consistent_knn_graphs(zs, k=4, block_size=7)
    for x, y in zip(one, blocks):
        assert torch.equal(x.to_dense(), y.to_dense())
        assert int((x.to_dense() > 0).sum(1).max()) <= 4
    # the kept neighbours of a row are its most similar consistent items in that modality
    sims = [z @ z.t() for z in zs]
    ok = (sims[0] >= mean_cosine(zs[0])) & (sims[1] >= mean_cosine(zs[1]))
    for m, graph in enumerate(one):
        d = graph.to_dense()
        for i in range(60):
            kept = set((d[i] > 0).nonzero().flatten().tolist())
            cand = sims[m][i].masked_fill(~ok[i], -math.inf)
            n_ok = int(ok[i].sum())
            assert len(kept) == min(4, n_ok)
            threshold = cand.topk(len(kept)).values.min()
            assert all(cand[j] >= threshold for j in kept)


def test_one_modality_prunes_by_its_own_mean():
    z = F.normalize(torch.randn(30, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    (g,) = consistent_knn_graphs([z], k=30)
    s = z @ z.t()
    assert edges(g) == {(i, j) for i in range(30) for j in range(30) if s[i, j] >= mean_cosine(z)}


def test_cooccurrence_graph_on_a_hand_made_history():
    # users: 0 {0, 1, 2}, 1 {0, 1, 2}, 2 {0, 1, 3}, 3 {2, 3}; duplicate (0, 0) counts once
    users = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    items = np.array([0, 0, 1, 2, 0, 1, 2, 0, 1, 3, 2, 3])
    # common users: (0,1) 3, (0,2) 2, (1,2) 2, (0,3) 1, (1,3) 1, (2,3) 1 -> below 2: no link
    g = cooccurrence_graph(users, items, n_users=4, n_items=5, k=1, min_common=2)
    # k=1: 0 -> 1 (3 users), 1 -> 0, 2 -> 0 (tie 0/1 at 2: the lower index); 3, 4: loops only
    assert edges(g) == {(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (0, 1), (1, 0), (2, 0)}
    g2 = cooccurrence_graph(users, items, n_users=4, n_items=5, k=10, min_common=2)
    assert edges(g2) == {(i, i) for i in range(5)} | {(0, 1), (1, 0), (0, 2), (2, 0), (1, 2),
                                                      (2, 1)}
    d = g2.to_dense()
    assert d[0, 1] == pytest.approx(1 / 3) and d[4, 4] == pytest.approx(1.0)


def hand_made_data() -> Interactions:
    """Items 0 and 1 share users 0-2 in training only; items 2 and 3 share users 0-2 in valid
    and test only."""
    feats = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    return Interactions(
        name="hand", n_users=4, n_items=6,
        train=Split(np.array([0, 0, 1, 1, 2, 2, 3]), np.array([0, 1, 0, 1, 0, 1, 5])),
        valid=Split(np.array([0, 1, 2]), np.array([2, 2, 2])),
        test=Split(np.array([0, 1, 2]), np.array([3, 3, 3])),
        features={"text": feats.numpy()})


def test_behaviour_graph_comes_from_training_interactions_only():
    torch.manual_seed(0)
    model = DAMRS(DAMRSConfig(embedding_dim=8), hand_made_data())
    assert model.view_names == ["text", "behaviour"]
    behaviour = edges(model.view_1)
    assert (0, 1) in behaviour and (1, 0) in behaviour
    assert not any(i in (2, 3) and j in (2, 3) and i != j for i, j in behaviour)


def test_feedback_weights_equal_their_definition():
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    pos = [torch.tensor([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]]),
           torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 2.0]])]
    neg = [torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
           torch.tensor([[-1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])]
    w_pos, w_neg = feedback_weights(u, pos, neg)

    def s(x):
        return 1.0 / (1.0 + math.exp(-x))

    # views normalised to unit length: user . view
    p = torch.tensor([[s(1), s(-2), s(1)], [s(1), s(2), s(1)]])
    n = torch.tensor([[s(1), s(2), s(2 ** 0.5)], [s(-1), s(2), s(-1)]])
    mean, var = p.mean(0), p.var(0)
    assert torch.allclose(w_pos, mean * torch.exp(-var) ** 2, atol=1e-6)
    n_mean = float(n.mean())  # over the whole batch and every view
    # user 1's views disagree (0.12 and 0.88): mean 0.5 below the negatives' 0.64, so its
    # positive is pushed down with weight max - n_mean; users 0 and 2 are trusted
    assert float(mean[1]) < n_mean < float(mean[0])
    assert w_neg[1] == pytest.approx(s(2) - n_mean, abs=1e-6)
    assert w_neg[0] == 0 and w_neg[2] == 0
    # agreeing views give weight = the mean; disagreeing ones lose weight
    assert w_pos[0] == pytest.approx(s(1), abs=1e-6)
    assert w_pos[1] < 0.5 * math.exp(-0) and w_pos[1] < w_pos[0]
    assert not w_pos.requires_grad


def test_feedback_weights_stay_in_the_unit_interval():
    g = torch.Generator().manual_seed(4)
    for scale in (0.1, 1.0, 30.0):
        u = torch.randn(500, 8, generator=g) * scale
        views = [torch.randn(500, 8, generator=g) for _ in range(3)]
        negs = [torch.randn(500, 8, generator=g) for _ in range(3)]
        w_pos, w_neg = feedback_weights(u, views, negs)
        for w in (w_pos, w_neg):
            assert bool(((w >= 0) & (w <= 1)).all())


def test_alignment_kl_is_zero_for_agreeing_views_and_positive_otherwise():
    g = torch.Generator().manual_seed(5)
    users, items = torch.randn(7, 4, generator=g), torch.randn(9, 4, generator=g)
    assert float(alignment_kl(users, items, 3.0 * items)) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment_kl(users, items, -items)) > 0.1
    p, q = torch.tensor([0.2]), torch.tensor([0.7])
    expected = 0.2 * math.log(0.2 / 0.7) + 0.8 * math.log(0.8 / 0.3)
    assert float(bernoulli_kl(p, q)) == pytest.approx(expected)
    # saturated probabilities stay finite
    huge = torch.full((2, 4), 1e4)
    assert torch.isfinite(alignment_kl(huge, huge, -huge))


def test_neighbour_discrimination_lower_when_pseudo_neighbours_are_close():
    g = torch.Generator().manual_seed(6)
    base = torch.randn(40, 8, generator=g)
    agreeing = [base, base + 0.01 * torch.randn(40, 8, generator=g)]
    items = torch.arange(10)
    low = neighbour_discrimination(agreeing, items, n_pseudo=3, temperature=0.2)
    assert torch.isfinite(low)
    # gradient flows to every view
    views = [v.clone().requires_grad_(True) for v in agreeing]
    neighbour_discrimination(views, items, 3, 0.2).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)


def dense_alignment_kl(users, behaviour, content):
    """The alignment term by its definition, on the whole [users, items] matrix."""
    def probs(items):
        return torch.sigmoid(users @ F.normalize(items, dim=-1).t()).clamp(1e-6, 1 - 1e-6)
    pg, pt = probs(behaviour), probs(content)
    return (bernoulli_kl(pg, pt) + bernoulli_kl(pt, pg)).mean()


def dense_neighbour_discrimination(views, items, k, temperature):
    """The neighbour term by its definition, on whole [batch, catalogue] matrices."""
    normed = [F.normalize(h, dim=-1) for h in views]
    sims = [hn[items] @ hn.t() for hn in normed]
    probs = [torch.softmax(s.detach(), dim=1) for s in sims]
    losses = []
    for s, prob in zip(sims, probs):
        mm_idx = (sum(probs) + prob).topk(k, dim=1).indices
        single_idx = prob.scatter(1, mm_idx, 0.0).topk(k, dim=1).indices
        e = torch.exp(s / temperature)
        everything, mm = e.sum(1), e.gather(1, mm_idx).sum(1)
        single = e.gather(1, single_idx).sum(1)
        rest = (everything - mm).clamp(min=1e-9)
        losses.append((-torch.log(mm / everything + 1e-9)
                       - torch.log(single / rest + 1e-9)).mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("rows", [None, 1, 4, 1000])
def test_blockwise_alignment_and_neighbour_terms_equal_their_dense_definitions(rows):
    """The two terms are computed a block of rows at a time with hand-written gradients; value
    and gradient must equal the dense definitions, saturated probabilities included."""
    g = torch.Generator().manual_seed(11)
    dbl = torch.float64
    # users scaled so that some scores pass the clip (|u . i/|i|| > logit(1 - 1e-6) = 13.8)
    users = (6.0 * torch.randn(13, 5, generator=g, dtype=dbl)).requires_grad_(True)
    behaviour = torch.randn(9, 5, generator=g, dtype=dbl, requires_grad=True)
    content = torch.randn(9, 5, generator=g, dtype=dbl, requires_grad=True)
    inputs = [users, behaviour, content]
    scores = users.detach() @ F.normalize(behaviour.detach(), dim=-1).t()
    assert bool((scores.abs() > 13.9).any()) and bool((scores.abs() < 13.7).any())
    got = alignment_kl(users, behaviour, content, rows=rows)
    want = dense_alignment_kl(users, behaviour, content)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-9)
    for a, b in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)

    views = [torch.randn(30, 6, generator=g, dtype=dbl, requires_grad=True) for _ in range(3)]
    items = torch.tensor([0, 4, 7, 29, 12, 4])  # a repeated item, as a batch may hold
    got = neighbour_discrimination(views, items, n_pseudo=3, temperature=0.2, rows=rows)
    want = dense_neighbour_discrimination(views, items, 3, 0.2)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-9)
    for a, b in zip(torch.autograd.grad(got, views), torch.autograd.grad(want, views)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_noise_scores_are_one_minus_the_positive_weights():
    data = tiny_data(THREE_MODALITIES)
    torch.manual_seed(0)
    model = DAMRS(DAMRSConfig(embedding_dim=16), data)
    assert model.view_names == ["image", "text", "audio", "behaviour"]
    users, items = data.train.users[:50], data.train.items[:50]
    scores = model.noise_scores(users, items)
    u, _, views = model.propagate()
    w_pos, _ = feedback_weights(u[users], [h[items] for h in views])
    assert np.allclose(scores, 1.0 - w_pos.detach().numpy(), atol=1e-6)


def test_ablation_switches_change_the_views_and_the_loss():
    data = tiny_data(ONE_MODALITY)
    torch.manual_seed(0)
    plain = DAMRS(DAMRSConfig(embedding_dim=8, behaviour_graph=False, kl_weight=0.0,
                              neighbor_weight=0.0), data)
    assert plain.view_names == ["text"]
    from guider.data import Batch
    batch = Batch(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3]),
                  torch.arange(2))
    assert set(plain.losses(batch).aux) == set()
    full = DAMRS(DAMRSConfig(embedding_dim=8), data)
    assert set(full.losses(batch).aux) == {"align_kl", "neighbour"}


@pytest.mark.parametrize("bad", ["backbone.temperature=0", "backbone.knn_k=0",
                                 "backbone.kl_weight=-1"])
def test_bad_values_fail_before_data(tiny_cfg, tmp_path, bad):
    with pytest.raises(ValueError, match=bad.split("=")[0]):
        run(tiny_cfg("backbone=damrs", bad), tmp_path)


def test_trains_and_detects_noise_better_than_chance(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg(*NOISY, "train.epochs=6"), tmp_path)
    assert metrics["status"] == "completed" and metrics["test"]["Recall@20"] > 0.1
    det = metrics["detection"]
    assert det["n_noisy"] > 0 and det["auc"] > 0.6
    # its own scores are traced over training too (the same choice as metrics.json's, which
    # scores the model restored to its best epoch)
    history = pd.read_csv(tmp_path / "history.csv").set_index("epoch")
    assert history["detect_auc"].between(0, 1).all()
    assert history.loc[metrics["best_epoch"], "detect_auc"] == pytest.approx(det["auc"])


def test_damrs_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    overrides = (*NOISY, "train.epochs=3", "train.patience=100")
    full = run(tiny_cfg(*overrides), tmp_path / "full")
    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=1)
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    assert resumed["detection"] == full["detection"]

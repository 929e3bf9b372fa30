"""Measuring denoising honestly: the oracle ceiling (loss weights and graph removal), the
detection metrics a trivial score cannot meet, per-user noise, and the teacher measured at the
student's best epoch. Paired sweep comparisons are tested in tests/test_reporting.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from guider.config import NoiseConfig
from guider.data import Interactions, Split, inject_noise
from guider.data.noise import per_user_counts
from guider.data.sampling import Batch
from guider.evaluation.detection import (band_labels, degree_band, detection_auc,
                                         detection_metrics, item_fifth, stratified_auc)
from guider.pipeline import prepare, run


def dense_pairs(adj: torch.Tensor, n_users: int) -> set[tuple[int, int]]:
    """(user, item) pairs with a non-zero entry in a bipartite (users + items) adjacency."""
    a = adj.to_dense() if adj.layout != torch.strided else adj
    rows, cols = torch.nonzero(a[:n_users, n_users:], as_tuple=True)
    return set(zip(rows.tolist(), cols.tolist()))


# --- the oracle ------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["lightgcn", "freedom"])
def test_oracle_graph_removes_exactly_the_labelled_edges(tiny_cfg, backbone):
    job = prepare(tiny_cfg(f"backbone={backbone}", "denoise=oracle", "denoise.graph=true",
                           "train.epochs=1"))
    data, model = job.data, job.model
    labels = data.train_noise
    assert labels.any() and (~labels).any()
    pairs = list(zip(data.train.users.tolist(), data.train.items.tolist()))
    noisy = {p for p, bad in zip(pairs, labels) if bad}
    clean = {p for p, bad in zip(pairs, labels) if not bad}
    graph = dense_pairs(model.adj, data.n_users)
    assert graph == clean  # every clean edge present, no labelled one
    assert not graph & noisy
    if backbone == "freedom":  # the pruned graph of an epoch is drawn from the clean edges only
        model.train()
        pruned = dense_pairs(model.prune(), data.n_users)
        assert pruned and pruned <= clean
        assert len(model.edge_users) == len(clean)
    # the sampler and the loss still see every training interaction
    assert len(data.train) == len(pairs)


def test_oracle_without_graph_keeps_every_edge(tiny_cfg):
    job = prepare(tiny_cfg("denoise=oracle"))
    data = job.data
    assert dense_pairs(job.model.adj, data.n_users) == set(
        zip(data.train.users.tolist(), data.train.items.tolist()))


@pytest.mark.parametrize("false_weight", [0.0, 0.25])
def test_oracle_weights_follow_the_labels(tiny_cfg, false_weight):
    job = prepare(tiny_cfg("denoise=oracle", f"denoise.false_weight={false_weight}"))
    labels = job.data.train_noise
    idx = torch.arange(len(labels))
    batch = Batch(torch.as_tensor(job.data.train.users), torch.as_tensor(job.data.train.items),
                  torch.zeros(len(labels), dtype=torch.long), idx)
    w = job.denoiser.weights(batch, torch.ones(len(labels))).numpy()
    assert np.all(w[labels] == false_weight) and np.all(w[~labels] == 1.0)
    assert detection_auc(job.denoiser.noise_scores(), labels) == 1.0


def test_oracle_refuses_data_without_labels(short_cfg, tmp_path):
    pytest.importorskip("scipy")
    from .conftest import shared_dataset

    data_dir = shared_dataset("baby")
    with pytest.raises(ValueError, match="needs noise labels"):
        prepare(short_cfg("dataset=baby", f"data_dir={data_dir}", "denoise=oracle"))


def test_oracle_refuses_a_bad_weight(tiny_cfg):
    with pytest.raises(ValueError, match="false_weight"):
        prepare(tiny_cfg("denoise=oracle", "denoise.false_weight=1.5"))


def test_oracle_zero_weight_equals_training_without_the_noise_in_the_loss(tiny_cfg, tmp_path):
    """With false_weight=0 the labelled interactions contribute nothing: the run differs from
    denoise=none, and the detection record names every labelled interaction."""
    m_none = run(tiny_cfg(), tmp_path / "none")
    m_oracle = run(tiny_cfg("denoise=oracle"), tmp_path / "oracle")
    assert m_oracle["test"] != m_none["test"]
    det = m_oracle["detection"]
    assert det["auc"] == 1.0 and det["precision"] == 1.0 and det["recall"] == 1.0
    assert m_none["detection"]["degree_auc"] is not None  # trivial scores for every denoiser
    assert "auc" not in m_none["detection"]


# --- detection metrics -----------------------------------------------------------------------


def test_bands_and_their_names():
    assert band_labels((1, 2, 3, 5)) == ["1", "2", "3", "4-5", "6+"]
    assert degree_band(np.array([1, 2, 3, 4, 5, 6, 100]), (1, 2, 3, 5)).tolist() == \
        [0, 1, 2, 3, 3, 4, 4]


def test_stratified_auc_hand_worked():
    # stratum a: noisy score 0.9 vs clean 0.1, 0.5 -> 2 of 2 pairs right (AUC 1, 2 pairs)
    # stratum b: noisy 0.2, 0.3 vs clean 0.4 -> 0 of 2 right (AUC 0, 2 pairs); c: clean only
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.3, 0.4, 0.7])
    labels = np.array([1, 0, 0, 1, 1, 0, 0], dtype=bool)
    strata = np.array([0, 0, 0, 1, 1, 1, 2])
    assert stratified_auc(scores, labels, strata) == pytest.approx(0.5)
    # the pooled AUC counts cross-stratum pairs too: 3 noisy x 4 clean = 12 pairs
    right = sum(s_n > s_c for s_n in scores[labels] for s_c in scores[~labels])
    assert detection_auc(scores, labels) == pytest.approx(right / 12)


def test_degree_and_popularity_auc_hand_worked():
    # users 0 and 2 have one item each, user 1 two -> user degrees 1, 2, 2, 1;
    # item 0 has two interactions, items 1 and 2 one each -> item degrees 1, 2, 1, 2
    items = np.array([1, 0, 2, 0])
    users = np.array([0, 1, 1, 2])
    labels = np.array([True, False, True, False])
    out = detection_metrics(None, None, labels, users, items, bounds=(1, 2))
    # degree score -deg: noisy (-1, -2) vs clean (-2, -1): pairs (-1>-2)=1, (-1=-1)=0.5,
    # (-2=-2)=0.5, (-2<-1)=0 -> 2/4
    assert out["degree_auc"] == pytest.approx(0.5)
    # popularity: item degrees 1, 2, 1, 2 -> noisy (-1, -1) vs clean (-2, -2): every pair right
    assert out["popularity_auc"] == pytest.approx(1.0)
    # bands by user degree: '1' = rows 0, 3 (one noisy, one clean); '2' = rows 1, 2
    assert out["bands"]["1"]["n"] == 2 and out["bands"]["1"]["n_noisy"] == 1
    assert out["bands"]["2"]["noise_share"] == pytest.approx(0.5)
    # within a band of one degree the degree score is constant: AUC 0.5
    assert out["bands"]["1"]["degree_auc"] == pytest.approx(0.5)
    assert out["degree_band_auc"] == pytest.approx(0.5)
    assert "auc" not in out and "band_auc" not in out


def test_item_fifths_hand_worked():
    # item k has training degree k + 1 (1..10 interactions, 55 in all); the 0.2 quantile of the
    # interactions' item degrees is 5 (the 11th and 12th smallest), so the rarest fifth holds
    # degrees 1-4 (10 interactions); the noise sits on items of degree 1-3 (6 interactions)
    items = np.repeat(np.arange(10), np.arange(1, 11))
    users = np.arange(len(items))
    labels = items < 3
    fifth, bounds = item_fifth(np.bincount(items)[items])
    assert bounds[0] == 5.0 and (fifth == 0).sum() == 10
    scores = np.where(labels, 1.0, 0.0)
    scores[items == 3] = 2.0  # item 3 (clean, degree 4) scored above the noise
    out = detection_metrics(scores, None, labels, users, items)
    q1 = out["item_bands"]["q1"]
    assert (q1["n"], q1["n_noisy"]) == (10, 6)
    assert q1["auc"] == 0.0  # every clean pair of the fifth outranks the noise
    # popularity inside the rarest fifth: noisy degrees 1-3 against clean 4: every pair right
    assert q1["popularity_auc"] == 1.0
    assert out["item_band_auc"] == 0.0 and out["popularity_band_auc"] == 1.0  # one fifth holds both
    assert out["item_bands"]["q2"]["auc"] is None  # no noise above the rarest fifth
    assert detection_metrics(None, None, labels, users, items)["item_bands"]["q1"].keys() == \
        {"n", "n_noisy", "popularity_auc"}


def test_band_precision_recall_hand_worked():
    users = np.array([0, 0, 1, 1, 1, 1])
    items = np.arange(6)
    labels = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    flagged = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    out = detection_metrics(scores, flagged, labels, users, items, bounds=(2,))
    low, high = out["bands"]["1-2"], out["bands"]["3+"]
    assert (low["n_flagged"], low["precision"], low["recall"]) == (2, 0.5, 1.0)
    assert (high["n_flagged"], high["precision"], high["recall"]) == (1, 1.0, 0.5)
    assert low["auc"] == 1.0
    assert high["auc"] == pytest.approx(2 / 4)  # 0.7 beats 0.2, 0.3; 0.1 beats neither
    # band AUC: (1 x 1 x 1.0 + 2 x 2 x 0.5) / (1 + 4)
    assert out["band_auc"] == pytest.approx(3 / 5)


def test_uniform_noise_is_found_by_degree_and_per_user_noise_is_not():
    """A world of light and heavy users: the uniform sampler piles noise onto the light ones, so
    the degree alone detects it; per-user noise gives every user the same share."""
    rng = np.random.default_rng(0)
    n_users, n_items = 400, 300
    light = np.repeat(np.arange(300), 4)
    heavy = np.repeat(np.arange(300, 400), 60)
    users = np.concatenate([light, heavy])
    items = np.concatenate([rng.choice(n_items, 4, replace=False) for _ in range(300)]
                           + [rng.choice(n_items, 60, replace=False) for _ in range(100)])
    empty = Split(np.empty(0, np.int64), np.empty(0, np.int64))
    out = {}
    for per_user in (False, True):
        data = Interactions("toy", n_users, n_items, Split(users, items), empty, empty)
        inject_noise(data, NoiseConfig(type="random", ratio=0.2, per_user=per_user))
        out[per_user] = detection_metrics(None, None, data.train_noise, data.train.users,
                                          data.train.items)
    assert out[False]["degree_auc"] > 0.7
    assert abs(out[True]["degree_auc"] - 0.5) < 0.05


# --- per-user noise ---------------------------------------------------------------------------


def test_per_user_counts_round_half_up():
    assert per_user_counts(np.array([0, 1, 2, 3, 5, 10, 12]), 0.25).tolist() == \
        [0, 0, 1, 1, 1, 3, 3]  # 0.25, 0.5 -> 1 (half up), 0.75, 1.25, 2.5 -> 3, 3.0


@pytest.mark.parametrize("kind", ["random", "popular"])
def test_per_user_noise_counts_exact_and_never_collide(kind):
    rng = np.random.default_rng(1)
    n_users, n_items = 60, 80
    rows = [(u, i) for u in range(n_users)
            for i in rng.choice(n_items, 2 + u % 17, replace=False)]
    users, items = map(np.array, zip(*rows))
    split = rng.random(len(users))
    tr, va, te = split < 0.7, (split >= 0.7) & (split < 0.85), split >= 0.85
    data = Interactions("toy", n_users, n_items, Split(users[tr], items[tr]),
                        Split(users[va], items[va]), Split(users[te], items[te]))
    before = np.bincount(data.train.users, minlength=n_users)
    keys_before = {(u, i) for s in (data.train, data.valid, data.test)
                   for u, i in zip(s.users.tolist(), s.items.tolist())}
    record = inject_noise(data, NoiseConfig(type=kind, ratio=0.3, per_user=True, seed=3))
    noisy_u = data.train.users[data.train_noise]
    noisy_i = data.train.items[data.train_noise]
    expected = np.floor(0.3 * before + 0.5).astype(int)
    assert np.bincount(noisy_u, minlength=n_users).tolist() == expected.tolist()
    assert record["n_injected"] == expected.sum() and record["per_user"] is True
    added = set(zip(noisy_u.tolist(), noisy_i.tolist()))
    assert len(added) == len(noisy_u)  # no duplicate among the added pairs
    assert not added & keys_before  # never a train, valid or test pair
    assert len(data.valid) == int(va.sum()) and len(data.test) == int(te.sum())


def test_per_user_only_for_random_and_popular(tiny_cfg):
    with pytest.raises(ValueError, match="per_user"):
        prepare(tiny_cfg("noise=modal", "noise.per_user=true"))


# --- auxiliary models at the student's best epoch ------------------------------------------


def test_teacher_is_measured_at_the_students_best_epoch(tiny_cfg, tmp_path):
    from guider.denoise.guider import build_teacher
    from guider.evaluation import evaluate
    from guider.evaluation import build_eval_sets

    cfg = tiny_cfg("denoise=guider", "train.epochs=3")
    metrics = run(cfg, tmp_path)
    teacher = metrics["auxiliary"]["teacher"]
    assert set(teacher) == {"valid", "test", "at_best"}
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] == metrics["best_epoch"]
    job = prepare(cfg)
    model = build_teacher(job.denoiser.cfg, job.data, job.device, job.root.seed)
    model.load_state_dict(best["denoiser"]["teacher"])
    model.eval()
    valid, test, _ = build_eval_sets(job.data, job.root.eval)
    got = evaluate(model.scorer(), test, job.root.eval.topk, job.root.eval.batch_users, job.device)
    assert got == pytest.approx(teacher["at_best"]["test"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["auxiliary"]["teacher"]["at_best"]["test"] == teacher["at_best"]["test"]


# --- which held-out pairs are evaluated --------------------------------------------------------


def test_before_noise_excludes_items_warm_only_through_noise():
    from guider.config import EvalConfig
    from guider.evaluation import build_eval_sets

    # item 3 has no real training interaction; its only training pair is injected noise
    train = Split(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 2]))
    test = Split(np.array([0, 1]), np.array([3, 0]))
    valid = Split(np.array([1]), np.array([3]))
    data = Interactions("toy", 3, 4, train, valid, test)
    data.train = Split(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 3]))  # user 2 -> item 3
    data.train_noise = np.array([False] * 4 + [True])
    data.info["noise"] = {"n_train_before": 4}
    _, t_train, _ = build_eval_sets(data, EvalConfig(exclude_cold="train"))
    v_clean, t_clean, _ = build_eval_sets(data, EvalConfig(exclude_cold="before_noise"))
    assert t_train.users.tolist() == [0, 1] and t_train.excluded["pairs_cold_item"] == 0
    assert t_clean.users.tolist() == [1] and t_clean.excluded["pairs_cold_item"] == 1
    assert len(v_clean.users) == 0 and v_clean.excluded["pairs_cold_item"] == 1
    # the ranking still masks every training pair, the injected one included
    row, items = t_clean.mask.rows(torch.tensor([2]))
    assert items.tolist() == [3]


def test_exclude_cold_is_checked_and_recorded(tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match="exclude_cold"):
        prepare(tiny_cfg("eval.exclude_cold=clean"))
    metrics = run(tiny_cfg("eval.exclude_cold=before_noise", "train.epochs=1"), tmp_path)
    assert metrics["eval_excluded"]["rule"] == "before_noise"


GRAPH_BACKBONES = ["lightgcn", "freedom", "bm3", "lattice", "mgcn", "smore", "lgmrec"]


@pytest.mark.parametrize("backbone", GRAPH_BACKBONES)
def test_oracle_graph_reaches_every_user_item_structure_of_every_backbone(tiny_cfg, backbone):
    """Every buffer of the backbone that holds user-item pairs (the bipartite adjacency, the
    user x item matrices MGCN, SMORE and LGMRec aggregate with) holds exactly the clean pairs."""
    job = prepare(tiny_cfg(f"backbone={backbone}", "denoise=oracle", "denoise.graph=true"))
    data, n_u, n_i = job.data, job.data.n_users, job.data.n_items
    clean = {(u, i) for u, i, bad in zip(data.train.users.tolist(), data.train.items.tolist(),
                                         data.train_noise) if not bad}
    checked = []
    for name, buf in job.model.named_buffers():
        if buf.layout == torch.strided or buf.dim() != 2:
            continue
        dense = buf.to_dense()
        if tuple(dense.shape) == (n_u + n_i, n_u + n_i):
            pairs = dense_pairs(buf, n_u)
        elif tuple(dense.shape) == (n_u, n_i):
            rows, cols = torch.nonzero(dense, as_tuple=True)
            pairs = set(zip(rows.tolist(), cols.tolist()))
        else:
            continue
        assert pairs == clean, name
        checked.append(name)
    assert "adj" in checked

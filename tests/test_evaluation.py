"""Ranking metrics (guider.evaluation.ranking) on hand-worked examples and end to end.

All expected values below are worked out by hand in the comments; log2(3) = 1.5849625,
1/log2(3) = 0.6309298, 1/log2(6) = 0.3868528.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from guider.evaluation import build_eval_set, evaluate, metrics_from_hits

INV_LOG2_3 = 1.0 / math.log2(3)  # discount at rank 2
INV_LOG2_6 = 1.0 / math.log2(6)  # discount at rank 5


def _single(hits: list[int], n_rel: int, topk: list[int]) -> dict[str, float]:
    out = metrics_from_hits(torch.tensor([hits]), torch.tensor([n_rel]), topk)
    return {k: float(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# metrics_from_hits, one user at a time
# ---------------------------------------------------------------------------------------------


def test_metrics_user_a_hits_at_ranks_1_and_3_of_3_relevant():
    # hits in rank order [1, 0, 1, 0, 0], |relevant| = 3
    m = _single([1, 0, 1, 0, 0], 3, [2, 5])
    # @5: hits = 2 -> Recall 2/3, Precision 2/5
    assert m["Recall@5"] == pytest.approx(2 / 3)
    assert m["Precision@5"] == pytest.approx(0.4)
    # DCG@5 = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    # IDCG over min(3, 5) = 3 hits: 1 + 1/log2(3) + 1/log2(4) = 2.1309298
    assert m["NDCG@5"] == pytest.approx(1.5 / (1 + INV_LOG2_3 + 0.5))
    assert m["NDCG@5"] == pytest.approx(0.7039180, abs=1e-6)
    # MAP@5 = (P@1 * 1 + P@3 * 1) / min(3, 5) = (1 + 2/3) / 3 = 5/9
    assert m["MAP@5"] == pytest.approx(5 / 9)
    # @2: hits [1, 0] -> Recall 1/3, Precision 1/2
    assert m["Recall@2"] == pytest.approx(1 / 3)
    assert m["Precision@2"] == pytest.approx(0.5)
    # DCG@2 = 1; IDCG over min(3, 2) = 2 hits: 1 + 1/log2(3) = 1.6309298 -> 0.6131472
    assert m["NDCG@2"] == pytest.approx(1 / (1 + INV_LOG2_3))
    assert m["NDCG@2"] == pytest.approx(0.6131472, abs=1e-6)
    # MAP@2 = P@1 * 1 / min(3, 2) = 1/2
    assert m["MAP@2"] == pytest.approx(0.5)


def test_metrics_user_b_hits_at_ranks_2_and_5_of_2_relevant():
    # hits [0, 1, 0, 0, 1], |relevant| = 2
    m = _single([0, 1, 0, 0, 1], 2, [2, 5])
    # @5: Recall 2/2 = 1, Precision 2/5
    assert m["Recall@5"] == pytest.approx(1.0)
    assert m["Precision@5"] == pytest.approx(0.4)
    # DCG@5 = 1/log2(3) + 1/log2(6) = 0.6309298 + 0.3868528 = 1.0177826
    # IDCG over min(2, 5) = 2 hits: 1 + 1/log2(3) = 1.6309298 -> NDCG 0.6240505
    assert m["NDCG@5"] == pytest.approx((INV_LOG2_3 + INV_LOG2_6) / (1 + INV_LOG2_3))
    assert m["NDCG@5"] == pytest.approx(0.6240505, abs=1e-6)
    # MAP@5 = (P@2 + P@5) / min(2, 5) = (1/2 + 2/5) / 2 = 0.45
    assert m["MAP@5"] == pytest.approx(0.45)
    # @2: hits [0, 1]: Recall 1/2, Precision 1/2, NDCG 0.6309298 / 1.6309298 = 0.3868528,
    # MAP@2 = P@2 / min(2, 2) = (1/2) / 2 = 0.25
    assert m["Recall@2"] == pytest.approx(0.5)
    assert m["Precision@2"] == pytest.approx(0.5)
    assert m["NDCG@2"] == pytest.approx(INV_LOG2_3 / (1 + INV_LOG2_3))
    assert m["MAP@2"] == pytest.approx(0.25)


def test_metrics_perfect_and_empty_rankings():
    # all top-3 hits with exactly 3 relevant: every metric is 1
    m = _single([1, 1, 1], 3, [3])
    assert m == pytest.approx({"Recall@3": 1.0, "Precision@3": 1.0, "NDCG@3": 1.0, "MAP@3": 1.0})
    # no hits: every metric is 0
    m = _single([0, 0, 0], 2, [3])
    assert m == pytest.approx({"Recall@3": 0.0, "Precision@3": 0.0, "NDCG@3": 0.0, "MAP@3": 0.0})
    # a single relevant item at rank 1 out of k = 3: Precision 1/3, the rest 1
    m = _single([1, 0, 0], 1, [3])
    assert m == pytest.approx({"Recall@3": 1.0, "Precision@3": 1 / 3, "NDCG@3": 1.0, "MAP@3": 1.0})


def test_metrics_from_hits_returns_sums_over_users():
    hits = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    out = metrics_from_hits(hits, torch.tensor([3, 2]), [2, 5])
    a = _single([1, 0, 1, 0, 0], 3, [2, 5])
    b = _single([0, 1, 0, 0, 1], 2, [2, 5])
    assert set(out) == {f"{m}@{k}" for m in ("Recall", "Precision", "NDCG", "MAP") for k in (2, 5)}
    for key in out:
        assert float(out[key]) == pytest.approx(a[key] + b[key])
    # sums, e.g. Recall@5 = 2/3 + 1, MAP@5 = 5/9 + 0.45
    assert float(out["Recall@5"]) == pytest.approx(5 / 3)
    assert float(out["MAP@5"]) == pytest.approx(5 / 9 + 0.45)


# ---------------------------------------------------------------------------------------------
# evaluate end to end on a fixed score matrix
# ---------------------------------------------------------------------------------------------
#
# 4 users, 6 items.
#   train:  user 0 -> {0}; user 1 -> {1, 2}; user 2 -> {3, 4}; user 3 -> {} (cold user)
#   item 5 has no training interaction (cold item)
#   test:   user 0 -> {1, 5}; user 1 -> {0}; user 3 -> {0}
# build_eval_set drops (3, 0) (cold user) and (0, 5) (cold item): evaluated users are 0 and 1,
# each with exactly one relevant item; user 2 has no held-out item and is not averaged over.

N_USERS, N_ITEMS = 4, 6
TRAIN_U = np.array([0, 1, 1, 2, 2])
TRAIN_I = np.array([0, 1, 2, 3, 4])
TEST_U = np.array([0, 0, 1, 3])
TEST_I = np.array([1, 5, 0, 0])
SCORES = torch.tensor([
    # user 0: training item 0 scores highest, then item 5 (excluded pair), 2, 1 (relevant), 3, 4
    #   ranking once item 0 is masked: 5, 2, 1, 3, 4 -> the hit is at rank 3
    [10.0, 4.0, 5.0, 3.0, 2.0, 9.0],
    # user 1: training items 2 and 1 score highest, then item 0 (relevant)
    #   ranking once items 1, 2 are masked: 0, 5, 4, 3 -> the hit is at rank 1
    [8.0, 10.0, 9.0, 1.0, 2.0, 3.0],
    # user 2 and the cold user 3: arbitrary
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
])


def _eval_set():
    return build_eval_set(TRAIN_U, TRAIN_I, TEST_U, TEST_I, N_USERS, N_ITEMS)


def _scorer(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users].clone()


def test_build_eval_set_excludes_cold_users_and_cold_items():
    es = _eval_set()
    assert es.excluded == {"pairs_cold_user": 1, "pairs_cold_item": 1}
    assert es.users.tolist() == [0, 1]
    assert es.relevant.counts(torch.tensor([0, 1, 2, 3])).tolist() == [1, 1, 0, 0]
    row, col = es.relevant.rows(torch.tensor([0, 1]))
    assert sorted(zip(row.tolist(), col.tolist())) == [(0, 1), (1, 0)]
    # the mask holds the training items
    row, col = es.mask.rows(torch.tensor([0, 1, 2, 3]))
    assert sorted(zip(row.tolist(), col.tolist())) == [(0, 0), (1, 1), (1, 2), (2, 3), (2, 4)]
    assert es.n_items == N_ITEMS


def test_build_eval_set_cold_user_pairs_counted_once_not_as_cold_item():
    # a cold user's pair on a cold item counts as a cold-user pair only
    es = build_eval_set(np.array([0]), np.array([0]), np.array([1, 0]), np.array([1, 1]), 2, 2)
    assert es.excluded == {"pairs_cold_user": 1, "pairs_cold_item": 1}
    es = build_eval_set(np.array([0]), np.array([0]), np.array([1]), np.array([1]), 2, 2)
    assert es.excluded == {"pairs_cold_user": 1, "pairs_cold_item": 0}
    assert len(es.users) == 0


def test_evaluate_masks_training_items_and_averages_over_users_with_relevant_items():
    res = evaluate(_scorer, _eval_set(), [1, 3])
    # per user:           @1 (R, P, N, MAP)       @3 (R, P, N, MAP)
    #   user 0 (rank 3):  0, 0, 0, 0              1, 1/3, 1/log2(4) = 0.5, P@3 / 1 = 1/3
    #   user 1 (rank 1):  1, 1, 1, 1              1, 1/3, 1, 1
    # averaged over the 2 evaluated users (not 4):
    expected = {
        "Recall@1": 0.5, "Precision@1": 0.5, "NDCG@1": 0.5, "MAP@1": 0.5,
        "Recall@3": 1.0, "Precision@3": 1 / 3, "NDCG@3": 0.75, "MAP@3": (1 / 3 + 1) / 2,
    }
    assert res == pytest.approx(expected)
    # (Without the mask user 0's top 3 would be 0, 5, 2 -> Recall@3 0.5 on average; averaging
    # over all 4 users would halve every value; counting the excluded pair (0, 5) would give
    # user 0 a hit at rank 1.)


def test_evaluate_training_items_never_occupy_the_top_k():
    # Every user's training items get the highest scores and the held-out items the next ones.
    # With masking, the top |relevant| slots hold exactly the relevant items: every metric at
    # k = |relevant| is 1 (without masking they would be 0: the training items fill the top).
    n_users, n_items = 5, 12
    rng = np.random.default_rng(0)
    tu, ti, eu, ei = [], [], [], []
    scores = torch.zeros(n_users, n_items)
    for u in range(n_users):
        perm = rng.permutation(n_items)
        train, held = perm[:4], perm[4:6]  # 4 training items, 2 held-out
        tu += [u] * 4
        ti += train.tolist()
        eu += [u] * 2
        ei += held.tolist()
        scores[u, train] = 100.0 + torch.arange(4, dtype=torch.float32)
        scores[u, held] = 50.0
    # every item trained by someone so nothing is excluded
    tu += [0] * n_items
    ti += list(range(n_items))
    keys = np.unique(np.array(tu) * n_items + np.array(ti))
    tu, ti = keys // n_items, keys % n_items
    eu, ei = np.array(eu), np.array(ei)
    keep = ~np.isin(eu * n_items + ei, keys)
    es = build_eval_set(tu, ti, eu[keep], ei[keep], n_users, n_items)
    assert es.excluded == {"pairs_cold_user": 0, "pairs_cold_item": 0}
    assert es.users.tolist() == [1, 2, 3, 4]  # user 0 trains every item: no held-out left
    res = evaluate(lambda u: scores[u].clone(), es, [2])
    assert res == pytest.approx({"Recall@2": 1.0, "Precision@2": 1.0, "NDCG@2": 1.0,
                                 "MAP@2": 1.0})


@pytest.mark.parametrize("batch_users", [1, 2, 3, 1000])
def test_evaluate_is_independent_of_batch_size(batch_users):
    ref = evaluate(_scorer, _eval_set(), [1, 3], batch_users=4096)
    assert evaluate(_scorer, _eval_set(), [1, 3], batch_users=batch_users) == pytest.approx(ref)


def test_evaluate_k_larger_than_item_count():
    # k = 10 > 6 items: Precision still divides by k (MMRec's definition).
    # user 0: hit at rank 3 -> Recall 1, Precision 1/10, NDCG 0.5, MAP 1/3
    # user 1: hit at rank 1 -> Recall 1, Precision 1/10, NDCG 1, MAP 1
    res = evaluate(_scorer, _eval_set(), [10])
    assert res == pytest.approx({"Recall@10": 1.0, "Precision@10": 0.1, "NDCG@10": 0.75,
                                 "MAP@10": 2 / 3})


def test_evaluate_with_no_evaluable_user_is_empty():
    es = build_eval_set(np.array([0]), np.array([0]), np.array([1]), np.array([0]), 2, 2)
    assert evaluate(lambda u: torch.zeros(len(u), 2), es, [1]) == {}


def _reference(scores: np.ndarray, train: set, test: dict, topk: list[int]) -> dict[str, float]:
    """Straightforward per-user implementation of the four metrics."""
    sums: dict[str, float] = {}
    n = 0
    for u, rel in test.items():
        if not rel:
            continue
        n += 1
        order = [i for i in np.argsort(-scores[u], kind="stable") if (u, i) not in train]
        for k in topk:
            hits = [1 if i in rel else 0 for i in order[:k]]
            h = sum(hits)
            dcg = sum(x / math.log2(r + 2) for r, x in enumerate(hits))
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
            ap = sum(sum(hits[:r + 1]) / (r + 1) * x for r, x in enumerate(hits))
            vals = {"Recall": h / len(rel), "Precision": h / k, "NDCG": dcg / idcg,
                    "MAP": ap / min(len(rel), k)}
            for m, v in vals.items():
                sums[f"{m}@{k}"] = sums.get(f"{m}@{k}", 0.0) + v
    return {key: v / n for key, v in sums.items()}


def test_evaluate_matches_a_naive_reference_on_random_data():
    rng = np.random.default_rng(3)
    n_users, n_items = 40, 25
    keys = rng.choice(n_users * n_items, size=300, replace=False)
    users, items = keys // n_items, keys % n_items
    split = rng.random(len(keys)) < 0.7
    tu, ti, eu, ei = users[split], items[split], users[~split], items[~split]
    # ensure every item and user appears in train so nothing is excluded
    tu = np.concatenate([tu, np.arange(n_users) % n_users])
    ti = np.concatenate([ti, np.arange(n_users) % n_items])
    pairs = np.unique(tu * n_items + ti)
    test_keys = np.setdiff1d(eu * n_items + ei, pairs)
    tu, ti = pairs // n_items, pairs % n_items
    eu, ei = test_keys // n_items, test_keys % n_items
    scores = rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float32)
    S = torch.as_tensor(scores)
    es = build_eval_set(tu, ti, eu, ei, n_users, n_items)
    assert es.excluded == {"pairs_cold_user": 0, "pairs_cold_item": 0}
    test = {}
    for u, i in zip(eu.tolist(), ei.tolist()):
        test.setdefault(u, set()).add(i)
    ref = _reference(scores, set(zip(tu.tolist(), ti.tolist())), test, [1, 5, 10])
    for bu in (1, 7, 4096):
        assert evaluate(lambda u: S[u], es, [10, 1, 5], batch_users=bu) == pytest.approx(ref)

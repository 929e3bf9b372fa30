"""BPRSampler and sample_absent_pairs (guider.data.sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guider.data import DataError
from guider.data.sampling import BPRSampler, sample_absent_pairs

N_USERS, N_ITEMS = 25, 15


def _train(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs; each user has 1..12 of the 15 items, user 0 has 14."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(N_USERS):
        k = N_ITEMS - 1 if u == 0 else int(rng.integers(1, 13))
        chosen = rng.choice(N_ITEMS, size=k, replace=False)
        users += [u] * k
        items += chosen.tolist()
    order = rng.permutation(len(users))
    return np.array(users)[order], np.array(items)[order]


def _sampler(seed: int, batch_size: int = 16) -> tuple[BPRSampler, np.ndarray, np.ndarray]:
    users, items = _train()
    g = torch.Generator().manual_seed(seed)
    return BPRSampler(users, items, N_ITEMS, batch_size, g), users, items


def test_sampler_epochs_cover_each_interaction_once_with_valid_negatives():
    sampler, users, items = _sampler(0, batch_size=16)
    n = len(users)
    positives = {(u, i) for u, i in zip(users.tolist(), items.tolist())}
    # user 0 has every item but one: its negative is always that item
    only_neg_of_user0 = (set(range(N_ITEMS)) - set(items[users == 0].tolist())).pop()
    assert len(sampler) == (n + 15) // 16
    for _ in range(6):
        batches = list(sampler.epoch())
        assert len(batches) == len(sampler)
        assert all(len(b) == 16 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 16
        idx = torch.cat([b.idx for b in batches]).numpy()
        u = torch.cat([b.users for b in batches]).numpy()
        p = torch.cat([b.pos for b in batches]).numpy()
        neg = torch.cat([b.neg for b in batches]).numpy()
        # every training interaction exactly once per epoch
        assert np.array_equal(np.sort(idx), np.arange(n))
        np.testing.assert_array_equal(u, users[idx])
        np.testing.assert_array_equal(p, items[idx])
        # negatives are items, never a training positive of their user
        assert neg.min() >= 0 and neg.max() < N_ITEMS
        assert not any((a, b) in positives for a, b in zip(u.tolist(), neg.tolist()))
        assert set(neg[u == 0].tolist()) == {only_neg_of_user0}
        for b in batches:
            assert b.users.dtype == b.pos.dtype == b.neg.dtype == b.idx.dtype == torch.long


def test_sampler_shuffles_between_epochs():
    sampler, _, _ = _sampler(0)
    first = torch.cat([b.idx for b in sampler.epoch()])
    second = torch.cat([b.idx for b in sampler.epoch()])
    assert not torch.equal(first, second)


def _run(seed: int, epochs: int = 3) -> list[tuple[torch.Tensor, ...]]:
    sampler, _, _ = _sampler(seed)
    return [(b.users, b.pos, b.neg, b.idx) for _ in range(epochs) for b in sampler.epoch()]


def test_sampler_same_seed_same_batches_different_seed_different():
    a, b, c = _run(7), _run(7), _run(8)
    assert len(a) == len(b) == len(c)
    assert all(torch.equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))
    assert not all(torch.equal(x, y) for ba, bc in zip(a, c) for x, y in zip(ba, bc))


def test_sampler_user_with_every_item_raises():
    users, items = _train()
    users = np.concatenate([users, [N_USERS] * N_ITEMS])
    items = np.concatenate([items, np.arange(N_ITEMS)])
    with pytest.raises(DataError, match=f"user {N_USERS} has every item"):
        BPRSampler(users, items, N_ITEMS, 8, torch.Generator().manual_seed(0))


def test_sampler_negative_check_is_exact():
    sampler, users, items = _sampler(0)
    u = torch.as_tensor(users)
    assert sampler.is_positive(u, torch.as_tensor(items)).all()
    # user 0 lacks exactly one item
    all_items = torch.arange(N_ITEMS)
    flags = sampler.is_positive(torch.zeros(N_ITEMS, dtype=torch.long), all_items)
    assert int((~flags).sum()) == 1
    # the largest key (last user, last item) and keys past the end are handled
    big = torch.tensor([N_USERS + 3])
    assert not sampler.is_positive(big, torch.tensor([0])).any()


# ---------------------------------------------------------------------------------------------
# sample_absent_pairs
# ---------------------------------------------------------------------------------------------


def _check_pairs(users, items, n_items, forbidden):
    keys = users * n_items + items
    assert len(np.unique(keys)) == len(keys), "pairs must be distinct"
    assert not np.isin(keys, forbidden).any(), "a forbidden pair was drawn"
    assert items.min() >= 0 and items.max() < n_items


def test_absent_pairs_with_fixed_users():
    n_items = 12
    # user 0 owns items 0..5, user 1 owns 6..10 (only 0..5 and 11 are free for user 1)
    forbidden = np.concatenate([np.arange(0, 6), 1 * n_items + np.arange(6, 11)])
    req = np.array([0] * 5 + [1] * 5 + [0, 1, 1])
    for seed in range(5):
        users, items = sample_absent_pairs(np.random.default_rng(seed), n_items, forbidden,
                                           users=req)
        np.testing.assert_array_equal(users, req)  # users are kept slot by slot
        _check_pairs(users, items, n_items, forbidden)


def test_absent_pairs_fixed_users_do_not_modify_input():
    req = np.array([0, 0, 1])
    sample_absent_pairs(np.random.default_rng(0), 5, np.array([0, 1]), users=req)
    assert req.tolist() == [0, 0, 1]


def test_absent_pairs_with_drawn_users():
    n_users, n_items = 6, 10
    rng = np.random.default_rng(1)
    forbidden = rng.choice(n_users * n_items, size=30, replace=False)
    for seed in range(5):
        users, items = sample_absent_pairs(np.random.default_rng(seed), n_items, forbidden,
                                           n=25, n_users=n_users)
        assert len(users) == len(items) == 25
        assert users.min() >= 0 and users.max() < n_users
        _check_pairs(users, items, n_items, forbidden)


def test_absent_pairs_can_fill_every_free_pair():
    # 3 users x 4 items, 8 forbidden: all 4 free pairs must be found
    n_users, n_items = 3, 4
    free = np.array([1, 6, 8, 11])
    forbidden = np.setdiff1d(np.arange(12), free)
    users, items = sample_absent_pairs(np.random.default_rng(0), n_items, forbidden, n=4,
                                       n_users=n_users)
    assert sorted((users * n_items + items).tolist()) == free.tolist()


def test_absent_pairs_respect_item_probs():
    n_users, n_items = 20, 10
    probs = np.array([0, 3, 0, 1, 0, 2, 0, 0, 1, 0], dtype=np.float64)
    forbidden = np.array([1, n_items + 3, 2 * n_items + 5])
    for seed in range(5):
        users, items = sample_absent_pairs(np.random.default_rng(seed), n_items, forbidden,
                                           n=60, n_users=n_users, item_probs=probs)
        _check_pairs(users, items, n_items, forbidden)
        assert set(items.tolist()) <= {1, 3, 5, 8}, "an item with probability 0 was drawn"
    # fixed users too
    users, items = sample_absent_pairs(np.random.default_rng(0), n_items, forbidden,
                                       users=np.arange(n_users), item_probs=probs)
    assert set(items.tolist()) <= {1, 3, 5, 8}
    _check_pairs(users, items, n_items, forbidden)


def test_absent_pairs_item_probs_shape_the_distribution():
    probs = np.array([1.0, 0.0, 9.0])
    # forbid only pairs of a user outside the 2000 requested ones
    users, items = sample_absent_pairs(np.random.default_rng(0), 3, np.array([3 * 5000]),
                                       users=np.arange(2000), item_probs=probs)
    counts = np.bincount(items, minlength=3)
    assert counts[1] == 0
    assert 0.05 < counts[0] / 2000 < 0.15  # expected 0.1


def test_absent_pairs_with_no_forbidden_keys():
    users, items = sample_absent_pairs(np.random.default_rng(0), 5, np.empty(0, dtype=np.int64),
                                       n=6, n_users=3)
    _check_pairs(users, items, 5, np.empty(0, dtype=np.int64))


def test_absent_pairs_deterministic_in_rng():
    args = dict(n_items=10, forbidden_keys=np.arange(0, 40, 3), n=20, n_users=5)
    a = sample_absent_pairs(np.random.default_rng(4), **args)
    b = sample_absent_pairs(np.random.default_rng(4), **args)
    c = sample_absent_pairs(np.random.default_rng(5), **args)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_absent_pairs_impossible_request_raises():
    # user 0 has one free item but asks for two distinct pairs
    with pytest.raises(DataError, match="could not find"):
        sample_absent_pairs(np.random.default_rng(0), 4, np.array([0, 1, 2]), users=np.array([0, 0]))

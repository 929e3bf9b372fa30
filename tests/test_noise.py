"""Noise injection (guider.data.noise.inject_noise)."""

from __future__ import annotations

import numpy as np
import pytest

from guider.config import NoiseConfig
from guider.data import DataError, Interactions, Split, inject_noise

N_USERS, N_ITEMS = 30, 40
N_COLD_ITEMS = 10  # items 30..39 never appear in train (only possibly in valid/test)


def make_data(features: bool = True, seed: int = 0) -> Interactions:
    """30 users x 40 items; per user 6 train, 1 valid, 1 test, all distinct pairs. Train uses
    only items 0..29, with item i drawn with weight ~ 1/(i+1) (a popularity skew)."""
    rng = np.random.default_rng(seed)
    warm = N_ITEMS - N_COLD_ITEMS
    w = 1.0 / np.arange(1, warm + 1)
    tr_u, tr_i, va_u, va_i, te_u, te_i = [], [], [], [], [], []
    for u in range(N_USERS):
        tr = rng.choice(warm, size=6, replace=False, p=w / w.sum())
        rest = np.setdiff1d(np.arange(N_ITEMS), tr)
        va, te = rng.choice(rest, size=2, replace=False)
        tr_u += [u] * 6
        tr_i += tr.tolist()
        va_u.append(u)
        va_i.append(va)
        te_u.append(u)
        te_i.append(te)
    feats = {}
    if features:
        feats = {"image": rng.standard_normal((N_ITEMS, 8)).astype(np.float32),
                 "text": rng.standard_normal((N_ITEMS, 5)).astype(np.float32)}
    return Interactions("toy", N_USERS, N_ITEMS, Split(tr_u, tr_i), Split(va_u, va_i),
                        Split(te_u, te_i), feats)


def keys(split: Split) -> np.ndarray:
    return split.users * N_ITEMS + split.items


# ---------------------------------------------------------------------------------------------
# random / popular
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "popular"])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_added_interactions_are_new_labelled_and_leave_valid_test_alone(kind, ratio):
    data = make_data()
    orig = Split(data.train.users.copy(), data.train.items.copy())
    valid = (data.valid.users.copy(), data.valid.items.copy())
    test = (data.test.users.copy(), data.test.items.copy())
    n = len(orig)  # 180
    record = inject_noise(data, NoiseConfig(type=kind, ratio=ratio, seed=3))
    n_add = int(round(ratio * n))  # 18, 45, 90
    assert len(data.train) == n + n_add
    assert record["n_injected"] == n_add and record["n_train_before"] == n
    assert record["type"] == kind and record["ratio"] == ratio and record["seed"] == 3
    assert data.has_noise_labels
    # the original rows stay first and unchanged, labelled clean; the added rows are noise
    np.testing.assert_array_equal(data.train.users[:n], orig.users)
    np.testing.assert_array_equal(data.train.items[:n], orig.items)
    assert data.train_noise.dtype == bool and len(data.train_noise) == n + n_add
    assert not data.train_noise[:n].any() and data.train_noise[n:].all()
    # no added pair collides with train, valid, test or another added pair
    added = keys(data.train)[n:]
    assert len(np.unique(added)) == n_add
    assert not np.isin(added, np.concatenate([keys(orig), keys(data.valid), keys(data.test)])).any()
    assert data.train.users[n:].min() >= 0 and data.train.users[n:].max() < N_USERS
    assert data.train.items[n:].min() >= 0 and data.train.items[n:].max() < N_ITEMS
    # valid and test untouched
    np.testing.assert_array_equal(data.valid.users, valid[0])
    np.testing.assert_array_equal(data.valid.items, valid[1])
    np.testing.assert_array_equal(data.test.users, test[0])
    np.testing.assert_array_equal(data.test.items, test[1])


def test_rounding_of_the_number_of_added_interactions():
    data = make_data()  # 180 training rows
    # 0.0125 * 180 = 2.25 -> 2; 0.0139 * 180 = 2.502 -> 3
    assert inject_noise(data, NoiseConfig(type="random", ratio=0.0125))["n_injected"] == 2
    data = make_data()
    assert inject_noise(data, NoiseConfig(type="random", ratio=0.0139))["n_injected"] == 3
    assert len(data.train) == 183 and int(data.train_noise.sum()) == 3


@pytest.mark.parametrize("kind", ["random", "popular"])
def test_added_noise_is_deterministic_in_seed(kind):
    a, b, c = make_data(), make_data(), make_data()
    inject_noise(a, NoiseConfig(type=kind, ratio=0.3, seed=11))
    inject_noise(b, NoiseConfig(type=kind, ratio=0.3, seed=11))
    inject_noise(c, NoiseConfig(type=kind, ratio=0.3, seed=12))
    np.testing.assert_array_equal(a.train.users, b.train.users)
    np.testing.assert_array_equal(a.train.items, b.train.items)
    np.testing.assert_array_equal(a.train_noise, b.train_noise)
    assert not np.array_equal(keys(a.train), keys(c.train))


def test_popular_noise_never_draws_items_without_training_popularity():
    data = make_data()
    n = len(data.train)
    inject_noise(data, NoiseConfig(type="popular", ratio=0.5, seed=0))
    added_items = data.train.items[n:]
    assert added_items.max() < N_ITEMS - N_COLD_ITEMS, "an item with no training interaction"


def test_popular_noise_favours_popular_items_more_than_random_noise():
    base = make_data()
    pop = np.bincount(base.train.items, minlength=N_ITEMS)
    n = len(base.train)
    means = {}
    for kind in ("random", "popular"):
        vals = []
        for seed in range(3):
            d = make_data()
            inject_noise(d, NoiseConfig(type=kind, ratio=0.5, seed=seed))
            vals.append(pop[d.train.items[n:]].mean())
        means[kind] = float(np.mean(vals))
    # uniform draws land on items of mean popularity ~ 180/40 = 4.5; popularity-weighted draws
    # land on clearly more popular items
    assert means["popular"] > 1.5 * means["random"], means


def test_random_noise_reaches_items_without_training_popularity():
    # the counterpart of the popular test: uniform noise does draw cold items
    data = make_data()
    n = len(data.train)
    inject_noise(data, NoiseConfig(type="random", ratio=0.5, seed=0))
    assert (data.train.items[n:] >= N_ITEMS - N_COLD_ITEMS).any()


def test_ratio_zero_or_type_none_changes_nothing():
    for cfg in (NoiseConfig(type="random", ratio=0.0), NoiseConfig(type="none", ratio=0.3)):
        data = make_data()
        before = keys(data.train).copy()
        record = inject_noise(data, cfg)
        assert record["n_injected"] == 0
        np.testing.assert_array_equal(keys(data.train), before)
        assert not data.train_noise.any() and len(data.train_noise) == len(before)


def test_existing_noise_labels_are_kept():
    data = make_data()
    data.train_noise[:4] = True
    n = len(data.train)
    inject_noise(data, NoiseConfig(type="random", ratio=0.1))
    assert data.train_noise[:4].all() and not data.train_noise[4:n].any()
    assert data.train_noise[n:].all()


# ---------------------------------------------------------------------------------------------
# modal
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,n_swap", [(0.25, 10), (0.1, 4), (0.5, 20)])
def test_modal_noise_swaps_rows_of_one_modality(ratio, n_swap):
    data = make_data()
    image, text = data.features["image"].copy(), data.features["text"].copy()
    train_keys = keys(data.train).copy()
    record = inject_noise(data, NoiseConfig(type="modal", ratio=ratio, modality="text", seed=5))
    new = data.features["text"]
    assert new.shape == text.shape and new.dtype == text.dtype
    changed = np.flatnonzero((new != text).any(axis=1))
    assert len(changed) == n_swap  # round(ratio * 40)
    for i in changed:
        # each swapped row is another item's original row
        donors = np.flatnonzero((text == new[i]).all(axis=1))
        assert len(donors) >= 1 and i not in donors
    unchanged = np.setdiff1d(np.arange(N_ITEMS), changed)
    np.testing.assert_array_equal(new[unchanged], text[unchanged])
    np.testing.assert_array_equal(data.features["image"], image)  # other modality untouched
    # item and interaction labels
    flag = data.feature_noise["text"]
    assert flag.dtype == bool and flag.shape == (N_ITEMS,)
    assert np.flatnonzero(flag).tolist() == changed.tolist()
    np.testing.assert_array_equal(data.train_noise, flag[data.train.items])
    assert "image" not in data.feature_noise
    assert data.has_noise_labels
    np.testing.assert_array_equal(keys(data.train), train_keys)  # interactions unchanged
    assert record["modality"] == "text" and record["n_items_swapped"] == n_swap
    assert record["n_injected"] == int(flag[data.train.items].sum())


def test_modal_noise_donor_is_always_another_item():
    # over many seeds and a large ratio, no victim may keep (receive) its own row
    for seed in range(10):
        data = make_data()
        text = data.features["text"].copy()
        inject_noise(data, NoiseConfig(type="modal", ratio=0.9, modality="text", seed=seed))
        changed = (data.features["text"] != text).any(axis=1)
        assert int(changed.sum()) == 36  # round(0.9 * 40)
        np.testing.assert_array_equal(changed, data.feature_noise["text"])


def test_modal_noise_defaults_to_the_first_modality_and_is_seeded():
    a, b, c = make_data(), make_data(), make_data()
    image = a.features["image"].copy()
    text = a.features["text"].copy()
    rec = inject_noise(a, NoiseConfig(type="modal", ratio=0.3, seed=1))
    inject_noise(b, NoiseConfig(type="modal", ratio=0.3, seed=1))
    inject_noise(c, NoiseConfig(type="modal", ratio=0.3, seed=2))
    assert rec["modality"] == "image"
    assert not np.array_equal(a.features["image"], image)
    np.testing.assert_array_equal(a.features["text"], text)
    np.testing.assert_array_equal(a.features["image"], b.features["image"])
    np.testing.assert_array_equal(a.feature_noise["image"], b.feature_noise["image"])
    assert not np.array_equal(a.features["image"], c.features["image"])


def test_modal_noise_does_not_alias_the_original_array():
    data = make_data()
    original = data.features["image"]
    snapshot = original.copy()
    inject_noise(data, NoiseConfig(type="modal", ratio=0.3, seed=0))
    np.testing.assert_array_equal(original, snapshot)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
@pytest.mark.parametrize("kind", ["random", "popular", "modal", "none"])
def test_ratio_outside_unit_interval_raises(kind, ratio):
    with pytest.raises(DataError, match="must lie in"):
        inject_noise(make_data(), NoiseConfig(type=kind, ratio=ratio))


def test_too_many_pairs_requested_raises():
    # 2 users x 3 items = 6 pairs: 4 train + 1 valid -> only 1 free pair; ratio 0.5 asks for 2
    data = Interactions("tiny", 2, 3, Split([0, 0, 1, 1], [0, 1, 0, 1]), Split([0], [2]),
                        Split([], []))
    with pytest.raises(DataError, match="only 1"):
        inject_noise(data, NoiseConfig(type="random", ratio=0.5))
    # 0.25 * 4 = 1 pair fits exactly: the one free pair (1, 2)
    data = Interactions("tiny", 2, 3, Split([0, 0, 1, 1], [0, 1, 0, 1]), Split([0], [2]),
                        Split([], []))
    inject_noise(data, NoiseConfig(type="random", ratio=0.25))
    assert (data.train.users[-1], data.train.items[-1]) == (1, 2)


def test_modal_noise_without_features_raises():
    with pytest.raises(DataError, match="needs item features"):
        inject_noise(make_data(features=False), NoiseConfig(type="modal", ratio=0.2))


def test_modal_noise_on_unknown_modality_raises():
    with pytest.raises(DataError, match="audio"):
        inject_noise(make_data(), NoiseConfig(type="modal", ratio=0.2, modality="audio"))


def test_unknown_noise_type_raises():
    with pytest.raises(DataError, match="noise.type=.gaussian.: choose one of none, random, popular, modal"):
        inject_noise(make_data(), NoiseConfig(type="gaussian", ratio=0.2))


def test_every_noise_type_has_an_injector_and_a_yaml():
    """A noise type is found through one table (guider.data.noise.INJECTORS), as backbones and
    denoisers are through their registries; config validation and conf/noise/ agree with it."""
    from pathlib import Path

    from guider.config import CONF_DIR
    from guider.config import NOISE_TYPES
    from guider.data.noise import INJECTORS

    assert set(INJECTORS) == set(NOISE_TYPES)
    yamls = {p.stem for p in (Path(CONF_DIR) / "noise").glob("*.yaml")}
    assert set(NOISE_TYPES) <= yamls, set(NOISE_TYPES) - yamls


def test_drop_noise_removes_exact_counts_and_leaves_valid_test_alone():
    data = make_data()
    before = (data.train.users.copy(), data.train.items.copy())
    valid, test, digest = (data.valid.users.copy(), data.valid.items.copy()), \
        (data.test.users.copy(), data.test.items.copy()), data.digest()
    record = inject_noise(data, NoiseConfig(type="drop", ratio=0.25, seed=3))
    n = len(before[0])
    assert record["n_removed"] == round(0.25 * n) == len(data.removed)
    assert len(data.train) == n - record["n_removed"]
    assert record["n_injected"] == 0 and not data.train_noise.any()
    # the removed pairs are exactly the training pairs missing now, at the recorded positions
    pairs = set(zip(before[0].tolist(), before[1].tolist()))
    kept = set(zip(data.train.users.tolist(), data.train.items.tolist()))
    removed = set(zip(data.removed.users.tolist(), data.removed.items.tolist()))
    assert kept | removed == pairs and not kept & removed
    assert (before[0][data.removed_index] == data.removed.users).all()
    # valid and test untouched; the data as loaded has the same digest
    assert (data.valid.users == valid[0]).all() and (data.valid.items == valid[1]).all()
    assert (data.test.users == test[0]).all() and (data.test.items == test[1]).all()
    assert data.digest() == digest
    restored = data.train_before_noise()
    assert (restored.users == before[0]).all() and (restored.items == before[1]).all()


def test_drop_noise_runs_end_to_end(tiny_cfg, tmp_path):
    from guider.pipeline import run

    m = run(tiny_cfg("noise=drop", "noise.ratio=0.2", "train.epochs=2"), tmp_path)
    assert m["noise"]["n_removed"] == round(0.2 * m["noise"]["n_train_before"])
    assert m["dataset"]["n_train"] == m["noise"]["n_train_before"] - m["noise"]["n_removed"]

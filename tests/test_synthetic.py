"""The synthetic generator (guider.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from guider.config import ModalityConfig, SyntheticConfig
from guider.data import DataError, generate
from guider.data.synthetic import split_counts

from .helpers import _signal_gap


def small_cfg(**kw) -> SyntheticConfig:
    base = dict(n_users=200, n_items=150, mean_interactions=12, min_interactions=5,
                noise_fraction=0.1,
                modalities={"image": ModalityConfig(16, 0.6), "text": ModalityConfig(8, 0.3)},
                seed=0)
    base.update(kw)
    return SyntheticConfig(**base)


def all_arrays(data):
    out = [data.train.users, data.train.items, data.valid.users, data.valid.items,
           data.test.users, data.test.items, data.train_noise]
    return out + [data.features[m] for m in sorted(data.features)]


@pytest.fixture(scope="module")
def data():
    return generate(small_cfg())


def test_deterministic_in_seed():
    a, b, c = generate(small_cfg(seed=3)), generate(small_cfg(seed=3)), generate(small_cfg(seed=4))
    for x, y in zip(all_arrays(a), all_arrays(b)):
        np.testing.assert_array_equal(x, y)
    assert any(x.shape != z.shape or not np.array_equal(x, z)
               for x, z in zip(all_arrays(a), all_arrays(c)))
    assert not np.array_equal(a.features["image"], c.features["image"])
    assert a.info["synthetic"]["seed"] == 3


def test_basic_shape_and_labels(data):
    assert (data.name, data.n_users, data.n_items) == ("synthetic", 200, 150)
    assert data.has_noise_labels
    assert data.train_noise.dtype == bool and len(data.train_noise) == len(data.train)
    for s in (data.train, data.valid, data.test):
        assert s.users.dtype == np.int64 and s.items.dtype == np.int64
        assert s.users.min() >= 0 and s.users.max() < data.n_users
        assert s.items.min() >= 0 and s.items.max() < data.n_items
    assert generate(small_cfg(), name="syn2").name == "syn2"


def test_split_counts_rounding():
    n = np.array([3, 4, 5, 9, 10, 14, 15, 20, 24, 25, 34, 35, 100])
    # 10% rounded half up, at least 1: 0.3->1, 0.4->1, 0.5->1, 0.9->1, 1.0->1, 1.4->1, 1.5->2,
    # 2.0->2, 2.4->2, 2.5->3, 3.4->3, 3.5->4, 10->10
    expected = [1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 10]
    valid, test = split_counts(n)
    assert valid.tolist() == expected and test.tolist() == expected
    # a history of 5 gives 3 / 1 / 1
    v, t = split_counts(np.array([5]))
    assert (5 - v[0] - t[0], v[0], t[0]) == (3, 1, 1)
    # half-up for every n up to 10^4, in exact integer arithmetic
    n = np.arange(1, 10_001)
    v, _ = split_counts(n)
    np.testing.assert_array_equal(v, np.maximum(1, (n + 5) // 10))


def test_per_user_split_is_8_1_1(data):
    nu = data.n_users
    tr = np.bincount(data.train.users, minlength=nu)
    va = np.bincount(data.valid.users, minlength=nu)
    te = np.bincount(data.test.users, minlength=nu)
    total = tr + va + te
    assert total.min() >= 5  # min_interactions
    assert total.max() <= min(200, data.n_items // 2)
    ev, et = split_counts(total)
    np.testing.assert_array_equal(va, ev)
    np.testing.assert_array_equal(te, et)
    np.testing.assert_array_equal(tr, total - ev - et)
    # the data has users of history 5, and they get 3 / 1 / 1
    five = total == 5
    assert five.any()
    assert (tr[five] == 3).all() and (va[five] == 1).all() and (te[five] == 1).all()
    # users with longer histories get more held-out items
    assert va.max() >= 2


def test_no_duplicate_pairs_within_or_across_splits(data):
    keys = np.concatenate([s.keys(data.n_items) for s in (data.train, data.valid, data.test)])
    assert len(np.unique(keys)) == len(keys)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.33])
def test_natural_noise_fraction(fraction):
    d = generate(small_cfg(noise_fraction=fraction, seed=1))
    n_train = len(d.train)
    expected = int(round(fraction * n_train))
    assert int(d.train_noise.sum()) == expected
    assert d.train_noise.mean() == pytest.approx(expected / n_train)
    assert d.info["synthetic"]["n_natural_noise"] == expected


def test_noisy_items_never_coincide_with_the_users_other_items(data):
    assert data.train_noise.any()
    n = data.n_items
    other = {}
    for s, mask in ((data.train, ~data.train_noise),
                    (data.valid, np.ones(len(data.valid), bool)),
                    (data.test, np.ones(len(data.test), bool))):
        for u, i in zip(s.users[mask].tolist(), s.items[mask].tolist()):
            other.setdefault(u, []).append(i)
    noisy_u = data.train.users[data.train_noise]
    noisy_i = data.train.items[data.train_noise]
    for u, i in zip(noisy_u.tolist(), noisy_i.tolist()):
        assert i not in other[u]
    # and no two noisy interactions of a user share an item
    keys = noisy_u * n + noisy_i
    assert len(np.unique(keys)) == len(keys)


def test_noise_does_not_change_split_sizes():
    a = generate(small_cfg(noise_fraction=0.0, seed=2))
    b = generate(small_cfg(noise_fraction=0.3, seed=2))
    for sa, sb in ((a.train, b.train), (a.valid, b.valid), (a.test, b.test)):
        np.testing.assert_array_equal(np.bincount(sa.users, minlength=200),
                                      np.bincount(sb.users, minlength=200))
    # clean rows are the same interactions as without noise
    clean = b.train_noise == 0
    np.testing.assert_array_equal(a.train.items[clean], b.train.items[clean])
    assert (a.train.items[~clean] != b.train.items[~clean]).all()


def test_feature_shapes_per_modality(data):
    assert data.modalities == ["image", "text"]
    assert data.features["image"].shape == (150, 16)
    assert data.features["text"].shape == (150, 8)
    for f in data.features.values():
        assert f.dtype == np.float32 and np.isfinite(f).all()
    d = generate(small_cfg(modalities={}))
    assert d.features == {}


def test_features_carry_signal_about_preferences():
    gaps = {}
    for signal in (1.0, 0.0):
        d = generate(small_cfg(modalities={"v": ModalityConfig(16, signal)}, seed=5))
        gaps[signal] = _signal_gap(d)
    # with signal the held-out items lie clearly closer to the user's items than random items
    # do (observed ~0.15); without it the gap is noise around 0
    assert gaps[1.0] > 0.08, gaps
    assert abs(gaps[0.0]) < 0.05, gaps
    assert gaps[1.0] > gaps[0.0] + 0.08, gaps


def test_features_have_a_shared_offset():
    # pretrained features are anisotropic: the mean feature vector is far from 0
    d = generate(small_cfg(modalities={"v": ModalityConfig(32, 0.6)}))
    X = d.features["v"]
    assert np.linalg.norm(X.mean(0)) > 0.5 * np.linalg.norm(X - X.mean(0), axis=1).mean()


@pytest.mark.parametrize("kw,match", [
    (dict(n_items=3), "n_items >= 4"),
    (dict(n_users=0), "n_users >= 1"),
    (dict(min_interactions=2), "min_interactions"),
    (dict(noise_fraction=1.0), "noise_fraction"),
    (dict(noise_fraction=-0.1), "noise_fraction"),
])
def test_invalid_config_raises(kw, match):
    with pytest.raises(DataError, match=match):
        generate(small_cfg(**kw))

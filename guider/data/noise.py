"""Noise injection into the training split (valid and test are never touched).

Every training interaction keeps a boolean label in ``Interactions.train_noise`` so detection
quality can be measured against what was injected. Deterministic in ``noise.seed``.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..config import NoiseConfig
from .dataset import Interactions, Split
from .errors import DataError
from .sampling import sample_absent_pairs

log = logging.getLogger(__name__)


def all_keys(data: Interactions) -> np.ndarray:
    return np.concatenate([s.keys(data.n_items) for s in (data.train, data.valid, data.test)])


def per_user_counts(degrees: np.ndarray, ratio: float) -> np.ndarray:
    """round(ratio x n_u) for every user, rounding halves up (0.5 -> 1, 2.5 -> 3)."""
    return np.floor(ratio * np.asarray(degrees, dtype=np.float64) + 0.5 + 1e-9).astype(np.int64)


def degrees_all(data: Interactions) -> np.ndarray:
    """Items each user already has in train, valid or test."""
    return sum(np.bincount(s.users, minlength=data.n_users)
               for s in (data.train, data.valid, data.test))


def add_random_interactions(data: Interactions, ratio: float, rng: np.random.Generator,
                            popular: bool, per_user: bool = False) -> int:
    """Add absent (user, item) pairs to the training split, labelled as noise. Uniform users
    (``per_user=false``: round(ratio x |train|) pairs in all) or round(ratio x n_u) pairs for
    each user u (``per_user=true``); items uniform or by training popularity (``popular``)."""
    n_train = len(data.train)
    fixed_users = None
    if per_user:
        degrees = np.bincount(data.train.users, minlength=data.n_users)
        counts = per_user_counts(degrees, ratio)
        full = np.nonzero(counts > data.n_items - degrees_all(data))[0]
        if len(full):
            raise DataError(
                f"noise.per_user=true at noise.ratio={ratio}: user {int(full[0])} needs "
                f"{int(counts[full[0]])} new items but has fewer absent items left; lower "
                f"noise.ratio")
        fixed_users = np.repeat(np.arange(data.n_users, dtype=np.int64), counts)
        n_add = len(fixed_users)
    else:
        n_add = int(round(ratio * n_train))
    if n_add == 0:
        return 0
    existing = all_keys(data)
    free = data.n_users * data.n_items - len(existing)
    if n_add > free:
        raise DataError(
            f"noise.ratio={ratio} asks for {n_add} new interactions but only {free} (user, item) "
            f"pairs are absent from the data; lower noise.ratio"
        )
    probs = None
    if popular:
        probs = np.bincount(data.train.items, minlength=data.n_items).astype(np.float64)
    if fixed_users is not None:
        users, items = sample_absent_pairs(rng, data.n_items, existing, users=fixed_users,
                                           item_probs=probs)
    else:
        users, items = sample_absent_pairs(rng, data.n_items, existing, n=n_add,
                                           n_users=data.n_users, item_probs=probs)
    data.train = Split(np.concatenate([data.train.users, users]),
                       np.concatenate([data.train.items, items]))
    data.train_noise = np.concatenate([data.train_noise, np.ones(n_add, dtype=bool)])
    return n_add


def swap_feature_rows(data: Interactions, ratio: float, modality: str,
                      rng: np.random.Generator) -> np.ndarray:
    """Replace ``modality``'s row of round(ratio * n_items) items with another random item's
    row; returns the swapped item ids."""
    feats = data.features[modality]
    n_swap = int(round(ratio * data.n_items))
    if n_swap == 0:
        return np.empty(0, dtype=np.int64)
    if data.n_items < 2:
        raise DataError("modal noise needs at least two items")
    victims = rng.choice(data.n_items, size=n_swap, replace=False)
    # a uniformly random *other* item as donor: shift by 1..n-1 modulo n
    donors = (victims + rng.integers(1, data.n_items, size=n_swap)) % data.n_items
    new = feats.copy()
    new[victims] = feats[donors]
    data.features[modality] = new
    return np.sort(victims)


def _no_noise(data: Interactions, cfg: NoiseConfig, rng: np.random.Generator,
              record: dict) -> None:
    record["n_injected"] = 0


def _interaction_noise(data: Interactions, cfg: NoiseConfig, rng: np.random.Generator,
                       record: dict) -> None:
    """noise=random|popular: new training pairs, items drawn uniformly or by popularity."""
    record["n_train_before"] = len(data.train)
    record["n_injected"] = add_random_interactions(data, cfg.ratio, rng, cfg.type == "popular",
                                                   cfg.per_user)
    if cfg.per_user:
        record["per_user"] = True
    data.has_noise_labels = True


def _modal_noise(data: Interactions, cfg: NoiseConfig, rng: np.random.Generator,
                 record: dict) -> None:
    """noise=modal: feature rows of one modality swapped between items."""
    if not data.features:
        raise DataError(
            f"noise=modal needs item features, but dataset '{data.name}' has none loaded; "
            f"choose a dataset with feature files or noise=random"
        )
    modality = cfg.modality or data.modalities[0]
    if modality not in data.features:
        raise DataError(
            f"noise.modality={modality!r} is not a loaded modality of '{data.name}' "
            f"(loaded: {', '.join(data.modalities)})"
        )
    swapped = swap_feature_rows(data, cfg.ratio, modality, rng)
    item_flag = np.zeros(data.n_items, dtype=bool)
    item_flag[swapped] = True
    data.feature_noise[modality] = item_flag
    touched = item_flag[data.train.items]
    data.train_noise = data.train_noise | touched
    data.has_noise_labels = True
    record.update(modality=modality, n_items_swapped=int(len(swapped)),
                  n_injected=int(touched.sum()))


def _drop_noise(data: Interactions, cfg: NoiseConfig, rng: np.random.Generator,
                record: dict) -> None:
    """noise=drop: round(ratio x |train|) training interactions taken out uniformly at random
    (false negatives, as in DA-MRS's protocol); valid and test untouched. The removed pairs are
    kept on the data (``removed``, ``removed_index``); there are no noisy training
    interactions to detect."""
    n = len(data.train)
    n_drop = int(round(cfg.ratio * n))
    index = np.sort(rng.choice(n, size=n_drop, replace=False)) if n_drop else \
        np.zeros(0, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    keep[index] = False
    data.removed = Split(data.train.users[index], data.train.items[index])
    data.removed_index = index
    data.train = Split(data.train.users[keep], data.train.items[keep])
    data.train_noise = data.train_noise[keep]
    record.update(n_train_before=n, n_removed=n_drop, n_injected=0)


# noise.type -> injector: adding a noise type is one function here, its name in
# guider.config.NOISE_TYPES (a test keeps the two equal) and a yaml in conf/noise/
INJECTORS: dict[str, Callable[[Interactions, NoiseConfig, np.random.Generator, dict], None]] = {
    "none": _no_noise, "random": _interaction_noise, "popular": _interaction_noise,
    "modal": _modal_noise, "drop": _drop_noise,
}


def inject_noise(data: Interactions, cfg: NoiseConfig) -> dict:
    """Apply ``cfg`` to ``data`` in place; returns the record written to metrics.json."""
    try:
        cfg.check()
    except ValueError as err:
        raise DataError(str(err)) from None
    record: dict = {"type": cfg.type, "ratio": cfg.ratio, "seed": cfg.seed}
    INJECTORS[cfg.type](data, cfg, np.random.default_rng(cfg.seed), record)
    if record["n_injected"] or record.get("n_removed"):
        log.info("noise=%s: %s", cfg.type, record)
    return record

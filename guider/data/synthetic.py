"""Synthetic multi-modal implicit-feedback data with known structure (the embedded default).

Users and items get latent factors; items get a Zipf-like popularity bias; each user's history is
drawn without replacement with probability proportional to exp(p_u.q_i / temperature + b_i)
(Gumbel top-k, vectorised over blocks of users). Each modality's features are a noisy random
projection of the item factors plus a shared offset (pretrained features are anisotropic; the
offset reproduces that). A fraction of training interactions is then replaced by uniformly random
items: that natural noise is labelled exactly like injected noise. Per-user split 8:1:1 with
MMRec's rounding (a history of 5 gives 3/1/1). Deterministic in ``synthetic.seed``.
"""

from __future__ import annotations

import numpy as np

from ..config import SyntheticConfig
from .dataset import Interactions, Split
from .errors import DataError
from .sampling import sample_absent_pairs

USER_BLOCK = 4096


def history_lengths(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    excess = rng.geometric(1.0 / (1.0 + max(cfg.mean_interactions - cfg.min_interactions, 0.0)),
                           size=cfg.n_users) - 1
    upper = min(cfg.max_interactions, cfg.n_items // 2)
    return np.clip(cfg.min_interactions + excess, cfg.min_interactions, upper).astype(np.int64)


def split_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid and test counts per user: 10% each, rounded half up, at least 1 (5 -> 3/1/1)."""
    k = np.maximum(1, np.floor(0.1 * n + 0.5)).astype(np.int64)
    return k, k


def generate(cfg: SyntheticConfig, name: str = "synthetic") -> Interactions:
    if cfg.n_users < 1 or cfg.n_items < 4:
        raise DataError("synthetic dataset needs n_users >= 1 and n_items >= 4")
    if cfg.min_interactions < 3:
        raise DataError("synthetic.min_interactions must be >= 3 (one train, valid and test item)")
    if not 0.0 <= cfg.noise_fraction < 1.0:
        raise DataError(f"synthetic.noise_fraction={cfg.noise_fraction}: must lie in [0, 1)")
    rng = np.random.default_rng(cfg.seed)
    d = cfg.latent_dim
    scale = d ** -0.25  # p.q then has unit variance
    P = rng.standard_normal((cfg.n_users, d)) * scale
    Q = rng.standard_normal((cfg.n_items, d)) * scale
    rank = rng.permutation(cfg.n_items) + 1
    bias = -cfg.popularity * np.log(rank)
    n_u = history_lengths(cfg, rng)
    n_valid, n_test = split_counts(n_u)

    users_out, items_out, label_out = [], [], []
    for start in range(0, cfg.n_users, USER_BLOCK):
        stop = min(start + USER_BLOCK, cfg.n_users)
        block_n = n_u[start:stop]
        width = int(block_n.max())
        logits = P[start:stop] @ Q.T / cfg.temperature + bias
        logits += rng.gumbel(size=logits.shape)
        top = np.argpartition(-logits, width - 1, axis=1)[:, :width]  # a random-order top set
        # order within the top set by perturbed score, then keep the first n_u of each row
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(width)[None, :] < block_n[:, None]
        # random position of each kept item within its user's history decides its split
        position = np.argsort(np.argsort(np.where(keep, rng.random(keep.shape), np.inf), axis=1), axis=1)
        label = np.zeros(keep.shape, dtype=np.int64)
        nv, nt = n_valid[start:stop, None], n_test[start:stop, None]
        label[position < nt] = 2
        label[(position >= nt) & (position < nt + nv)] = 1
        rows = np.broadcast_to(np.arange(start, stop)[:, None], keep.shape)
        users_out.append(rows[keep])
        items_out.append(top[keep])
        label_out.append(label[keep])
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    labels = np.concatenate(label_out)
    train = Split(users[labels == 0], items[labels == 0])
    valid = Split(users[labels == 1], items[labels == 1])
    test = Split(users[labels == 2], items[labels == 2])

    # natural noise: replace a fraction of training items by random items absent from the user
    noise = np.zeros(len(train), dtype=bool)
    n_noise = int(round(cfg.noise_fraction * len(train)))
    if n_noise:
        chosen = rng.choice(len(train), size=n_noise, replace=False)
        _, new_items = sample_absent_pairs(rng, cfg.n_items, users * cfg.n_items + items,
                                           users=train.users[chosen])
        train.items[chosen] = new_items
        noise[chosen] = True

    features = {}
    for modality, mcfg in cfg.modalities.items():
        W = rng.standard_normal((d, mcfg.dim))
        signal = Q @ W
        signal = (signal - signal.mean(0)) / (signal.std(0) + 1e-8)
        offset = rng.standard_normal(mcfg.dim) * 2.0
        x = (np.sqrt(mcfg.signal) * signal + np.sqrt(1.0 - mcfg.signal)
             * rng.standard_normal((cfg.n_items, mcfg.dim)) + offset)
        features[modality] = x.astype(np.float32)

    data = Interactions(name, cfg.n_users, cfg.n_items, train, valid, test, features,
                        train_noise=noise, has_noise_labels=True)
    data.info["synthetic"] = {"n_natural_noise": n_noise, "seed": cfg.seed}
    return data

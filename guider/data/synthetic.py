"""Synthetic multi-modal implicit-feedback data with known structure (the embedded default).

Users and items get latent factors; items get a Zipf-like popularity bias; each user's history is
drawn without replacement with probability proportional to exp(p_u.q_i / temperature + b_i).
Each modality's features are a noisy random projection of the item factors plus a shared offset
(pretrained features are anisotropic; the offset reproduces that). A fraction of training
interactions is then replaced by uniformly random items: that natural noise is labelled exactly
like injected noise. Per-user split 8:1:1 with MMRec's rounding (a history of 5 gives 3/1/1).
Deterministic in ``synthetic.seed``.

Two samplers for the histories (``synthetic.candidates``):

* ``candidates=0`` (exact, the default): Gumbel top-k over the whole catalogue, vectorised over
  blocks of ``USER_BLOCK`` users. Cost n_users x n_items: right up to ~10^9 (user, item) pairs.
* ``candidates=k`` (the large-scale approximation): user u's pool is k x n_u items drawn with
  replacement from the popularity law exp(b_i) (an exact inverse-CDF draw through a guide table);
  the history is the Gumbel top-n_u of p_u.q_i / temperature + log c_ui over the pool's distinct
  items (c_ui = copies of i in the pool). This is sampling-importance-resampling: the proposal
  carries the popularity term, the resampling weight the preference term, and the law tends to
  the exact one as k grows; at finite k preferences are softer (each item is the best of about k
  popularity draws, not of the whole catalogue). A user whose pool has fewer distinct items than
  n_u (a very concentrated popularity) gets its duplicate slots redrawn uniformly. All work is on
  flat per-interaction arrays in blocks of at most ``SLOT_BLOCK`` pool slots: cost and memory
  grow with k x interactions, never with n_users x n_items.

Both samplers are deterministic in the seed; the block sizes are constants (not knobs), so a
given config always gives the same data. ``n_interactions`` fixes the total exactly. Before any
array is allocated, the generator estimates its memory and fails at once (``SizeError``) when
it exceeds what is available (``guider.sizecheck``).
"""

from __future__ import annotations

import logging

import numpy as np

from ..config import SyntheticConfig
from ..sizecheck import check_size
from .dataset import Interactions, Split
from .errors import DataError
from .sampling import sample_absent_pairs

log = logging.getLogger(__name__)

USER_BLOCK = 4096  # users per block of the exact sampler (changing it changes the data)
SLOT_BLOCK = 1 << 17  # pool slots per block of the candidate sampler (the same; cache-sized)
MAX_FILL_ROUNDS = 50
EXACT_PAIRS_WARN = 10 ** 10  # the exact sampler warns above this many (user, item) scores

# bytes per element of the generator's main arrays, for the early size check
BYTES_PER_INTERACTION = 96  # pairs, labels, split copies, noise keys and their sorted copies
BYTES_PER_EXACT_SCORE = 40  # logits, Gumbel draw, -logits, argpartition indices
BYTES_PER_POOL_SLOT = 160  # pool items, keys, sort order, scores, gathered factors (float32)


def upper_length(cfg: SyntheticConfig) -> int:
    return min(cfg.max_interactions, cfg.n_items // 2)


def history_lengths(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-user history lengths: min_interactions + a geometric excess, clipped to
    [min_interactions, min(max_interactions, n_items // 2)]; with ``n_interactions`` the mean
    excess is n_interactions / n_users - min and the lengths are then adjusted to that total."""
    mean = cfg.n_interactions / cfg.n_users if cfg.n_interactions else cfg.mean_interactions
    excess = rng.geometric(1.0 / (1.0 + max(mean - cfg.min_interactions, 0.0)),
                           size=cfg.n_users) - 1
    upper = upper_length(cfg)
    n = np.clip(cfg.min_interactions + excess, cfg.min_interactions, upper).astype(np.int64)
    if cfg.n_interactions:
        adjust_total(n, cfg.n_interactions, cfg.min_interactions, upper, rng)
    return n


def adjust_total(n: np.ndarray, target: int, lo: int, hi: int, rng: np.random.Generator) -> None:
    """Add or remove 1 from distinct random users (staying within [lo, hi]) until n sums to
    ``target``; in place. Each round is one vectorised draw; a few rounds suffice."""
    diff = int(target - n.sum())
    while diff:
        sign = 1 if diff > 0 else -1
        room = np.flatnonzero(n < hi) if sign > 0 else np.flatnonzero(n > lo)
        if len(room) == 0:  # excluded by check_config; a guard against an endless loop
            raise DataError(f"cannot reach {target} interactions within the length bounds")
        k = min(abs(diff), len(room))
        n[rng.choice(room, size=k, replace=False)] += sign
        diff -= sign * k


def split_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid and test counts per user: 10% each, rounded half up, at least 1 (5 -> 3/1/1)."""
    k = np.maximum(1, np.floor(0.1 * n + 0.5)).astype(np.int64)
    return k, k


def check_config(cfg: SyntheticConfig) -> None:
    if cfg.n_users < 1 or cfg.n_items < 4:
        raise DataError("synthetic dataset needs n_users >= 1 and n_items >= 4")
    if cfg.min_interactions < 3:
        raise DataError("synthetic.min_interactions must be >= 3 (one train, valid and test item)")
    if not 0.0 <= cfg.noise_fraction < 1.0:
        raise DataError(f"synthetic.noise_fraction={cfg.noise_fraction}: must lie in [0, 1)")
    upper = upper_length(cfg)
    if upper < cfg.min_interactions:
        raise DataError(
            f"synthetic: histories must hold at least min_interactions={cfg.min_interactions} "
            f"items but at most min(max_interactions={cfg.max_interactions}, n_items // 2="
            f"{cfg.n_items // 2}); raise n_items or max_interactions, or lower min_interactions")
    if cfg.candidates < 0 or cfg.candidates == 1:
        raise DataError(f"synthetic.candidates={cfg.candidates}: use 0 (exact sampling over the "
                        f"whole catalogue) or a pool of k >= 2 candidates per history item")
    if cfg.n_interactions < 0:
        raise DataError(f"synthetic.n_interactions={cfg.n_interactions}: must be >= 0 "
                        f"(0 = decided by mean_interactions)")
    if cfg.n_interactions:
        lo, hi = cfg.n_users * cfg.min_interactions, cfg.n_users * upper
        if not lo <= cfg.n_interactions <= hi:
            raise DataError(
                f"synthetic.n_interactions={cfg.n_interactions} is impossible for n_users="
                f"{cfg.n_users}: every user holds between min_interactions={cfg.min_interactions} "
                f"and min(max_interactions, n_items // 2)={upper} items, so the total must lie in "
                f"[{lo}, {hi}]; change n_users, n_interactions or those bounds")


def expected_interactions(cfg: SyntheticConfig) -> int:
    if cfg.n_interactions:
        return cfg.n_interactions
    mean = min(max(cfg.mean_interactions, cfg.min_interactions), upper_length(cfg))
    return int(cfg.n_users * mean)


def check_memory(cfg: SyntheticConfig) -> None:
    """Estimate the generator's arrays before allocating any and fail early if they cannot fit."""
    n = expected_interactions(cfg)
    d = cfg.latent_dim
    dims = sum(m.dim for m in cfg.modalities.values())
    arrays = n * BYTES_PER_INTERACTION + (cfg.n_users + cfg.n_items) * d * 12
    check_size(f"the synthetic data ({n:,} interactions, {cfg.n_users:,} users x {d} latent "
               f"factors)", arrays,
               "dataset.synthetic.n_interactions (or n_users / mean_interactions)")
    check_size(f"the synthetic item features ({cfg.n_items:,} items x {dims} dims in all)",
               cfg.n_items * dims * 8 * 3, "dataset.synthetic.modalities.<name>.dim")
    if cfg.candidates == 0:
        rows = min(USER_BLOCK, cfg.n_users)
        check_size(f"the exact sampler's score block ({rows:,} users x {cfg.n_items:,} items)",
                   rows * cfg.n_items * BYTES_PER_EXACT_SCORE,
                   "dataset.synthetic.candidates (e.g. candidates=8: each history is drawn from "
                   "8 popularity-sampled items per history item instead of the whole catalogue)")
        pairs = cfg.n_users * cfg.n_items
        if pairs > EXACT_PAIRS_WARN:
            log.warning("synthetic: exact sampling scores %.1e (user, item) pairs (roughly %.0f "
                        "minutes); dataset.synthetic.candidates=8 makes the cost ~ interactions",
                        pairs, pairs / 3e7 / 60)
    else:
        slots = max(SLOT_BLOCK, upper_length(cfg) * cfg.candidates)
        check_size(f"the candidate sampler's block ({slots:,} pool slots)",
                   slots * BYTES_PER_POOL_SLOT, "dataset.synthetic.candidates")


class PopularitySampler:
    """Exact inverse-CDF sampling of items from probabilities ``p`` in O(1) expected time per
    draw: a guide table maps each of n equal slices of [0, 1) to the first item whose CDF
    exceeds the slice's start, and a short vectorised walk finishes the search (the result is
    that of ``np.searchsorted(cdf, u, side="right")``)."""

    def __init__(self, p: np.ndarray):
        self.cdf = np.cumsum(p / p.sum())
        self.cdf[-1] = 1.0
        self.n = len(p)
        self.guide = np.searchsorted(self.cdf, np.arange(self.n) / self.n, side="right")

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        u = rng.random(size)
        idx = self.guide[np.minimum((u * self.n).astype(np.int64), self.n - 1)]
        todo = np.flatnonzero(self.cdf[idx] <= u)
        while len(todo):
            idx[todo] += 1
            todo = todo[self.cdf[idx[todo]] <= u[todo]]
        return idx


def descending_key(x: np.ndarray) -> np.ndarray:
    """uint32 keys whose ascending order is the descending order of float32(x) (the IEEE bit
    pattern made monotone), to sort by (user, -score) with one int64 argsort instead of the far
    slower lexsort."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.int64)
    ascending = np.where(bits & 0x80000000, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    return 0xFFFFFFFF - ascending


def split_labels(users: np.ndarray, n_valid: np.ndarray, n_test: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Labels 0/1/2 (train/valid/test) for a flat history array sorted by user (ids 0..B-1 of
    a block, ``n_valid``/``n_test`` per block user): a random position within each user's
    history decides the split (the first n_test positions are test, the next n_valid valid)."""
    starts = np.searchsorted(users, np.arange(len(n_valid)))
    order = np.argsort((users << 32) | rng.integers(0, 1 << 32, size=len(users)))
    position = np.empty(len(users), dtype=np.int64)
    position[order] = np.arange(len(users)) - starts[users[order]]
    nt, nv = n_test[users], n_valid[users]
    label = np.zeros(len(users), dtype=np.int8)
    label[position < nt] = 2
    label[(position >= nt) & (position < nt + nv)] = 1
    return label


def exact_histories(cfg, rng, P, Q, bias, n_u, n_valid, n_test):
    """Gumbel top-n_u over the whole catalogue, USER_BLOCK users at a time."""
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
    return users_out, items_out, label_out


def slot_blocks(pool: np.ndarray) -> list[tuple[int, int]]:
    """Cut the users into consecutive blocks of at most SLOT_BLOCK pool slots (at least one
    user each): a fixed function of the pool sizes, so the data never depends on anything else."""
    ends = np.cumsum(pool)
    bounds, start = [], 0
    while start < len(pool):
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + SLOT_BLOCK, side="right"))
        stop = max(stop, start + 1)
        bounds.append((start, stop))
        start = stop
    return bounds


def dedupe(users: np.ndarray, items: np.ndarray, n_items: int):
    """Distinct (user, item) pairs sorted by user then item, and the copies of each."""
    key = np.sort(users * n_items + items)
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    at = np.flatnonzero(first)
    copies = np.diff(np.append(at, len(key)))
    key = key[at]
    return key // n_items, key % n_items, copies


def candidate_histories(cfg, rng, P, Q, bias, n_u, n_valid, n_test):
    """Each history: the Gumbel top-n_u of p.q / T + log(copies) over a popularity-drawn pool of
    candidates x n_u items (see the module docstring), on flat arrays block by block."""
    popularity = PopularitySampler(np.exp(bias - bias.max()))
    P32, Q32 = P.astype(np.float32), Q.astype(np.float32)
    pool = n_u * cfg.candidates
    users_out, items_out, label_out = [], [], []
    for start, stop in slot_blocks(pool):
        b_users = np.arange(start, stop)
        slot_users = np.repeat(b_users, pool[start:stop])
        du, di, copies = dedupe(slot_users, popularity.draw(rng, len(slot_users)), cfg.n_items)
        for _ in range(MAX_FILL_ROUNDS):
            distinct = np.bincount(du - start, minlength=stop - start)
            is_short = distinct < n_u[start:stop]
            if not is_short.any():
                break
            # redraw the duplicate slots of short users uniformly; the pairs of a short user
            # then count once each (the uniform fill is not a popularity draw)
            short = b_users[is_short]
            fill_users = np.repeat(short, pool[short] - distinct[is_short])
            fill = rng.integers(0, cfg.n_items, size=len(fill_users))
            mine = is_short[du - start]
            su, si, _ = dedupe(np.concatenate([du[mine], fill_users]),
                               np.concatenate([di[mine], fill]), cfg.n_items)
            du = np.concatenate([du[~mine], su])
            di = np.concatenate([di[~mine], si])
            copies = np.concatenate([copies[~mine], np.ones(len(su), dtype=copies.dtype)])
        else:
            raise DataError(
                f"synthetic: could not find enough distinct candidate items for some users after "
                f"{MAX_FILL_ROUNDS} rounds; raise dataset.synthetic.candidates or n_items, or "
                f"lower max_interactions")
        score = np.einsum("ij,ij->i", P32[du], Q32[di]) / cfg.temperature
        score += np.log(copies)
        score += rng.gumbel(size=len(du))
        local = du - start
        del du, copies
        order = np.argsort((local << 32) | descending_key(score))  # per user, best first
        del score
        local, di = local[order], di[order]
        seg = np.searchsorted(local, np.arange(stop - start))  # first slot of each user
        keep = np.arange(len(local)) - seg[local] < n_u[start:stop][local]
        local, di = local[keep], di[keep]
        users_out.append(local + start)
        items_out.append(di)
        label_out.append(split_labels(local, n_valid[start:stop], n_test[start:stop], rng))
    return users_out, items_out, label_out


def generate(cfg: SyntheticConfig, name: str = "synthetic") -> Interactions:
    check_config(cfg)
    check_memory(cfg)
    rng = np.random.default_rng(cfg.seed)
    d = cfg.latent_dim
    scale = d ** -0.25  # p.q then has unit variance
    P = rng.standard_normal((cfg.n_users, d)) * scale
    Q = rng.standard_normal((cfg.n_items, d)) * scale
    rank = rng.permutation(cfg.n_items) + 1
    bias = -cfg.popularity * np.log(rank)
    n_u = history_lengths(cfg, rng)
    n_valid, n_test = split_counts(n_u)

    draw = candidate_histories if cfg.candidates else exact_histories
    users_out, items_out, label_out = draw(cfg, rng, P, Q, bias, n_u, n_valid, n_test)
    del P
    users = np.concatenate(users_out)
    items = np.concatenate(items_out)
    labels = np.concatenate(label_out)
    del users_out, items_out, label_out
    train = Split(users[labels == 0], items[labels == 0])
    valid = Split(users[labels == 1], items[labels == 1])
    test = Split(users[labels == 2], items[labels == 2])
    del labels

    # natural noise: replace a fraction of training items by random items absent from the user
    noise = np.zeros(len(train), dtype=bool)
    n_noise = int(round(cfg.noise_fraction * len(train)))
    if n_noise:
        chosen = rng.choice(len(train), size=n_noise, replace=False)
        _, new_items = sample_absent_pairs(rng, cfg.n_items, users * cfg.n_items + items,
                                           users=train.users[chosen])
        train.items[chosen] = new_items
        noise[chosen] = True
    del users, items

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

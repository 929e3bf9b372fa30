"""Full ranking over all items with the user's training items masked, as batched matrix products
and top-k; metrics with the MMRec toolbox's definitions:

- Recall@k    = hits in the top k / |relevant|
- Precision@k = hits in the top k / k
- NDCG@k      = sum_r hit_r / log2(r + 1) over ranks r <= k, divided by the ideal DCG over
                min(|relevant|, k) hits (binary gains)
- MAP@k       = sum_r Precision@r * hit_r over r <= k, divided by min(|relevant|, k)

each averaged over the users with at least one relevant item in the split.

Memory per block: one dense [batch_users, n_items] float32 score block (checked against the
available memory before the first block, naming ``eval.batch_users``); the hits are looked up by
binary search in the block's sorted (user, item) keys, never in a dense relevance matrix.

``eval.sample_users=N`` evaluates a fixed, seeded sample of N users (``sample_users``,
``EvalSet.restrict``) instead of all of them: an approximation of the full metrics whose
standard error shrinks like 1/sqrt(N); the metrics of the sampled users are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.sampling import sorted_unique
from ..sizecheck import check_size

# bytes per (user, item) entry of an evaluation block: the float32 scores, the scorer's own
# product before it (when it is not float32 already) and top-k's workspace
BYTES_PER_SCORE = 12

Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class CSR:
    """Rows of item ids per user, as index pointers into one flat array."""

    indptr: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> "CSR":
        # sort by (user, item) with one int64 key: np.lexsort is ~10x slower on millions of pairs
        width = int(items.max()) + 1 if len(items) else 1
        order = np.argsort(np.asarray(users, dtype=np.int64) * width + items, kind="stable")
        counts = np.bincount(users, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return cls(torch.as_tensor(indptr, dtype=torch.long),
                   torch.as_tensor(items[order], dtype=torch.long))

    def rows(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row position in ``users``, item) for every stored entry of the given users."""
        starts = self.indptr[users]
        counts = self.indptr[users + 1] - starts
        row = torch.repeat_interleave(torch.arange(len(users)), counts)
        offsets = torch.arange(len(row)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        return row, self.indices[starts[row] + offsets]

    def counts(self, users: torch.Tensor) -> torch.Tensor:
        return self.indptr[users + 1] - self.indptr[users]


@dataclass
class EvalSet:
    users: torch.Tensor  # users evaluated (sorted)
    relevant: CSR  # held-out items per user (all users indexed)
    mask: CSR  # training items per user, excluded from the ranking
    n_items: int
    excluded: dict

    def restrict(self, users: np.ndarray) -> "EvalSet":
        """The same split evaluated on ``users`` only (those of them that are in the set)."""
        chosen = sorted_unique(np.asarray(users))
        keep = torch.as_tensor(np.intersect1d(self.users.numpy(), chosen, assume_unique=True),
                               dtype=torch.long)
        return EvalSet(keep, self.relevant, self.mask, self.n_items, self.excluded)


def sample_users(eval_sets: list[EvalSet], n: int, seed: int) -> np.ndarray:
    """A fixed sample of ``n`` users, drawn with ``seed`` from the union of the sets' users
    (sorted); every user of the union when n is 0 or at least the union's size. Depends only on
    the data, n and seed, so valid and test see the same users, run after run."""
    pool = sorted_unique(np.concatenate([es.users.numpy() for es in eval_sets]))
    if n <= 0 or n >= len(pool):
        return pool
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=n, replace=False))


def build_eval_set(train_users: np.ndarray, train_items: np.ndarray, users: np.ndarray,
                   items: np.ndarray, n_users: int, n_items: int,
                   known: tuple[np.ndarray, np.ndarray] | None = None) -> EvalSet:
    """Users with no training interaction, and held-out pairs on items with no training
    interaction, are excluded (counted in ``excluded``). ``known``: the (users, items) whose
    interactions decide what is cold, when not the training pairs themselves (e.g. the training
    split before noise injection); the ranking always masks every training pair."""
    known_users, known_items = known if known is not None else (train_users, train_items)
    udeg = np.bincount(known_users, minlength=n_users)
    ideg = np.bincount(known_items, minlength=n_items)
    keep = (udeg[users] > 0) & (ideg[items] > 0)
    excluded = {
        "pairs_cold_user": int((udeg[users] == 0).sum()),
        "pairs_cold_item": int(((udeg[users] > 0) & (ideg[items] == 0)).sum()),
    }
    users, items = users[keep], items[keep]
    return EvalSet(
        users=torch.as_tensor(sorted_unique(users), dtype=torch.long),
        relevant=CSR.from_pairs(users, items, n_users),
        mask=CSR.from_pairs(train_users, train_items, n_users),
        n_items=n_items,
        excluded=excluded,
    )


def metrics_from_hits(hits: torch.Tensor, n_relevant: torch.Tensor,
                      topk: list[int]) -> dict[str, torch.Tensor]:
    """Per-metric sums over users. ``hits``: [B, max k] 0/1 in rank order; ``n_relevant``: [B]."""
    hits = hits.double()
    maxk = hits.shape[1]
    ranks = torch.arange(1, maxk + 1, dtype=torch.float64)
    discount = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = hits.cumsum(1)
    dcg = (hits * discount).cumsum(1)
    ideal = discount.cumsum(0)
    ap = (cum_hits / ranks * hits).cumsum(1)
    n_rel = n_relevant.double()
    out = {}
    for k in topk:
        c = min(k, maxk) - 1
        capped = torch.clamp(n_relevant, max=k).long()
        out[f"Recall@{k}"] = (cum_hits[:, c] / n_rel).sum()
        out[f"Precision@{k}"] = (cum_hits[:, c] / k).sum()
        out[f"NDCG@{k}"] = (dcg[:, c] / ideal[capped - 1]).sum()
        out[f"MAP@{k}"] = (ap[:, c] / capped.double()).sum()
    return out


def ranked_blocks(scorer: Scorer, eval_set: EvalSet, k: int, batch_users: int,
                  device: torch.device | str):
    """Per block of ``eval_set.users``: (users, the top-``k`` items of each with the user's
    training items masked, their scores), best first; every block on the CPU."""
    n_users, n_items = len(eval_set.users), eval_set.n_items
    k = min(k, n_items)
    rows_per_block = min(batch_users, n_users)
    check_size(f"the evaluation score block ({rows_per_block:,} users x {n_items:,} items)",
               rows_per_block * n_items * BYTES_PER_SCORE, "eval.batch_users", device)
    for start in range(0, n_users, batch_users):
        users = eval_set.users[start:start + batch_users]
        scores = scorer(users.to(device)).float()
        row, col = eval_set.mask.rows(users)
        scores[row.to(device), col.to(device)] = -torch.inf
        top = scores.topk(k, dim=1)
        del scores
        yield users, top.indices.cpu(), top.values.cpu()


@torch.no_grad()
def recommend(scorer: Scorer, eval_set: EvalSet, k: int, batch_users: int = 4096,
              device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """The top-``k`` list of every user of ``eval_set`` as the evaluator ranks it (training items
    masked): parallel arrays ``user``, ``rank`` (1 = best), ``item``, ``score``."""
    parts: dict[str, list[np.ndarray]] = {"user": [], "rank": [], "item": [], "score": []}
    for users, top, values in ranked_blocks(scorer, eval_set, k, batch_users, device):
        width = top.shape[1]
        parts["user"].append(np.repeat(users.numpy(), width))
        parts["rank"].append(np.tile(np.arange(1, width + 1), len(users)))
        parts["item"].append(top.reshape(-1).numpy())
        parts["score"].append(values.reshape(-1).numpy())
    empty = {"user": np.int64, "rank": np.int64, "item": np.int64, "score": np.float32}
    return {key: np.concatenate(v) if v else np.empty(0, dtype=empty[key])
            for key, v in parts.items()}


@torch.no_grad()
def evaluate(scorer: Scorer, eval_set: EvalSet, topk: list[int], batch_users: int = 4096,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Average Recall/NDCG/Precision/MAP@k over ``eval_set.users``."""
    topk = sorted(set(int(k) for k in topk))
    totals: dict[str, torch.Tensor] = {}
    n_users = len(eval_set.users)
    n_items = eval_set.n_items
    for users, top, _ in ranked_blocks(scorer, eval_set, max(topk), batch_users, device):
        # hits by binary search in the block's sorted (row, item) keys of relevant pairs
        row, col = eval_set.relevant.rows(users)
        rel = row * n_items + col  # sorted: rows ascend, items ascend within a row
        want = torch.arange(len(users))[:, None] * n_items + top
        pos = torch.searchsorted(rel, want).clamp_(max=max(len(rel) - 1, 0))
        hits = rel[pos] == want if len(rel) else torch.zeros_like(want, dtype=torch.bool)
        sums = metrics_from_hits(hits, eval_set.relevant.counts(users), topk)
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + value
    if n_users == 0:
        return {}
    return {key: float(value / n_users) for key, value in totals.items()}

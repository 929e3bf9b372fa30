"""The evaluation sets of a run: valid and test, their cold pairs decided per
``eval.exclude_cold``, optionally restricted to a fixed sample of users."""

from __future__ import annotations

import logging

from ..config import EvalConfig
from ..data import Interactions
from .ranking import EvalSet, build_eval_set, sample_users

log = logging.getLogger(__name__)


def build_eval_sets(data: Interactions,
                    evalc: EvalConfig) -> tuple[EvalSet, EvalSet, dict | None]:
    """The valid and test evaluation sets (cold pairs decided per ``eval.exclude_cold``); with
    ``eval.sample_users=N`` both restricted to the
    same fixed sample of N users (an approximation, recorded in metrics.json as
    ``eval_sample``)."""
    known = None
    if evalc.exclude_cold == "before_noise":
        before = data.train_before_noise()
        known = (before.users, before.items)
    valid = build_eval_set(data.train.users, data.train.items, data.valid.users,
                           data.valid.items, data.n_users, data.n_items, known)
    test = build_eval_set(data.train.users, data.train.items, data.test.users,
                          data.test.items, data.n_users, data.n_items, known)
    if evalc.sample_users <= 0:
        return valid, test, None
    pool = len(sample_users([valid, test], 0, evalc.sample_seed))
    chosen = sample_users([valid, test], evalc.sample_users, evalc.sample_seed)
    valid, test = valid.restrict(chosen), test.restrict(chosen)
    info = {"users": evalc.sample_users, "seed": evalc.sample_seed, "eligible_users": pool,
            "sampled_users": len(chosen), "valid_users": len(valid.users),
            "test_users": len(test.users)}
    log.info("evaluating a fixed sample of %d of %d users (eval.sample_users, seed %d): "
             "metrics are an approximation of the full evaluation", len(chosen), pool,
             evalc.sample_seed)
    return valid, test, info

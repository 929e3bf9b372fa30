"""Full-ranking evaluation. Needs only a function giving scores for a block of users."""

from .ranking import (EvalSet, build_eval_set, evaluate, metrics_from_hits, recommend,
                      sample_users)
from .sets import build_eval_sets

__all__ = ["EvalSet", "build_eval_set", "build_eval_sets", "evaluate", "metrics_from_hits",
           "recommend", "sample_users"]

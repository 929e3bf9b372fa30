"""Full-ranking evaluation. Needs only a function giving scores for a block of users."""

from .ranking import (EvalSet, build_eval_set, evaluate, metrics_from_hits, recommend,
                      sample_users)

__all__ = ["EvalSet", "build_eval_set", "evaluate", "metrics_from_hits", "recommend",
           "sample_users"]

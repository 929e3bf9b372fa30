"""Noise-detection quality of a denoiser against known noise labels."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def detection_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` (higher = more likely noise) for boolean ``labels`` (Mann-Whitney
    with average ranks for ties); None when only one class is present."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_metrics(scores: np.ndarray | None, flagged: np.ndarray | None,
                      labels: np.ndarray) -> dict:
    """AUC of the scores; precision and recall of the flagged set (the interactions a denoiser
    treats as noise) against the labels."""
    out: dict = {"n_noisy": int(labels.sum()), "n_train": int(len(labels))}
    if scores is not None:
        out["auc"] = detection_auc(scores, labels)
    if flagged is not None:
        flagged = np.asarray(flagged, dtype=bool)
        tp = int((flagged & labels).sum())
        out["n_flagged"] = int(flagged.sum())
        out["precision"] = tp / int(flagged.sum()) if flagged.any() else None
        out["recall"] = tp / int(labels.sum()) if labels.any() else None
    return out

"""Noise-detection quality of a denoiser against known noise labels, and the trivial scores it
must beat.

Injected noise is not spread evenly: the uniform sampler draws users and items uniformly, so
light users and rare items carry most of it, and "fewer training items = more suspicious" alone
detects it well. Next to the overall AUC every run therefore reports

- ``degree_auc`` / ``popularity_auc``: the AUC of the trivial scores "the user has few training
  items" and "the item has few training interactions" (degrees counted after injection);
- ``bands``: per band of user training degree (``DEGREE_BANDS``), the count, the noise count, the
  AUC of the denoiser's score and of the degree score within the band, and the precision and
  recall of the flagged set within the band;
- ``band_auc``: the AUC over (noisy, clean) pairs of the same band only, i.e. the pair-weighted
  mean of the within-band AUCs. A score that only knows the user's degree gets little from it
  (``degree_band_auc`` says how much: degrees still differ inside a band).

The same on the item side, where uniform noise piles up too (a random item is most often a
rare one): ``item_bands``, per fifth of the training interactions by their item's training
degree (``q1`` the rarest), the count, the noise count, the AUC of the denoiser's score and of
the popularity score within the fifth; ``item_band_auc`` / ``popularity_band_auc`` the pair-
weighted AUC within fifths of the score / of the popularity score.

A denoiser whose ``auc`` is below ``degree_auc``, or whose ``band_auc`` is not above
``degree_band_auc``, has shown no detection beyond what the user's degree alone gives; one whose
``item_band_auc`` is not above ``popularity_band_auc``, none beyond the item's popularity.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

# upper bounds (inclusive) of the user-degree bands; the last band is open: 1, 2, 3, 4-5, 6-10,
# 11-20, 21-50, 51-100, 101+ training items (after injection). Fine at the light end, where most
# users of the usual sets lie and where the uniform sampler puts most of the noise: within a band
# of one degree the degree score is constant, so it cannot help there.
DEGREE_BANDS = (1, 2, 3, 5, 10, 20, 50, 100)


# the item side: fifths of the training interactions by their item's training degree
ITEM_QUANTILES = (0.2, 0.4, 0.6, 0.8)


def item_fifth(item_degree: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Fifth of each training interaction by its item's degree (0 = the rarest items) and the
    degree quantiles that bound them; an interaction whose degree equals a bound goes above it,
    so one degree never straddles two fifths (a fifth may hold more or less than a fifth)."""
    bounds = np.quantile(np.asarray(item_degree, dtype=np.float64), ITEM_QUANTILES)
    return np.searchsorted(bounds, item_degree, side="right"), [float(b) for b in bounds]


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


def band_labels(bounds: tuple[int, ...] = DEGREE_BANDS) -> list[str]:
    """Names of the bands: '1', '2', '3', '4-5', '6-10', ..., '101+'."""
    names, low = [], 1
    for high in bounds:
        names.append(f"{low}" if high == low else f"{low}-{high}")
        low = high + 1
    return [*names, f"{low}+"]


def degree_band(degree: np.ndarray, bounds: tuple[int, ...] = DEGREE_BANDS) -> np.ndarray:
    """Band index of each degree (0 for <= bounds[0], ..., len(bounds) for > bounds[-1])."""
    return np.searchsorted(np.asarray(bounds), degree, side="left")


def stratified_auc(scores: np.ndarray, labels: np.ndarray, strata: np.ndarray) -> float | None:
    """AUC over the (positive, negative) pairs that share a stratum: the mean of the within-
    stratum AUCs weighted by n_pos x n_neg. None when no stratum holds both classes."""
    labels = np.asarray(labels, dtype=bool)
    total, weight = 0.0, 0
    for s in np.unique(strata):
        m = strata == s
        auc = detection_auc(scores[m], labels[m])
        if auc is None:
            continue
        pairs = int(labels[m].sum()) * int((~labels[m]).sum())
        total += auc * pairs
        weight += pairs
    return total / weight if weight else None


def _precision_recall(flagged: np.ndarray, labels: np.ndarray) -> dict:
    tp = int((flagged & labels).sum())
    return {"n_flagged": int(flagged.sum()),
            "precision": tp / int(flagged.sum()) if flagged.any() else None,
            "recall": tp / int(labels.sum()) if labels.any() else None}


def detection_trace(scores: np.ndarray | None, flagged: np.ndarray | None,
                    labels: np.ndarray) -> dict:
    """The few detection numbers worth following over training (one history row each
    evaluation): ``detect_auc`` of the scores, ``detect_precision`` / ``detect_recall`` of the
    flagged set; a key only where its number exists."""
    labels = np.asarray(labels, dtype=bool)
    out = {}
    if scores is not None:
        auc = detection_auc(scores, labels)
        if auc is not None:
            out["detect_auc"] = auc
    if flagged is not None and labels.any():
        flagged = np.asarray(flagged, dtype=bool)
        out["detect_flagged"] = int(flagged.sum())
        pr = _precision_recall(flagged, labels)
        out["detect_recall"] = pr["recall"]
        if pr["precision"] is not None:
            out["detect_precision"] = pr["precision"]
    return out


def detection_metrics(scores: np.ndarray | None, flagged: np.ndarray | None,
                      labels: np.ndarray, users: np.ndarray | None = None,
                      items: np.ndarray | None = None,
                      bounds: tuple[int, ...] = DEGREE_BANDS) -> dict:
    """AUC of the scores; precision and recall of the flagged set (the interactions a denoiser
    treats as noise) against the labels. With the training ``users`` and ``items`` (after
    injection, aligned with ``labels``) also the trivial degree and popularity AUCs and the
    per-degree-band numbers (module docstring). Either of ``scores`` and ``flagged`` may be
    None (a denoiser without them, e.g. ``none``): the data-only numbers are still given."""
    labels = np.asarray(labels, dtype=bool)
    out: dict = {"n_noisy": int(labels.sum()), "n_train": int(len(labels))}
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        out["auc"] = detection_auc(scores, labels)
    if flagged is not None:
        flagged = np.asarray(flagged, dtype=bool)
        out.update(_precision_recall(flagged, labels))
    if users is None or items is None:
        return out
    users, items = np.asarray(users), np.asarray(items)
    user_deg = np.bincount(users)[users]
    item_deg = np.bincount(items)[items]
    out["degree_auc"] = detection_auc(-user_deg.astype(np.float64), labels)
    out["popularity_auc"] = detection_auc(-item_deg.astype(np.float64), labels)
    band = degree_band(user_deg, bounds)
    out["band_bounds"] = list(bounds)
    out["degree_band_auc"] = stratified_auc(-user_deg.astype(np.float64), labels, band)
    if scores is not None:
        out["band_auc"] = stratified_auc(scores, labels, band)
    bands = {}
    for b, name in enumerate(band_labels(bounds)):
        m = band == b
        row: dict = {"n": int(m.sum()), "n_noisy": int(labels[m].sum()),
                     "noise_share": float(labels[m].mean()) if m.any() else None}
        if scores is not None:
            row["auc"] = detection_auc(scores[m], labels[m])
        row["degree_auc"] = detection_auc(-user_deg[m].astype(np.float64), labels[m])
        if flagged is not None:
            row.update(_precision_recall(flagged[m], labels[m]))
        bands[name] = row
    out["bands"] = bands
    fifth, item_bounds = item_fifth(item_deg)
    popularity = -item_deg.astype(np.float64)
    out["item_band_bounds"] = item_bounds
    out["popularity_band_auc"] = stratified_auc(popularity, labels, fifth)
    if scores is not None:
        out["item_band_auc"] = stratified_auc(scores, labels, fifth)
    item_bands = {}
    for b in range(len(ITEM_QUANTILES) + 1):
        m = fifth == b
        row = {"n": int(m.sum()), "n_noisy": int(labels[m].sum())}
        if scores is not None:
            row["auc"] = detection_auc(scores[m], labels[m])
        row["popularity_auc"] = detection_auc(popularity[m], labels[m])
        item_bands[f"q{b + 1}"] = row
    out["item_bands"] = item_bands
    return out

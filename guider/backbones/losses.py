"""Loss terms shared by all models."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_terms(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Per-sample BPR term -log sigmoid(y_ui - y_uj) (Rendle et al., 2009), unreduced."""
    return F.softplus(neg_scores - pos_scores)


def l2_reg(*embeddings: torch.Tensor) -> torch.Tensor:
    """0.5 * sum of squared norms of the batch's embeddings, divided by the batch size."""
    batch = embeddings[0].shape[0]
    return 0.5 * sum(e.pow(2).sum() for e in embeddings) / batch


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of rows a_k against b_k, the other rows of ``b`` as negatives (cosine)."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = a @ b.t() / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))

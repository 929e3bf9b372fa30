"""The backbone interface every recommender implements, and the backbone registry."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from omegaconf import MISSING
from torch import nn

from ..data import Batch, Interactions
from ..registry import Registry


@dataclass
class BackboneConfig:
    name: str = MISSING
    embedding_dim: int = 64
    reg_weight: float = 1e-4


@dataclass
class Losses:
    """``main``: the pairwise term, one value per sample, unreduced (a denoiser weights it);
    ``aux``: auxiliary scalar terms by name, already multiplied by their coefficients."""

    main: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


Scorer = Callable[[torch.Tensor], torch.Tensor]


def require_at_least(cfg: BackboneConfig, minimum: int, *keys: str) -> None:
    """Raise ``ValueError`` for the first of ``keys`` whose value in ``cfg`` is below
    ``minimum`` (a NaN fails too)."""
    for key in keys:
        value = getattr(cfg, key)
        if not value >= minimum:
            raise ValueError(f"backbone.{key}={value}: must be >= {minimum}")


class Backbone(nn.Module):
    """A recommender: built from (config, data); trained through ``losses``; ranked through
    ``scorer``. Subclasses set ``uses_features`` when they read item features."""

    uses_features: ClassVar[bool] = False

    def __init__(self, cfg: BackboneConfig, data: Interactions):
        super().__init__()
        self.cfg = cfg
        self.n_users = data.n_users
        self.n_items = data.n_items
        if self.uses_features and not getattr(data, "features", None):
            raise ValueError(
                f"backbone={cfg.name} needs item features, but dataset '{data.name}' has none "
                f"loaded; declare them under dataset.features (conf/dataset/{data.name}.yaml) or "
                f"choose an ID-only backbone (mf, lightgcn)"
            )
        self.modalities: list[str] = list(getattr(data, "features", {}))
        self._batch_cache: tuple[weakref.ref, torch.Tensor, torch.Tensor] | None = None

    def init_id_embeddings(self, user_dim: int, item_dim: int | None = None) -> None:
        """``self.user_emb`` / ``self.item_emb``: ID embedding tables, Xavier-uniform initialised
        (the MMRec convention; the RNG draws are those of building both tables, then both inits)."""
        self.user_emb = nn.Embedding(self.n_users, user_dim)
        self.item_emb = nn.Embedding(self.n_items, item_dim if item_dim is not None else user_dim)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def load_features(self, data: Interactions, k: int) -> torch.Tensor:
        """The item features of modality ``self.modalities[k]`` as a float32 tensor, checked to
        have one row per item and registered as the (non-persistent) buffer ``feat_{k}``."""
        m = self.modalities[k]
        feats = torch.as_tensor(data.features[m], dtype=torch.float32)
        if feats.shape[0] != self.n_items:
            raise ValueError(f"features '{m}' have {feats.shape[0]} rows for {self.n_items} items")
        self.register_buffer(f"feat_{k}", feats, persistent=False)
        return feats

    def remember(self, batch: Batch, users: torch.Tensor, items: torch.Tensor) -> None:
        """Keep the representations computed in ``losses(batch)`` so that a denoiser's loss on
        the same batch (distillation) reuses them, and its gradient joins the same backward."""
        self._batch_cache = (weakref.ref(batch), users, items)

    def batch_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item representations of the current training step, differentiable: those
        of ``losses(batch)`` when it cached them, else freshly computed."""
        cache = self._batch_cache
        if cache is not None and cache[0]() is batch:
            return cache[1], cache[2]
        return self.final_embeddings()

    def pre_epoch(self, epoch: int) -> None:
        """Hook before each epoch (e.g. FREEDOM's edge pruning)."""

    def losses(self, batch: Batch) -> Losses:
        raise NotImplementedError

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item representations whose inner product is the score."""
        raise NotImplementedError

    @torch.no_grad()
    def scorer(self) -> Scorer:
        """Full-catalogue scores for a block of users; representations are computed once, so
        the returned function is cheap to call block after block."""
        users, items = self.final_embeddings()
        items_t = items.t().contiguous()
        return lambda u: users[u] @ items_t

    @torch.no_grad()
    def score_items(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of each user for a shared candidate set: [len(users), len(items)]."""
        u, i = self.final_embeddings()
        return u[users] @ i[items].t()

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        return self.final_embeddings()[1]


BACKBONES: Registry[Backbone] = Registry("backbone")

"""The backbone interface every recommender implements, and the backbone registry."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from ..data import Batch, Interactions
from ..registry import Registry
from ..graphs import bipartite_adjacency, take


# dtypes of the frozen item features and of the matrix products that project them
FEATURE_PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PAD_ROWS = 128  # row-count granularity of bfloat16 batch projections (see Backbone.project)


@dataclass
class BackboneConfig:
    name: str = MISSING
    embedding_dim: int = 64
    reg_weight: float = 1e-4
    # float32 (default, exact) | bfloat16: item features stored in bfloat16 and projected by a
    # bfloat16 product (float32 master weights, float32 results): half the memory traffic and
    # 2-4x faster projections on CPUs with AMX/AVX512-BF16 and on GPUs, slower on CPUs without
    # them. kNN graphs are always built from float32 features. Models without item features
    # ignore it (docs/backbones.md, "Speed and memory").
    feature_precision: str = "float32"

    def check(self) -> None:
        """Value checks (ranges, choices): run by the registry when the config is validated,
        before any data are loaded, and by ``Backbone.__init__``. A model with keys of its own
        extends it (``super().check()`` first)."""
        if self.feature_precision not in FEATURE_PRECISIONS:
            raise ValueError(f"backbone.feature_precision={self.feature_precision!r}: choose one "
                             f"of {', '.join(FEATURE_PRECISIONS)}")
        require_at_least(self, 1, "embedding_dim")
        require_at_least(self, 0, "reg_weight")


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
        cfg.check()
        self.feature_dtype = FEATURE_PRECISIONS[cfg.feature_precision]
        self._batch_cache: tuple[weakref.ref, torch.Tensor, torch.Tensor] | None = None

    def init_id_embeddings(self, user_dim: int, item_dim: int | None = None) -> None:
        """``self.user_emb`` / ``self.item_emb``: ID embedding tables, Xavier-uniform initialised
        (the MMRec convention; the RNG draws are those of building both tables, then both inits)."""
        self.user_emb = nn.Embedding(self.n_users, user_dim)
        self.item_emb = nn.Embedding(self.n_items, item_dim if item_dim is not None else user_dim)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def read_features(self, data: Interactions, k: int) -> torch.Tensor:
        """The item features of modality ``self.modalities[k]`` as a float32 tensor, checked to
        have one row per item (for models that only build graphs from them)."""
        m = self.modalities[k]
        feats = torch.as_tensor(data.features[m], dtype=torch.float32)
        if feats.ndim != 2 or feats.shape[0] != self.n_items:
            raise ValueError(f"features '{m}' have shape {tuple(feats.shape)} for "
                             f"{self.n_items} items")
        return feats

    def load_features(self, data: Interactions, k: int) -> torch.Tensor:
        """``read_features``, also registered as the (non-persistent) buffer ``feat_{k}`` in
        ``backbone.feature_precision``. The float32 tensor is returned for building graphs;
        projections read the buffer through ``project``."""
        feats = self.read_features(data, k)
        self.register_buffer(f"feat_{k}", feats.to(self.feature_dtype), persistent=False)
        return feats

    @staticmethod
    def project(proj: nn.Linear, feats: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """``proj`` applied to the feature rows ``rows`` (every row when None), as float32.
        Each distinct row is projected once (a batch's positives and negatives repeat items).
        For bfloat16 features the product runs in bfloat16 from the float32 weights (their
        gradient flows back in float32, as in mixed-precision training)."""
        if rows is not None:
            uniq, inverse = torch.unique(rows, return_inverse=True)
            if feats.dtype != torch.float32 and len(uniq) % PAD_ROWS:
                # bfloat16 kernels are compiled per shape: pad the row count to a multiple of
                # PAD_ROWS so that a few shapes recur (an unseen shape costs more than the product)
                pad = uniq.new_full((PAD_ROWS - len(uniq) % PAD_ROWS,), int(uniq[0]))
                uniq = torch.cat([uniq, pad])
            return take(Backbone.project(proj, feats.index_select(0, uniq)), inverse)
        if feats.dtype == torch.float32:
            return proj(feats)
        bias = None if proj.bias is None else proj.bias.to(feats.dtype)
        return F.linear(feats, proj.weight.to(feats.dtype), bias).float()

    @staticmethod
    def feature_product(feats: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``feats @ weight`` as float32, computed in the features' precision."""
        if feats.dtype == torch.float32:
            return feats @ weight
        return (feats @ weight.to(feats.dtype)).float()

    @staticmethod
    def project_difference(proj: nn.Linear, feats: torch.Tensor, a: torch.Tensor,
                           b: torch.Tensor) -> torch.Tensor:
        """``proj(f_a) - proj(f_b)`` row by row, as float32: one product of the differences
        ``f_a - f_b`` (the bias cancels), half the arithmetic of projecting both sides and a
        fixed shape per batch size. Exact in real arithmetic, not bit-identical in floating
        point. For a BPR term x_ua - x_ub that is linear in the projected features."""
        diff = feats.index_select(0, a) - feats.index_select(0, b)  # bf16: rounded once
        return F.linear(diff, proj.weight.to(diff.dtype)).float()

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

    def edge_buffers(self, weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Every structure the model builds from the training interactions, by buffer name, with
        the per-interaction ``weights`` (aligned with ``data.train``; None: all ones). Graph
        models build their buffers through it in ``__init__`` (``register_edge_buffers``);
        models without a user-item graph (MF, VBPR) have none. The default: the symmetric-
        normalised bipartite adjacency ``adj`` of LightGCN-style propagation."""
        return {"adj": bipartite_adjacency(self.edge_users, self.edge_items, self.n_users,
                                           self.n_items, weights=weights)}

    def register_edge_buffers(self, data: Interactions) -> None:
        """Keep the training interactions and register ``edge_buffers(None)`` (not persistent:
        rebuilt from the data, and from the denoiser's weights on resume)."""
        self.edge_users = torch.as_tensor(data.train.users, dtype=torch.long)
        self.edge_items = torch.as_tensor(data.train.items, dtype=torch.long)
        self.edge_weights: torch.Tensor | None = None
        for name, tensor in self.edge_buffers(None).items():
            self.register_buffer(name, tensor, persistent=False)

    def set_edge_weights(self, weights: torch.Tensor | None) -> bool:
        """Weight the user-item graph per training interaction (a denoiser's flags reaching the
        propagation, not only the loss): the buffers of ``edge_buffers`` are rebuilt with them,
        on the model's device. Returns False when the model has no such graph."""
        if not hasattr(self, "edge_users"):
            return False
        device = next(self.parameters()).device
        self.edge_weights = None if weights is None else weights.detach().float().cpu()
        for name, tensor in self.edge_buffers(self.edge_weights).items():
            setattr(self, name, tensor.to(device))
        return True

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

    def noise_scores(self, users, items):
        """A model that weights its own feedback (DA-MRS) scores the given training (user, item)
        pairs as likely noise, higher = more suspicious, as a numpy array; the detection metrics
        use it when the denoiser has no scores. None: the model has none."""
        return None


BACKBONES: Registry[Backbone] = Registry("backbone")

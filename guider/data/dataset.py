"""In-memory representation of one dataset after loading (and noise injection)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Interactions of one split as parallel id arrays (int64)."""

    users: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        self.users = np.ascontiguousarray(self.users, dtype=np.int64)
        self.items = np.ascontiguousarray(self.items, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.users)

    def keys(self, n_items: int) -> np.ndarray:
        """One int64 key per (user, item) pair: user * n_items + item."""
        return self.users * n_items + self.items


@dataclass
class Interactions:
    """A dataset ready for training.

    ``train_noise[k]`` is True when training interaction k is known noise: drawn at random by the
    synthetic generator, injected by ``guider.data.noise``, or touching an item whose features were
    swapped by modal noise. ``has_noise_labels`` says whether these labels are meaningful (a real
    dataset without injected noise has no known noise).
    """

    name: str
    n_users: int
    n_items: int
    train: Split
    valid: Split
    test: Split
    features: dict[str, np.ndarray] = field(default_factory=dict)
    train_noise: np.ndarray | None = None
    has_noise_labels: bool = False
    # item-level labels of modal noise: modality -> bool[n_items]
    feature_noise: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # noise=drop: the training interactions taken out (false negatives) and their positions in
    # the training split as loaded
    removed: Split | None = None
    removed_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.train_noise is None:
            self.train_noise = np.zeros(len(self.train), dtype=bool)

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def train_degrees(self) -> tuple[np.ndarray, np.ndarray]:
        users = np.bincount(self.train.users, minlength=self.n_users)
        items = np.bincount(self.train.items, minlength=self.n_items)
        return users, items

    def train_before_noise(self) -> Split:
        """The training split as loaded, in its order: without the injected pairs (appended
        after the real ones), with the pairs noise=drop took out put back in their places."""
        if self.removed is not None and len(self.removed):
            n = len(self.train) + len(self.removed)
            keep = np.ones(n, dtype=bool)
            keep[self.removed_index] = False
            users = np.empty(n, dtype=self.train.users.dtype)
            items = np.empty(n, dtype=self.train.items.dtype)
            users[keep], items[keep] = self.train.users, self.train.items
            users[~keep], items[~keep] = self.removed.users, self.removed.items
            return Split(users, items)
        n_real = (self.info.get("noise") or {}).get("n_train_before", len(self.train))
        return Split(self.train.users[:n_real], self.train.items[:n_real])

    def digest(self) -> str:
        """SHA-256 of the dataset as loaded, before noise injection: the sizes and the (user,
        item) pairs of train (without injected pairs), valid and test, in order. Recorded in
        metrics.json so a trained model is never evaluated on other data by mistake."""
        h = hashlib.sha256(f"{self.n_users}x{self.n_items}".encode())
        for split in (self.train_before_noise(), self.valid, self.test):
            h.update(f":{len(split)}".encode())
            h.update(split.users.tobytes())
            h.update(split.items.tobytes())
        return h.hexdigest()

    def with_train_subset(self, keep: np.ndarray) -> "Interactions":
        """A shallow copy whose training split holds only the interactions where ``keep`` is
        True (features, valid and test shared): what a backbone builds its graphs from when a
        denoiser keeps some training interactions out of them."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self.train),):
            raise ValueError(f"keep mask of shape {keep.shape} for {len(self.train)} training "
                             f"interactions")
        return replace(self, train=Split(self.train.users[keep], self.train.items[keep]),
                       train_noise=self.train_noise[keep], info=dict(self.info))

    def summary(self) -> dict:
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": len(self.train),
            "n_valid": len(self.valid),
            "n_test": len(self.test),
            "modalities": {m: list(f.shape) for m, f in self.features.items()},
            "n_train_noise": int(self.train_noise.sum()) if self.has_noise_labels else None,
        }

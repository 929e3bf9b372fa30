"""On-disk cache of the frozen kNN item-item graphs (the O(n_items^2 x dim) part of building
FREEDOM, LATTICE, MGCN, SMORE and GUIDER's AMSC).

What is cached is the exact block-wise top-k of ``graphs.knn_topk`` (values and indices) for rows
that never change during training: item features. Learned graphs (LATTICE's, rebuilt from
trained projections) never go through it.

The key is a SHA-256 of everything the result depends on, and more:
  * the rows themselves (float32 bytes and shape), k, whether self-matches are excluded, the block
    size (blocks of another height may round the similarities differently) and the device type;
  * the torch version (kernels may change the last bits);
  * the run's *scope*: a digest of the training interactions after noise injection and the
    catalogue size (``interactions_digest``). No kNN graph of features depends on the
    interactions today; they are in the key all the same, as the project's rule for graph caches
    says, so that a graph which one day does can never be reused across changed inputs.
A changed input therefore always misses. Entries are written atomically (temporary file, then
rename), so an interrupted or concurrent run never leaves a half-written entry behind; a file
that fails to load is rebuilt and replaced.

The cache is switched on around model construction by ``use_graph_cache`` (the pipeline does so
with the ``graph_cache`` settings); without it every graph is built in-process, as before.
Graphs smaller than ``min_work`` (n^2 x dim multiply-adds) are not cached: they rebuild in well
under a second.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

log = logging.getLogger("guider")

CACHE_VERSION = "knn_topk-v1"


def interactions_digest(users: np.ndarray, items: np.ndarray, n_users: int,
                        n_items: int) -> str:
    """SHA-256 of a set of (user, item) training interactions in their order, with the sizes."""
    h = hashlib.sha256(f"{n_users}x{n_items}:{len(users)}".encode())
    h.update(np.ascontiguousarray(users, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(items, dtype=np.int64).tobytes())
    return h.hexdigest()


@dataclass
class GraphCache:
    """A folder of cached kNN results. ``scope``: the digest of the training interactions
    (``interactions_digest``); ``min_work``: the smallest n^2 x dim worth caching."""

    folder: Path
    scope: str
    min_work: float = 1e10

    def key(self, z: torch.Tensor, k: int, block_size: int, exclude_self: bool) -> str:
        rows = z.detach().to("cpu", torch.float32).contiguous()
        h = hashlib.sha256()
        h.update(f"{CACHE_VERSION}|torch {torch.__version__}|{z.device.type}|k={k}|"
                 f"block={block_size}|exclude_self={exclude_self}|shape={tuple(rows.shape)}|"
                 f"scope={self.scope}".encode())
        h.update(rows.numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / f"knn-{key[:32]}.pt"

    def knn_topk(self, z: torch.Tensor, k: int, block_size: int, exclude_self: bool,
                 compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached (values, indices) for these arguments, else ``compute()`` stored."""
        n, dim = z.shape
        if float(n) * n * dim < self.min_work:
            return compute()
        key = self.key(z, k, block_size, exclude_self)
        path = self.path(key)
        if path.exists():
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
                if entry["key"] == key:
                    log.info("kNN graph (%d items, k=%d) loaded from the graph cache %s",
                             n, k, path)
                    return entry["values"].to(z.device), entry["indices"].to(z.device)
                log.warning("graph cache entry %s belongs to another key; rebuilding it", path)
            except Exception as err:  # noqa: BLE001  (a damaged file is rebuilt, never fatal)
                log.warning("graph cache entry %s could not be read (%s); rebuilding it",
                            path, err)
        start = time.perf_counter()
        values, indices = compute()
        seconds = time.perf_counter() - start
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({"key": key, "values": values.cpu(), "indices": indices.cpu()}, tmp)
            os.replace(tmp, path)
            log.info("kNN graph (%d items, k=%d) built in %.1f s and cached in %s",
                     n, k, seconds, path)
        except OSError as err:  # a read-only or full disk costs the reuse, not the run
            log.warning("could not write the graph cache entry %s (%s); set graph_cache.dir to "
                        "a writable folder, or null to switch the cache off", path, err)
        return values, indices


_ACTIVE: contextvars.ContextVar[GraphCache | None] = contextvars.ContextVar(
    "guider_graph_cache", default=None)


def active_graph_cache() -> GraphCache | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def use_graph_cache(cache: GraphCache | None) -> Iterator[GraphCache | None]:
    """Within the block, frozen kNN graphs go through ``cache`` (None: no cache)."""
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)

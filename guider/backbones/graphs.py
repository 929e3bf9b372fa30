"""Shared graph toolkit: every model uses these instead of its own copy.

Knows only tensors. The user-item graph is the bipartite adjacency [[0, R], [R^T, 0]] over
n_users + n_items nodes, symmetrically normalised D^-1/2 A D^-1/2 and stored in CSR.
"""

from __future__ import annotations

import warnings

import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def sym_norm_values(rows: torch.Tensor, cols: torch.Tensor, n: int,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Edge values w_rc / sqrt(d_r d_c) for a symmetric edge list (isolated nodes get 0)."""
    w = torch.ones(len(rows)) if weights is None else weights.float()
    deg = torch.zeros(n).index_add_(0, rows, w)
    dinv = deg.pow(-0.5)
    dinv[deg == 0] = 0.0
    return dinv[rows] * w * dinv[cols]


def bipartite_adjacency(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                        weights: torch.Tensor | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Symmetric-normalised user-item adjacency as a sparse CSR tensor of size (U+I, U+I)."""
    users = torch.as_tensor(users, dtype=torch.long)
    items = torch.as_tensor(items, dtype=torch.long) + n_users
    rows = torch.cat([users, items])
    cols = torch.cat([items, users])
    w = None if weights is None else torch.cat([weights, weights])
    n = n_users + n_items
    vals = sym_norm_values(rows, cols, n, w)
    adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n),
                                  check_invariants=False).coalesce()
    return adj.to_sparse_csr().to(device)


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A: the backward pass is A grad (CSR both ways, which is
    ~20x faster on CPU than autograd through a sparse transpose)."""

    @staticmethod
    def forward(ctx, adj, x):
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.adj @ grad


def sym_spmm(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply by a *symmetric* sparse matrix, differentiable in x."""
    if not x.requires_grad:
        return adj @ x
    return _SymmetricSpMM.apply(adj, x)


def lightgcn_propagate(adj: torch.Tensor, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """LightGCN: mean of E, AE, A^2E, ..., A^L E (He et al., 2020, Eq. 8 with alpha_k = 1/(L+1))."""
    out = ego
    h = ego
    for _ in range(n_layers):
        h = sym_spmm(adj, h)
        out = out + h
    return out / (n_layers + 1)


def centred_unit(x: torch.Tensor) -> torch.Tensor:
    """Centre the rows (subtract the mean row) and scale each to unit length. A raw all-zero row
    is a missing feature: it stays zero. Pretrained features are strongly anisotropic (high mean
    pairwise cosine); centring removes the shared direction that would drown the signal."""
    x = x.float()
    missing = ~x.any(dim=1)
    present = ~missing
    mean = x[present].mean(0) if present.any() else torch.zeros(x.shape[1])
    z = x - mean
    z[missing] = 0.0
    norm = z.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, z / norm.clamp(min=1e-12), torch.zeros_like(z))


def knn_indices(z: torch.Tensor, k: int, block_size: int = 2048,
                exclude_self: bool = True) -> torch.Tensor:
    """Indices of the k most similar rows of ``z`` by inner product (cosine for unit rows),
    computed block by block: memory O(block_size x n), never n x n."""
    n = z.shape[0]
    k = min(k, n - 1 if exclude_self else n)
    out = torch.empty(n, k, dtype=torch.long)
    zt = z.t().contiguous()
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = z[start:stop] @ zt
        if exclude_self:
            rows = torch.arange(stop - start)
            sims[rows, rows + start] = -torch.inf
        out[start:stop] = sims.topk(k, dim=1).indices
    return out


def user_item_matrix(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                     values: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse CSR user x item matrix (ones, or ``values``) for sparse aggregations R @ X."""
    users = torch.as_tensor(users, dtype=torch.long)
    items = torch.as_tensor(items, dtype=torch.long)
    vals = torch.ones(len(users)) if values is None else values.float()
    r = torch.sparse_coo_tensor(torch.stack([users, items]), vals, (n_users, n_items),
                                check_invariants=False).coalesce()
    return r.to_sparse_csr()

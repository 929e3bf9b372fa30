"""Shared graph toolkit: every model uses these instead of its own copy.

Knows only tensors. The user-item graph is the bipartite adjacency [[0, R], [R^T, 0]] over
n_users + n_items nodes, symmetrically normalised D^-1/2 A D^-1/2 and stored in CSR.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from ..sizecheck import check_size
from .cache import active_graph_cache

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

# bytes per element, for the early size checks (guider.sizecheck): a kNN block holds float32
# similarities plus top-k's workspace; an interaction becomes two adjacency edges, each passing
# through int64 COO indices, their coalesced copy, float32 values and the CSR result
BYTES_PER_SIM = 8
BYTES_PER_ADJ_INTERACTION = 2 * 72
KNN_KNOB = "the kNN block size (backbone.knn_block_size, denoise.amsc.knn_block)"


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The rows ``x[index]`` (any index shape: the result is ``index.shape + x.shape[1:]``) by
    ``index_select``. Use it for every differentiable row gather: on the CPU the backward pass of
    advanced indexing (an accumulating ``index_put_``) adds duplicate rows in a thread-dependent
    order when more than one thread runs, so the same seed gave different numbers; the backward
    of ``index_select`` (``index_add_``) is deterministic, and with one thread both give the same
    bits (tests/test_determinism.py)."""
    if index.dim() == 1:
        return x.index_select(0, index)
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def sym_norm_values(rows: torch.Tensor, cols: torch.Tensor, n: int,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Edge values w_rc / sqrt(d_r d_c), d the row sums of the weights (for a symmetric edge list
    the degree of both ends; isolated nodes and empty rows get 0), on the edges' device."""
    w = torch.ones(len(rows), device=rows.device) if weights is None else weights.float()
    deg = torch.zeros(n, device=rows.device).index_add_(0, rows, w)
    dinv = deg.pow(-0.5)
    dinv[deg == 0] = 0.0
    return dinv[rows] * w * dinv[cols]


def row_normalised_graph(rows: torch.Tensor, cols: torch.Tensor, n: int,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """The (n, n) graph of the (row, col) entries with values w (1 when ``weights`` is None),
    normalised D^-1/2 S D^-1/2 with D the row sums (``sym_norm_values``), as sparse CSR; rows may
    have any number of entries (kNN graphs, DA-MRS's pruned and behaviour graphs)."""
    vals = sym_norm_values(rows, cols, n, weights)
    s = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n),
                                check_invariants=False).coalesce()
    return s.to_sparse_csr()


def bipartite_adjacency(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                        weights: torch.Tensor | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Symmetric-normalised user-item adjacency as a sparse CSR tensor of size (U+I, U+I)."""
    check_size(f"the user-item adjacency ({len(users):,} interactions, both directions)",
               len(users) * BYTES_PER_ADJ_INTERACTION, "a dataset with fewer interactions (for "
               "the synthetic set dataset.synthetic.n_interactions)")
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


def knn_topk(z: torch.Tensor, k: int, block_size: int = 2048, exclude_self: bool = True,
             knob: str = KNN_KNOB) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest inner products of each row of ``z`` with all rows (cosine for unit rows) and
    their column indices, ([n, k] values, [n, k] indices) on ``z``'s device, computed block by
    block: memory O(block_size x n), never n x n (checked against the available memory before
    the first block; ``knob`` names the setting that shrinks it). Time stays O(n^2 d): exact
    kNN. Not differentiable."""
    n = z.shape[0]
    rows = min(block_size, n)
    check_size(f"a kNN similarity block ({rows:,} x {n:,} items)", rows * n * BYTES_PER_SIM,
               knob, z.device)
    k = min(k, n - 1 if exclude_self else n)
    values = torch.empty(n, k, dtype=z.dtype, device=z.device)
    indices = torch.empty(n, k, dtype=torch.long, device=z.device)
    zt = z.t().contiguous()
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        sims = z[start:stop] @ zt
        if exclude_self:
            rows = torch.arange(stop - start, device=z.device)
            sims[rows, rows + start] = -torch.inf
        values[start:stop], indices[start:stop] = sims.topk(k, dim=1)
    return values, indices


def frozen_knn_topk(z: torch.Tensor, k: int, block_size: int = 2048, exclude_self: bool = True,
                    knob: str = KNN_KNOB) -> tuple[torch.Tensor, torch.Tensor]:
    """``knn_topk`` of rows that stay fixed during training (item features), through the graph
    cache when one is active (``guider.graphs.cache``): the same values and indices, loaded
    instead of recomputed when nothing they depend on changed. Not for learned rows."""
    cache = active_graph_cache()
    with torch.no_grad():
        if cache is None:
            return knn_topk(z, k, block_size, exclude_self, knob)
        return cache.knn_topk(z, k, block_size, exclude_self,
                              lambda: knn_topk(z, k, block_size, exclude_self, knob))


def knn_indices(z: torch.Tensor, k: int, block_size: int = 2048,
                exclude_self: bool = True, knob: str = KNN_KNOB) -> torch.Tensor:
    """Indices of the k most similar rows of the fixed rows ``z`` by inner product (cosine for
    unit rows), computed block by block (memory O(block_size x n), never n x n) or loaded from
    the graph cache (``frozen_knn_topk``). On the CPU."""
    return frozen_knn_topk(z, k, block_size, exclude_self, knob)[1].cpu()


def user_item_matrix(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                     values: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse CSR user x item matrix (ones, or ``values``) for sparse aggregations R @ X."""
    check_size(f"the user x item matrix ({len(users):,} interactions)",
               len(users) * BYTES_PER_ADJ_INTERACTION // 2, "a dataset with fewer interactions "
               "(for the synthetic set dataset.synthetic.n_interactions)")
    users = torch.as_tensor(users, dtype=torch.long)
    items = torch.as_tensor(items, dtype=torch.long)
    vals = torch.ones(len(users)) if values is None else values.float()
    r = torch.sparse_coo_tensor(torch.stack([users, items]), vals, (n_users, n_items),
                                check_invariants=False).coalesce()
    return r.to_sparse_csr()


def weighted_degrees(index: torch.Tensor, n: int,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Degree of each of ``n`` nodes in an edge list: the count of its edges, or the sum of their
    ``weights``."""
    if weights is None:
        return torch.bincount(index, minlength=n).float()
    return torch.zeros(n).index_add_(0, index, weights.float())


def user_item_graphs(users: torch.Tensor, items: torch.Tensor, n_users: int,
                     n_items: int, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The training graph for models that propagate on it and aggregate item rows into users,
    by buffer name: ``adj``, the symmetric-normalised bipartite adjacency
    (``bipartite_adjacency``); ``r_norm``, the user x item matrix with values 1/sqrt(d_u d_i)
    (degrees counted in the edge list), so that r_norm @ X gives e_u = sum_i X_i / sqrt(d_u d_i);
    ``r_norm_t``, its transpose in CSR (``transpose_csr``, for ``spmm``). With edge ``weights``
    (a denoiser's, ``Backbone.set_edge_weights``) the values are w_ui / sqrt(d_u d_i) with
    weighted degrees; an edge of weight 0 is as good as absent."""
    users = torch.as_tensor(users, dtype=torch.long)
    items = torch.as_tensor(items, dtype=torch.long)
    adj = bipartite_adjacency(users, items, n_users, n_items, weights=weights)
    du = weighted_degrees(users, n_users, weights)
    di = weighted_degrees(items, n_items, weights)
    if weights is None:
        values = (du[users] * di[items]).rsqrt()
    else:
        deg = du[users] * di[items]
        values = torch.where(deg > 0, weights.float() * deg.clamp(min=1e-30).rsqrt(),
                             torch.zeros_like(deg))
    r = user_item_matrix(users, items, n_users, n_items, values=values)
    return {"adj": adj, "r_norm": r, "r_norm_t": transpose_csr(r)}


# --- Frozen kNN item-item graphs, sparse products with a non-symmetric matrix, and
# --- degree-sensitive edge pruning (FREEDOM, Zhou & Shen, ACM MM 2023).


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit L2 length (no centring); an all-zero row stays zero. Inner
    products of the result are cosine similarities."""
    x = x.float()
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp(min=1e-12), torch.zeros_like(x))


def knn_graph(z: torch.Tensor, k: int, block_size: int = 2048,
              exclude_self: bool = False, weighted: bool = False,
              knob: str = KNN_KNOB) -> torch.Tensor:
    """Frozen kNN graph of the rows of ``z`` (unit rows: cosine similarity) as a sparse CSR
    (n, n) tensor: S_ij = 1 when j is among the k rows most similar to i (top-k per row, so the
    graph is not symmetric), then normalised D^-1/2 S D^-1/2 with D the row sums (FREEDOM Eq. 3;
    every row has exactly k entries). The similarities are computed ``block_size`` rows at a time
    (``frozen_knn_topk``: loaded from the graph cache when one is active and holds them), so no
    n x n matrix is ever formed. With ``exclude_self=False`` (FREEDOM's
    top-k over the full similarity row) an item is usually its own first neighbour.

    ``weighted=True``: S_ij is the similarity z_i . z_j itself instead of 1 (the MMRec toolbox's
    ``build_knn_normalized_graph``, used by SMORE), clamped at 0 so that a row whose top k holds
    negative similarities cannot get a negative degree; D is then the row sum of these weights
    (a row of zeros gets weight 0)."""
    n = z.shape[0]
    sims, nbrs = frozen_knn_topk(z, k, block_size, exclude_self=exclude_self, knob=knob)
    kk = nbrs.shape[1]
    rows = torch.arange(n, device=z.device).repeat_interleave(kk)
    cols = nbrs.reshape(-1)
    w = sims.reshape(-1).float().clamp(min=0.0) if weighted else None
    return row_normalised_graph(rows, cols, n, w)


def mix_graphs(graphs: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Weighted sum sum_m w_m S^m of sparse (n, n) matrices (COO or CSR) as one sparse CSR
    matrix; entries present in several graphs add up."""
    if len(graphs) != len(weights) or not graphs:
        raise ValueError(f"mix_graphs needs one weight per graph (got {len(graphs)} graphs and "
                         f"{len(weights)} weights)")
    idx, vals = [], []
    for g, w in zip(graphs, weights):
        coo = g.to_sparse_coo().coalesce() if g.layout != torch.sparse_coo else g.coalesce()
        idx.append(coo.indices())
        vals.append(coo.values() * float(w))
    mixed = torch.sparse_coo_tensor(torch.cat(idx, 1), torch.cat(vals), graphs[0].shape,
                                    check_invariants=False).coalesce()
    return mixed.to_sparse_csr()


def max_pool_graphs(graphs: list[torch.Tensor]) -> torch.Tensor:
    """Entry-wise maximum of sparse (n, n) matrices over the union of their edges, as one sparse
    CSR matrix: an entry present in several graphs keeps its largest value, one present in a
    single graph keeps its value (SMORE's fusion graph: max pooling of the normalised modality
    graphs, no renormalisation). One graph is returned unchanged (as CSR)."""
    if not graphs:
        raise ValueError("max_pool_graphs needs at least one graph")
    n_rows, n_cols = graphs[0].shape
    idx, vals = [], []
    for g in graphs:
        coo = g.to_sparse_coo().coalesce() if g.layout != torch.sparse_coo else g.coalesce()
        idx.append(coo.indices())
        vals.append(coo.values())
    idx, vals = torch.cat(idx, 1), torch.cat(vals)
    keys, inverse = torch.unique(idx[0] * n_cols + idx[1], return_inverse=True)
    pooled = torch.full((len(keys),), -torch.inf, dtype=vals.dtype, device=vals.device)
    pooled = pooled.scatter_reduce(0, inverse, vals, reduce="amax")
    out = torch.sparse_coo_tensor(torch.stack([keys // n_cols, keys % n_cols]), pooled,
                                  (n_rows, n_cols), check_invariants=False).coalesce()
    return out.to_sparse_csr()


def transpose_csr(adj: torch.Tensor) -> torch.Tensor:
    """The transpose of a sparse matrix, materialised in CSR (for fast backward products)."""
    coo = adj.to_sparse_coo().coalesce() if adj.layout != torch.sparse_coo else adj.coalesce()
    t = torch.sparse_coo_tensor(coo.indices().flip(0), coo.values(), (adj.shape[1], adj.shape[0]),
                                check_invariants=False).coalesce()
    return t.to_sparse_csr()


class _SparseMM(torch.autograd.Function):
    """y = A x for any sparse A; the backward pass is A^T grad with A^T precomputed in CSR."""

    @staticmethod
    def forward(ctx, adj, adj_t, x):
        ctx.adj_t = adj_t
        return adj @ x

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.adj_t @ grad


def spmm(adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply by a sparse, not necessarily symmetric, matrix ``adj`` (``adj_t`` its transpose,
    e.g. from ``transpose_csr``), differentiable in x."""
    if not x.requires_grad:
        return adj @ x
    return _SparseMM.apply(adj, adj_t, x)


def degree_sensitive_prune(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                           keep_ratio: float, generator: torch.Generator | None = None,
                           weights: torch.Tensor | None = None) -> torch.Tensor:
    """FREEDOM's degree-sensitive edge pruning: indices of round(keep_ratio * |E|) user-item
    edges drawn without replacement with probability proportional to 1 / (sqrt(d_u) sqrt(d_i))
    (degrees in the given edge list), so edges between high-degree nodes are dropped more often.

    Vectorised weighted sampling without replacement (exponential races, the Gumbel top-k trick;
    the same law as sequential draws with torch.multinomial): the kept edges are the smallest
    E_e / w_e with E_e ~ Exp(1). Runs where ``users`` lives; a ``generator`` must be on that
    device. Returns the kept indices in increasing order."""
    users = torch.as_tensor(users, dtype=torch.long)
    items = torch.as_tensor(items, dtype=torch.long)
    if not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio={keep_ratio}: must lie in [0, 1]")
    n_edges = len(users)
    n_keep = min(n_edges, int(round(keep_ratio * n_edges)))
    if n_keep == n_edges:
        return torch.arange(n_edges, device=users.device)
    if weights is None:
        du = torch.bincount(users, minlength=n_users).float()
        di = torch.bincount(items, minlength=n_items).float()
        w = du[users].rsqrt() * di[items].rsqrt()
    else:  # probability proportional to w_e / sqrt(d_u d_i), weighted degrees; w_e = 0: never kept
        weights = weights.to(users.device).float()
        du = torch.zeros(n_users, device=users.device).index_add_(0, users, weights)
        di = torch.zeros(n_items, device=users.device).index_add_(0, items, weights)
        deg = (du[users] * di[items]).clamp(min=1e-30)
        w = torch.where(weights > 0, weights * deg.rsqrt(), torch.zeros_like(weights))
    race = torch.empty(n_edges, device=users.device).exponential_(generator=generator) / w
    kept = race.topk(n_keep, largest=False, sorted=False).indices
    return kept.sort().values


# --- Denoised item-item graphs of DA-MRS (Xu et al., KDD 2024): modality kNN graphs pruned by
# --- cross-modal consistency, and the behaviour (co-occurrence) graph of the training data.


def mean_cosine(z: torch.Tensor) -> float:
    """Mean of every entry of the n x n inner-product matrix z z^T (self-pairs included), in
    closed form: |sum_i z_i|^2 / n^2, without forming the matrix."""
    z = z.double()
    s = z.sum(0)
    return float(s @ s) / float(z.shape[0]) ** 2


def consistent_knn_graphs(zs: list[torch.Tensor], k: int, block_size: int = 2048,
                          knob: str = KNN_KNOB) -> list[torch.Tensor]:
    """One kNN graph per modality, pruned by cross-modal consistency (DA-MRS, Eq. 1-2): with
    S^m = z^m z^m^T (unit rows: cosine) and mu_m the mean of S^m over all pairs, the entry (i, j)
    is removed from *every* modality's graph when S^m_ij < mu_m for *any* modality m; each item
    then keeps, per modality, its ``k`` most similar remaining items (itself included: its
    self-similarity is 1, above any mean), fewer when fewer remain. 0/1 graphs normalised with
    their row sums (``row_normalised_graph``). Computed ``block_size`` rows at a time: memory
    O(M x block_size x n), never n x n. One modality: its own mean alone prunes."""
    if not zs:
        raise ValueError("consistent_knn_graphs needs at least one modality")
    n = zs[0].shape[0]
    rows_per = min(block_size, n)
    check_size(f"a consistency-pruned kNN block ({len(zs)} modalities x {rows_per:,} x {n:,} "
               f"items)", len(zs) * rows_per * n * BYTES_PER_SIM, knob, zs[0].device)
    means = [mean_cosine(z) for z in zs]
    kk = min(k, n)
    rows_out: list[list[torch.Tensor]] = [[] for _ in zs]
    cols_out: list[list[torch.Tensor]] = [[] for _ in zs]
    with torch.no_grad():
        zts = [z.t().contiguous() for z in zs]
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            sims = [z[start:stop] @ zt for z, zt in zip(zs, zts)]
            inconsistent = torch.zeros_like(sims[0], dtype=torch.bool)
            for s, mu in zip(sims, means):
                inconsistent |= s < mu
            for m, s in enumerate(sims):
                s = s.masked_fill(inconsistent, -torch.inf)
                vals, idx = s.topk(kk, dim=1)
                keep = torch.isfinite(vals)
                r = torch.arange(start, stop).unsqueeze(1).expand_as(idx)
                rows_out[m].append(r[keep])
                cols_out[m].append(idx[keep])
    return [row_normalised_graph(torch.cat(r), torch.cat(c), n) for r, c in zip(rows_out, cols_out)]


def cooccurrence_graph(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                       k: int, min_common: int = 2) -> torch.Tensor:
    """DA-MRS's behaviour graph: items i != j are linked when at least ``min_common`` users have
    both among the given (training) interactions; each item keeps its ``k`` partners with the
    most common users (ties: the lower item index) and a self-loop; 0/1 entries normalised with
    the row sums (``row_normalised_graph``). The co-occurrence counts R^T R are a sparse product, never
    an n x n dense matrix. Duplicated (user, item) pairs count once."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    r = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)),
                      shape=(n_users, n_items))
    r.data[:] = 1.0  # duplicates were summed: count each (user, item) once
    c = (r.T @ r).tocoo()
    off = (c.row != c.col) & (c.data >= min_common)
    row, col, cnt = c.row[off], c.col[off], c.data[off]
    order = np.lexsort((col, -cnt, row))  # by row, then count descending, then column
    row, col = row[order], col[order]
    starts = np.searchsorted(row, row, side="left")
    rank = np.arange(len(row)) - starts
    keep = rank < k
    loops = np.arange(n_items)
    rows = torch.as_tensor(np.concatenate([loops, row[keep]]), dtype=torch.long)
    cols = torch.as_tensor(np.concatenate([loops, col[keep]]), dtype=torch.long)
    return row_normalised_graph(rows, cols, n_items)

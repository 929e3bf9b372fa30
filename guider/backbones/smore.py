"""SMORE (Ong & Khong, WSDM 2025, "Spectrum-based Modality Representation Fusion Graph
Convolutional Network for Multimodal Recommendation", arXiv 2412.14978).

Source. Only the paper's abstract and summaries were readable in this environment, not its
equations; the model below follows the paper's description (spectral denoising and fusion,
modality-specific and fused item-item graphs, modality-aware preference module, BPR + InfoNCE)
with every operation and default taken from the authors' public implementation
(kennethorq/SMORE, ``src/models/smore.py``, which the paper names as its code), read for reference
only. Notation: M modalities, d = ``embedding_dim``, E_id the ID embeddings, R the training matrix.

1. Spectrum modality fusion (denoising and cross-modality fusion in the frequency domain).
   Per modality m the raw features are projected, E_m = X_m W_m + b_m (nn.Linear(dim_m, d)), and
   taken to the frequency domain along the feature dimension, F(E_m) = rfft(E_m) (orthonormal
   DFT, d // 2 + 1 complex coefficients per item). Each modality has a learnable complex filter
   W^c_m (one coefficient per frequency, shared by all items): the denoised features are
   E^_m = irfft(W^c_m * F(E_m)). The fused spectrum is the element-wise product of all the
   modalities' spectra (by the convolution theorem, a circular convolution of the modalities in
   the feature domain) with its own learnable filter: E^_f = irfft(W^c_f * prod_m F(E_m)).
   Filters start as the authors' randn complex values (``spectral_filter``, ``spectral_fusion``).
2. Behaviour-guided item representations: h_m = E_id,i * sigmoid(G_m E^_m + g_m) for every
   modality and for the fusion f (one gate nn.Linear(d, d) + sigmoid each).
3. Multi-modal graph learning. Item-item view per modality: a frozen kNN graph of the raw
   features (cosine, the top ``knn_k[m]`` per row with the item itself, *weighted by the cosine*
   (MMRec's ``build_knn_normalized_graph``), D^-1/2 S D^-1/2 with D the row sums of the weights;
   shared ``graphs.knn_graph(weighted=True)``, built block by block, never n x n). The fusion
   graph is the entry-wise max over the normalised modality graphs on the union of their edges
   (``graphs.max_pool_graphs``, not renormalised). ``n_layers_ii`` convolutions of h_m on S_m and
   of h_f on S_f; a user's view is the aggregation over the user-item graph,
   u_m = sum_i 1/sqrt(d_u d_i) h_m,i. Behaviour (user-item) view: LightGCN on the ID embeddings
   over the symmetric-normalised training graph, ``n_layers_ui`` layers, mean over layers 0..L:
   H_id.
4. Modality-aware preference module. From the fused view H_f, one attention per modality,
   a_m = softmax_d(Q_m(H_f)) with Q_m = Linear(d, d) - tanh - Linear(d, d, no bias) and the
   softmax over the d dimensions of each row (as the authors' code); H~_m = a_m * H_m. Preference
   gates from the behaviour view, P_m = sigmoid(B_m H_id + c_m) and P_f likewise, each dropped
   out with ratio ``dropout`` in training (inverted dropout). H_side = mean(P_1 * H~_1, ...,
   P_M * H~_M, P_f * H_f) and the final representation is H = H_id + H_side.
5. Loss: per-sample BPR on H (the main term, unreduced); ``cl_weight`` (lambda_c) times
   InfoNCE (temperature ``cl_temperature``, in-batch negatives, cosine) between H_side and H_id for
   the batch's positive items plus the same for its users; ``reg_weight`` times the L2 term of
   the batch's final representations (0.5 * squared norms / batch size).

Defaults (conf/backbone/smore.yaml) are the authors' published best setting for Amazon Baby:
n_layers_ui 4, n_layers_ii 1, knn_k image 40 / text 15, cl_weight 0.01, reg_weight 1e-4,
dropout 0.1, d = 64, InfoNCE temperature 0.2 (Sports: n_layers_ui 3, knn_k 10 / 10, cl_weight
0.03, dropout 0; Clothing: n_layers_ui 3, knn_k 40 / 10, reg_weight 1e-5, dropout 0).

Any number of modalities. The paper has image + text. Here each modality gets its projection,
filter, behaviour gate, kNN graph, attention query and preference gate; the fused spectrum is the
product of all M spectra and the fusion graph the max over all M graphs; H_side averages M + 1
terms. A modality missing from ``knn_k`` gets ``knn_k_default`` neighbours (e.g. TikTok's audio).
With one modality the fusion degenerates, and it is kept rather than dropped: the "fused"
spectrum is that modality's spectrum, so E^_f is a second, separately filtered view of the same
modality with its own gates, on the same graph (the max over one graph is that graph); the model
keeps its two-view structure (specific + fused), it just has no cross-modal signal.

Randomness and evaluation. The preference-gate dropout masks come from a CPU ``torch.Generator``
owned by the model, seeded from ``torch.initial_seed()`` when the model is built; its state lives
in the persistent buffer ``dropout_rng_state``, so a checkpoint resumes the same draws on any
device. In evaluation (``model.eval()``) there is no dropout and scores are deterministic.

Deviations from the authors' code: the raw features are fixed buffers (trainable embedding
tables there, ``from_pretrained(freeze=False)``); the kNN weights are clamped at 0 (a negative
cosine among an item's top k would give a negative or NaN degree there; it never happens with
real features); the modality branches are generalised from the hard-coded image + text pair to
M modalities as described above; the InfoNCE temperature is a key (0.2 fixed there); the kNN
graphs are built block-wise in torch instead of from a dense n x n similarity matrix (the same
graph); the InfoNCE is a cross-entropy over the logits (the same value, numerically safer); BPR
uses softplus (= -log sigmoid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import Batch, Interactions
from .base import BACKBONES, Backbone, BackboneConfig, Losses, require_at_least
from ..graphs import (knn_graph, lightgcn_propagate, max_pool_graphs, spmm, take,
                     transpose_csr, unit_rows, user_item_graphs)
from .losses import bpr_terms, info_nce, l2_reg


@dataclass
class SMOREConfig(BackboneConfig):
    name: str = "smore"
    embedding_dim: int = 64
    n_layers_ui: int = 4
    n_layers_ii: int = 1
    knn_k: dict[str, int] = field(default_factory=lambda: {"image": 40, "text": 15})
    knn_k_default: int = 10
    cl_weight: float = 0.01
    cl_temperature: float = 0.2
    dropout: float = 0.1
    reg_weight: float = 1e-4
    knn_block_size: int = 2048

    def check(self) -> None:
        super().check()
        check_config(self)


def check_config(cfg: SMOREConfig) -> None:
    require_at_least(cfg, 1, "knn_k_default", "knn_block_size", "embedding_dim")
    for m, k in cfg.knn_k.items():
        if k < 1:
            raise ValueError(f"backbone.knn_k.{m}={k}: must be >= 1")
    require_at_least(cfg, 0, "n_layers_ii", "n_layers_ui")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"backbone.dropout={cfg.dropout}: the dropout ratio must lie in [0, 1)")
    if not cfg.cl_temperature > 0:
        raise ValueError(f"backbone.cl_temperature={cfg.cl_temperature}: must be > 0")
    require_at_least(cfg, 0, "cl_weight", "reg_weight")


# -- the spectral operations --------------------------------------------------------------------


def spectral_filter(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """irfft(W * rfft(x)) along the last dimension (orthonormal DFT): ``x`` [n, d] real,
    ``weight`` [d // 2 + 1, 2] the real and imaginary parts of one complex coefficient per
    frequency. An all-ones filter (1 + 0j) is the identity."""
    spec = torch.fft.rfft(x, dim=-1, norm="ortho")
    return torch.fft.irfft(spec * torch.view_as_complex(weight), n=x.shape[-1], dim=-1,
                           norm="ortho")


def spectral_fusion(xs: list[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """irfft(W * prod_m rfft(x_m)): the fused spectrum of several [n, d] views (orthonormal DFT).
    For two views and W = 1 this is the circular convolution of x_1 and x_2 divided by sqrt(d);
    for one view it is ``spectral_filter``."""
    spec = torch.fft.rfft(xs[0], dim=-1, norm="ortho")
    for x in xs[1:]:
        spec = spec * torch.fft.rfft(x, dim=-1, norm="ortho")
    return torch.fft.irfft(spec * torch.view_as_complex(weight), n=xs[0].shape[-1], dim=-1,
                           norm="ortho")


def _gate(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Sigmoid())


@BACKBONES.register("smore", SMOREConfig)
class SMORE(Backbone):
    uses_features = True

    def __init__(self, cfg: SMOREConfig, data: Interactions):
        super().__init__(cfg, data)
        d = cfg.embedding_dim
        self.init_id_embeddings(d)

        n_mod = len(self.modalities)
        n_freq = d // 2 + 1
        self.proj = nn.ModuleList()                  # W_m x + b_m
        self.filters = nn.ParameterList()            # W^c_m, then W^c_f last
        self.item_gates = nn.ModuleList()            # behaviour-guided gates, m then f
        self.queries = nn.ModuleList()               # attention queries Q_m on the fused view
        self.prefer = nn.ModuleList()                # preference gates P_m, then P_f
        graphs = []
        self.knn_k = {}
        for k, m in enumerate(self.modalities):
            feats = self.load_features(data, k)
            self.proj.append(nn.Linear(feats.shape[1], d))
            self.knn_k[m] = int(cfg.knn_k.get(m, cfg.knn_k_default))
            graph = knn_graph(unit_rows(feats), self.knn_k[m], cfg.knn_block_size, weighted=True)
            graphs.append(graph)
            self.register_buffer(f"ii_{k}", graph, persistent=False)
            self.register_buffer(f"ii_t_{k}", transpose_csr(graph), persistent=False)
            self.queries.append(nn.Sequential(nn.Linear(d, d), nn.Tanh(),
                                              nn.Linear(d, d, bias=False)))
        for _ in range(n_mod + 1):
            self.filters.append(nn.Parameter(torch.randn(n_freq, 2)))
            self.item_gates.append(_gate(d))
            self.prefer.append(_gate(d))
        fused = max_pool_graphs(graphs)
        self.register_buffer("ii_f", fused, persistent=False)
        self.register_buffer("ii_t_f", transpose_csr(fused), persistent=False)

        self.register_edge_buffers(data)  # adj, r_norm, r_norm_t (user_item_graphs)

        self.generator = torch.Generator().manual_seed(torch.initial_seed())
        self.register_buffer("dropout_rng_state", self.generator.get_state())

    def edge_buffers(self, weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return user_item_graphs(self.edge_users, self.edge_items, self.n_users, self.n_items,
                                weights)

    # -- parts ----------------------------------------------------------------------------

    def spectra(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The denoised modality features E^_m ([n_items, d] each) and the fused E^_f."""
        projected = [self.project(self.proj[k], getattr(self, f"feat_{k}"))
                     for k in range(len(self.modalities))]
        denoised = [spectral_filter(e, self.filters[k]) for k, e in enumerate(projected)]
        return denoised, spectral_fusion(projected, self.filters[-1])

    def dropout_masks(self, n_rows: int, n_masks: int, device: torch.device) -> list:
        """``n_masks`` inverted-dropout masks [n_rows, d] from the model's own RNG (None: off)."""
        p = self.cfg.dropout
        if p <= 0.0 or not self.training:
            return [None] * n_masks
        self.generator.set_state(self.dropout_rng_state.cpu())
        u = torch.rand(n_masks, n_rows, self.cfg.embedding_dim, generator=self.generator)
        self.dropout_rng_state.copy_(self.generator.get_state())
        keep = (u >= p).to(device=device, dtype=torch.float32) / (1.0 - p)
        return list(keep.unbind(0))

    def item_graph_view(self, h: torch.Tensor, graph: str) -> torch.Tensor:
        """``n_layers_ii`` convolutions of item rows ``h`` on an item-item graph, then the users'
        aggregation over the normalised user-item graph: [U + I, d]."""
        for _ in range(self.cfg.n_layers_ii):
            h = spmm(getattr(self, f"ii_{graph}"), getattr(self, f"ii_t_{graph}"), h)
        return torch.cat([spmm(self.r_norm, self.r_norm_t, h), h])

    def views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_id, H_side), both [U + I, d]."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight])
        h_id = lightgcn_propagate(self.adj, ego, self.cfg.n_layers_ui)
        denoised, fused = self.spectra()
        e_id = self.item_emb.weight
        n_mod = len(self.modalities)
        mods = [self.item_graph_view(e_id * self.item_gates[k](x), str(k))
                for k, x in enumerate(denoised)]
        h_f = self.item_graph_view(e_id * self.item_gates[-1](fused), "f")
        masks = self.dropout_masks(h_id.shape[0], n_mod + 1, h_id.device)
        parts = []
        for k in range(n_mod + 1):
            if k < n_mod:
                view = torch.softmax(self.queries[k](h_f), dim=-1) * mods[k]
            else:
                view = h_f
            gate = self.prefer[k](h_id)
            if masks[k] is not None:
                gate = gate * masks[k]
            parts.append(gate * view)
        return h_id, torch.stack(parts).mean(0)

    # -- training and scoring ---------------------------------------------------------------

    def losses(self, batch: Batch) -> Losses:
        h_id, h_side = self.views()
        out = h_id + h_side
        users, items = out[: self.n_users], out[self.n_users:]
        self.remember(batch, users, items)
        u = take(users, batch.users)
        i, j = take(items, torch.cat([batch.pos, batch.neg])).chunk(2)
        main = bpr_terms((u * i).sum(-1), (u * j).sum(-1))
        t = self.cfg.cl_temperature
        pos = batch.pos + self.n_users
        cl = (info_nce(take(h_side, pos), take(h_id, pos), t)
              + info_nce(take(h_side, batch.users), take(h_id, batch.users), t))
        reg = l2_reg(u, i, j)
        return Losses(main, {"cl": self.cfg.cl_weight * cl, "reg": self.cfg.reg_weight * reg})

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        h_id, h_side = self.views()
        out = h_id + h_side
        return out[: self.n_users], out[self.n_users:]

"""A BERT encoder whose parameter names match the Hugging Face checkpoint (all-MiniLM-L6-v2's),
for the text features of ``guider-prepare``. Imported lazily by ``encoders`` (it imports torch)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Embeddings(nn.Module):
    def __init__(self, cfg: dict, hidden: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], hidden)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids, type_ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = (self.word_embeddings(ids) + self.position_embeddings(pos)[None]
             + self.token_type_embeddings(type_ids))
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x, mask):
        b, n, _ = x.shape

        def split(t):
            return t.view(b, n, self.heads, self.hidden // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                             split(self.value(x)), attn_mask=mask)
        return ctx.transpose(1, 2).reshape(b, n, self.hidden)


class DenseNorm(nn.Module):
    def __init__(self, n_in: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(n_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float):
        super().__init__()
        self.add_module("self", SelfAttention(hidden, heads))  # checkpoint name: attention.self.*
        self.output = DenseNorm(hidden, hidden, eps)

    def forward(self, x, mask):
        return self.output(getattr(self, "self")(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, as BERT's "gelu"


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inter: int, eps: float):
        super().__init__()
        self.attention = Attention(hidden, heads, eps)
        self.intermediate = Intermediate(hidden, inter)
        self.output = DenseNorm(inter, hidden, eps)

    def forward(self, x, mask):
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, n_layers: int, hidden: int, heads: int, inter: int, eps: float):
        super().__init__()
        self.layer = nn.ModuleList(Layer(hidden, heads, inter, eps) for _ in range(n_layers))


class Bert(nn.Module):
    """Embeddings + ``num_hidden_layers`` post-norm transformer layers, from a BERT config dict
    (already checked by ``encoders``: GELU, absolute positions)."""

    def __init__(self, cfg: dict):
        super().__init__()
        hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
        inter, eps = cfg["intermediate_size"], cfg.get("layer_norm_eps", 1e-12)
        self.embeddings = Embeddings(cfg, hidden, eps)
        self.encoder = Encoder(cfg["num_hidden_layers"], hidden, heads, inter, eps)

    def forward(self, ids, type_ids, attention_mask):
        x = self.embeddings(ids, type_ids)
        # boolean mask: True = attend; broadcast over heads and query positions
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

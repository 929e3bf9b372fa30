"""DeCA (Wang et al., WWW 2022, "Learning Robust Recommenders through Cross-Model Agreement").

Observed labels r (1 for an interaction, 0 for a sampled non-interaction) are noisy views of the
true preference y. The recommender f gives P(y = 1 | u, i) = sigmoid(s_ui); an auxiliary
recommender g of a different kind gives its own P(y = 1 | u, i). Different models agree on clean
examples and disagree on noisy ones, so DeCA minimises, per example,

    alpha KL(g || f) + (1 - alpha) KL(f || g) - E_{y ~ f}[log P(r | y)]

(the cross-model agreement and the likelihood of the observation), with two noise channels,
alternated iteration by iteration (``channel=alternate``; the authors' "iterative" training):

- DP (denoising positives): P(r=1 | y=1) = 1, P(r=1 | y=0) = h1(u, i), P(r=0 | y=1) = e^-C1;
  an observed interaction may be a false positive, h1 learns where.
- DN (denoising negatives): P(r=1 | y=1) = h2(u, i), P(r=1 | y=0) = e^-C2;
  a true preference may go unobserved, h2 learns where.

f (the backbone), g, h1 and h2 are trained jointly on the same loss: g, h1 and h2 are MF-type
models from the backbone registry, built in a forked RNG (the backbone's initialisation and the
sampler's stream are those of a run without DeCA), with their own Adam. Their gradients come from
the trainer's backward pass through ``extra_loss``; ``step`` applies them before the next batch,
which is the order of the authors' loop (all four models step after each batch's backward).

Adaptations (docs/baselines.md):
- *pointwise, not pairwise:* DeCA's noise channels need r = 0 observations, which a pairwise
  objective has none of, so the objective stays the paper's pointwise one and replaces the BPR term
  (its weight is 0): each BPR triple (u, i, j) supplies the observed interaction (u, i), r = 1, and
  its one sampled negative (u, j), r = 0 (the paper's negative-sampling ratio 1). The backbone's
  auxiliary terms (its L2, FREEDOM's feature BPR) stay as they are; the paper's L2 on all of f's
  parameters is replaced by the backbone's own.
- *the auxiliary models' kind:* the paper's g and h are MF; g here is ``aux_model`` from the
  registry (MF by default). DeCA(p), the variant with a pre-trained, frozen g, is not implemented.
- *first iteration:* the authors' loop runs its very first batch with a mixed "both" channel; here
  the alternation starts with DP.
- *detection (not in the paper):* ``noise_scores`` is an EMA over epochs of 1 - f's P(y = 1) on each
  interaction (the model's belief that the interaction is not a true preference); ``flagged`` are
  the interactions f gave P(y = 1) < 0.5 the last time it saw them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import BACKBONES, Backbone, build_backbone
from ..data import Batch, Interactions
from ..graphs import take
from ..optim import make_adam
from .base import DENOISERS, Denoiser, DenoiseConfig, check_choice, check_rate
from .tce import RunningScore

CHANNELS = ("alternate", "dp", "dn")
AUX_MODELS = ("mf", "lightgcn")


@dataclass
class DeCAConfig(DenoiseConfig):
    name: str = "deca"
    alpha: float = 0.5  # alpha KL(g || f) + (1 - alpha) KL(f || g)
    c1: float = 1000.0  # DP: -log P(r=0 | y=1), a preferred item is (almost) always interacted with
    c2: float = 10.0  # DN: -log P(r=1 | y=0)
    channel: str = "alternate"  # alternate (DP, DN, DP, ...) | dp | dn
    aux_model: str = "mf"  # g, the auxiliary recommender: mf | lightgcn
    aux_dim: int = 32  # embedding size of g, h1 and h2
    aux_lr: float = 0.001  # Adam learning rate of g, h1 and h2
    score_momentum: float = 0.5  # detection only: EMA momentum of 1 - P(y=1) per interaction

    def check(self) -> None:
        """Value checks, run when the config is validated (before any data are loaded)."""
        check_choice(self.channel, CHANNELS, "channel")
        check_choice(self.aux_model, AUX_MODELS, "aux_model")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"denoise.alpha={self.alpha} must be in [0, 1]")
        check_rate(self.score_momentum, "score_momentum")


def bernoulli_kl(p_logit: torch.Tensor, q_logit: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(p)) || Bernoulli(sigmoid(q))), elementwise, from logits."""
    p = torch.sigmoid(p_logit)
    return (p * (F.logsigmoid(p_logit) - F.logsigmoid(q_logit))
            + (1 - p) * (F.logsigmoid(-p_logit) - F.logsigmoid(-q_logit)))


def pair_logits(users: torch.Tensor, items: torch.Tensor,
                batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    u = take(users, batch.users)
    return (u * take(items, batch.pos)).sum(-1), (u * take(items, batch.neg)).sum(-1)


def deca_terms(f: tuple[torch.Tensor, torch.Tensor], g: tuple[torch.Tensor, torch.Tensor],
               h: tuple[torch.Tensor, torch.Tensor], channel: str, alpha: float, c1: float,
               c2: float) -> torch.Tensor:
    """DeCA's loss for one batch, from the logits of f, g and the channel model h on the
    positives (r = 1) and the negatives (r = 0): the mean over positives plus the mean over
    negatives of agreement - E_f[log P(r | y)]."""
    out = []
    for r, (fl, gl, hl) in enumerate(zip(f, g, h)):  # r = 0: positives, r = 1: negatives
        agree = alpha * bernoulli_kl(gl, fl) + (1 - alpha) * bernoulli_kl(fl, gl)
        pf = torch.sigmoid(fl)
        if channel == "dp" and r == 0:    # y=1: P(r=1)=1; y=0: P(r=1)=h1
            loglik = (1 - pf) * F.logsigmoid(hl)
        elif channel == "dp":             # y=0: P(r=0)=1-h1; y=1: P(r=0)=e^-C1
            loglik = (1 - pf) * F.logsigmoid(-hl) - c1 * pf
        elif r == 0:                      # DN, y=1: P(r=1)=h2; y=0: P(r=1)=e^-C2
            loglik = pf * F.logsigmoid(hl) - c2 * (1 - pf)
        else:                             # DN, y=1: P(r=0)=1-h2; y=0: P(r=0)=1
            loglik = pf * F.logsigmoid(-hl)
        out.append((agree - loglik).mean())
    return out[0] + out[1]


@DENOISERS.register("deca", DeCAConfig)
class DeCA(Denoiser):
    @classmethod
    def embedding_tables(cls, cfg: DeCAConfig) -> list[tuple[str, int, str]]:
        # g, h1 and h2 side by side: one check of their total width
        return [("DeCA's three auxiliary models' tables", 3 * cfg.aux_dim, "denoise.aux_dim")]

    def __init__(self, cfg: DeCAConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        super().__init__(cfg, data, backbone, device, seed)
        cfg.check()
        self.models = {"g": self._build(cfg.aux_model, seed + 7001),
                       "h1": self._build("mf", seed + 7002),
                       "h2": self._build("mf", seed + 7003)}
        self.opts = {k: make_adam(m.parameters(), cfg.aux_lr) for k, m in self.models.items()}
        self.iteration = 0
        n = len(data.train)
        self.noise = RunningScore(n, cfg.score_momentum, device)
        self.disbelieved = torch.zeros(n, dtype=torch.bool, device=device)

    def _build(self, name: str, seed: int) -> Backbone:
        schema = BACKBONES.get(name).schema
        mcfg = schema(name=name, embedding_dim=self.cfg.aux_dim, reg_weight=0.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_backbone(mcfg, self.data, self.device)

    def channel_at(self, t: int) -> str:
        if self.cfg.channel != "alternate":
            return self.cfg.channel
        return "dp" if t % 2 == 0 else "dn"

    def _apply_pending(self) -> None:
        """Step g and the channel models on the gradients of the previous batch's backward."""
        for key, model in self.models.items():
            if any(p.grad is not None for p in model.parameters()):
                self.opts[key].step()
            self.opts[key].zero_grad(set_to_none=True)

    def step(self, batch: Batch) -> None:
        self._apply_pending()

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor | None:
        return torch.zeros_like(main)  # DeCA's objective replaces the BPR term

    def extra_loss(self, batch: Batch, backbone: Backbone) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        channel = self.channel_at(self.iteration)
        self.iteration += 1
        f = pair_logits(*backbone.batch_embeddings(batch), batch)
        g = pair_logits(*self.models["g"].final_embeddings(), batch)
        h = pair_logits(*self.models["h1" if channel == "dp" else "h2"].final_embeddings(), batch)
        with torch.no_grad():
            belief = torch.sigmoid(f[0])
            self.noise.update(batch.idx, 1 - belief)
            self.disbelieved[batch.idx] = belief < 0.5
        return {"deca": deca_terms(f, g, h, channel, cfg.alpha, cfg.c1, cfg.c2)}

    def noise_scores(self) -> np.ndarray | None:
        return self.noise.scores()

    def flagged(self) -> np.ndarray | None:
        return self.disbelieved.cpu().numpy()

    def scorers(self) -> dict:
        self.models["g"].eval()
        return {"aux": self.models["g"].scorer()}

    def summary(self) -> dict:
        return {"iterations": self.iteration, "n_flagged": int(self.disbelieved.sum())}

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "opts": {k: o.state_dict() for k, o in self.opts.items()},
            # gradients of the last batch, applied at the next step: part of the exact state
            "grads": {k: [None if p.grad is None else p.grad.clone() for p in m.parameters()]
                      for k, m in self.models.items()},
            "noise": self.noise.state_dict(), "disbelieved": self.disbelieved,
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        for key, model in self.models.items():
            model.load_state_dict(state["models"][key])
            self.opts[key].load_state_dict(state["opts"][key])
            for p, g in zip(model.parameters(), state["grads"][key]):
                p.grad = None if g is None else g.to(p.device)
        self.noise.load_state_dict(state["noise"])
        self.disbelieved = state["disbelieved"].to(self.device)

"""GUIDER (Li et al., WSDM 2025): AMSC calibration, a DBPR-trained teacher (by default the
authors' multi-modal FREEDOM teacher), and distillation into any backbone (KL over the teacher's
favourites and the batch's items by default; optimal transport as an option), teacher and student
trained in sync.

Per epoch t: if t % amsc.refresh_every == 0, AMSC rescores every training interaction with the
teacher's current item embeddings and reclassifies the lowest rho(t) share as I_false, giving
omega (1 for I_true, dbpr.false_weight for I_false). Per batch: the teacher takes a DBPR step
(``step``), then the student takes its own step with omega on its main term (``weights``, when
student_dbpr, off by default) plus gamma * L_KD (``extra_loss``). See docs/guider.md.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ...backbones import BACKBONES, Backbone, BackboneConfig, build_backbone
from ...data import Batch, Interactions
from ...optim import make_adam
from ..base import DENOISERS, Denoiser, DenoiseConfig, weighted_mean
from ..oracle import imperfect_flags, require_labels
from .amsc import AMSC, AMSCConfig, rowwise_dot
from .distill import Distiller, KDConfig

log = logging.getLogger(__name__)


def default_teacher() -> dict:
    """conf/denoise/teacher/freedom.yaml: the authors' multi-modal teacher, FREEDOM with a kNN
    item graph of k 20, 2 user-item layers and 10% of the user-item edges pruned per epoch."""
    from ...backbones.freedom import FreedomConfig

    return asdict(FreedomConfig(knn_k=20, n_layers_ui=2, dropout=0.1))


@dataclass
class DBPRConfig:
    # true: AMSC flags interactions and omega weights the teacher's BPR (DBPR); false (the
    # default since the paired measurements of docs/guider.md section 7): omega = 1, AMSC unused
    enabled: bool = False
    false_weight: float = 0.0  # omega for I_false: 0 drops, 0 < w < 1 down-weights
    # what decides I_false: amsc (the method) | student (the student's own score of each
    # interaction, its lowest share flagged on AMSC's schedule: a co-teaching-like lever) |
    # oracle (the injected-noise labels, fixed from the first epoch: a measurement ceiling of
    # the denoising parts, never a method; needs labels)
    flags: str = "amsc"
    # flags=oracle only: flag a random share oracle_recall of the injected noise plus random
    # clean interactions up to precision oracle_precision (how good must a detector be? a
    # measurement, never a method); 1 and 1 are the labels themselves
    oracle_recall: float = 1.0
    oracle_precision: float = 1.0


FLAG_SOURCES = ("amsc", "student", "oracle")
TEACHER_UPDATES = ("sync", "ema")


@dataclass
class GuiderConfig(DenoiseConfig):
    name: str = "guider"
    # the teacher: any registered backbone's config (conf/denoise/teacher/<name>.yaml, chosen with
    # denoise/teacher=<name>); validated against that backbone's schema in __post_init__
    # (None: the default, conf/denoise/teacher/freedom.yaml; a default dict would be merged key
    # by key into another backbone's)
    teacher: Any = None
    teacher_lr: float = 1e-3
    # the teacher's own step on every k-th batch of an epoch (the first always); the batches in
    # between distil from its last representations: a lever on cost that changes results
    teacher_every: int = 1
    # sync: the teacher is its own model with its own Adam, trained in sync (the authors') |
    # ema: the teacher is an exponential moving average of the student's weights (a mean
    # teacher, no loss, no optimiser; ``teacher`` and ``teacher_lr`` are unused): a cost lever
    teacher_update: str = "sync"
    teacher_ema: float = 0.99  # teacher_update=ema: teacher <- d teacher + (1 - d) student per step
    # 0: the teacher trains at every epoch | E > 0: it trains in sync for its first E epochs and
    # is then frozen: its evaluation-mode representations are computed once, and every later
    # batch distils from them (no teacher forward, no teacher step): a cost lever
    teacher_epochs: int = 0
    # 0: off | P > 0: the teacher is validated at each of the student's validations (same users,
    # same metric); after P validations without a gain it is set back to its best weights and
    # frozen as teacher_epochs freezes it (its own early stopping: a cost lever that adapts to the
    # data's schedule)
    teacher_patience: int = 0
    # teacher_patience's floor: validations in the teacher's first M epochs update its best
    # weights but do not count against its patience (a teacher that stalls early, then climbs,
    # is not frozen on its plateau); the earliest freeze is after epoch M + P
    teacher_min_epochs: int = 0
    # teacher_patience's validations on a fixed sample of N of the student's valid users (drawn
    # with eval.sample_seed; the same users at every validation) instead of all of them: a cost
    # lever for large catalogues (0: every valid user, the student's own validation set)
    teacher_valid_users: int = 0
    student_dbpr: bool = False  # true: the student's main term is weighted by omega too
    # true: omega also weights the user-item graphs of the teacher and the student (edge values,
    # FREEDOM's pruning odds; Backbone.set_edge_weights), so flags reach the propagation
    graph: bool = False
    amsc: AMSCConfig = field(default_factory=AMSCConfig)
    dbpr: DBPRConfig = field(default_factory=DBPRConfig)
    kd: KDConfig = field(default_factory=KDConfig)

    def __post_init__(self) -> None:
        if self.teacher is None:
            self.teacher = default_teacher()
        if not isinstance(self.teacher, BackboneConfig):
            self.teacher = validate_teacher(self.teacher)

    @property
    def flags_reach_teacher_only(self) -> bool:
        """omega (when the flags are on) weights the teacher's loss and nothing else: not the
        student's loss, not a graph."""
        return not self.student_dbpr and not self.graph

    def check(self) -> None:
        """Value checks of every GUIDER key (the teacher's are checked by its own schema)."""
        self.amsc.check()
        self.kd.check()
        if self.teacher_every < 1:
            raise ValueError(f"denoise.teacher_every={self.teacher_every}: must be >= 1 (1 = the "
                             f"teacher steps on every batch)")
        for key, zero in (("teacher_epochs", "the teacher trains at every epoch"),
                          ("teacher_patience", "the teacher is never stopped by its own validation"),
                          ("teacher_min_epochs",
                           "the teacher's patience counts from its first validation"),
                          ("teacher_valid_users", "the teacher is validated on every valid user")):
            if getattr(self, key) < 0:
                raise ValueError(f"denoise.{key}={getattr(self, key)}: must be >= 0 (0 = {zero})")
        for key, role in (("teacher_min_epochs", "is the floor of the teacher's patience"),
                          ("teacher_valid_users",
                           "samples the validations of the teacher's patience")):
            if getattr(self, key) > 0 and self.teacher_patience <= 0:
                raise ValueError(f"denoise.{key}={getattr(self, key)} {role}, which is off: set "
                                 f"denoise.teacher_patience=P > 0 or keep denoise.{key}=0")
        for key in ("teacher_epochs", "teacher_patience"):
            if getattr(self, key) > 0 and self.teacher_update == "ema":
                raise ValueError(f"denoise.{key} > 0 freezes an in-sync teacher; a mean teacher "
                                 f"(denoise.teacher_update=ema) follows the student and has no "
                                 f"training of its own to stop: keep denoise.{key}=0")
        if self.teacher_lr <= 0:
            raise ValueError(f"denoise.teacher_lr={self.teacher_lr}: must be > 0")
        if self.teacher_update not in TEACHER_UPDATES:
            raise ValueError(f"denoise.teacher_update={self.teacher_update!r}: choose "
                             f"{' or '.join(TEACHER_UPDATES)}")
        if not 0.0 <= self.teacher_ema < 1.0:
            raise ValueError(f"denoise.teacher_ema={self.teacher_ema}: must lie in [0, 1)")
        if self.teacher_update == "ema" and self.dbpr.enabled and self.flags_reach_teacher_only:
            # the flags act through the teacher's loss, and a mean teacher has none
            raise ValueError("denoise.dbpr.enabled=true with denoise.teacher_update=ema: the "
                             "flags weight the teacher's loss, which a mean teacher does not "
                             "have; add denoise.student_dbpr=true or denoise.graph=true")
        if not self.dbpr.enabled:
            on = [k for k, v in (("student_dbpr=true", self.student_dbpr),
                                 ("graph=true", self.graph),
                                 (f"dbpr.flags={self.dbpr.flags}", self.dbpr.flags != "amsc"))
                  if v]
            if on:  # omega is 1 everywhere without the flags: these switches would do nothing
                raise ValueError(f"denoise.{on[0]} needs GUIDER's flags, which are off by "
                                 f"default: add denoise.dbpr.enabled=true (or use "
                                 f"+experiment/variant=full, or variant=oracle_flags)")
        if self.dbpr.flags not in FLAG_SOURCES:
            raise ValueError(f"denoise.dbpr.flags={self.dbpr.flags!r}: choose "
                             f"{' or '.join(FLAG_SOURCES)}")
        degraded = (self.dbpr.oracle_recall, self.dbpr.oracle_precision) != (1.0, 1.0)
        if degraded and self.dbpr.flags != "oracle":
            raise ValueError(f"denoise.dbpr.oracle_recall / oracle_precision "
                             f"({self.dbpr.oracle_recall} / {self.dbpr.oracle_precision}) shape "
                             f"the label flags only: add denoise.dbpr.flags=oracle (or "
                             f"+experiment/variant=oracle_flags)")
        for key in ("oracle_recall", "oracle_precision"):
            if not 0.0 < getattr(self.dbpr, key) <= 1.0:
                raise ValueError(f"denoise.dbpr.{key}={getattr(self.dbpr, key)}: must lie in "
                                 f"(0, 1]")
        if not 0.0 <= self.dbpr.false_weight <= 1.0:
            raise ValueError(f"denoise.dbpr.false_weight={self.dbpr.false_weight}: must lie in "
                             f"[0, 1]")


def validate_teacher(node: Any) -> BackboneConfig:
    """The teacher's config node, typed by its backbone's schema; errors name denoise.teacher."""
    if not isinstance(node, Mapping) or "name" not in node:
        raise ValueError(f"denoise.teacher={node!r}: choose the teacher with denoise/teacher=<name> "
                         f"(one of {', '.join(BACKBONES.names())}), and set its keys with "
                         f"denoise.teacher.<key>=<value>")
    try:
        BACKBONES.get(node["name"])
    except KeyError as err:  # an unknown backbone name
        raise ValueError(f"denoise.teacher: {err.args[0]}") from None
    try:
        return BACKBONES.validate(node)
    except Exception as err:  # an unknown key or a wrong type, named by OmegaConf
        raise ValueError(f"denoise.teacher ({node['name']}): {err}") from None


def build_teacher(cfg: GuiderConfig, data: Interactions, device: torch.device,
                  seed: int, student: Backbone | None = None) -> Backbone:
    # the teacher's initialisation must not consume the global RNG the student was seeded from
    if cfg.teacher_update == "ema":  # a mean teacher: the student's model with its weights
        if student is None:
            raise ValueError("denoise.teacher_update=ema: the mean teacher is built from the "
                             "student, which was not given")
        with torch.random.fork_rng(devices=[]):
            teacher = build_backbone(student.cfg, data, device)
        teacher.load_state_dict(student.state_dict())
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7919)
        return build_backbone(cfg.teacher, data, device)


@DENOISERS.register("guider", GuiderConfig)
class Guider(Denoiser):
    has_scorers = True  # the teacher is evaluated after training, also at the student's best epoch

    @classmethod
    def embedding_tables(cls, cfg: GuiderConfig) -> list[tuple[str, int, str]]:
        if cfg.teacher_update == "ema":  # a copy of the student's weights only (no gradient,
            return []                    # no optimiser state): far below the student's own
        return [(f"the teacher's tables ({cfg.teacher.name})", cfg.teacher.embedding_dim,
                 "denoise.teacher.embedding_dim")]

    def __init__(self, cfg: GuiderConfig, data: Interactions, backbone: Backbone,
                 device: torch.device, seed: int):
        super().__init__(cfg, data, backbone, device, seed)
        self.student = backbone  # what a mean teacher (teacher_update=ema) follows
        self.teacher = build_teacher(cfg, data, device, seed, backbone)
        self.mean_teacher = cfg.teacher_update == "ema"
        self.teacher_opt = (None if self.mean_teacher
                            else make_adam(self.teacher.parameters(), cfg.teacher_lr))
        # flags_on: omega comes from flags (AMSC's, the student's scores, or the labels)
        self.flags_on = cfg.dbpr.enabled
        self.oracle_flags = cfg.dbpr.enabled and cfg.dbpr.flags == "oracle"
        self.amsc = (AMSC(cfg.amsc, data.features, data.train.users, data.train.items,
                          data.n_users, data.n_items, seed + 1)
                     if self.flags_on and not self.oracle_flags else None)
        self.distiller = Distiller(cfg.kd, data.n_items, seed + 2)
        n = len(data.train)
        self.omega = torch.ones(n, device=device)
        self.false_mask = torch.zeros(n, dtype=torch.bool)
        self.scores: torch.Tensor | None = None
        if self.oracle_flags:
            require_labels(data, "denoise.dbpr.flags=oracle", "keep denoise.dbpr.flags=amsc")
            # the labels themselves at recall = precision = 1
            flags = imperfect_flags(data.train_noise, cfg.dbpr.oracle_recall,
                                    cfg.dbpr.oracle_precision, seed + 3)
            self.false_mask = torch.as_tensor(flags, dtype=torch.bool)
            self.scores = (~self.false_mask).double()  # consistency: 0 for noise, 1 otherwise
            self.omega = self.omega_of(self.false_mask)
        self.teacher_graph_omega: torch.Tensor | None = None  # the omega the teacher's graph holds
        self.epoch = 0
        self.batch_in_epoch = 0  # teacher_every: which batches step the teacher
        self.teacher_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
        self.frozen = False  # teacher_epochs / teacher_patience: the teacher no longer trains
        self.frozen_at: int | None = None  # the first epoch trained with the teacher frozen
        # teacher_patience: the teacher's best valid metric, its weights then, validations since
        self.teacher_best: tuple[float, dict | None, int] = (-float("inf"), None, 0)

    # --- epoch: AMSC refresh -------------------------------------------------------------
    def on_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batch_in_epoch = 0
        frozen = self.frozen or bool(self.cfg.teacher_epochs and epoch >= self.cfg.teacher_epochs)
        # flags that weight only the teacher's loss can change nothing once it is frozen: they
        # are no longer refreshed, and the run's detection reports the flags that acted
        if not (frozen and self.cfg.flags_reach_teacher_only):
            self.refresh(epoch)
        if frozen:
            self.freeze()
            return
        if self.graph_weighted and self.teacher_graph_omega is not self.omega:
            self.teacher.set_edge_weights(self.omega)
            self.teacher_graph_omega = self.omega
        self.teacher.pre_epoch(epoch)  # e.g. a FREEDOM teacher's pruning for the epoch
        if self.distiller.lists_due(epoch):  # kd.top_refresh=epoch: the teacher's lists
            self.teacher.eval()
            with torch.no_grad():
                self.distiller.cache_teacher_top(*self.teacher.final_embeddings())
            self.teacher.train()

    def freeze(self) -> None:
        """teacher_epochs / teacher_patience: from now on the teacher's evaluation-mode
        representations, computed once (again after a resume, from the saved teacher), are what
        every batch distils from, and its top lists are computed once from them. With the flags
        on, the teacher's graph keeps the omega it had when it froze (the representations are
        fixed anyway)."""
        if self.frozen_at is None:
            self.frozen_at = self.epoch  # metrics.json's teacher_frozen_epoch: runs' cost
            # already frozen here: on_validation froze it (teacher_patience); else teacher_epochs
            why = (f"teacher_patience={self.cfg.teacher_patience}: its best validation "
                   f"{self.teacher_best[0]:.5f}, whose weights it holds" if self.frozen
                   else f"teacher_epochs={self.cfg.teacher_epochs}")
            log.info("GUIDER: the teacher is frozen from epoch %d on (%s); it no longer trains, "
                     "and the student distils from its fixed representations", self.epoch, why)
        if self.frozen and self.teacher_embeddings is not None:
            return
        self.frozen = True
        self.teacher.eval()
        with torch.no_grad():
            self.teacher_embeddings = self.teacher.final_embeddings()
            if self.distiller.uses_epoch_top():
                self.distiller.cache_teacher_top(*self.teacher_embeddings)

    def on_validation(self, validate: Callable[..., dict[str, float]],
                      metric: str) -> dict[str, float]:
        """teacher_patience: validate the teacher beside the student; after teacher_patience
        validations without a gain (counted after its first teacher_min_epochs epochs), restore its
        best weights and freeze it from the next epoch. The teacher's metric goes into history.csv
        as teacher_<metric> until it freezes (with teacher_valid_users=N, on that sample of the
        valid users)."""
        if self.cfg.teacher_patience <= 0 or self.frozen:
            return {}
        was_training = self.teacher.training
        self.teacher.eval()
        value = validate(self.teacher.scorer(), users=self.cfg.teacher_valid_users).get(
            metric, -float("inf"))
        self.teacher.train(was_training)
        best, weights, bad = self.teacher_best
        if value > best:
            best, weights, bad = value, copy.deepcopy(self.teacher.state_dict()), 0
        elif self.epoch >= self.cfg.teacher_min_epochs:  # epochs 0 .. M-1 do not count
            bad += 1
        self.teacher_best = (best, weights, bad)
        if bad >= self.cfg.teacher_patience:
            self.teacher.load_state_dict(weights)
            self.frozen = True  # the next on_epoch computes its representations and lists
            self.teacher_embeddings = None
            self.teacher_best = (best, None, bad)  # the teacher holds those weights now
        return {f"teacher_{metric}": value}

    @property
    def graph_weighted(self) -> bool:
        return self.cfg.graph and self.flags_on

    def edge_weights(self) -> torch.Tensor | None:
        return self.omega if self.graph_weighted else None

    def refresh(self, epoch: int) -> None:
        """AMSC: rescore every training interaction, reclassify, recompute omega."""
        cfg = self.cfg
        if self.amsc is None or epoch % cfg.amsc.refresh_every != 0:
            return
        self.teacher.eval()
        affinity = item_emb = None
        with torch.no_grad():
            if cfg.amsc.user_cap < 1.0:  # the teacher's user-item scores break the cap's ties
                user_emb, item_emb = (t.float().cpu() for t in self.teacher.final_embeddings())
                affinity = rowwise_dot(user_emb, self.amsc.users, item_emb, self.amsc.items)
            elif cfg.dbpr.flags != "student":  # the student's scores need no teacher forward
                item_emb = self.teacher.item_embeddings()
        own = self.student_scores() if cfg.dbpr.flags == "student" else None
        c, false_mask = self.amsc.refresh(item_emb, epoch, affinity, scores=own)
        self.scores, self.false_mask = c, false_mask
        self.omega = self.omega_of(false_mask)

    @torch.no_grad()
    def student_scores(self) -> torch.Tensor:
        """The student's score of every training interaction (its evaluation-mode
        representations, as it would rank them): dbpr.flags=student."""
        was_training = self.student.training
        self.student.eval()
        users, items = (t.float().cpu() for t in self.student.final_embeddings())
        self.student.train(was_training)
        return rowwise_dot(users, self.amsc.users, items, self.amsc.items)

    def omega_of(self, false_mask: torch.Tensor) -> torch.Tensor:
        """omega: dbpr.false_weight on the flagged interactions (I_false), 1 elsewhere."""
        omega = torch.ones(len(false_mask))
        omega[false_mask] = self.cfg.dbpr.false_weight
        return omega.to(self.device)

    # --- batch: teacher step, then the student's weights and distillation ----------------
    def step(self, batch: Batch) -> None:
        if self.frozen:
            return  # teacher_epochs / teacher_patience: distil from the frozen teacher
        skip = self.batch_in_epoch % self.cfg.teacher_every != 0
        self.batch_in_epoch += 1
        if skip and self.teacher_embeddings is not None:
            return  # teacher_every > 1: distil from the teacher's last representations
        self.teacher.train()
        if self.mean_teacher:
            self.follow_student()
            return
        losses = self.teacher.losses(batch)
        omega = self.omega[batch.idx] if self.flags_on else None
        loss = weighted_mean(losses.main, omega) + sum(losses.aux.values())
        self.teacher_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.teacher_opt.step()
        users, items = self.teacher.batch_embeddings(batch)
        self.teacher_embeddings = (users.detach(), items.detach())

    @torch.no_grad()
    def follow_student(self) -> None:
        """The mean teacher: its weights move toward the student's current ones (after the
        student's last step) by 1 - teacher_ema, then give this batch's targets (the training-
        mode forward, as the in-sync teacher's are those of its own step)."""
        mine = list(self.teacher.parameters())
        theirs = [p.detach() for p in self.student.parameters()]
        torch._foreach_lerp_(mine, theirs, 1.0 - self.cfg.teacher_ema)
        self.teacher_embeddings = self.teacher.final_embeddings()

    def weights(self, batch: Batch, main: torch.Tensor) -> torch.Tensor | None:
        if not self.flags_on or not self.cfg.student_dbpr:
            return None
        return self.omega[batch.idx]

    def extra_loss(self, batch: Batch, backbone: Backbone) -> dict[str, torch.Tensor]:
        gamma = self.distiller.weight(self.epoch)
        if self.cfg.kd.type == "none" or gamma == 0:
            return {}
        if self.teacher_embeddings is None:
            with torch.no_grad():
                self.teacher_embeddings = self.teacher.final_embeddings()
        s_users, s_items = backbone.batch_embeddings(batch)
        t_users, t_items = self.teacher_embeddings
        kd = self.distiller.loss(batch, s_users, s_items, t_users, t_items)
        return {"kd": gamma * kd}

    # --- detection and bookkeeping ------------------------------------------------------
    def noise_scores(self) -> np.ndarray | None:
        if self.scores is None:
            return None
        c = self.scores.clone()
        nan = torch.isnan(c)
        # users with a single interaction are clean by definition: least suspicious of all
        c[nan] = (c[~nan].max() + 1.0) if (~nan).any() else 0.0
        return (-c).numpy()

    def scorers(self) -> dict:
        self.teacher.eval()
        return {"teacher": self.teacher.scorer()}

    def flagged(self) -> np.ndarray | None:
        return self.false_mask.numpy() if self.flags_on else None

    def summary(self) -> dict:
        """metrics.json's ``denoiser``: the flags' count and AMSC's state, and the first epoch
        trained with the teacher frozen (None: it never froze), which prices a whole run
        (guider/reporting/cost.py)."""
        frozen = {"teacher_frozen_epoch": self.frozen_at}
        if self.oracle_flags:
            return {"amsc": None, "flags": "oracle", "n_flagged": int(self.false_mask.sum()), **frozen}
        if self.amsc is None:
            return {"amsc": None, **frozen}
        return {
            "modality_weights": dict(zip(self.amsc.modalities, self.amsc.alpha.tolist())),
            "modality_gaps": dict(zip(self.amsc.modalities, self.amsc.gap.tolist())),
            "mean_confidence_weight": float(self.amsc.w.mean()),
            "n_flagged": int(self.false_mask.sum()),
            **frozen,
        }

    def state_dict(self) -> dict:
        return {
            "teacher": self.teacher.state_dict(),
            "teacher_opt": None if self.teacher_opt is None else self.teacher_opt.state_dict(),
            "omega": self.omega, "false_mask": self.false_mask, "scores": self.scores,
            "distiller": self.distiller.state_dict(),
            "frozen": self.frozen, "teacher_best": self.teacher_best, "frozen_at": self.frozen_at,
        }

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        if self.teacher_opt is not None:
            self.teacher_opt.load_state_dict(state["teacher_opt"])
        self.omega, self.false_mask, self.scores = state["omega"], state["false_mask"], state["scores"]
        if self.amsc is not None:
            self.amsc.previous = self.scores  # what score_ema averages the next refresh with
        self.distiller.load_state_dict(state["distiller"])
        self.teacher_embeddings = None
        self.frozen = state.get("frozen", False)  # absent in checkpoints older than the key
        self.teacher_best = state.get("teacher_best", (-float("inf"), None, 0))
        self.frozen_at = state.get("frozen_at")  # older checkpoints: the epoch resumed at, if frozen
        self.teacher_graph_omega = None
        if self.graph_weighted:  # the teacher's graph as it was when the state was saved
            self.teacher.set_edge_weights(self.omega)
            self.teacher_graph_omega = self.omega

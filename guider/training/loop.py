"""Train a backbone (with a denoiser) to early stopping on the validation metric.

Test metrics are computed once, at the best-validation state; selection never looks at test.
Checkpoints: ``checkpoints/best.pt`` (model at the best evaluation) and ``checkpoints/last.pt``
(everything needed to continue: model, optimiser, denoiser, sampler RNG, counters, history),
both written atomically after every epoch. Resuming from ``last.pt`` replays the rest of the run
exactly, so a resumed run ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import io
from ..backbones import Backbone
from ..config import EvalConfig, TrainConfig
from ..data import BPRSampler, Interactions
from ..denoise import Denoiser, weighted_mean
from ..evaluation import EvalSet, build_eval_sets, evaluate, sample_users
from ..evaluation.detection import detection_trace
from ..identity import comparable_fingerprint
from ..optim import make_adam

log = logging.getLogger(__name__)
scope = torch.profiler.record_function  # a named span in a torch.profiler trace; ~1 us otherwise


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf."""


class ResumeRefused(ValueError):
    """A checkpoint written by another configuration: nothing of the run folder may change."""


def check_resumable(ck: dict, fingerprint: dict | None, last: Path) -> None:
    """Raise ``ResumeRefused`` unless checkpoint ``ck`` was written with ``fingerprint``."""
    stored = comparable_fingerprint(ck.get("fingerprint")) or {}
    if fingerprint is not None and stored != fingerprint:
        diff = sorted(k for k in fingerprint if stored.get(k) != fingerprint[k])
        raise ResumeRefused(
            f"cannot resume from {last}: it was written with a different configuration "
            f"(differs in: {', '.join(diff)}). Resume with the same settings or start a new run "
            f"in another folder; nothing in {last.parent.parent} was changed."
        )


@dataclass
class TrainState:
    epoch: int = 0  # next epoch to run
    best_value: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    finished: bool = False
    stop_reason: str = ""  # early_stopping | time_budget | max_epochs (set when the loop ends)
    seconds_train: float = 0.0
    seconds_eval: float = 0.0
    history: list[dict] = field(default_factory=list)
    sessions: int = 0  # how many times training started or resumed
    seconds_wall: float = 0.0  # wall seconds of every session, from its start of training


@dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float]
    history: list[dict]
    seconds: dict[str, float]
    stopped_early: bool
    eval_excluded: dict
    stop_reason: str = "max_epochs"
    eval_sample: dict | None = None
    # the denoiser's state at the best epoch (denoisers with recommenders of their own only)
    best_denoiser: dict | None = None
    sessions: int = 1
    seconds_previous: float = 0.0  # wall seconds of the earlier sessions of a resumed run


def noise_scores_of(denoiser: Denoiser, model: Backbone, data: Interactions):
    """The run's noise score of every training interaction (higher = more suspicious): the
    denoiser's, else those of a backbone that weights its own feedback (DA-MRS); None if neither
    has any. The one choice behind metrics.json's detection and history.csv's trace."""
    scores = denoiser.noise_scores()
    if scores is None:
        scores = model.noise_scores(data.train.users, data.train.items)
    return scores


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.csv``: one row per evaluation (epoch, mean training loss, valid metrics)."""
    import pandas as pd

    if history:
        io.write_text(Path(run_dir) / "history.csv", pd.DataFrame(history).to_csv(index=False))


@dataclass
class BestState:
    """What the run held at its best evaluation: the model's weights, the denoiser's state
    (denoisers with recommenders of their own only) and the graph weights the model held."""

    model: dict | None = None
    denoiser: dict | None = None
    edge_weights: torch.Tensor | None = None


class Trainer:
    """One training run: the sampler, optimiser and evaluation sets, the run state (epoch
    counters, early stopping, timings) and the best state; ``run`` trains to the end and
    evaluates the best state once on valid and test."""

    def __init__(self, model: Backbone, denoiser: Denoiser, data: Interactions,
                 train: TrainConfig, evalc: EvalConfig, device: torch.device, seed: int,
                 run_dir: Path, fingerprint: dict | None = None):
        self.model, self.denoiser, self.train, self.evalc = model, denoiser, train, evalc
        self.device, self.fingerprint = device, fingerprint
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.generator = torch.Generator().manual_seed(seed)
        self.sampler = BPRSampler(data.train.users, data.train.items, data.n_items,
                                  train.batch_size, self.generator, device)
        self.optimizer = make_adam(model.parameters(), train.lr)
        self.valid_set, self.test_set, self.eval_sample = build_eval_sets(data, evalc)
        self.valid_samples: dict[int, EvalSet] = {}  # valid_metrics(users=N)'s fixed samples
        self.state = TrainState()
        self.best = BestState()
        self.applied_weights: torch.Tensor | None = None  # the denoiser's graph weights held
        self.on_eval: Callable[[dict], None] | None = None
        # injected noise's labels, when known: each evaluation's history row follows the
        # denoiser's detection (detect_auc, detect_precision, detect_recall)
        self.noise_labels = data.train_noise if data.has_noise_labels else None
        self.data = data

    # -- resume -------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from checkpoints/last.pt (and best.pt) when it exists."""
        last = self.ckpt_dir / "last.pt"
        if not last.is_file():
            log.warning("train.resume=true but %s does not exist; starting from scratch", last)
            return
        ck = torch.load(last, map_location=self.device, weights_only=False)
        check_resumable(ck, self.fingerprint, last)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.denoiser.load_state_dict(ck["denoiser"])
        self.generator.set_state(ck["generator"].cpu())  # RNG states stay on the CPU
        torch.set_rng_state(ck["torch_rng"].cpu())
        self.state = TrainState(**ck["state"])
        if self.state.finished and not self.state.stop_reason:
            # written before stop_reason existed, when only early stopping finished a run
            self.state.stop_reason = "early_stopping"
        best_path = self.ckpt_dir / "best.pt"
        if best_path.is_file():
            best = torch.load(best_path, map_location=self.device, weights_only=False)
            self.best = BestState(best["model"], best.get("denoiser"), best.get("edge_weights"))
        log.info("resumed from %s at epoch %d", last, self.state.epoch)

    # -- one epoch ----------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> float:
        """The denoiser's epoch hook, its graph weights, the model's epoch hook, then one pass
        over the training interactions. Returns the mean training loss."""
        model, denoiser = self.model, self.denoiser
        t0 = time.perf_counter()
        with scope("epoch hooks"):  # named scopes: scripts/profile_step.py reads their shares
            denoiser.on_epoch(epoch)
            graph_weights = denoiser.edge_weights()
            if graph_weights is not None and graph_weights is not self.applied_weights:
                model.set_edge_weights(graph_weights)  # before pre_epoch: FREEDOM prunes with them
                self.applied_weights = graph_weights
            model.pre_epoch(epoch)
        model.train()
        loss_sum, n_batches = 0.0, 0
        for batch in self.sampler.epoch():
            with scope("denoiser step"):
                denoiser.step(batch)  # the denoiser's own models first (GUIDER's teacher)
            with scope("model loss"):
                losses = model.losses(batch)
                weights = denoiser.weights(batch, losses.main.detach())
            with scope("denoiser loss"):
                extra = denoiser.extra_loss(batch, model)
            terms = {"main": weighted_mean(losses.main, weights), **losses.aux, **extra}
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                self.refuse_non_finite(loss, terms, epoch, n_batches)
            with scope("backward + step"):
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            loss_sum += float(loss.detach())
            n_batches += 1
        self.state.seconds_train += time.perf_counter() - t0
        self.state.epoch = epoch + 1
        return loss_sum / max(n_batches, 1)

    def refuse_non_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], epoch: int,
                          batch: int) -> None:
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        raise NonFiniteLoss(
            f"loss became {float(loss.detach())} at epoch {epoch}, batch {batch} ({parts}). "
            f"Lower train.lr or the regularisation, and check the item features for extreme "
            f"values. Checkpoints saved so far are in {self.ckpt_dir}."
        )

    def validate(self, epoch: int, epoch_loss: float, bar: tqdm) -> None:
        """Evaluate on valid, keep the best state, count towards early stopping."""
        state, metric = self.state, self.evalc.valid_metric
        t1 = time.perf_counter()
        self.model.eval()
        valid = self.valid_metrics(self.model.scorer())
        state.seconds_eval += time.perf_counter() - t1
        detect = ({} if self.noise_labels is None else
                  detection_trace(noise_scores_of(self.denoiser, self.model, self.data),
                                  self.denoiser.flagged(), self.noise_labels))
        t1 = time.perf_counter()
        extra = self.denoiser.on_validation(self.valid_metrics, metric)
        state.seconds_eval += time.perf_counter() - t1
        state.history.append({"epoch": epoch, "loss": epoch_loss, **valid, **detect, **extra})
        if self.on_eval is not None:  # a tracker (guider.tracking)
            self.on_eval(state.history[-1])
        value = valid.get(metric, -math.inf)
        if value > state.best_value:
            state.best_value, state.best_epoch, state.bad_evals = value, epoch, 0
            self.keep_best(epoch)
        else:
            state.bad_evals += 1
        bar.set_postfix(loss=f"{epoch_loss:.4f}", **{metric: f"{value:.4f}"},
                        best=f"{state.best_value:.4f}@{state.best_epoch}")
        log.info("epoch %d loss %.5f %s %.5f (best %.5f at epoch %d)", epoch, epoch_loss,
                 metric, value, state.best_value, state.best_epoch)
        if state.bad_evals >= self.train.patience:
            state.finished, state.stop_reason = True, "early_stopping"
            log.info("early stop: no %s improvement in %d evaluations", metric,
                     self.train.patience)
        write_history(self.run_dir, state.history)  # a long run can be watched as it goes

    def valid_metrics(self, scorer: Callable, users: int = 0) -> dict[str, float]:
        """The valid metrics of a block scorer (the student's, or a denoiser's own model's), over
        every valid user, or with ``users=N`` over a fixed sample of N of them (drawn once with
        eval.sample_seed, the same users at every call: e.g. GUIDER's teacher_valid_users)."""
        evalc = self.evalc
        valid = self.valid_set
        if users > 0:
            if users not in self.valid_samples:
                chosen = sample_users([valid], users, evalc.sample_seed)
                self.valid_samples[users] = valid.restrict(chosen)
            valid = self.valid_samples[users]
        return evaluate(scorer, valid, evalc.topk, evalc.batch_users, self.device)

    def keep_best(self, epoch: int) -> None:
        best = self.best
        best.model = copy.deepcopy(self.model.state_dict())
        best.edge_weights = self.applied_weights
        if self.denoiser.has_scorers:
            best.denoiser = copy.deepcopy(self.denoiser.state_dict())
        if self.train.save_checkpoints:
            io.torch_save(self.ckpt_dir / "best.pt", {"model": best.model, "epoch": epoch,
                                                      "denoiser": best.denoiser,
                                                      "edge_weights": best.edge_weights})

    def save_last(self) -> None:
        io.torch_save(self.ckpt_dir / "last.pt", {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "denoiser": self.denoiser.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "state": asdict(self.state),
            "fingerprint": self.fingerprint, "edge_weights": self.applied_weights,
        })

    def out_of_time(self) -> bool:
        budget_s = 60.0 * self.train.max_minutes
        state = self.state
        if budget_s and state.seconds_train + state.seconds_eval >= budget_s:
            state.finished, state.stop_reason = True, "time_budget"
            log.info("time budget of train.max_minutes=%g spent after %d epochs: stopping",
                     self.train.max_minutes, state.epoch)
            return True
        return False

    # -- the run ------------------------------------------------------------------------------

    def run(self, on_epoch_end: Callable[[int], None] | None = None,
            on_eval: Callable[[dict], None] | None = None) -> FitResult:
        self.on_eval = on_eval
        train, state = self.train, self.state
        if train.resume:
            self.resume()
            state = self.state
        state.sessions += 1
        seconds_previous, t_session = state.seconds_wall, time.perf_counter()
        bar = tqdm(range(state.epoch, train.epochs), initial=state.epoch, total=train.epochs,
                   desc="epochs", disable=not train.progress, dynamic_ncols=True)
        for epoch in bar:
            if state.finished or self.out_of_time():
                break
            epoch_loss = self.train_epoch(epoch)
            if (epoch + 1) % train.eval_every == 0 or epoch + 1 == train.epochs:
                with scope("validation"):
                    self.validate(epoch, epoch_loss, bar)
            state.seconds_wall = seconds_previous + time.perf_counter() - t_session
            if train.save_checkpoints:
                self.save_last()
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if state.finished:
                break
        bar.close()
        return self.final_evaluation(seconds_previous)

    def final_evaluation(self, seconds_previous: float) -> FitResult:
        """Valid and test, once, at the best state (its graph weights included)."""
        model, best, state, evalc = self.model, self.best, self.state, self.evalc
        if best.model is not None:
            model.load_state_dict(best.model)
            if best.edge_weights is not None:
                model.set_edge_weights(best.edge_weights)
        model.eval()
        t1 = time.perf_counter()
        scorer = model.scorer()
        valid = self.valid_metrics(scorer)
        test = evaluate(scorer, self.test_set, evalc.topk, evalc.batch_users, self.device)
        seconds_final = time.perf_counter() - t1
        return FitResult(
            best_epoch=state.best_epoch, epochs_run=state.epoch, valid=valid, test=test,
            history=state.history,
            seconds={"train": state.seconds_train, "eval": state.seconds_eval + seconds_final},
            stopped_early=state.stop_reason == "early_stopping",
            stop_reason=state.stop_reason or "max_epochs",
            eval_excluded={"valid": self.valid_set.excluded, "test": self.test_set.excluded},
            eval_sample=self.eval_sample, best_denoiser=best.denoiser, sessions=state.sessions,
            seconds_previous=seconds_previous,
        )


def fit(model: Backbone, denoiser: Denoiser, data: Interactions, train: TrainConfig,
        evalc: EvalConfig, device: torch.device, seed: int, run_dir: Path,
        fingerprint: dict | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
        on_eval: Callable[[dict], None] | None = None) -> FitResult:
    """Train ``model`` with ``denoiser`` to early stopping (``Trainer``); the result holds valid
    and test at the best-validation state. ``on_eval`` gets each validation's history row."""
    trainer = Trainer(model, denoiser, data, train, evalc, device, seed, run_dir, fingerprint)
    return trainer.run(on_epoch_end, on_eval)

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
from ..evaluation import EvalSet, build_eval_set, evaluate, sample_users
from ..optim import make_adam

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf."""


class ResumeRefused(ValueError):
    """A checkpoint written by another configuration: nothing of the run folder may change."""


def check_resumable(ck: dict, fingerprint: dict | None, last: Path) -> None:
    """Raise ``ResumeRefused`` unless checkpoint ``ck`` was written with ``fingerprint``."""
    if fingerprint is not None and ck.get("fingerprint") != fingerprint:
        diff = sorted(k for k in fingerprint if ck.get("fingerprint", {}).get(k) != fingerprint[k])
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


def build_eval_sets(data: Interactions,
                    evalc: EvalConfig) -> tuple[EvalSet, EvalSet, dict | None]:
    """The valid and test evaluation sets (cold pairs decided per ``eval.exclude_cold``); with
    ``eval.sample_users=N`` both restricted to the
    same fixed sample of N users (an approximation, recorded in metrics.json as
    ``eval_sample``)."""
    known = None
    if evalc.exclude_cold == "before_noise":  # injected pairs are appended after the real ones
        n_real = (data.info.get("noise") or {}).get("n_train_before", len(data.train))
        known = (data.train.users[:n_real], data.train.items[:n_real])
    valid = build_eval_set(data.train.users, data.train.items, data.valid.users,
                           data.valid.items, data.n_users, data.n_items, known)
    test = build_eval_set(data.train.users, data.train.items, data.test.users,
                          data.test.items, data.n_users, data.n_items, known)
    if evalc.sample_users <= 0:
        return valid, test, None
    pool = len(sample_users([valid, test], 0, evalc.sample_seed))
    chosen = sample_users([valid, test], evalc.sample_users, evalc.sample_seed)
    valid, test = valid.restrict(chosen), test.restrict(chosen)
    info = {"users": evalc.sample_users, "seed": evalc.sample_seed, "eligible_users": pool,
            "sampled_users": len(chosen), "valid_users": len(valid.users),
            "test_users": len(test.users)}
    log.info("evaluating a fixed sample of %d of %d users (eval.sample_users, seed %d): "
             "metrics are an approximation of the full evaluation", len(chosen), pool,
             evalc.sample_seed)
    return valid, test, info


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.csv``: one row per evaluation (epoch, mean training loss, valid metrics)."""
    import pandas as pd

    if history:
        io.write_text(Path(run_dir) / "history.csv", pd.DataFrame(history).to_csv(index=False))


def fit(model: Backbone, denoiser: Denoiser, data: Interactions, train: TrainConfig,
        evalc: EvalConfig, device: torch.device, seed: int, run_dir: Path,
        fingerprint: dict | None = None,
        on_epoch_end: Callable[[int], None] | None = None) -> FitResult:
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    generator = torch.Generator().manual_seed(seed)
    sampler = BPRSampler(data.train.users, data.train.items, data.n_items, train.batch_size,
                         generator, device)
    optimizer = make_adam(model.parameters(), train.lr)
    valid_set, test_set, eval_sample = build_eval_sets(data, evalc)
    state = TrainState()
    best_model = None
    best_denoiser = None
    best_edge_weights = None  # the denoiser's graph weights the model held at its best epoch

    if train.resume:
        last = ckpt_dir / "last.pt"
        if last.is_file():
            ck = torch.load(last, map_location=device, weights_only=False)
            check_resumable(ck, fingerprint, last)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            denoiser.load_state_dict(ck["denoiser"])
            generator.set_state(ck["generator"].cpu())  # RNG states stay on the CPU
            torch.set_rng_state(ck["torch_rng"].cpu())
            state = TrainState(**ck["state"])
            if state.finished and not state.stop_reason:
                # written before stop_reason existed, when only early stopping finished a run
                state.stop_reason = "early_stopping"
            best_path = ckpt_dir / "best.pt"
            if best_path.is_file():
                best = torch.load(best_path, map_location=device, weights_only=False)
                best_model, best_denoiser = best["model"], best.get("denoiser")
                best_edge_weights = best.get("edge_weights")
            log.info("resumed from %s at epoch %d", last, state.epoch)
        else:
            log.warning("train.resume=true but %s does not exist; starting from scratch", last)

    state.sessions += 1
    seconds_previous, t_session = state.seconds_wall, time.perf_counter()
    metric = evalc.valid_metric
    budget_s = 60.0 * train.max_minutes
    bar = tqdm(range(state.epoch, train.epochs), initial=state.epoch, total=train.epochs,
               desc="epochs", disable=not train.progress, dynamic_ncols=True)
    applied_weights: torch.Tensor | None = None  # the denoiser's graph weights the model holds
    for epoch in bar:
        if state.finished:
            break
        if budget_s and state.seconds_train + state.seconds_eval >= budget_s:
            state.finished, state.stop_reason = True, "time_budget"
            log.info("time budget of train.max_minutes=%g spent after %d epochs: stopping",
                     train.max_minutes, state.epoch)
            break
        t0 = time.perf_counter()
        denoiser.on_epoch(epoch)
        graph_weights = denoiser.edge_weights()
        if graph_weights is not None and graph_weights is not applied_weights:
            model.set_edge_weights(graph_weights)  # before pre_epoch: FREEDOM prunes with them
            applied_weights = graph_weights
        model.pre_epoch(epoch)
        model.train()
        loss_sum, n_batches = 0.0, 0
        for batch in sampler.epoch():
            denoiser.step(batch)  # the denoiser's own models first (GUIDER's teacher)
            losses = model.losses(batch)
            weights = denoiser.weights(batch, losses.main.detach())
            terms = {"main": weighted_mean(losses.main, weights), **losses.aux,
                     **denoiser.extra_loss(batch, model)}
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                raise NonFiniteLoss(
                    f"loss became {float(loss.detach())} at epoch {epoch}, batch {n_batches} ({parts}). "
                    f"Lower train.lr or the regularisation, and check the item features for extreme "
                    f"values. Checkpoints saved so far are in {ckpt_dir}."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            n_batches += 1
        state.seconds_train += time.perf_counter() - t0
        epoch_loss = loss_sum / max(n_batches, 1)
        state.epoch = epoch + 1

        if (epoch + 1) % train.eval_every == 0 or epoch + 1 == train.epochs:
            t1 = time.perf_counter()
            model.eval()
            valid = evaluate(model.scorer(), valid_set, evalc.topk, evalc.batch_users, device)
            state.seconds_eval += time.perf_counter() - t1
            state.history.append({"epoch": epoch, "loss": epoch_loss, **valid})
            value = valid.get(metric, -math.inf)
            if value > state.best_value:
                state.best_value, state.best_epoch, state.bad_evals = value, epoch, 0
                best_model = copy.deepcopy(model.state_dict())
                best_edge_weights = applied_weights
                if denoiser.has_scorers:
                    best_denoiser = copy.deepcopy(denoiser.state_dict())
                if train.save_checkpoints:
                    io.torch_save(ckpt_dir / "best.pt", {"model": best_model, "epoch": epoch,
                                                         "denoiser": best_denoiser,
                                                         "edge_weights": best_edge_weights})
            else:
                state.bad_evals += 1
            bar.set_postfix(loss=f"{epoch_loss:.4f}", **{metric: f"{value:.4f}"},
                            best=f"{state.best_value:.4f}@{state.best_epoch}")
            log.info("epoch %d loss %.5f %s %.5f (best %.5f at epoch %d)", epoch, epoch_loss,
                     metric, value, state.best_value, state.best_epoch)
            if state.bad_evals >= train.patience:
                state.finished, state.stop_reason = True, "early_stopping"
                log.info("early stop: no %s improvement in %d evaluations", metric, train.patience)
            write_history(run_dir, state.history)  # a long run can be watched as it goes
        state.seconds_wall = seconds_previous + time.perf_counter() - t_session
        if train.save_checkpoints:
            io.torch_save(ckpt_dir / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "denoiser": denoiser.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "state": asdict(state),
                "fingerprint": fingerprint, "edge_weights": applied_weights,
            })
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if state.finished:
            break
    bar.close()

    if best_model is not None:
        model.load_state_dict(best_model)
        if best_edge_weights is not None:
            model.set_edge_weights(best_edge_weights)
    model.eval()
    t1 = time.perf_counter()
    scorer = model.scorer()
    valid = evaluate(scorer, valid_set, evalc.topk, evalc.batch_users, device)
    test = evaluate(scorer, test_set, evalc.topk, evalc.batch_users, device)
    seconds_final = time.perf_counter() - t1
    return FitResult(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        valid=valid,
        test=test,
        history=state.history,
        seconds={"train": state.seconds_train, "eval": state.seconds_eval + seconds_final},
        stopped_early=state.stop_reason == "early_stopping",
        stop_reason=state.stop_reason or "max_epochs",
        eval_excluded={"valid": valid_set.excluded, "test": test_set.excluded},
        eval_sample=eval_sample,
        best_denoiser=best_denoiser,
        sessions=state.sessions,
        seconds_previous=seconds_previous,
    )

"""Sweep robustness: the per-config sweep folder (``${guider_run_id:}``, from guider.identity),
skipping completed runs and resuming interrupted ones."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ..identity import config_hash, run_id
from ..record import is_completed, read_record

log = logging.getLogger("guider")

def _run_id_resolver(*, _root_: DictConfig) -> str:
    try:
        choices = OmegaConf.select(_root_, "hydra.runtime.choices", default=None)
        variant = choices.get("experiment/variant") if choices is not None else None
        return run_id(_root_, variant)
    except Exception:  # e.g. an interpolation that cannot resolve: the job itself fails and
        # records why; its folder must still exist, so fall back to Hydra's job number
        return f"unresolved-job{OmegaConf.select(_root_, 'hydra.job.num', default='x')}"


def register_resolvers() -> None:
    """``${guider_run_id:}``: used by ``hydra.sweep.subdir`` (conf/config.yaml); and the config's
    own resolvers (``${guider_times:}``), so that a run folder's .hydra/config.yaml resolves here."""
    from ..config import register_config_resolvers

    register_config_resolvers()
    if not OmegaConf.has_resolver("guider_run_id"):
        OmegaConf.register_new_resolver("guider_run_id", _run_id_resolver)


def saved_hash(run_dir: Path) -> str | None:
    """Hash of the resolved config.yaml a run wrote into its folder (None when absent)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        return config_hash(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    except Exception:  # an unreadable config.yaml: treat the folder as foreign
        return None


def prepare_sweep_job(cfg: DictConfig, run_dir: str | Path) -> dict | None:
    """Decide what one job of a sweep does with what its folder already holds.

    - a completed run of the same config (same hash) and ``train.skip_completed``: return its
      metrics (the caller skips training);
    - a completed run of the same config and ``train.skip_completed=false``: retrain from scratch;
    - an unfinished run of the same config (``checkpoints/last.pt``, no completed metrics.json,
      e.g. killed or failed): set ``train.resume=true`` so training continues from the checkpoint;
    - anything else: a fresh run.
    """
    run_dir = Path(run_dir)
    want = config_hash(cfg)
    have = saved_hash(run_dir)
    try:
        metrics = read_record(run_dir)
    except ValueError:  # an unreadable metrics.json: not a completed run
        metrics = None
    if have is None:
        return None
    if have != want:
        log.warning("%s holds a run of another configuration (hash %s, this one %s); "
                    "starting afresh there", run_dir, have, want)
        return None
    if is_completed(metrics):
        if cfg.train.skip_completed:
            log.info("skipped: %s already holds a completed run of this configuration (hash %s); "
                     "train.skip_completed=false retrains it", run_dir, want)
            return metrics
        log.info("train.skip_completed=false: retraining the completed run in %s from scratch", run_dir)
        _set(cfg, "train.resume", False)
        return None
    if (run_dir / "checkpoints" / "last.pt").is_file() and not cfg.train.resume:
        log.info("resuming the unfinished run in %s from checkpoints/last.pt", run_dir)
        _set(cfg, "train.resume", True)
    return None


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    with read_write(cfg), open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)

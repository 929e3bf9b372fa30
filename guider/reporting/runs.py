"""Run identity and sweep robustness: the config hash, the per-config sweep folder, skipping
completed runs, resuming interrupted ones, and torch threads per parallel job."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ..identity import config_hash, run_id

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
    """``${guider_run_id:}``: used by ``hydra.sweep.subdir`` (conf/config.yaml)."""
    if not OmegaConf.has_resolver("guider_run_id"):
        OmegaConf.register_new_resolver("guider_run_id", _run_id_resolver)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
    metrics = _read_json(run_dir / "metrics.json")
    if have is None:
        return None
    if have != want:
        log.warning("%s holds a run of another configuration (hash %s, this one %s); "
                    "starting afresh there", run_dir, have, want)
        return None
    if metrics is not None and metrics.get("status") == "completed":
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


# ---------------------------------------------------------------------------------------------
# threads


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def concurrent_jobs(launcher: Mapping | None, cores: int) -> int:
    """How many jobs the launcher runs at once on this machine (1 for the basic launcher)."""
    if not launcher:
        return 1
    target = str(launcher.get("_target_", ""))
    if "joblib" in target.lower():
        n = launcher.get("n_jobs")
        if n is None:
            return 1
        n = int(n)
        if n < 0:  # joblib: -1 = all cores, -2 = all but one, ...
            n = max(1, cores + 1 + n)
        return max(1, n)
    return 1


def busy_cores(interval: float = 0.25) -> float | None:
    """How many cores other processes keep busy right now: the machine's non-idle CPU time over
    ``interval`` seconds (this process sleeps meanwhile), from /proc/stat; None where that file
    does not exist."""
    import time

    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as fh:
                values = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values[:8]), idle

    first = sample()
    if first is None:
        return None
    time.sleep(interval)
    second = sample()
    if second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * (total - idle) / total


def auto_threads(launcher: Mapping | None, cores: int | None = None,
                 env: Mapping[str, str] | None = None, busy: float | None = None) -> int:
    """Threads for one job: usable cores / jobs the launcher runs at once (joblib: n_jobs); a
    submitit job uses its ``cpus_per_task`` (submitit_local without it: 1, as it starts every job
    at once); ``OMP_NUM_THREADS``, when set, is an upper bound. ``busy``: cores other processes
    keep busy (``busy_cores``): the threads never exceed the cores left free, at least 1. Threads
    that share a core with another busy process wait on each other (torch's OpenMP spins): on 2
    cores beside one busy process, 2 threads took 2x as long as 1 (docs/sweeps.md)."""
    cores = cores or usable_cores()
    env = os.environ if env is None else env
    target = str(launcher.get("_target_", "")) if launcher else ""
    cpus = launcher.get("cpus_per_task") if launcher else None
    if "submitit" in target.lower() and cpus:
        n = int(cpus)
    elif target.endswith("LocalLauncher"):  # submitit_local starts every job at once
        n = 1
    else:  # basic (one job at a time), joblib, or a SLURM job (its affinity = its CPUs)
        n = max(1, cores // concurrent_jobs(launcher, cores))
    omp = env.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    if busy is not None:
        n = min(n, cores - int(round(busy)))
    return max(1, n)


def set_threads(threads: int, launcher: Mapping | None) -> int:
    """Set torch's intra-op threads for this job (``threads`` > 0 wins; 0 = auto: the cores per
    job, fewer when other processes keep cores busy)."""
    import torch

    if threads < 0:
        raise ValueError(f"threads={threads}: use a positive number, or 0 for automatic")
    n = threads if threads > 0 else auto_threads(launcher, busy=busy_cores())
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable once, before any parallel work
        pass
    return n

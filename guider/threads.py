"""Torch threads per run: ``threads=0`` divides the cores this process may use among the jobs
the sweep launcher runs at once, no more than the cores free at start (docs/sweeps.md)."""

from __future__ import annotations

import logging
import os
from typing import Mapping

log = logging.getLogger("guider")

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

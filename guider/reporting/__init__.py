"""Sweeps: skipping completed runs and resuming interrupted ones (``runs``; run identity itself is
``guider.identity``), the summary table and figures (``summary``), and the Hydra callback that
writes the summary after every multirun (``callback``)."""

from __future__ import annotations

from .runs import prepare_sweep_job, register_resolvers

register_resolvers()  # ${guider_run_id:} must exist wherever Hydra resolves hydra.sweep.subdir

__all__ = ["prepare_sweep_job", "register_resolvers", "summarize"]


def summarize(*args, **kwargs):
    """See :func:`guider.reporting.summary.summarize` (pandas and matplotlib load on first use)."""
    from .summary import summarize as _summarize

    return _summarize(*args, **kwargs)

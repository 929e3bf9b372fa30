"""Hydra callback: write the sweep summary at the end of every multirun.

Registered in conf/config.yaml under ``hydra.callbacks.summary``; switch it off for one sweep
with ``~hydra.callbacks.summary``; ``hydra.callbacks.summary.reference=oracle`` takes the
paired differences against another denoiser than ``none``. A summary that cannot be written is logged and never fails
the sweep: the runs are on disk and ``python scripts/summarize.py <folder>`` redoes it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("guider")

# runs of the last summarised sweep folder that failed: read by guider-train to exit non-zero
FAILED_RUNS: list[str] = []


class SummaryCallback(Callback):
    def __init__(self, enabled: bool = True, reference: str = "none") -> None:
        self.enabled = enabled
        self.reference = reference  # paired differences against this denoiser
        self.folder: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # resolved once here: ${now:...} is cached on the config, so the sweeper sees the same folder
        self.folder = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        folder = self.folder or Path(str(config.hydra.sweep.dir))
        try:
            from .summary import summarize

            result = summarize(folder, reference=self.reference)
        except Exception:  # noqa: BLE001 - the summary must never fail a finished sweep
            log.exception("could not write the sweep summary for %s; the runs are intact, rerun "
                          "`python scripts/summarize.py %s`", folder, folder)
            return
        print(result.markdown)
        log.info("sweep summary: %s", ", ".join(str(p) for p in result.files))
        runs = result.runs
        FAILED_RUNS[:] = (runs.loc[runs["status"] == "failed", "run"].astype(str).tolist()
                          if len(runs) and "status" in runs else [])

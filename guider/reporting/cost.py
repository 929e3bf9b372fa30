"""What a whole run costs when its teacher freezes part-way (GUIDER's ``teacher_patience`` and
``teacher_epochs``): its epochs in sync at one per-epoch cost, its frozen epochs at another, as a
multiple of its student trained alone for as many epochs.

Wall-clock seconds of runs made two at a time on a shared machine do not compare; per-epoch
seconds from ``scripts/benchmark.py`` on an idle machine do. This module counts each run's epochs
in each phase from its folder and prices them:

    cost = (S x sync + (N - S) x frozen + V x teacher_eval) / (N x base)

with N the epochs the run trained, S those before its teacher froze (N when it never froze),
``base``, ``sync``, ``frozen`` the benchmark's seconds per epoch of the student alone, of an
in-sync epoch and of a frozen one, and V the teacher's validations (one every
``train.eval_every`` epochs while it trains, with ``teacher_patience``), each a full-ranking pass
of ``teacher_eval`` seconds (the benchmark's eval_pass_s; 0 leaves them out). The student's own
validations are in both runs and left out of both. ``scripts/run_cost.py`` is the command line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .summary import read_config


@dataclass(frozen=True)
class EpochCosts:
    """Seconds per training epoch, from one benchmark on one machine."""

    base: float    # the student alone (denoise=none)
    sync: float    # the denoiser with its teacher training in sync
    frozen: float  # the denoiser after its teacher froze (sync when it never freezes)
    teacher_eval: float = 0.0  # seconds per validation pass of the teacher (0: not counted)

    def __post_init__(self) -> None:
        for name in ("base", "sync", "frozen"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} seconds per epoch must be a positive number, got {value!r}")
        if not (math.isfinite(self.teacher_eval) and self.teacher_eval >= 0):
            raise ValueError(f"teacher_eval seconds must be 0 or more, got {self.teacher_eval!r}")

    def multiple(self, epochs: int, in_sync: int, teacher_validations: int = 0) -> float:
        """A run of ``epochs`` epochs, the first ``in_sync`` of them in sync and
        ``teacher_validations`` validations of its teacher, over its student's epochs."""
        if epochs <= 0:
            raise ValueError(f"a run trains at least one epoch, got {epochs}")
        in_sync = min(max(in_sync, 0), epochs)
        seconds = (in_sync * self.sync + (epochs - in_sync) * self.frozen
                   + teacher_validations * self.teacher_eval)
        return seconds / (epochs * self.base)


def frozen_epoch(run_dir: str | Path, metrics: dict | None = None,
                 cfg: dict | None = None) -> int | None:
    """The first epoch a run trained with its teacher frozen, or None when it never froze (or
    has no teacher). Read from ``metrics.json`` (``denoiser.teacher_frozen_epoch``, written by
    GUIDER since the key exists); for an older run, from its config and ``history.csv``:
    ``teacher_epochs=E`` freezes at epoch E; ``teacher_patience`` freezes after the last
    validation that still has a ``teacher_<metric>`` value (the column stops where the teacher
    froze; a value at every validation of the student's: it never froze). ``metrics`` and
    ``cfg``: the run's metrics.json and saved config when the caller has read them."""
    run_dir = Path(run_dir)
    if metrics is None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    denoiser = metrics.get("denoiser") or {}
    if "teacher_frozen_epoch" in denoiser:
        value = denoiser["teacher_frozen_epoch"]
        return None if value is None else int(value)
    epochs = int(metrics.get("epochs_run") or 0)
    if cfg is None:
        cfg = read_config(run_dir)[0]
    denoise = cfg.get("denoise") or {}
    if denoise.get("name") != "guider":
        return None
    candidates = []
    teacher_epochs = int(denoise.get("teacher_epochs") or 0)
    if teacher_epochs > 0 and teacher_epochs < epochs:
        candidates.append(teacher_epochs)
    if int(denoise.get("teacher_patience") or 0) > 0:
        history = run_dir / "history.csv"
        if not history.is_file():
            raise FileNotFoundError(f"{history}: needed to tell when the teacher froze (its "
                                    "teacher_<metric> column), and missing")
        table = pd.read_csv(history)
        metric = metrics.get("valid_metric", "Recall@20")
        column = f"teacher_{metric}"
        if column in table:
            student = table[metric].notna() if metric in table else table[column].notna()
            teacher = table[column].notna()
            if teacher.any() and (student & ~teacher).any():  # validations after the freeze
                candidates.append(int(table.loc[teacher, "epoch"].iloc[-1]) + 1)
    return min(candidates) if candidates else None


def run_costs(runs: pd.DataFrame, root: str | Path, costs: EpochCosts) -> pd.DataFrame:
    """``runs`` (from :func:`guider.reporting.summary.collect_runs`, completed runs) with four
    columns added: ``frozen_epoch`` (None: never froze), ``in_sync_epochs``,
    ``teacher_validations`` and ``cost_x``, the run's cost as a multiple of its student's at
    ``costs``."""
    root = Path(root)
    out = runs.copy()
    frozen, in_sync, validations, multiple = [], [], [], []
    for _, row in runs.iterrows():
        run_dir = root / row["run"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        epochs = int(metrics["epochs_run"])
        cfg = read_config(run_dir)[0]
        first = frozen_epoch(run_dir, metrics, cfg)
        sync_epochs = epochs if first is None else min(first, epochs)
        denoise, every = cfg.get("denoise") or {}, int((cfg.get("train") or {}).get("eval_every") or 1)
        # validations come after epochs every-1, 2 every-1, ...: those of the in-sync epochs
        checks = sync_epochs // every if int(denoise.get("teacher_patience") or 0) > 0 else 0
        frozen.append(first)
        in_sync.append(sync_epochs)
        validations.append(checks)
        multiple.append(costs.multiple(epochs, sync_epochs, checks))
    out["frozen_epoch"] = pd.array(frozen, dtype="Int64")
    out["in_sync_epochs"] = in_sync
    out["teacher_validations"] = validations
    out["cost_x"] = multiple
    return out


def pooled_multiple(table: pd.DataFrame, costs: EpochCosts) -> float:
    """The runs' seconds together over their students' together (long runs weigh more)."""
    epochs = table["epochs_run"].astype(float)
    sync = table["in_sync_epochs"].astype(float)
    checks = table["teacher_validations"].astype(float)
    seconds = (sync * costs.sync + (epochs - sync) * costs.frozen + checks * costs.teacher_eval).sum()
    return float(seconds / (epochs.sum() * costs.base))

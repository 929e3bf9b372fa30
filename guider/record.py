"""``metrics.json``, the record of one run: its layout as a typed record, written and read here
only (the pipeline writes it; sweeps, summaries and guider-eval read it).

A completed run's record (``RunRecord``) holds what the run was (dataset summary and digest,
backbone, denoiser, seed, device, threads, injected noise), how training went (best epoch,
epochs, stop reason), the valid and test metrics at the best state, what evaluation left out,
the detection metrics, the denoiser's own numbers, auxiliary models' metrics, timings and
versions. A failed run's record is ``{"status": "failed", "error": ..., "versions": ...}``.
Readers get plain dicts (``read_record``): older folders may lack newer keys, and a summary
flattens whatever is there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import io

FILE = "metrics.json"
COMPLETED, FAILED = "completed", "failed"


@dataclass
class RunRecord:
    """The layout of a completed run's metrics.json, in the order it is written."""

    dataset: dict
    data_digest: str  # the interactions before noise (guider-eval checks it)
    backbone: str
    denoise: str
    seed: int
    device: str
    threads: int  # torch intra-op threads (threads=0: chosen at start)
    noise: dict | None
    # modality -> width of features generated as pure noise (dataset.synthetic_features)
    synthetic_features: dict
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    stop_reason: str  # early_stopping | time_budget | max_epochs
    valid_metric: str
    valid: dict[str, float]
    test: dict[str, float]
    eval_excluded: dict
    # eval.sample_users > 0: {users, seed, eligible_users, sampled_users, valid_users,
    # test_users}; the metrics are then an approximation over that fixed sample
    eval_sample: dict | None
    detection: dict | None  # the denoiser's final state (guider.evaluation.detection)
    denoiser: dict
    auxiliary: dict
    cold_start: dict | None
    # total: wall seconds of every session of the run (earlier sessions of a resumed run counted
    # from their start of training); sessions: 1 + the number of resumes
    seconds: dict
    versions: dict
    recommendations: str | None = None  # eval.save_topk: the file's name in the run folder
    status: str = COMPLETED
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"status": self.status, **asdict(self)}
        out.pop("extra")
        if out["recommendations"] is None:
            out.pop("recommendations")
        out.update(self.extra)
        return out


def path_of(run_dir: str | Path) -> Path:
    return Path(run_dir) / FILE


def write_record(run_dir: str | Path, record: RunRecord | dict) -> dict:
    """Write a run's metrics.json atomically; returns the dict written."""
    data = record.to_dict() if isinstance(record, RunRecord) else dict(record)
    io.write_json(path_of(run_dir), data)
    return data


def read_record(run_dir: str | Path) -> dict | None:
    """A run folder's metrics.json as a dict; None when absent. An unreadable file raises
    ``ValueError`` naming it."""
    path = path_of(run_dir)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def is_completed(record: dict | None) -> bool:
    return bool(record) and record.get("status", COMPLETED) == COMPLETED


def failure_record(exc: BaseException, versions: dict) -> dict:
    return {"status": FAILED, "error": f"{type(exc).__name__}: {exc}", "versions": versions}

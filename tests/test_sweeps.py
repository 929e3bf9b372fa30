"""Real sweeps through the console script: joblib in parallel with the automatic summary,
skipping completed runs on a rerun, a failing run inside a sweep (submitit's local executor),
and a killed run resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO, TINY

pytestmark = pytest.mark.slow


def guider_sweep(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "guider.cli", "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/.hydra"))


def test_joblib_sweep_writes_summary_and_rerun_skips_completed(tmp_path):
    args = [*TINY, "noise=random", "noise.ratio=0.0,0.2", "seed=0", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path}"]
    # no OMP_NUM_THREADS: the automatic per-job thread count is what is checked
    out = guider_sweep(*args, env={"OMP_NUM_THREADS": None})
    assert out.returncode == 0, out.stderr
    runs = run_dirs(tmp_path)
    assert [r.name.split("-seed0-")[0] for r in runs] == ["synthetic-lightgcn-none-random0.0",
                                                          "synthetic-lightgcn-none-random0.2"]
    cores = len(os.sched_getaffinity(0))
    assert f"torch threads: {max(1, cores // 2)}" in out.stderr
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["noise.ratio"].tolist() == [0.0, 0.2]
    assert summary["test.Recall@20 count"].tolist() == [1, 1]
    md = (tmp_path / "summary.md").read_text()
    assert "| noise.ratio | n | valid Recall@20 | test Recall@20 |" in md and "**" in md
    assert md.strip().splitlines()[-1] in out.stdout  # the callback also prints the table
    assert (tmp_path / "figures" / "test_recall_20_vs_noise_ratio.png").stat().st_size > 5000

    # same command again: nothing retrains, metrics.json untouched, the summary is rewritten
    stamps = {r: (r / "metrics.json").stat().st_mtime_ns for r in runs}
    logs = {r: (r / "train.log").read_text() for r in runs}
    again = guider_sweep(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("[skipped: already completed]") == 2
    assert run_dirs(tmp_path) == runs
    for run in runs:
        assert (run / "metrics.json").stat().st_mtime_ns == stamps[run]
        assert (run / "train.log").read_text() == logs[run]
    assert pd.read_csv(tmp_path / "summary.csv").equals(summary)


def test_failing_run_leaves_the_others_with_submitit_local(tmp_path):
    # latent_dim=0 makes the synthetic generator divide by zero: an error the CLI does not know
    out = guider_sweep(*TINY, "dataset.synthetic.latent_dim=16,0", "hydra/launcher=submitit_local",
                       f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 1, out.stderr  # after the summary: a run failed
    statuses = {json.loads((r / "metrics.json").read_text())["status"] for r in run_dirs(tmp_path)}
    assert statuses == {"completed", "failed"}
    runs = pd.read_csv(tmp_path / "runs.csv")
    failed = runs[runs["status"] == "failed"].iloc[0]
    assert failed["dataset.synthetic.latent_dim"] == 0 and "ZeroDivisionError" in failed["error"]
    md = (tmp_path / "summary.md").read_text()
    assert "1 completed, 1 failed" in md and "## Runs that did not complete" in md


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    args = [*TINY, "train.epochs=100", "train.patience=1000", f"hydra.sweep.dir={tmp_path}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "guider.cli", "-m", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("*/checkpoints/last.pt")) and time.time() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (run,) = run_dirs(tmp_path)
    assert not (run / "metrics.json").exists()

    out = guider_sweep(*args)
    assert out.returncode == 0, out.stderr
    assert "resuming the unfinished run" in out.stderr
    log = (run / "train.log").read_text()
    assert "resumed from" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 100

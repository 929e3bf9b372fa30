"""The console script as a user runs it: single runs, sweeps, and failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, SHORT, TINY, TINY_SYNTHETIC

pytestmark = pytest.mark.slow


def guider_train(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "guider.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_single_run_end_to_end(tmp_path):
    out = guider_train(*TINY, f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "synthetic / lightgcn / denoise=none: test Recall@20" in out.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 4
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert (tmp_path / "train.log").stat().st_size > 0


def test_default_job_is_freedom_with_guider(tmp_path):
    out = guider_train(*TINY_SYNTHETIC, "train.epochs=2", "train.progress=false",
                       f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "synthetic / freedom / denoise=guider: test Recall@20" in out.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["auxiliary"]["teacher"]["test"]
    # GUIDER's default is its distillation (AMSC off, docs/guider.md section 7): no flags to score
    assert "detection AUC" not in out.stdout and not (metrics["detection"] or {}).get("auc")


def test_multirun_keeps_going_when_one_run_fails(tmp_path):
    # the second run reads the synthetic name from a (missing) folder instead of generating it
    out = guider_train("-m", *TINY, "dataset.kind=synthetic,mmrec", f"data_dir={tmp_path / 'nowhere'}",
                       f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=${hydra.job.num}")
    # every run was attempted and the summary written, then the exit code says a run failed
    assert out.returncode == 1, out.stderr
    assert "1 run(s) of the sweep failed" in out.stderr
    assert (tmp_path / "summary.md").is_file()
    ok = json.loads((tmp_path / "0" / "metrics.json").read_text())
    failed = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert ok["status"] == "completed"
    assert failed["status"] == "failed"
    assert "synthetic.inter" in failed["error"] and "data_dir" in failed["error"]


def test_missing_data_fails_clearly(tmp_path):
    out = guider_train(*SHORT, "dataset=baby", f"data_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 1
    assert "interaction file not found" in out.stderr and "baby.inter" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_backbone_fails_clearly(tmp_path):
    out = guider_train(*TINY, "backbone=nosuch", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "nosuch" in out.stderr and "lightgcn" in out.stderr


def test_a_sweep_without_failures_exits_zero(tmp_path):
    out = guider_train("-m", *TINY, "train.epochs=1", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr


def test_added_typo_key_fails_before_work(tmp_path):
    out = guider_train(*TINY, "+train.epohcs=3", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "unknown key train.epohcs" in out.stderr and "train.epochs" in out.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "failed"


def test_typo_in_key_fails_before_work(tmp_path):
    out = guider_train(*TINY, "train.epocs=3", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "epocs" in out.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_cfg_job_prints_resolved_values(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "GUIDER_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", "from guider.cli import entry; entry()",
                          "--cfg", "job"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"data_dir: {tmp_path}" in out.stdout and "${oc.env" not in out.stdout


def test_help_names_the_program_and_its_choices():
    out = guider_train("--help")
    assert out.returncode == 0
    assert out.stdout.startswith("guider-train:") and "powered by Hydra" not in out.stdout
    assert "denoise: bod, dcf, deca, guider, none, oracle, rce, tce" in out.stdout
    assert "docs/guider.md" in out.stdout and "experiment=noise_sweep" in out.stdout

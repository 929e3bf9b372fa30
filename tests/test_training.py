"""Training loop behaviour: learning, determinism, resume, NaN handling, outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from guider.backbones import BACKBONES
from guider.pipeline import run
from guider.training import NonFiniteLoss

from .conftest import run_interrupted_then_resumed

LR_FAST = "train.lr=0.01"


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_every_backbone_learns(tiny_cfg, tmp_path, backbone):
    """Each registered model lowers its loss and ranks far better than chance."""
    cfg = tiny_cfg(f"backbone={backbone}", LR_FAST, "train.epochs=20", "train.patience=100")
    metrics = run(cfg, tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["loss"].iloc[-1] < history["loss"].iloc[0] - 0.05
    n_items = metrics["dataset"]["n_items"]
    chance = 20 / n_items  # expected Recall@20 of a random ranking
    assert metrics["test"]["Recall@20"] > 2 * chance


def test_outputs_written(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    metrics = run(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["test"] == pytest.approx(metrics["test"])
    for key in ("best_epoch", "epochs_run", "valid", "test", "seconds", "versions", "seed", "noise"):
        assert key in on_disk
    assert set(on_disk["seconds"]) == {"train", "eval", "total", "sessions"}
    assert on_disk["seconds"]["sessions"] == 1
    assert "Recall@20" in on_disk["test"] and "MAP@50" in on_disk["valid"]
    assert on_disk["versions"]["torch"] == torch.__version__
    history = pd.read_csv(tmp_path / "history.csv")
    assert len(history) == on_disk["epochs_run"] == 4
    assert (tmp_path / "train.log").read_text().count("epoch") >= 4
    assert "n_users: 300" in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_test_metrics_come_from_best_valid_epoch(tiny_cfg, tmp_path):
    cfg = tiny_cfg(LR_FAST, "train.epochs=6")
    metrics = run(cfg, tmp_path)
    history = pd.read_csv(tmp_path / "history.csv")
    best = history["Recall@20"].idxmax()
    assert metrics["best_epoch"] == int(history["epoch"][best])
    assert metrics["valid"]["Recall@20"] == pytest.approx(history["Recall@20"][best])


def test_early_stopping(tiny_cfg, tmp_path):
    cfg = tiny_cfg("train.lr=0.05", "train.epochs=200", "train.patience=2")
    metrics = run(cfg, tmp_path)
    assert metrics["stopped_early"] and metrics["stop_reason"] == "early_stopping"
    assert metrics["epochs_run"] == metrics["best_epoch"] + 1 + 2


def test_max_epochs_reason(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg("train.epochs=3", "train.patience=100"), tmp_path)
    assert not metrics["stopped_early"] and metrics["stop_reason"] == "max_epochs"
    assert metrics["epochs_run"] == 3


def test_time_budget_ends_run_with_test_metrics(tiny_cfg, tmp_path):
    """A spent budget stops before the next epoch; the best state is still tested."""
    cfg = tiny_cfg("train.epochs=50", "train.patience=100", "train.max_minutes=1e-9")
    metrics = run(cfg, tmp_path / "budget")
    assert metrics["stop_reason"] == "time_budget" and not metrics["stopped_early"]
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 0
    assert metrics["test"]["Recall@20"] > 0
    # resumed with a larger budget, the run goes on from its checkpoint
    more = tiny_cfg("train.epochs=3", "train.patience=100", "train.max_minutes=60",
                    "train.resume=true")
    metrics = run(more, tmp_path / "budget")
    assert metrics["epochs_run"] == 3 and metrics["stop_reason"] == "max_epochs"


def test_resuming_a_finished_checkpoint_written_before_stop_reason(tiny_cfg, tmp_path):
    """Such a checkpoint says only finished=True; early stopping was then the only way to
    finish, so the resumed run reports it as an early stop, as the original run did."""
    overrides = ("train.lr=0.05", "train.epochs=200", "train.patience=2")
    first = run(tiny_cfg(*overrides), tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=False)
    del ck["state"]["stop_reason"]
    torch.save(ck, last)
    again = run(tiny_cfg(*overrides, "train.resume=true"), tmp_path)
    assert again["stopped_early"] and again["stop_reason"] == "early_stopping"
    assert again["epochs_run"] == first["epochs_run"] and again["test"] == first["test"]


def test_same_seed_same_numbers(tiny_cfg, tmp_path):
    a = run(tiny_cfg("seed=3"), tmp_path / "a")
    b = run(tiny_cfg("seed=3"), tmp_path / "b")
    c = run(tiny_cfg("seed=4"), tmp_path / "c")
    assert a["test"] == b["test"] and a["valid"] == b["valid"]
    assert a["test"] != c["test"]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_resume_matches_uninterrupted_run(tiny_cfg, tmp_path, device):
    """On CUDA too: the checkpoint is loaded onto the device, its RNG states must stay on the CPU
    (a resume failed there with 'RNG state must be a torch.ByteTensor' before that)."""
    overrides = ("train.epochs=6", LR_FAST, "train.patience=100", f"device={device}")
    full = run(tiny_cfg(*overrides), tmp_path / "full")

    resumed = run_interrupted_then_resumed(tiny_cfg, overrides, tmp_path / "resumed", stop_epoch=2)
    assert resumed["epochs_run"] == full["epochs_run"] == 6
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"] == pytest.approx(full["test"], abs=1e-12)
    h_full = pd.read_csv(tmp_path / "full" / "history.csv")
    h_res = pd.read_csv(tmp_path / "resumed" / "history.csv")
    pd.testing.assert_frame_equal(h_full, h_res)


def test_resume_refuses_other_config(tiny_cfg, tmp_path):
    run(tiny_cfg("train.epochs=2"), tmp_path)
    with pytest.raises(ValueError, match="different configuration.*backbone"):
        run(tiny_cfg("train.epochs=3", "train.resume=true", "backbone=mf"), tmp_path)


def test_refused_resume_leaves_the_finished_run_byte_identical(tiny_cfg, tmp_path):
    from guider.pipeline import write_failure
    from guider.training import ResumeRefused

    run(tiny_cfg("train.epochs=2"), tmp_path)
    files = {name: (tmp_path / name).read_bytes()
             for name in ("metrics.json", "config.yaml", "history.csv", "train.log")}
    with pytest.raises(ResumeRefused, match="lr"):
        run(tiny_cfg("train.epochs=2", "train.resume=true", "train.lr=0.01"), tmp_path)
    # and a later failure of another command there (the CLI records failures) keeps it too
    write_failure(tmp_path, RuntimeError("boom"))
    for name, content in files.items():
        assert (tmp_path / name).read_bytes() == content, name


def test_history_is_written_every_epoch_and_seconds_add_up_over_resumes(tiny_cfg, tmp_path):
    from guider.pipeline import prepare
    from guider.training import fit

    from .conftest import Interrupt

    overrides = ("train.epochs=4", "train.patience=100")

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise Interrupt

    job = prepare(tiny_cfg(*overrides))
    with pytest.raises(Interrupt):
        fit(job.model, job.denoiser, job.data, job.root.train, job.root.eval, job.device,
            job.root.seed, tmp_path, job.fingerprint, on_epoch_end=stop)
    history = pd.read_csv(tmp_path / "history.csv")  # there while the run is unfinished
    assert history["epoch"].tolist() == [0, 1]
    first = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["state"]
    assert first["sessions"] == 1 and first["seconds_wall"] > 0
    metrics = run(tiny_cfg(*overrides, "train.resume=true"), tmp_path)
    assert metrics["seconds"]["sessions"] == 2
    assert metrics["seconds"]["total"] >= first["seconds_wall"]
    assert metrics["seconds"]["total"] >= metrics["seconds"]["train"] + metrics["seconds"]["eval"]
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]


def test_nan_loss_stops_with_clear_message(tiny_cfg, tmp_path, monkeypatch):
    from guider.backbones.mf import MF

    original = MF.losses
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        losses = original(self, batch)
        if calls["n"] > 2:  # first epoch (one batch) is fine, then NaN
            losses.main = losses.main * float("nan")
        return losses

    monkeypatch.setattr(MF, "losses", poisoned)
    cfg = tiny_cfg("backbone=mf", "train.batch_size=100000")
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at epoch \d.*train\.lr"):
        run(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_noise_record_in_metrics(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg("noise=random", "noise.ratio=0.2", "train.epochs=1"), tmp_path)
    n_train_before = metrics["noise"]["n_train_before"]
    assert metrics["noise"]["n_injected"] == round(0.2 * n_train_before)
    assert metrics["dataset"]["n_train"] == n_train_before + metrics["noise"]["n_injected"]


def test_modal_noise_on_synthetic(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg("noise=modal", "noise.ratio=0.1", "noise.modality=text",
                           "train.epochs=1"), tmp_path)
    assert metrics["noise"]["n_items_swapped"] == 20
    assert metrics["noise"]["modality"] == "text"


def test_loss_is_weighted_by_denoiser(tiny_cfg):
    """The trainer applies a denoiser's per-sample weights to the main term."""
    from guider.denoise import weighted_mean

    terms = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(weighted_mean(terms, None)) == pytest.approx(2.5)
    assert float(weighted_mean(terms, torch.tensor([1.0, 0.0, 1.0, 0.0]))) == pytest.approx(2.0)
    assert float(weighted_mean(terms, torch.zeros(4))) == 0.0
    np.testing.assert_allclose(float(weighted_mean(terms, torch.full((4,), 0.5))), 5.0 / 2.0)


@pytest.mark.parametrize("backbone", [n for n in BACKBONES.names() if BACKBONES.get(n).cls.uses_features])
def test_feature_models_refuse_data_without_features(backbone):
    """A multi-modal model on data without item features fails with a message naming the fix."""
    from guider.config import SyntheticConfig
    from guider.data import generate

    data = generate(SyntheticConfig(n_users=50, n_items=40, modalities={}))
    entry = BACKBONES.get(backbone)
    with pytest.raises(ValueError, match=f"backbone={backbone} needs item features.*dataset.features"):
        entry.cls(entry.schema(), data)


def test_history_follows_detection_where_the_noise_is_known(tiny_cfg, tmp_path):
    """With noise labels each evaluation's row carries the denoiser's detection; its last row
    (the final state) equals metrics.json's detection. A denoiser with no scores: no columns."""
    metrics = run(tiny_cfg(LR_FAST, "noise=random", "noise.ratio=0.2", "denoise=tce",
                           "train.epochs=4", "train.patience=100"), tmp_path / "tce")
    history = pd.read_csv(tmp_path / "tce" / "history.csv")
    det = metrics["detection"]
    assert len(history) == 4
    last = history.iloc[-1]
    assert last["detect_auc"] == pytest.approx(det["auc"])
    assert last["detect_precision"] == pytest.approx(det["precision"])
    assert last["detect_recall"] == pytest.approx(det["recall"])
    assert last["detect_flagged"] == det["n_flagged"] > 0
    assert history["detect_auc"].between(0, 1).all()
    # T-CE's drop rate grows over training: so does its flagged set
    assert history["detect_flagged"].is_monotonic_increasing
    # a denoiser without scores or flags: no detection columns
    run(tiny_cfg(LR_FAST, "noise=random", "noise.ratio=0.2"), tmp_path / "none")
    assert not any(c.startswith("detect_")
                   for c in pd.read_csv(tmp_path / "none" / "history.csv").columns)

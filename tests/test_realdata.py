"""Short runs on the real datasets in ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import pytest

from guider.pipeline import run

from .conftest import shared_dataset

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_tiktok_short_run_learns(short_cfg, tmp_path):
    data_dir = shared_dataset("tiktok")
    cfg = short_cfg("dataset=tiktok", f"data_dir={data_dir}", "train.epochs=3", "train.lr=0.005",
                   "train.batch_size=2048", "eval.batch_users=4096")
    metrics = run(cfg, tmp_path)
    assert metrics["dataset"]["n_users"] == 9308 and metrics["dataset"]["n_items"] == 6710
    assert metrics["dataset"]["modalities"] == {"image": [6710, 128], "audio": [6710, 128]}
    assert metrics["cold_start"]["users"] == 10
    # LightGCN after three epochs ranks far above chance (20 / 6710 ~ 0.003)
    assert metrics["test"]["Recall@20"] > 0.02


def test_tiktok_modal_noise_labels():
    data_dir = shared_dataset("tiktok")
    from guider.config import DatasetConfig, NoiseConfig
    from guider.data import load_data

    data = load_data(DatasetConfig(name="tiktok", features={"image": "image_feat.npy",
                                                            "audio": "audio_feat.npy"}),
                     NoiseConfig(type="modal", ratio=0.1, modality="audio"), data_dir)
    flags = data.feature_noise["audio"]
    assert flags.sum() == round(0.1 * 6710)
    assert (data.train_noise == flags[data.train.items]).all()


@pytest.mark.parametrize("name,counts", [
    ("baby", (19445, 7050, 118551, 20559, 21682)),
    ("microlens", (50000, 19220, 255185, 51519, 53004)),
])
def test_real_folders_load_with_documented_counts(name, counts):
    data_dir = shared_dataset(name)
    from guider.config import DatasetConfig, NoiseConfig
    from guider.data import load_data

    features = {"text": "text_feat.npy"} if name == "microlens" else {}
    data = load_data(DatasetConfig(name=name, features=features), NoiseConfig(), data_dir)
    assert (data.n_users, data.n_items, len(data.train), len(data.valid), len(data.test)) == counts

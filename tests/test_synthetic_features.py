"""dataset.synthetic_features: absent feature files replaced by seeded Gaussian noise, on request
only, and labelled as such in the run's outputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from omegaconf import OmegaConf

from guider.config import DatasetConfig, NoiseConfig
from guider.identity import dataset_identity
from guider.data import DataError, load_data
from guider.data.loader import SYNTHETIC_FEATURE_DIMS, synthetic_features
from guider.pipeline import run, validate
from guider.identity import config_hash

from .conftest import SHORT, compose_config
from .helpers import write_inter

FEATS = {"image": "image_feat.npy", "text": "text_feat.npy"}


def dataset_cfg(**kw) -> DatasetConfig:
    return DatasetConfig(name="toy", kind="mmrec", features=dict(FEATS), **kw)


def toy_folder(tmp_path, with_image: bool = False):
    write_inter(tmp_path / "toy" / "toy.inter")
    if with_image:
        np.save(tmp_path / "toy" / "image_feat.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    return tmp_path


def test_flag_off_keeps_the_clear_error(tmp_path):
    toy_folder(tmp_path, with_image=True)
    with pytest.raises(DataError, match="modality 'text' not found") as info:
        load_data(dataset_cfg(), NoiseConfig(), tmp_path, ["image", "text"])
    assert "text_feat.npy" in str(info.value)


def test_flag_off_not_required_stays_absent(tmp_path):
    toy_folder(tmp_path)
    data = load_data(dataset_cfg(), NoiseConfig(), tmp_path, None)
    assert data.features == {} and data.info["absent_modalities"] == ["image", "text"]
    assert "synthetic_features" not in data.info


def test_flag_on_fills_absent_files_keeps_real_ones(tmp_path, caplog):
    toy_folder(tmp_path, with_image=True)
    logger = logging.getLogger("guider.data.loader")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="guider.data.loader"):
            data = load_data(dataset_cfg(synthetic_features=True), NoiseConfig(), tmp_path,
                             ["image", "text"])
    finally:
        logger.removeHandler(caplog.handler)
    # the real image file is loaded untouched; text is generated at its default width
    np.testing.assert_array_equal(data.features["image"],
                                  np.arange(12, dtype=np.float32).reshape(4, 3))
    text = data.features["text"]
    assert text.shape == (4, SYNTHETIC_FEATURE_DIMS["text"]) == (4, 384)
    assert text.dtype == np.float32 and np.isfinite(text).all()
    assert data.info["synthetic_features"] == {"text": 384}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("text" in w and "no signal" in w for w in warnings), warnings


def test_declared_widths_default_widths_and_unknown_modality(tmp_path):
    toy_folder(tmp_path)
    data = load_data(dataset_cfg(synthetic_features=True, feature_dims={"image": 7}),
                     NoiseConfig(), tmp_path, None)
    assert data.features["image"].shape == (4, 7) and data.features["text"].shape == (4, 384)
    assert data.info["synthetic_features"] == {"image": 7, "text": 384}
    cfg = DatasetConfig(name="toy", kind="mmrec", features={"video": "v.npy"},
                        synthetic_features=True)
    with pytest.raises(DataError, match=r"feature_dims\.video"):
        load_data(cfg, NoiseConfig(), tmp_path)


def test_deterministic_in_the_seed_and_different_per_modality(tmp_path):
    toy_folder(tmp_path)
    cfg = dataset_cfg(synthetic_features=True, feature_dims={"image": 16, "text": 16})
    a = load_data(cfg, NoiseConfig(), tmp_path).features
    b = load_data(cfg, NoiseConfig(), tmp_path).features
    c = load_data(dataset_cfg(synthetic_features=True, feature_dims={"image": 16, "text": 16},
                              synthetic_features_seed=1), NoiseConfig(), tmp_path).features
    for m in ("image", "text"):
        np.testing.assert_array_equal(a[m], b[m])
        assert not np.allclose(a[m], c[m])
    assert not np.allclose(a["image"], a["text"])
    # standard Gaussian: mean ~0, variance ~1 on a large draw
    big = synthetic_features("image", 500, 64, 0)
    assert abs(big.mean()) < 0.02 and abs(big.var() - 1.0) < 0.03


def test_bad_feature_dims_fail_at_validation():
    cfg = compose_config(["dataset=baby", "dataset.feature_dims.image=0"])
    with pytest.raises(ValueError, match=r"dataset.feature_dims.image=0"):
        validate(cfg)
    cfg = compose_config(["dataset=baby", "+dataset.feature_dims.audio=8"])
    with pytest.raises(ValueError, match=r"feature_dims.audio: no such modality"):
        validate(cfg)


def test_flag_off_leaves_run_identity_unchanged():
    # the new keys change nothing while the flag is off, so they are out of the config hash and
    # run folders written before they existed are still found
    cfg = compose_config(["dataset=baby"])
    before = OmegaConf.to_container(cfg, resolve=True)
    for key in ("synthetic_features", "feature_dims", "synthetic_features_seed"):
        before["dataset"].pop(key)
    assert config_hash(cfg) == config_hash(before)
    assert config_hash(compose_config(["dataset=baby", "dataset.feature_dims.image=8"])) \
        == config_hash(cfg)
    on = compose_config(["dataset=baby", "dataset.synthetic_features=true"])
    assert config_hash(on) != config_hash(cfg)
    assert dataset_identity({"name": "x", "synthetic_features": False, "feature_dims": {}}) \
        == {"name": "x"}


def test_metrics_json_records_the_synthetic_modalities(tmp_path):
    # a hand-made MMRec folder with an .inter file and no feature files, read by a feature model
    rng = np.random.default_rng(0)
    rows = []
    for u in range(30):
        items = rng.choice(20, size=6, replace=False)
        rows += [(u, int(i), 1, 0, lab) for i, lab in zip(items, (0, 0, 0, 0, 1, 2))]
    assert {r[1] for r in rows} == set(range(20))
    write_inter(tmp_path / "data" / "baby" / "baby.inter", rows)
    overrides = [o for o in SHORT if not o.startswith("backbone=")] + [
        "dataset=baby", f"data_dir={tmp_path / 'data'}", "backbone=vbpr", "train.epochs=1",
        "train.save_checkpoints=false", "dataset.synthetic_features=true",
        "dataset.feature_dims.image=12", "dataset.feature_dims.text=6",
    ]
    metrics = run(compose_config(overrides), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "completed"
    assert saved["synthetic_features"] == metrics["synthetic_features"] == {"image": 12, "text": 6}
    assert saved["dataset"]["modalities"] == {"image": [20, 12], "text": [20, 6]}
    # without the flag the same run fails with the clear error and names the file
    with pytest.raises(DataError, match="image_feat.npy"):
        run(compose_config(overrides[:-3]), tmp_path / "run2")


def test_real_run_without_synthetic_features_records_empty(tiny_cfg, tmp_path):
    metrics = run(tiny_cfg("train.epochs=1", "train.save_checkpoints=false"), tmp_path)
    assert metrics["synthetic_features"] == {}

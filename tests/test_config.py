"""The configuration tree: every group composes, and bad input fails before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from guider.backbones import BACKBONES
from guider.cli import CONF_DIR
from guider.denoise import DENOISERS
from guider.pipeline import validate

from .conftest import compose_config

GROUPS = ["dataset", "backbone", "denoise", "noise"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    validate(cfg)


def test_required_public_names_exist():
    assert set(options("dataset")) >= {"synthetic", "baby", "sports", "clothing", "microlens", "tiktok"}
    assert set(options("backbone")) >= {"mf", "lightgcn"}
    assert set(options("noise")) == {"none", "random", "popular", "modal"}
    assert "none" in options("denoise")


def test_every_registered_model_has_a_yaml_and_back():
    assert set(BACKBONES.names()) == set(options("backbone"))
    assert set(DENOISERS.names()) == set(options("denoise"))


def test_defaults():
    cfg = compose_config()
    assert cfg.dataset.name == "synthetic" and cfg.backbone.name == "freedom"
    assert cfg.denoise.name == "guider" and cfg.noise.type == "none"
    assert cfg.train.lr == pytest.approx(5e-3)  # the synthetic set's own rate
    assert compose_config(["dataset=synthetic", "train.lr=0.002"]).train.lr == pytest.approx(2e-3)
    cfg = compose_config(["dataset=baby"])
    assert cfg.train.batch_size == 2048 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.eval_every == 1 and cfg.train.patience == 20 and cfg.train.resume is False
    assert list(cfg.eval.topk) == [5, 10, 20, 50] and cfg.eval.valid_metric == "Recall@20"
    assert cfg.device == "auto"


def test_unknown_top_level_key_fails_naming_it():
    with pytest.raises(ConfigCompositionException, match="epochz"):
        compose_config(["train.epochz=3"])


def test_wrong_type_fails_naming_key():
    with pytest.raises(ConfigCompositionException, match="epochs"):
        compose_config(["train.epochs=abc"])


def test_unknown_backbone_key_fails_naming_it():
    cfg = compose_config(["+backbone.n_layerz=2"])
    with pytest.raises(ConfigKeyError, match="n_layerz"):
        validate(cfg)


def test_wrong_backbone_type_fails_naming_key():
    cfg = compose_config(["backbone=lightgcn", "backbone.n_layers=two"])
    with pytest.raises(ValidationError, match="n_layers"):
        validate(cfg)


def test_unknown_backbone_name_lists_available():
    cfg = compose_config(["backbone.name=nosuchmodel"])
    with pytest.raises(KeyError, match="lightgcn"):
        validate(cfg)


@pytest.mark.parametrize("override,key", [
    ("eval.valid_metric=Recall@15", "valid_metric"),
    ("eval.valid_metric=AUC@20", "valid_metric"),
    ("noise.ratio=1.5", "noise.ratio"),
    ("device=tpu", "device"),
    ("train.patience=0", "train.patience"),
    ("train.lr=-1", "train.lr"),
])
def test_bad_values_fail_naming_key(override, key):
    cfg = compose_config([override])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate(cfg)

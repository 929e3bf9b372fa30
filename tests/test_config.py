"""The configuration tree: every group composes, and bad input fails before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from guider.backbones import BACKBONES
from guider.config import CONF_DIR
from guider.denoise import DENOISERS
from guider.pipeline import validate

from .conftest import compose_config

GROUPS = ["dataset", "backbone", "denoise", "noise", "train"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    validate(cfg)


def test_required_public_names_exist():
    assert set(options("dataset")) >= {"synthetic", "baby", "sports", "clothing", "microlens", "tiktok"}
    assert set(options("backbone")) >= {"mf", "lightgcn"}
    assert set(options("noise")) == {"none", "random", "popular", "modal", "drop"}
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


@pytest.mark.parametrize("preset, keys", [
    ("fast", {"lr": 0.002, "eval_every": 5, "patience": 4}),
    ("large_batch", {"lr": 0.004, "eval_every": 5, "patience": 4, "batch_size": 8192}),
])
def test_train_presets_change_exactly_their_keys(preset, keys):
    """train=fast: twice the reference rate, a validation every 5 epochs and patience counted in
    validations (4 x 5 epochs = the reference's 20); train=large_batch: the same with four times
    the batch at four times the reference rate. Nothing else moves but GUIDER's teacher rate,
    which follows the student's; a preset is the same run as its keys written out; a dataset's
    own rate (the synthetic set's) still wins."""
    from omegaconf import OmegaConf

    from guider.identity import config_hash

    ref = OmegaConf.to_container(compose_config(["dataset=tiktok"]), resolve=True)
    fast = OmegaConf.to_container(compose_config(["dataset=tiktok", f"train={preset}"]), resolve=True)
    changed = {k for k in ref["train"] if ref["train"][k] != fast["train"][k]}
    assert changed == set(keys)
    assert {k: fast["train"][k] for k in keys} == keys
    assert fast["train"]["eval_every"] * fast["train"]["patience"] == ref["train"]["patience"]
    # GUIDER's teacher follows the student's rate (${train.lr}); every other key stays
    assert fast["denoise"].pop("teacher_lr") == keys["lr"] and ref["denoise"].pop("teacher_lr") == 0.001
    assert {k: v for k, v in fast.items() if k != "train"} == {k: v for k, v in ref.items() if k != "train"}
    spelled = compose_config(["dataset=tiktok", *(f"train.{k}={v}" for k, v in keys.items())])
    assert config_hash(compose_config(["dataset=tiktok", f"train={preset}"])) == config_hash(spelled)
    synthetic = compose_config([f"train={preset}"])
    assert synthetic.train.lr == pytest.approx(5e-3) and synthetic.train.eval_every == 5


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


# --- values checked before any work (issue: one source of truth) -----------------------------

BAD_VALUES = [
    ("denoise=guider", "denoise.kd.type=foo", "denoise.kd.type"),
    ("denoise=guider", "denoise.amsc.rho_max=-1", "denoise.amsc.rho_max"),
    ("denoise=guider", "denoise.kd.candidates=popular", "denoise.kd.candidates"),
    ("denoise=guider", "denoise.teacher.n_layers_ui=-1", "backbone.n_layers_ui"),
    ("denoise=tce", "denoise.drop_rate=1.5", "denoise.drop_rate"),
    ("denoise=rce", "denoise.beta=-1", "denoise.beta"),
    ("denoise=dcf", "denoise.window_epochs=0", "denoise.window_epochs"),
    ("denoise=deca", "denoise.alpha=2", "denoise.alpha"),
    ("denoise=bod", "denoise.generator_dim=0", "denoise.generator_dim"),
    ("denoise=oracle", "denoise.false_weight=2", "denoise.false_weight"),
    ("backbone=freedom", "backbone.dropout=1.5", "backbone.dropout"),
    ("backbone=lightgcn", "backbone.n_layers=-1", "backbone.n_layers"),
    ("backbone=mf", "backbone.embedding_dim=0", "backbone.embedding_dim"),
    ("backbone=vbpr", "backbone.visual_dim=0", "backbone.visual_dim"),
    ("backbone=lattice", "backbone.knn_k=0", "backbone.knn_k"),
    ("backbone=lgmrec", "backbone.n_hyperedges=0", "backbone.n_hyperedges"),
    ("backbone=mgcn", "backbone.knn_k=0", "backbone.knn_k"),
    ("backbone=smore", "backbone.knn_k_default=0", "backbone.knn_k_default"),
    ("backbone=bm3", "backbone.n_layers=-1", "backbone.n_layers"),
    ("backbone=freedom", "backbone.feature_precision=fp8", "backbone.feature_precision"),
    ("noise=random", "noise.ratio=1.5", "noise.ratio"),
]


@pytest.mark.parametrize("group, bad, key", BAD_VALUES, ids=[b for _, b, _ in BAD_VALUES])
def test_bad_values_fail_before_any_data_are_loaded(tiny_cfg, monkeypatch, group, bad, key):
    import guider.pipeline as pipeline

    def no_load(*args, **kwargs):
        raise AssertionError("the data were loaded before the bad value was refused")

    monkeypatch.setattr(pipeline, "load_data", no_load)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        pipeline.prepare(tiny_cfg(group, bad))


def _flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and key != "modality_weights":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("group", ["backbone", "denoise"])
def test_every_yaml_default_equals_its_schema_default(group):
    """One source of defaults: a key's value in conf/<group>/<name>.yaml is its schema's default
    (so a model built from its dataclass, e.g. a teacher or an auxiliary model, is the model the
    yaml describes)."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    registry = BACKBONES if group == "backbone" else DENOISERS
    drift = []
    for path in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        node.pop("defaults", None)
        schema = _flat(asdict(registry.get(node["name"]).schema()))
        for key, value in _flat(node).items():
            if isinstance(value, str) and value.startswith("${"):  # follows another key
                continue
            if key not in schema or schema[key] != value:
                drift.append(f"{path.name}: {key} = {value!r}, schema {schema.get(key, 'absent')!r}")
    assert not drift, drift


def test_guider_teacher_learns_at_the_students_rate_unless_set():
    """denoise.teacher_lr follows train.lr (the dataset's own, e.g. synthetic's 0.005), and an
    explicit value wins; the validated config holds the number."""
    from guider.pipeline import validate

    assert validate(compose_config(["denoise=guider"]))[4].teacher_lr == pytest.approx(0.005)
    assert validate(compose_config(["denoise=guider", "train.lr=0.02"]))[4].teacher_lr == 0.02
    assert validate(compose_config(["denoise=guider", "train.lr=0.02",
                                    "denoise.teacher_lr=0.003"]))[4].teacher_lr == 0.003


def test_teacher_at_twice_the_students_rate_follows_every_schedule():
    """+experiment/variant=budget_teacher2x sets denoise.teacher_lr to ${guider_times:2,${train.lr}}:
    twice the student's rate whatever sets it (the dataset, a train preset, the command line),
    exactly 0.002 at the real datasets' 0.001, and a resolver given a non-number names itself."""
    from omegaconf import OmegaConf

    from guider.config import _times
    from guider.pipeline import validate

    variant = "+experiment/variant=budget_teacher2x"
    for extra, student in (([], 0.005), (["dataset=tiktok"], 0.001),
                           (["dataset=tiktok", "train=large_batch"], 0.004),
                           (["train.lr=0.03"], 0.03)):
        cfg = compose_config(["denoise=guider", variant, *extra])
        assert cfg.train.lr == student
        assert validate(cfg)[4].teacher_lr == 2 * student, extra
    tiktok = compose_config(["dataset=tiktok", "denoise=guider", variant])
    assert OmegaConf.to_container(tiktok, resolve=True)["denoise"]["teacher_lr"] == 0.002
    assert _times("3", 0.5) == 1.5
    with pytest.raises(ValueError, match="guider_times.*must be numbers"):
        _times("two", 0.001)


def test_guider_default_teacher_equals_its_yaml():
    """GuiderConfig's default teacher (used when no group is composed) is the one
    conf/denoise/teacher/freedom.yaml gives: one teacher default, not two."""
    from dataclasses import asdict

    from omegaconf import OmegaConf

    from guider.denoise.guider import default_teacher

    cfg = compose_config(["denoise=guider"])
    assert OmegaConf.to_container(cfg.denoise.teacher) == default_teacher()
    assert asdict(DENOISERS.get("guider").schema().teacher) == asdict(
        BACKBONES.validate(default_teacher()))

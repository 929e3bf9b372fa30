"""Run identity, in one place: which settings make two runs the same run.

Three things rest on it. The **config hash** and the **run id** (``<dataset>-<backbone>-<denoise>-
<noise>-seed<k>-<hash>``) name a run's folder in a sweep, so a rerun of a sweep finds its finished
runs (skipped) and its interrupted ones (resumed). The **resume fingerprint** is what a checkpoint
must have been written with to be continued. The **summary** (``guider.reporting.summary``) turns
overrides into setting columns, leaving out the same neutral keys.

- ``NEUTRAL_KEYS``: settings that cannot change a run's numbers (progress bars, threads, the
  graph cache, where the checkpoints or the recommendations go). Out of the hash, the fingerprint
  and the summary's columns.
- ``LOCATION_KEYS``: where the data are read from. Part of the hash (two folders may hold different
  data), never a summary column (the data digest in metrics.json identifies the data themselves).
- ``SCALE_NEUTRAL`` / ``GUIDER_NEUTRAL``: keys added after runs existed, with the value that
  reproduces the earlier behaviour; at that value they are left out of the identity, so older run
  folders are still found and older checkpoints still resume. ``legacy_guider`` writes GUIDER's
  LightGCN or MF teacher in the form of before the teacher group (``teacher: lightgcn,
  teacher_dim, teacher_layers, teacher_reg``), so such a run keeps the identity it always had.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

NEUTRAL_KEYS = ("hydra", "train.resume", "train.progress", "train.skip_completed", "threads",
                "graph_cache", "eval.save_topk", "logger")
LOCATION_KEYS = ("data_dir",)
# overrides that are not settings of a run: a pinned sweep's name expands into its settings
NOT_SETTINGS = ("experiment",)

# dataset keys that change nothing while synthetic_features is false
SYNTHETIC_FEATURE_KEYS = ("synthetic_features", "feature_dims", "synthetic_features_seed")

SCALE_NEUTRAL = {"dataset.synthetic.n_interactions": 0, "dataset.synthetic.candidates": 0,
                 "eval.sample_users": 0, "eval.sample_seed": 0, "train.max_minutes": 0.0,
                 "backbone.feature_precision": "float32", "noise.per_user": False,
                 "eval.exclude_cold": "train"}

# GUIDER's keys added with the teacher group, the graph switch and the AMSC / distillation levers
GUIDER_NEUTRAL = {"denoise.graph": False, "denoise.amsc.conf_floor": 0.0,
                  "denoise.amsc.user_cap": 1.0, "denoise.amsc.score_ema": 0.0,
                  "denoise.kd.candidates": "batch", "denoise.kd.top_k": 20,
                  "denoise.kd.warmup_epochs": 0, "denoise.kd.top_refresh": "batch",
                  "denoise.kd.top_every": 1,
                  "denoise.teacher.feature_precision": "float32", "denoise.teacher_every": 1,
                  "denoise.teacher_epochs": 0, "denoise.teacher_patience": 0,
                  "denoise.teacher_min_epochs": 0, "denoise.teacher_valid_users": 0,
                  "denoise.dbpr.flags": "amsc", "denoise.teacher_update": "sync",
                  "denoise.dbpr.oracle_recall": 1.0, "denoise.dbpr.oracle_precision": 1.0}


def value_before_key(key: str, denoiser: str | None) -> Any:
    """The value a run made before ``key`` existed behaved as (its neutral value), or None when
    ``key`` is not one of the keys added later (GUIDER's only for a GUIDER run). The summary
    reads an absent key of an older run as this value, so that the run groups and pairs with
    newer runs of the same settings."""
    if key in SCALE_NEUTRAL:
        return SCALE_NEUTRAL[key]
    if denoiser == "guider":
        return GUIDER_NEUTRAL.get(key)
    return None


def is_neutral(key: str) -> bool:
    """Whether the dotted override ``key`` names a setting that cannot change a run's numbers."""
    return any(key == k or key.startswith(k + ".") for k in NEUTRAL_KEYS)


def is_setting_column(key: str) -> bool:
    """Whether an override ``key`` becomes a setting column of a sweep summary."""
    return (not is_neutral(key) and key.split(".")[0] not in LOCATION_KEYS
            and key not in NOT_SETTINGS)


def _drop(data: dict, table: Mapping[str, Any], prefix: str = "") -> dict:
    out = dict(data)
    for path, neutral in table.items():
        if prefix:
            if not path.startswith(prefix + "."):
                continue
            path = path[len(prefix) + 1:]
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            if not isinstance(node.get(key), dict):
                break
            node[key] = dict(node[key])
            node = node[key]
        else:
            if leaf in node and node[leaf] == neutral:
                del node[leaf]
    return out


def drop_neutral(data: dict, prefix: str = "") -> dict:
    """A copy of a plain config dict (the node at ``prefix``, e.g. "dataset", when given)
    without the SCALE_NEUTRAL keys that hold their neutral value."""
    return _drop(data, SCALE_NEUTRAL, prefix)


def dataset_identity(dataset: dict) -> dict:
    """A copy of a plain dataset dict without SYNTHETIC_FEATURE_KEYS unless synthetic_features
    (nor the dataset's SCALE_NEUTRAL keys at their neutral value)."""
    if dataset.get("synthetic_features"):
        return drop_neutral(dataset, "dataset")
    return drop_neutral({k: v for k, v in dataset.items() if k not in SYNTHETIC_FEATURE_KEYS},
                        "dataset")


LEGACY_TEACHER_KEYS = {"name", "embedding_dim", "n_layers", "reg_weight"}


def inert_kd_keys(kd: dict) -> set[str]:
    """GUIDER's distillation keys that cannot change a run with these ``kd`` settings: the top
    lists' schedule without the teacher's candidates, and ``top_every`` with the lists at every
    batch (absent keys read as the values older runs behaved as)."""
    if kd.get("candidates", "batch") != "teacher":
        return {"top_refresh", "top_every"}
    if kd.get("top_refresh", "batch") == "batch":
        return {"top_every"}
    return set()


def legacy_guider(denoise: dict) -> dict:
    """GUIDER's plain denoise dict in the form older runs wrote, so that a run keeps the identity
    it had before the teacher group existed: a LightGCN or MF teacher becomes ``teacher: <name>``
    with ``teacher_dim``, ``teacher_layers`` and ``teacher_reg``; any other teacher stays a
    backbone node. The later keys at the values that reproduce the older runs are left out."""
    out = _drop({"denoise": dict(denoise)}, GUIDER_NEUTRAL)["denoise"]
    kd = out.get("kd")
    if isinstance(kd, dict):
        # keys that change nothing in this run: the run is the same whatever their values
        inert = inert_kd_keys(kd)
        out["kd"] = {k: v for k, v in kd.items() if k not in inert}
    # a mean teacher copies the student: the teacher's own model and rate are unused; an
    # in-sync teacher has no moving average
    for key in (("teacher", "teacher_lr") if out.get("teacher_update") == "ema"
                else ("teacher_ema",)):
        out.pop(key, None)
    teacher = out.get("teacher")
    if (isinstance(teacher, dict) and teacher.get("name") in ("lightgcn", "mf")
            and set(teacher) <= LEGACY_TEACHER_KEYS):
        out["teacher"] = teacher["name"]
        out["teacher_dim"] = teacher.get("embedding_dim", 64)
        out["teacher_layers"] = teacher.get("n_layers", 2) if teacher["name"] == "lightgcn" else 2
        out["teacher_reg"] = teacher.get("reg_weight", 1e-4)
    return out


def current_form(plain: dict) -> dict:
    """A saved config.yaml in the form today's schemas read: GUIDER's older teacher keys
    (``teacher: lightgcn``, ``teacher_dim``, ``teacher_layers``, ``teacher_reg``) become the
    teacher group's node. Used by guider-eval on older run folders and by the summary (an older
    run's teacher keys under today's names)."""
    denoise = plain.get("denoise")
    if not isinstance(denoise, dict) or not isinstance(denoise.get("teacher"), str):
        return plain
    denoise = dict(denoise)
    name = denoise.pop("teacher")
    teacher = {"name": name, "embedding_dim": denoise.pop("teacher_dim", 64),
               "reg_weight": denoise.pop("teacher_reg", 1e-4)}
    layers = denoise.pop("teacher_layers", 2)
    if name == "lightgcn":
        teacher["n_layers"] = layers
    return {**plain, "denoise": {**denoise, "teacher": teacher}}


def plain_config(cfg: Any) -> dict:
    """A resolved, plain-dict copy of a task config (without the ``hydra`` node)."""
    if isinstance(cfg, DictConfig):
        return {key: (OmegaConf.to_container(cfg[key], resolve=True)
                      if OmegaConf.is_config(cfg[key]) else cfg[key])
                for key in cfg.keys() if key != "hydra"}
    return copy.deepcopy(dict(cfg))


def identity(cfg: Any) -> dict:
    """The settings that make a run what it is: the plain config without the neutral keys (and
    the older forms mapped onto the current one)."""
    data = plain_config(cfg)
    for dotted in NEUTRAL_KEYS:
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    if isinstance(data.get("dataset"), dict):
        data["dataset"] = dataset_identity(data["dataset"])
    if isinstance(data.get("denoise"), dict) and data["denoise"].get("name") == "guider":
        data["denoise"] = legacy_guider(data["denoise"])
    return drop_neutral(data)


def config_hash(cfg: Any, length: int = 12) -> str:
    """Hash of a run's identity. Accepts a DictConfig (the task config, or a full config with a
    ``hydra`` node) or the plain dict of a saved ``config.yaml``; both give the same hash."""
    blob = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(text)).strip("_") or "x"


def run_id(cfg: Any, variant: str | None = None) -> str:
    """Folder name of one run in a sweep: readable identity plus the config hash, e.g.
    ``synthetic-lightgcn-guider-random0.2-seed1-3fa2c1d9e0b4``; with an experiment ``variant``
    (the ablation's ``+experiment/variant=no_kd``) after the denoiser:
    ``synthetic-freedom-guider-no_kd-none-seed0-<hash>``."""
    plain = plain_config(cfg)

    def get(path: str, default: Any = "") -> Any:
        node: Any = plain
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    noise = str(get("noise.type", "none"))
    if noise != "none":
        noise += f"{get('noise.ratio', '')}"
    parts = [get("dataset.name"), get("backbone.name"), get("denoise.name"), variant or "",
             noise, f"seed{get('seed')}", config_hash(plain)]
    return "-".join(_slug(p) for p in parts if p != "")


def comparable_fingerprint(fingerprint: dict | None) -> dict | None:
    """A stored resume fingerprint in the current form (GUIDER's older teacher keys mapped)."""
    if not fingerprint or not isinstance(fingerprint.get("denoise"), dict):
        return fingerprint
    if fingerprint["denoise"].get("name") != "guider":
        return fingerprint
    return {**fingerprint, "denoise": legacy_guider(fingerprint["denoise"])}


def run_fingerprint(root: Any, dataset: Any, noise: Any, backbone_cfg: Any,
                    denoise_cfg: Any) -> dict:
    """What a checkpoint must have been written with to be resumed (typed configs)."""
    denoise = asdict(denoise_cfg)
    if denoise.get("name") == "guider":
        denoise = legacy_guider(denoise)
    fingerprint = {
        "seed": root.seed, "dataset": dataset_identity(asdict(dataset)),
        "noise": drop_neutral(asdict(noise), "noise"),
        "backbone": drop_neutral(asdict(backbone_cfg), "backbone"), "denoise": denoise,
        "batch_size": root.train.batch_size, "lr": root.train.lr,
        "eval_every": root.train.eval_every,
    }
    if root.eval.sample_users:  # absent at 0, so older checkpoints still resume
        fingerprint["eval_sample"] = [root.eval.sample_users, root.eval.sample_seed]
    if root.eval.exclude_cold != "train":  # likewise
        fingerprint["exclude_cold"] = root.eval.exclude_cold
    return fingerprint

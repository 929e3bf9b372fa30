"""Structured-config schemas for the parts of the configuration every run shares.

The groups whose content depends on the chosen entry (``backbone``, ``denoise``) are validated
against the schema their registry entry declares (see ``guider.registry``); ``dataset`` and
``noise`` have one schema each, defined here. ``ConfigStore`` gets the root schema so Hydra
itself rejects a mistyped top-level value (``train.epochs=abc``) when it composes the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


@dataclass
class ModalityConfig:
    """One generated modality of the synthetic dataset."""

    dim: int = 64
    # Share of the feature variance that comes from the item's latent factors (0 = pure noise).
    signal: float = 0.6


@dataclass
class SyntheticConfig:
    n_users: int = 3000
    n_items: int = 1500
    latent_dim: int = 16
    # Per-user history length ~ min_interactions + Geometric with this mean excess.
    mean_interactions: float = 20.0
    min_interactions: int = 5
    max_interactions: int = 200
    # Item popularity bias b_i = popularity * log(rank^-1) (Zipf-like); 0 = no popularity skew.
    popularity: float = 0.8
    # Sharpness of preference: items drawn with probability ~ exp((p_u . q_i) / temperature + b_i).
    temperature: float = 0.25
    # Fraction of training interactions replaced by uniformly random items (labelled noise).
    noise_fraction: float = 0.1
    modalities: dict[str, ModalityConfig] = field(
        default_factory=lambda: {"image": ModalityConfig(64, 0.6), "text": ModalityConfig(48, 0.4)}
    )
    seed: int = 0


@dataclass
class DatasetConfig:
    name: str = MISSING
    # "mmrec": a folder <data_dir>/<folder>/ with <inter_file> and feature .npy files;
    # "synthetic": generated in memory from `synthetic`.
    kind: str = "mmrec"
    folder: Optional[str] = None  # default: the dataset name
    inter_file: Optional[str] = None  # default: <name>.inter
    # modality name -> feature file in the folder (row k = item k), e.g. {image: image_feat.npy}
    features: dict[str, str] = field(default_factory=dict)
    synthetic: Optional[SyntheticConfig] = None


@dataclass
class NoiseConfig:
    # none | random | popular | modal
    type: str = "none"
    ratio: float = 0.0
    modality: Optional[str] = None  # for modal noise; default: the dataset's first modality
    seed: int = 0


@dataclass
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    eval_every: int = 1
    patience: int = 20  # evaluations without improvement before stopping
    resume: bool = False
    save_checkpoints: bool = True
    progress: bool = True  # tqdm bars
    # In a sweep (-m): a run folder already holding a completed run of the same resolved config
    # is skipped (its metrics.json is reused); false retrains it from scratch.
    skip_completed: bool = True


@dataclass
class EvalConfig:
    topk: list[int] = field(default_factory=lambda: [5, 10, 20, 50])
    valid_metric: str = "Recall@20"
    batch_users: int = 4096


@dataclass
class RootConfig:
    seed: int = 0
    data_dir: str = "data"
    device: str = "auto"  # auto | cpu | cuda
    # torch intra-op threads per run; 0 = auto (the cores this process may use divided by the
    # number of jobs the launcher runs at once, capped by OMP_NUM_THREADS when set)
    threads: int = 0
    dataset: Any = MISSING
    backbone: Any = MISSING
    denoise: Any = MISSING
    noise: Any = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def register_schemas() -> None:
    ConfigStore.instance().store(name="guider_schema", node=RootConfig)


METRIC_NAMES = ("Recall", "NDCG", "Precision", "MAP")
DEVICES = ("auto", "cpu", "cuda")
NOISE_TYPES = ("none", "random", "popular", "modal")


def check_common(cfg: DictConfig) -> tuple[RootConfig, DatasetConfig, NoiseConfig]:
    """Validate the shared parts; raise ValueError naming the key and the fix."""
    root = OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)
    dataset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg.dataset))
    noise = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(NoiseConfig), cfg.noise))
    if root.device not in DEVICES:
        raise ValueError(f"device={root.device!r}: choose one of {', '.join(DEVICES)}")
    if dataset.kind not in ("mmrec", "synthetic"):
        raise ValueError(f"dataset.kind={dataset.kind!r}: choose mmrec or synthetic")
    if dataset.kind == "synthetic" and dataset.synthetic is None:
        dataset.synthetic = SyntheticConfig()
    if noise.type not in NOISE_TYPES:
        raise ValueError(f"noise.type={noise.type!r}: choose one of {', '.join(NOISE_TYPES)}")
    if not 0.0 <= noise.ratio < 1.0:
        raise ValueError(f"noise.ratio={noise.ratio}: must lie in [0, 1)")
    t: TrainConfig = root.train
    for key in ("epochs", "batch_size", "eval_every", "patience"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key}={getattr(t, key)}: must be a positive integer")
    if t.lr <= 0:
        raise ValueError(f"train.lr={t.lr}: must be positive")
    e: EvalConfig = root.eval
    if not e.topk or min(e.topk) < 1:
        raise ValueError(f"eval.topk={list(e.topk)}: must be a non-empty list of positive integers")
    metric, _, k = e.valid_metric.partition("@")
    if metric not in METRIC_NAMES or not k.isdigit() or int(k) not in e.topk:
        raise ValueError(
            f"eval.valid_metric={e.valid_metric!r}: must be <metric>@<k> with metric in "
            f"{', '.join(METRIC_NAMES)} and k in eval.topk={list(e.topk)}"
        )
    if e.batch_users < 1:
        raise ValueError(f"eval.batch_users={e.batch_users}: must be positive")
    return OmegaConf.to_object(root), dataset, noise

"""Structured-config schemas for the parts of the configuration every run shares.

The groups whose content depends on the chosen entry (``backbone``, ``denoise``) are validated
against the schema their registry entry declares (see ``guider.registry``); ``dataset`` and
``noise`` have one schema each, defined here. ``ConfigStore`` gets the root schema so Hydra
itself rejects a mistyped top-level value (``train.epochs=abc``) when it composes the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# the config tree (conf/ at the repository root, next to the package)
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


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
    # Exact total of interactions (train + valid + test); 0 = the history lengths alone decide
    # (about n_users x mean_interactions). When set, the lengths follow the same law with mean
    # n_interactions / n_users and are adjusted by +-1 to hit the total exactly.
    n_interactions: int = 0
    # 0 = exact: each history is a Gumbel top-k over the whole catalogue (cost n_users x n_items,
    # fine up to ~10^9 pairs). k > 0 = each user's history is chosen, with the same preference
    # weights, from k x (history length) items drawn by popularity (sampling-importance-
    # resampling; cost ~ k x interactions): the approximation that scales to millions of users.
    candidates: int = 0
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
    # modality name -> width of the features generated for it when synthetic_features=true (the
    # yamls give the real files' widths; a real file is never checked against it); a modality not
    # listed falls back to guider.data.loader.SYNTHETIC_FEATURE_DIMS (image 4096, text 384, audio 128).
    feature_dims: dict[str, int] = field(default_factory=dict)
    # true: every declared feature file that is absent is replaced by seeded standard-Gaussian
    # noise (pure noise, no signal: a stand-in for speed benchmarks, never for accuracy). The
    # run warns and metrics.json records which modalities were generated.
    synthetic_features: bool = False
    # seed of the generated features (kept apart from the top-level seed, like synthetic.seed)
    synthetic_features_seed: int = 0
    synthetic: Optional[SyntheticConfig] = None


@dataclass
class NoiseConfig:
    # none | random | popular | modal | drop
    type: str = "none"
    ratio: float = 0.0
    modality: Optional[str] = None  # for modal noise; default: the dataset's first modality
    seed: int = 0
    # random/popular only. false: round(ratio x |train|) pairs with uniformly drawn users (light
    # users then carry most of the noise); true: each user u gets round(ratio x n_u) new items,
    # so the noise share no longer depends on the user's degree (docs/measuring.md)
    per_user: bool = False

    def check(self) -> None:
        """Value checks: run when the config is validated and by ``inject_noise``."""
        if self.type not in NOISE_TYPES:
            raise ValueError(f"noise.type={self.type!r}: choose one of {', '.join(NOISE_TYPES)}")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"noise.ratio={self.ratio}: must lie in [0, 1)")
        if self.per_user and self.type not in ("random", "popular"):
            raise ValueError(f"noise.per_user=true applies to noise=random|popular, not "
                             f"noise={self.type}; drop it or choose one of those")


@dataclass
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    eval_every: int = 1
    patience: int = 20  # evaluations without improvement before stopping
    # wall-clock budget in minutes for training + validation (0 = none): checked before each
    # epoch; when spent, the run ends like an early stop (best checkpoint, test metrics) and
    # metrics.json says stop_reason="time_budget". For cluster time limits and fixed budgets.
    max_minutes: float = 0.0
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
    # 0 = every user; N > 0 = a fixed sample of N users (drawn with sample_seed from the users
    # with held-out items) evaluated for valid and test alike: an approximation for very large
    # datasets, recorded in metrics.json (docs/scale.md)
    sample_users: int = 0
    sample_seed: int = 0
    # which held-out pairs are left out as cold (user or item without training interactions):
    # "train" = cold in the training split as trained on, injected noise included; "before_noise"
    # = cold in the training split before noise injection, so every noise setting of a dataset is
    # evaluated on the same pairs (docs/measuring.md)
    exclude_cold: str = "train"
    # N > 0: write every test user's top-N list at the best state (recommendations.parquet, or
    # .csv without pyarrow), with the dataset's original ids when it has id mapping files
    save_topk: int = 0


@dataclass
class LoggerConfig:
    """Experiment tracking (conf/logger/, guider/tracking.py): never part of a run's identity."""

    name: str = "csv"  # csv | tensorboard | mlflow | wandb
    # tensorboard: event folder (default <run dir>/tensorboard); wandb: the folder its run
    # folder goes into (default the run dir)
    dir: Optional[str] = None
    tracking_uri: Optional[str] = None  # mlflow: default sqlite:///<cwd>/outputs/mlflow.db
    # mlflow: the experiment, wandb: the group; default the sweep folder's name, else "guider"
    experiment: Optional[str] = None
    artifacts: bool = True  # mlflow: the run folder's files (no checkpoints) as artifacts
    project: str = "guider"  # wandb: the project
    mode: str = "offline"  # wandb: offline (local files, no network) | online | disabled


@dataclass
class GraphCacheConfig:
    # folder of cached frozen kNN item graphs (guider/graphs/cache.py), relative to the working
    # directory; null switches the cache off. Never inside data_dir.
    dir: Optional[str] = ".cache/guider/graphs"
    # cache only graphs with n_items^2 x dim >= min_work multiply-adds (smaller ones rebuild in
    # well under a second: TikTok's 6,710 x 128 is 5.8e9, Baby's 7,050 x 4,096 is 2.0e11)
    min_work: float = 1e10


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
    graph_cache: GraphCacheConfig = field(default_factory=GraphCacheConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def _times(factor: Any, value: Any) -> float:
    """``${guider_times:2,${train.lr}}``: a number times another (a rate relative to a rate)."""
    try:
        return float(factor) * float(value)
    except (TypeError, ValueError):
        raise ValueError(f"${{guider_times:{factor},{value}}}: both arguments must be "
                         "numbers") from None


def register_config_resolvers() -> None:
    """``${guider_times:a,b}`` = a x b (a preset sets ``denoise.teacher_lr:
    ${guider_times:2,${train.lr}}``, twice whatever the student's rate is). Called at this
    module's import (the entry points import it before they compose a config) and by
    guider.reporting, which resolves a run's saved .hydra/config.yaml without importing it."""
    if not OmegaConf.has_resolver("guider_times"):
        OmegaConf.register_new_resolver("guider_times", _times)


register_config_resolvers()


def register_schemas() -> None:
    ConfigStore.instance().store(name="guider_schema", node=RootConfig)


METRIC_NAMES = ("Recall", "NDCG", "Precision", "MAP")
DEVICES = ("auto", "cpu", "cuda")
NOISE_TYPES = ("none", "random", "popular", "modal", "drop")


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse keys the root schema does not know (``+train.epohcs=3``, ``+foo=1``): Hydra lets a
    ``+`` override add them, and merging onto the schema would keep them silently. The groups
    with schemas of their own (dataset, noise, backbone, denoise) are checked when merged."""
    import difflib
    from dataclasses import fields, is_dataclass

    def walk(node: Any, schema: type, prefix: str) -> None:
        known = {f.name: f for f in fields(schema)}
        for key in node.keys():
            if prefix == "" and key == "hydra":
                continue
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f"; did you mean {prefix}{close[0]}?" if close else ""
                raise ValueError(f"unknown key {prefix}{key}{hint} (a '+' override adds keys "
                                 f"that nothing reads; see guider-train --cfg job for the keys)")
            default = known[key].default_factory() if callable(known[key].default_factory) else None
            value = node[key]
            if is_dataclass(default) and OmegaConf.is_dict(value):
                walk(value, type(default), f"{prefix}{key}.")

    walk(cfg, RootConfig, "")


def check_common(cfg: DictConfig) -> tuple[RootConfig, DatasetConfig, NoiseConfig]:
    """Validate the shared parts; raise ValueError naming the key and the fix."""
    check_known_keys(cfg)
    root = OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)
    dataset = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg.dataset))
    noise = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(NoiseConfig), cfg.noise))
    if root.device not in DEVICES:
        raise ValueError(f"device={root.device!r}: choose one of {', '.join(DEVICES)}")
    if dataset.kind not in ("mmrec", "synthetic"):
        raise ValueError(f"dataset.kind={dataset.kind!r}: choose mmrec or synthetic")
    if dataset.kind == "synthetic" and dataset.synthetic is None:
        dataset.synthetic = SyntheticConfig()
    for modality, dim in dataset.feature_dims.items():
        if modality not in dataset.features:
            raise ValueError(
                f"dataset.feature_dims.{modality}: no such modality in dataset.features "
                f"({', '.join(dataset.features) or 'none declared'}); declare its file or drop the key"
            )
        if dim < 1:
            raise ValueError(f"dataset.feature_dims.{modality}={dim}: must be a positive integer")
    noise.check()
    t: TrainConfig = root.train
    for key in ("epochs", "batch_size", "eval_every", "patience"):
        if getattr(t, key) < 1:
            raise ValueError(f"train.{key}={getattr(t, key)}: must be a positive integer")
    if t.lr <= 0:
        raise ValueError(f"train.lr={t.lr}: must be positive")
    if t.max_minutes < 0:
        raise ValueError(f"train.max_minutes={t.max_minutes}: must be 0 (no budget) or positive")
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
    if e.exclude_cold not in ("train", "before_noise"):
        raise ValueError(f"eval.exclude_cold={e.exclude_cold!r}: choose train or before_noise")
    if e.save_topk < 0:
        raise ValueError(f"eval.save_topk={e.save_topk}: must be >= 0 (0 = write none)")
    if e.sample_users < 0:
        raise ValueError(f"eval.sample_users={e.sample_users}: must be >= 0 (0 = every user)")
    return OmegaConf.to_object(root), dataset, noise

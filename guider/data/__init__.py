"""Data layer: formats, loading, the synthetic generator, noise injection and sampling."""

from __future__ import annotations

from pathlib import Path

from ..config import DatasetConfig, NoiseConfig
from .dataset import Interactions, Split
from .errors import DataError
from .loader import load_mmrec, report_cold
from .noise import inject_noise
from .sampling import Batch, BPRSampler
from .synthetic import generate

__all__ = ["Interactions", "Split", "DataError", "Batch", "BPRSampler", "load_data", "generate",
           "inject_noise", "load_mmrec", "dataset_folder"]


def dataset_folder(dataset: DatasetConfig, data_dir: str | Path) -> Path:
    """The folder of an mmrec dataset: ``<data_dir>/<folder or name>``."""
    return Path(data_dir) / (dataset.folder or dataset.name)


def load_data(dataset: DatasetConfig, noise: NoiseConfig, data_dir: str | Path,
              required_modalities: list[str] | None = None) -> Interactions:
    """Load (or generate) a dataset, then inject noise into its training split."""
    if dataset.kind == "synthetic":
        data = generate(dataset.synthetic, dataset.name)
    else:
        data = load_mmrec(dataset_folder(dataset, data_dir), dataset.name, dataset.inter_file,
                          dict(dataset.features), required_modalities,
                          synthetic=dataset.synthetic_features,
                          feature_dims=dict(dataset.feature_dims),
                          synthetic_seed=dataset.synthetic_features_seed)
    data.info["noise"] = inject_noise(data, noise)
    report_cold(data)
    return data

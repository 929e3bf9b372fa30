from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from guider.config import CONF_DIR
from guider.config import register_schemas

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# A tiny synthetic set and a short schedule: every pipeline test runs in about a second.
TINY_SYNTHETIC = [
    "dataset.synthetic.n_users=300",
    "dataset.synthetic.n_items=200",
    "dataset.synthetic.mean_interactions=12",
]
SHORT = [
    "backbone=lightgcn",  # the defaults are FREEDOM + GUIDER; most tests want the plain loop
    "denoise=none",
    "train.lr=0.001",
    "train.epochs=4",
    "train.batch_size=512",
    "train.progress=false",
    "eval.batch_users=128",
    "device=cpu",
]
TINY = TINY_SYNTHETIC + SHORT


def compose_config(overrides: list[str] = ()):
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def tiny_cfg():
    """Compose the real config on the tiny synthetic set with a short schedule."""
    def make(*extra: str):
        return compose_config(TINY + list(extra))

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def short_cfg():
    """Compose the real config with a short schedule (pick the dataset in ``extra``)."""
    def make(*extra: str):
        return compose_config(SHORT + list(extra))

    yield make
    GlobalHydra.instance().clear()


def shared_dataset(name: str) -> Path:
    folder = SHARED_DATA / name
    if not (folder / f"{name}.inter").is_file():
        pytest.skip(f"real dataset '{name}' not found at {folder} (it exists on developer and CI "
                    f"machines only)")
    return SHARED_DATA


class Interrupt(Exception):
    """Raised from a training callback to simulate a run killed after some epoch."""


def run_interrupted_then_resumed(make_cfg, overrides, run_dir: Path, stop_epoch: int) -> dict:
    """Train with ``overrides`` until the end of ``stop_epoch``, interrupt, then resume in the
    same folder with train.resume=true; returns the resumed run's metrics."""
    from guider.pipeline import prepare, run
    from guider.training import fit

    def stop(epoch: int) -> None:
        if epoch == stop_epoch:
            raise Interrupt

    job = prepare(make_cfg(*overrides))
    with pytest.raises(Interrupt):
        fit(job.model, job.denoiser, job.data, job.root.train, job.root.eval, job.device,
            job.root.seed, run_dir, job.fingerprint, on_epoch_end=stop)
    return run(make_cfg(*overrides, "train.resume=true"), run_dir)

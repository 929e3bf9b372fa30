"""One run, end to end, importable without the CLI: validate the config, load data and inject
noise, build backbone and denoiser, train, write the run folder."""

from __future__ import annotations

import copy
import logging
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__, io
from ._malloc import tune_malloc
from .backbones import BACKBONES, Backbone, build_backbone
from .graphs.cache import GraphCache, interactions_digest, use_graph_cache
from .config import DatasetConfig, RootConfig, check_common
from .identity import run_fingerprint
from .data import Interactions, dataset_folder, load_data
from .denoise import DENOISERS, Denoiser, build_denoiser
from .evaluation import build_eval_sets, evaluate
from .evaluation.detection import detection_metrics
from .sizecheck import check_size
from .training import check_resumable, fit
from .record import RunRecord, failure_record, is_completed, read_record, write_record
from .tracking import Tracker, make_tracker
from .training.loop import noise_scores_of, write_history

log = logging.getLogger("guider")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is visible; use device=cpu or device=auto")
    return torch.device(name)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "guider": __version__}
    for pkg in ("torch", "numpy", "scipy", "pandas", "hydra-core", "omegaconf", "pot"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def validate(cfg: DictConfig):
    """Every schema check, before any work starts. Returns typed configs."""
    root, dataset, noise = check_common(cfg)
    backbone = BACKBONES.validate(cfg.backbone)
    denoise = DENOISERS.validate(cfg.denoise)
    return root, dataset, noise, backbone, denoise


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Run one job in ``run_dir``; returns the metrics dict also written to metrics.json."""
    run_dir = Path(run_dir)
    check_resume(cfg, run_dir)  # a refused resume changes nothing in the folder
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    logging.getLogger("guider").addHandler(handler)
    logging.getLogger("guider").setLevel(logging.INFO)
    try:
        return _run(cfg, run_dir)
    finally:
        logging.getLogger("guider").removeHandler(handler)
        handler.close()


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """With ``train.resume`` and a checkpoint in ``run_dir``: raise ``ResumeRefused`` before
    anything is written when the checkpoint comes from another configuration."""
    parts = validate(cfg)
    last = run_dir / "checkpoints" / "last.pt"
    if parts[0].train.resume and last.is_file():
        check_resumable(torch.load(last, map_location="cpu", weights_only=False),
                        run_fingerprint(*parts), last)


@dataclass
class Job:
    """Everything one run needs, built from a validated config."""

    root: RootConfig
    data: Interactions
    model: Backbone
    denoiser: Denoiser
    device: torch.device
    fingerprint: dict
    dataset_cfg: DatasetConfig | None = None


def prepare(cfg: DictConfig) -> Job:
    root, dataset, noise, backbone_cfg, denoise_cfg = validate(cfg)
    tune_malloc()
    device = resolve_device(root.device)
    seed = root.seed
    backbone_cls = BACKBONES.get(backbone_cfg.name).cls
    required = list(dataset.features) if backbone_cls.uses_features else None
    data = load_data(dataset, noise, root.data_dir, required)
    log.info("data: %s", data.summary())
    torch.manual_seed(seed)
    np.random.seed(seed)
    check_model_size(data, backbone_cfg, denoise_cfg, device)
    keep = DENOISERS.get(denoise_cfg.name).cls.graph_edges(denoise_cfg, data)
    graph_data = data
    if keep is not None:  # the denoiser keeps some training interactions out of the graphs
        graph_data = data.with_train_subset(keep)
        log.info("graphs: built from %d of %d training interactions (denoise=%s)",
                 int(keep.sum()), len(keep), denoise_cfg.name)
    with use_graph_cache(graph_cache(root, dataset, graph_data)):
        model = build_backbone(backbone_cfg, graph_data, device)
        denoiser = build_denoiser(denoise_cfg, data, model, device, seed)
    fingerprint = run_fingerprint(root, dataset, noise, backbone_cfg, denoise_cfg)
    return Job(root, data, model, denoiser, device, fingerprint, dataset)


def graph_cache(root: RootConfig, dataset: DatasetConfig, data: Interactions) -> GraphCache | None:
    """The kNN graph cache of this run (None when ``graph_cache.dir`` is null), scoped to its
    training interactions after noise injection. Refuses a folder inside the dataset's folder."""
    folder = root.graph_cache.dir
    if not folder:
        return None
    folder = Path(folder).expanduser()
    if dataset.kind == "mmrec":
        data_folder = dataset_folder(dataset, root.data_dir).expanduser()
        if folder.resolve().is_relative_to(data_folder.resolve()):
            raise ValueError(
                f"graph_cache.dir={root.graph_cache.dir!r} lies inside the data folder "
                f"{data_folder}; caches never go into the data folder: choose another folder, "
                f"or graph_cache.dir=null to switch the cache off")
    scope = interactions_digest(data.train.users, data.train.items, data.n_users, data.n_items)
    return GraphCache(folder, scope, root.graph_cache.min_work)


# float32 copies of an embedding table alive in training: the weights, their gradient, Adam's two
# moments, the propagated layers kept for the backward pass, the best-model copy
TABLE_COPIES = 12


def check_model_size(data: Interactions, backbone_cfg, denoise_cfg, device: torch.device) -> None:
    """Fail before building the model when its embedding tables cannot fit, the denoiser's own
    included (``Denoiser.embedding_tables``: GUIDER's teacher, DeCA's auxiliary models)."""
    nodes = data.n_users + data.n_items
    dim = backbone_cfg.embedding_dim
    check_size(f"the embedding tables ({nodes:,} users and items x {dim} dims, with gradients, "
               f"optimiser state and propagated layers)", nodes * dim * 4 * TABLE_COPIES,
               "backbone.embedding_dim (or a dataset with fewer users and items)", device)
    for what, tdim, knob in DENOISERS.get(denoise_cfg.name).cls.embedding_tables(denoise_cfg):
        check_size(f"{what} ({nodes:,} x {tdim} dims)", nodes * tdim * 4 * TABLE_COPIES, knob,
                   device)


def detection(job: Job) -> dict | None:
    """Noise-detection quality of the denoiser against the known noise labels (None when the data
    carry none): its AUC and flagged set when it has them, the trivial degree and popularity
    AUCs and the per-degree-band numbers always (guider.evaluation.detection)."""
    data = job.data
    if not data.has_noise_labels:
        return None
    # the trivial scores and the degree bands are reported for every denoiser, `none` included
    scores = noise_scores_of(job.denoiser, job.model, data)
    return detection_metrics(scores, job.denoiser.flagged(),
                             data.train_noise, data.train.users, data.train.items)


def auxiliary_metrics(job: Job, best_state: dict | None = None) -> dict:
    """Valid and test metrics of the denoiser's own recommenders (e.g. GUIDER's teacher), for
    diagnosis only: selection and early stopping look at the student alone. Measured in their
    final state and, given the denoiser's state at the student's best epoch (``best_state``),
    there too (``<name>.at_best``), like the student. The final state is restored afterwards."""
    out: dict = {}
    scorers = job.denoiser.scorers()
    if not scorers:
        return out
    evalc = job.root.eval
    valid, test, _ = build_eval_sets(job.data, evalc)  # the same users as the student's
    sets = {"valid": valid, "test": test}

    def measure(scorers: dict) -> dict:
        return {name: {split: evaluate(scorer, es, evalc.topk, evalc.batch_users, job.device)
                       for split, es in sets.items()} for name, scorer in scorers.items()}

    out = measure(scorers)
    if best_state is not None:
        final = copy.deepcopy(job.denoiser.state_dict())
        job.denoiser.load_state_dict(best_state)
        for name, metrics in measure(job.denoiser.scorers()).items():
            out[name]["at_best"] = metrics
        job.denoiser.load_state_dict(final)
    return out


def save_recommendations(job: Job, path_stem: Path) -> Path:
    """Every test user's top-``eval.save_topk`` list of the model in its current state (as the
    evaluator ranks: training items masked) as ``<stem>.parquet``, or ``<stem>.csv`` when pyarrow
    is absent. Columns: user, rank (1 = best), item, score; user_id and item_id too, the
    dataset's original ids, when its folder has u_id_mapping.csv / i_id_mapping.csv."""
    import pandas as pd

    from .data.loader import load_id_mapping
    from .evaluation import recommend

    evalc, data = job.root.eval, job.data
    _, test, _ = build_eval_sets(data, evalc)
    job.model.eval()
    recs = recommend(job.model.scorer(), test, evalc.save_topk, evalc.batch_users, job.device)
    frame = pd.DataFrame(recs)
    dataset = job.dataset_cfg
    if dataset is not None and dataset.kind == "mmrec":
        folder = dataset_folder(dataset, job.root.data_dir)
        for col, name, n in (("user", "u_id_mapping.csv", data.n_users),
                             ("item", "i_id_mapping.csv", data.n_items)):
            mapping = load_id_mapping(folder / name, n)
            if mapping is not None:
                frame[f"{col}_id"] = mapping[frame[col].to_numpy()]
    try:
        import pyarrow  # noqa: F401

        path = path_stem.with_suffix(".parquet")
        frame.to_parquet(path, index=False)
    except ImportError:
        path = path_stem.with_suffix(".csv")
        log.info("pyarrow is not installed: recommendations written as CSV")
        io.write_text(path, frame.to_csv(index=False))
    log.info("top-%d recommendations of %d users: %s", evalc.save_topk, len(test.users), path)
    return path


def _run(cfg: DictConfig, run_dir: Path) -> dict:
    t_start = time.perf_counter()
    root = validate(cfg)[0]  # fail on a bad config before writing anything
    config = OmegaConf.to_container(cfg, resolve=True)
    tracker = make_tracker(root.logger, run_dir, config)  # a missing extra fails here
    io.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    tracker.start()
    try:
        metrics = _train(cfg, run_dir, t_start, tracker)
    except BaseException:
        tracker.finish(None, status="FAILED")
        raise
    tracker.finish(metrics)
    return metrics


def _train(cfg: DictConfig, run_dir: Path, t_start: float, tracker: Tracker) -> dict:
    job = prepare(cfg)
    root, data, seed = job.root, job.data, job.root.seed
    result = fit(job.model, job.denoiser, data, root.train, root.eval, job.device, seed, run_dir,
                 job.fingerprint, on_eval=tracker.log_eval)

    record = RunRecord(
        dataset=data.summary(), data_digest=data.digest(), backbone=job.model.cfg.name,
        denoise=job.denoiser.cfg.name, seed=seed, device=str(job.device),
        threads=torch.get_num_threads(), noise=data.info.get("noise"),
        synthetic_features=data.info.get("synthetic_features", {}),
        best_epoch=result.best_epoch, epochs_run=result.epochs_run,
        stopped_early=result.stopped_early, stop_reason=result.stop_reason,
        valid_metric=root.eval.valid_metric, valid=result.valid, test=result.test,
        eval_excluded={**result.eval_excluded, "rule": root.eval.exclude_cold},
        eval_sample=result.eval_sample, detection=detection(job),
        denoiser=job.denoiser.summary(), auxiliary=auxiliary_metrics(job, result.best_denoiser),
        cold_start=data.info.get("cold_start"),
        seconds={**result.seconds, "total": result.seconds_previous + time.perf_counter() - t_start,
                 "sessions": result.sessions},
        versions=versions(),
    )
    if root.eval.save_topk:
        record.recommendations = save_recommendations(job, run_dir / "recommendations").name
    metrics = write_record(run_dir, record)
    write_history(run_dir, result.history)
    log.info("test: %s", {k: round(v, 5) for k, v in result.test.items()})
    return metrics


def write_failure(run_dir: str | Path, exc: BaseException) -> None:
    """Record a failed run so a sweep summary shows it instead of silently dropping it. A folder
    that holds a completed run keeps it: the failure of a later command there is only logged."""
    try:
        if is_completed(read_record(run_dir)):
            log.error("%s holds a completed run: left as it was (this command failed: %s: %s)",
                      run_dir, type(exc).__name__, exc)
            return
    except (ValueError, AttributeError):  # unreadable: replaced by the failure record
        pass
    write_record(run_dir, failure_record(exc, versions()))


def summary_line(metrics: dict) -> str:
    """The one line a run prints at its end (guider-train, guider-eval)."""
    test = metrics["test"]
    keys = ("Recall@20", "NDCG@20")
    shown = "  ".join(f"{k} {test[k]:.4f}" for k in keys if k in test)
    det = metrics.get("detection") or {}
    if det.get("auc") is not None:
        shown += f"  detection AUC {det['auc']:.3f}"
        if det.get("degree_auc") is not None:  # what "light user = noise" alone would give
            shown += f" (user degree alone {det['degree_auc']:.3f})"
    return (f"{metrics['dataset']['name']} / {metrics['backbone']} / denoise={metrics['denoise']}: "
            f"test {shown}  (best epoch {metrics['best_epoch']}, {metrics['epochs_run']} epochs, "
            f"{metrics['seconds']['total']:.1f} s)")

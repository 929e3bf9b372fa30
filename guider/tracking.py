"""Experiment tracking: the ``logger`` config group (conf/logger/).

- ``csv`` (default): nothing beyond the run folder itself (``history.csv``, ``metrics.json``).
- ``tensorboard``: event files in ``<run dir>/tensorboard`` (or ``logger.dir``): the resolved
  config as text, the training loss and every validation metric per evaluated epoch, the test
  metrics at the best state. Needs the ``tensorboard`` package
  (``pip install 'guider[tensorboard]'``).
- ``mlflow``: one MLflow run per guider run, in a local SQLite store beside the runs
  (``outputs/mlflow.db`` under the working directory, artifacts in ``outputs/mlflow-artifacts``)
  or any ``logger.tracking_uri``. Params: the resolved config flattened to dotted keys; metrics:
  loss and validation metrics per evaluated epoch (step = epoch), test metrics at the end
  (``@`` becomes ``_at_``: MLflow refuses it in names); artifacts: the run folder's files
  without checkpoints. The runs of one sweep share an experiment named after the sweep folder.
  Needs ``mlflow`` (``pip install 'guider[mlflow]'``).
- ``wandb``: Weights & Biases, offline by default (``logger.mode``): the run is written under
  ``<run dir>/wandb/offline-run-*`` (or ``logger.dir``) without any network use, to be uploaded
  later with ``wandb sync`` if wanted. Config flattened, metrics per evaluated epoch
  (step = epoch), test metrics and the detection AUC in the run summary; a sweep's runs share the
  group named after the sweep folder. Needs ``wandb`` (``pip install 'guider[wandb]'``).

A tracker never costs a run: a missing package fails before any work, naming the extra; a
tracker that raises during the run is switched off with a warning, and metrics.json is written
as always.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("guider")

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys (lists kept as values)."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = node
    return out


def metric_name(key: str) -> str:
    return key.replace("@", "_at_")


def eval_metrics(row: dict) -> dict[str, float]:
    """One evaluated epoch of history.csv as tracker metrics: train/loss, valid/<metric>, and
    the denoiser's detection where the noise is known, detect/<auc|precision|recall|flagged>."""
    def name(k: str) -> str:
        if k == "loss":
            return "train/loss"
        if k.startswith("detect_"):
            return f"detect/{k.removeprefix('detect_')}"
        return f"valid/{metric_name(k)}"
    return {name(k): float(v) for k, v in row.items() if k != "epoch"}


def test_metrics(metrics: dict) -> dict[str, float]:
    """The run's test metrics (at the best state) as tracker metrics: test/<metric>."""
    return {f"test/{metric_name(k)}": float(v) for k, v in (metrics.get("test") or {}).items()}


def detection_auc(metrics: dict) -> float | None:
    auc = (metrics.get("detection") or {}).get("auc")
    return None if auc is None else float(auc)


class Tracker:
    """The csv logger: the run folder is the record; nothing else is written."""

    name = "csv"

    def __init__(self, cfg: Any, run_dir: Path, config: dict):
        self.cfg, self.run_dir, self.config = cfg, Path(run_dir), config
        self.broken = False

    def _safe(self, what: str, call: Callable[[], None]) -> None:
        if self.broken:
            return
        try:
            call()
        except Exception as err:  # a tracking failure must never cost the run
            self.broken = True
            log.warning("logger=%s failed while %s (%s: %s): tracking is off for the rest of "
                        "this run; the run itself goes on and writes metrics.json", self.name,
                        what, type(err).__name__, err)

    def start(self) -> None:
        self._safe("starting", self._start)

    def log_eval(self, row: dict) -> None:
        self._safe(f"logging epoch {row.get('epoch')}", lambda: self._log_eval(row))

    def finish(self, metrics: dict | None, status: str = "FINISHED") -> None:
        self._safe("finishing", lambda: self._finish(metrics, status))

    def experiment_name(self) -> str:
        """``logger.experiment``, else the sweep folder's name for a sweep run, else guider."""
        if self.cfg.experiment:
            return str(self.cfg.experiment)
        sweep = self.run_dir.parent
        return sweep.name if (sweep / "multirun.yaml").is_file() else "guider"

    def _start(self) -> None:
        pass

    def _log_eval(self, row: dict) -> None:
        pass

    def _finish(self, metrics: dict | None, status: str) -> None:
        pass


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, cfg: Any, run_dir: Path, config: dict):
        super().__init__(cfg, run_dir, config)
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer_cls = SummaryWriter
        self.writer = None

    def _start(self) -> None:
        folder = Path(self.cfg.dir) if self.cfg.dir else self.run_dir / "tensorboard"
        self.writer = self.writer_cls(log_dir=str(folder))
        text = "\n".join(f"    {k}: {v}" for k, v in flatten(self.config).items())
        self.writer.add_text("config", text)

    def _log_eval(self, row: dict) -> None:
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar("train/loss" if key == "loss" else f"valid/{key}",
                                       float(value), epoch)

    def _finish(self, metrics: dict | None, status: str) -> None:
        if metrics:
            step = int(metrics.get("best_epoch", 0))
            for key, value in (metrics.get("test") or {}).items():
                self.writer.add_scalar(f"test/{key}", float(value), step)
        self.writer.close()


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, cfg: Any, run_dir: Path, config: dict):
        super().__init__(cfg, run_dir, config)
        import mlflow  # needs the mlflow package

        self.mlflow = mlflow
        self.run = None

    def _start(self) -> None:
        mlflow = self.mlflow
        outputs = Path("outputs").resolve()
        uri = self.cfg.tracking_uri or f"sqlite:///{outputs / 'mlflow.db'}"
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        name = self.experiment_name()
        if mlflow.get_experiment_by_name(name) is None:
            artifacts = outputs / "mlflow-artifacts" / name
            mlflow.create_experiment(name, artifact_location=artifacts.as_uri())
        mlflow.set_experiment(name)
        self.run = mlflow.start_run(run_name=self.run_dir.name)
        params = {k: str(v)[:500] for k, v in flatten(self.config).items()}
        keys = sorted(params)
        for start in range(0, len(keys), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params({k: params[k] for k in keys[start:start + 100]})

    def _log_eval(self, row: dict) -> None:
        self.mlflow.log_metrics(eval_metrics(row), step=int(row["epoch"]))

    def _finish(self, metrics: dict | None, status: str) -> None:
        mlflow = self.mlflow
        if metrics:
            mlflow.log_metrics(test_metrics(metrics), step=int(metrics.get("best_epoch", 0)))
            auc = detection_auc(metrics)
            if auc is not None:
                mlflow.log_metric("detection/auc", auc)
        if self.cfg.artifacts:
            for path in sorted(self.run_dir.rglob("*")):
                rel = path.relative_to(self.run_dir)
                if path.is_file() and rel.parts[0] not in ("checkpoints", "tensorboard"):
                    parent = str(rel.parent) if rel.parent != Path(".") else None
                    mlflow.log_artifact(str(path), artifact_path=parent)
        mlflow.end_run(status=status)


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, cfg: Any, run_dir: Path, config: dict):
        super().__init__(cfg, run_dir, config)
        import wandb  # needs the wandb package

        self.wandb = wandb
        self.run = None

    def _start(self) -> None:
        folder = Path(self.cfg.dir) if self.cfg.dir else self.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        settings = self.wandb.Settings(silent=True, console="off", x_disable_stats=True)
        self.run = self.wandb.init(mode=self.cfg.mode, dir=str(folder), project=self.cfg.project,
                                   group=self.experiment_name(), name=self.run_dir.name,
                                   config=flatten(self.config), settings=settings)

    def _log_eval(self, row: dict) -> None:
        self.run.log(eval_metrics(row), step=int(row["epoch"]))

    def _finish(self, metrics: dict | None, status: str) -> None:
        if metrics:
            summary = test_metrics(metrics)
            auc = detection_auc(metrics)
            if auc is not None:
                summary["detection/auc"] = auc
            summary["best_epoch"] = int(metrics.get("best_epoch", 0))
            self.run.summary.update(summary)
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
        # finish() can return before wandb's service process has written the run file (seen: a
        # file holding only its 7-byte header right after finish); teardown waits for it, so the
        # run's records are on disk when guider's run ends
        self.wandb.teardown()


TRACKERS: dict[str, type[Tracker]] = {"csv": Tracker, "tensorboard": TensorBoardTracker,
                                      "mlflow": MLflowTracker, "wandb": WandbTracker}


def make_tracker(cfg: Any, run_dir: Path, config: dict) -> Tracker:
    """The tracker ``logger=<cfg.name>`` for a run; a missing package fails here, before any
    work, naming the extra that installs it."""
    if cfg.name not in TRACKERS:
        raise ValueError(f"logger={cfg.name!r}: choose one of {', '.join(LOGGERS)}")
    if cfg.name == "wandb" and cfg.mode not in WANDB_MODES:
        raise ValueError(f"logger.mode={cfg.mode!r}: choose one of {', '.join(WANDB_MODES)}")
    try:
        return TRACKERS[cfg.name](cfg, run_dir, config)
    except ImportError as err:
        extra = EXTRAS[cfg.name]
        raise ValueError(f"logger={cfg.name} needs the {extra} package, which is not installed "
                         f"({err}); install it with pip install 'guider[{extra}]', or choose "
                         f"logger=csv") from None

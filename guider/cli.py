"""``guider-train``: the thin Hydra entry point around ``guider.pipeline.run``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_schemas

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("guider")

register_schemas()


def summary_line(metrics: dict) -> str:
    test = metrics["test"]
    keys = ("Recall@20", "NDCG@20")
    shown = "  ".join(f"{k} {test[k]:.4f}" for k in keys if k in test)
    det = metrics.get("detection") or {}
    if det.get("auc") is not None:
        shown += f"  detection AUC {det['auc']:.3f}"
    return (f"{metrics['dataset']['name']} / {metrics['backbone']} / denoise={metrics['denoise']}: "
            f"test {shown}  (best epoch {metrics['best_epoch']}, {metrics['epochs_run']} epochs, "
            f"{metrics['seconds']['total']:.1f} s)")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from .data import DataError
    from .pipeline import run, write_failure
    from .training import NonFiniteLoss

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        metrics = run(cfg, run_dir)
    except (DataError, NonFiniteLoss, ValueError, KeyError) as exc:
        write_failure(run_dir, exc)
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        log.error("run failed: %s", message)
        if hc.mode == RunMode.MULTIRUN:
            return None  # the other runs of the sweep go on; the failure is in metrics.json
        sys.exit(1)
    print(summary_line(metrics))
    print(f"outputs: {run_dir}")
    return metrics["valid"].get(cfg.eval.valid_metric)


if __name__ == "__main__":
    main()

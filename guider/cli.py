"""``guider-train``: the thin Hydra entry point around ``guider.pipeline.run``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, register_schemas
from .reporting import prepare_sweep_job  # also registers ${guider_run_id:}
from .threads import set_threads

log = logging.getLogger("guider")

register_schemas()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from .data import DataError
    from .pipeline import run, summary_line, write_failure
    from .training import NonFiniteLoss, ResumeRefused

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        threads = set_threads(int(cfg.threads), OmegaConf.to_container(hc.launcher, resolve=True))
        log.info("torch threads: %d", threads)
        if multirun:  # skip a completed run of this config; resume an unfinished one
            done = prepare_sweep_job(cfg, run_dir)
            if done is not None:
                print(summary_line(done) + "  [skipped: already completed]")
                print(f"outputs: {run_dir}")
                return (done.get("valid") or {}).get(cfg.eval.valid_metric)
        metrics = run(cfg, run_dir)
    except ResumeRefused as exc:  # the folder is left exactly as it was
        log.error("run refused: %s", exc)
        if multirun:
            return None
        sys.exit(1)
    except (DataError, NonFiniteLoss, ValueError, KeyError) as exc:
        write_failure(run_dir, exc)
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        log.error("run failed: %s", message)
        if multirun:
            return None  # the other runs of the sweep go on; the failure is in metrics.json
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - unexpected: keep the sweep going, record it
        if not multirun:
            raise
        write_failure(run_dir, exc)
        log.exception("run failed with an unexpected error (recorded in %s/metrics.json)", run_dir)
        return None
    print(summary_line(metrics))
    print(f"outputs: {run_dir}")
    return metrics["valid"].get(cfg.eval.valid_metric)


def entry() -> None:
    """``guider-train``: ``main``, then exit 1 when a sweep left failed runs in its folder (after
    writing its summary), so scripts and schedulers can tell."""
    from .reporting import callback

    if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in sys.argv[1:]) \
            and "--resolve" not in sys.argv:
        sys.argv.append("--resolve")  # print data_dir and every value as the run would see it
    callback.FAILED_RUNS.clear()
    main()
    if callback.FAILED_RUNS:
        n = len(callback.FAILED_RUNS)
        print(f"{n} run(s) of the sweep failed ({', '.join(callback.FAILED_RUNS[:5])}"
              f"{', ...' if n > 5 else ''}): see summary.md; rerunning the same sweep retries them",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entry()

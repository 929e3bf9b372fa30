"""``guider-eval``: evaluate a trained run again, without retraining.

    guider-eval outputs/2026-12-03/09-10-00
    guider-eval <run dir> eval.exclude_cold=before_noise        # the pairs of the clean split
    guider-eval <run dir> eval.topk=[10,100] eval.valid_metric=Recall@10 data_dir=/elsewhere

Loads the run's resolved ``config.yaml``, applies the ``key=value`` overrides (evaluation keys,
``data_dir``, ``device``, ``noise.*`` or a whole ``noise=<name>`` to evaluate under another noise setting's masks), rebuilds
the data and the model, loads ``checkpoints/best.pt`` (or ``--checkpoint last``), evaluates valid
and test, prints the same summary line as training and writes ``eval-<tag>.json`` into the run
folder (or ``--out``). Refuses data whose interactions differ from the training run's (by the
digest in metrics.json) unless ``--allow-other-data``. Works on the CPU for a run trained on a GPU
and after the run folder has moved.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("guider")

# config keys an evaluation may change without making the checkpoint meaningless
ALLOWED = ("eval.", "data_dir", "device", "threads", "noise.", "graph_cache.")
# config groups an evaluation may switch as a whole (``noise=none``: conf/noise/none.yaml)
GROUPS = ("noise",)


def load_run_config(run_dir: Path, overrides: list[str], checkpoint: str):
    """The run's resolved config with the evaluation ``overrides`` applied (only keys in
    ``ALLOWED``), after checking the folder holds a config and the checkpoint."""
    from omegaconf import OmegaConf

    from .config import CONF_DIR
    from .identity import current_form

    cfg_path = run_dir / "config.yaml"
    ckpt_path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    for path, what in ((cfg_path, "its resolved configuration"), (ckpt_path, "the checkpoint")):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {run_dir} does not hold {what} (is it a "
                                    f"run folder of guider-train with train.save_checkpoints=true?)")
    allowed = ", ".join(k.rstrip(".") + (".*" if k.endswith(".") else "") for k in ALLOWED)
    allowed += ", " + ", ".join(f"{g}=<name>" for g in GROUPS)
    groups, dotted = {}, []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+")
        if "=" in item and key in GROUPS:
            groups[key] = item.split("=", 1)[1]
        elif "=" not in item or not key.startswith(ALLOWED):
            raise ValueError(f"override {item!r}: guider-eval takes key=value for {allowed}; "
                             f"the model's own settings come from the run")
        else:
            dotted.append(item)
    cfg = OmegaConf.create(current_form(OmegaConf.to_container(OmegaConf.load(cfg_path))))
    for group, name in groups.items():  # the group's yaml replaces the run's whole section
        options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        if name not in options:
            raise ValueError(f"override {group}={name!r}: choose one of {', '.join(options)}")
        OmegaConf.update(cfg, group, OmegaConf.load(Path(CONF_DIR) / group / f"{name}.yaml"),
                         merge=False)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotted))
    OmegaConf.update(cfg, "train.resume", False, merge=False)
    return cfg, ckpt_path


def check_same_data(digest: str, trained: dict, run_dir: Path, data_dir: str,
                    allow_other_data: bool) -> None:
    """Refuse data whose interactions differ from the training run's (by digest)."""
    recorded = trained.get("data_digest")
    if recorded is None:
        log.warning("%s records no data digest (a run from before guider-eval): the data cannot "
                    "be checked against the training run's", run_dir / "metrics.json")
    elif recorded != digest and not allow_other_data:
        raise ValueError(
            f"the interactions under data_dir={data_dir} differ from those the run in {run_dir} "
            f"was trained on (digest {digest[:12]} vs {recorded[:12]}): evaluating on other data is "
            f"refused; point data_dir at the training data, or pass --allow-other-data")


def evaluate_run(run_dir: Path, overrides: list[str], checkpoint: str = "best",
                 allow_other_data: bool = False) -> dict:
    """Valid and test metrics of the run's model in ``run_dir`` under ``overrides``."""
    import torch
    from omegaconf import OmegaConf

    from .config import register_schemas
    from .evaluation import build_eval_sets, evaluate
    from .pipeline import prepare, save_recommendations, versions
    from .record import read_record

    register_schemas()
    run_dir = Path(run_dir)
    cfg, ckpt_path = load_run_config(run_dir, overrides, checkpoint)
    trained = read_record(run_dir) or {}
    if int(cfg.get("threads", 0) or 0) > 0:
        torch.set_num_threads(int(cfg.threads))
    job = prepare(cfg)
    digest = job.data.digest()
    check_same_data(digest, trained, run_dir, cfg.data_dir, allow_other_data)
    state = torch.load(ckpt_path, map_location=job.device, weights_only=False)
    job.model.load_state_dict(state["model"])
    if state.get("edge_weights") is not None:  # a denoiser's weights on the user-item graph
        job.model.set_edge_weights(state["edge_weights"])
    job.model.eval()
    evalc = job.root.eval
    valid_set, test_set, sample = build_eval_sets(job.data, evalc)
    t0 = time.perf_counter()
    scorer = job.model.scorer()
    valid = evaluate(scorer, valid_set, evalc.topk, evalc.batch_users, job.device)
    test = evaluate(scorer, test_set, evalc.topk, evalc.batch_users, job.device)
    recommendations = None
    if evalc.save_topk:
        stem = f"recommendations-{time.strftime('%Y%m%d-%H%M%S')}"
        recommendations = str(save_recommendations(job, run_dir / stem))
    return {
        "status": "completed", "run_dir": str(run_dir.resolve()), "checkpoint": checkpoint,
        "recommendations": recommendations,
        "epoch": state.get("epoch"), "overrides": list(overrides),
        "noise": OmegaConf.to_container(cfg.noise, resolve=True),
        "dataset": job.data.summary(), "data_digest": digest,
        "backbone": job.model.cfg.name, "denoise": job.denoiser.cfg.name,
        "best_epoch": state.get("epoch", trained.get("best_epoch")),
        "epochs_run": trained.get("epochs_run"), "device": str(job.device),
        "valid_metric": evalc.valid_metric, "valid": valid, "test": test,
        "eval_excluded": {"valid": valid_set.excluded, "test": test_set.excluded,
                          "rule": evalc.exclude_cold},
        "eval_sample": sample, "trained_test": trained.get("test"),
        "seconds": {"total": time.perf_counter() - t0}, "versions": versions(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guider-eval",
                                     description="Evaluate a trained run again (no retraining).")
    parser.add_argument("run_dir", type=Path, help="a run folder written by guider-train")
    parser.add_argument("overrides", nargs="*",
                        help="key=value: eval.*, data_dir, device, noise.*, noise=<name>")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: <run_dir>/eval-<time>.json)")
    parser.add_argument("--allow-other-data", action="store_true",
                        help="evaluate even when the interactions differ from the training run's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    from .pipeline import summary_line
    from .data import DataError

    try:
        result = evaluate_run(args.run_dir, args.overrides, args.checkpoint, args.allow_other_data)
    except (FileNotFoundError, ValueError, KeyError, DataError) as exc:
        print(f"guider-eval: error: {exc}", file=sys.stderr)
        return 1
    from . import io

    out = args.out or args.run_dir / f"eval-{time.strftime('%Y%m%d-%H%M%S')}.json"
    io.write_json(out, result)
    print(summary_line(result) + "  [evaluated again]")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

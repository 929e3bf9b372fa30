"""Where a training epoch goes: the trainer's named scopes and the top operations (a profile, not
a test).

    python scripts/profile_step.py dataset=tiktok data_dir=../shared/data backbone=freedom \
        denoise=guider noise=random noise.ratio=0.2
    python scripts/profile_step.py ... --epochs 2 --csv docs/profile_freedom_guider.csv

Runs ``train.epochs`` (default 2) epochs of the given configuration (no checkpoints) under
``torch.profiler`` and prints (1) the trainer's scopes (``guider/training/loop.py``: epoch hooks,
the denoiser's own step, e.g. GUIDER's teacher, the model's loss forward, the denoiser's loss
forward, e.g. the distillation, backward + optimiser step, validation) with their CPU seconds per
epoch and share of the training time, and (2) the operations with the most self CPU time. The
backward of every term is inside "backward + step". Time it on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SCOPES = ["epoch hooks", "denoiser step", "model loss", "denoiser loss", "backward + step",
          "validation"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of guider-train")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--top", type=int, default=15, help="operations listed")
    ap.add_argument("--csv", help="also write the scope table to this CSV file")
    args = ap.parse_intermixed_args(argv)

    import pandas as pd
    from hydra import compose, initialize_config_dir
    from torch.profiler import ProfilerActivity, profile

    from guider.config import CONF_DIR, register_schemas
    from guider.pipeline import run

    register_schemas()
    overrides = [*args.overrides, f"train.epochs={args.epochs}", "train.progress=false",
                 "train.save_checkpoints=false", "graph_cache.dir=null"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            metrics = run(cfg, Path(tmp))
        wall = time.perf_counter() - t0
    events = {e.key: e for e in prof.key_averages()}
    train_s = metrics["seconds"]["train"]
    rows = []
    for name in SCOPES:
        e = events.get(name)
        seconds = e.cpu_time_total / 1e6 if e is not None else 0.0
        rows.append({"scope": name, "calls": e.count if e is not None else 0,
                     "s per epoch": seconds / args.epochs,
                     "share of training": seconds / train_s if name != "validation" else None})
    table = pd.DataFrame(rows)
    print(f"{' '.join(args.overrides)}: {args.epochs} epochs, training {train_s:.2f} s "
          f"({train_s / args.epochs:.2f} s per epoch), wall {wall:.1f} s, threads="
          f"{cfg.threads} (0 = auto)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    print(f"top {args.top} operations by self CPU time (whole run, validation included):")
    for e in ops[: args.top]:
        print(f"  {e.key:<40} {e.self_cpu_time_total / 1e6:8.2f} s  {100 * e.self_cpu_time_total / total:5.1f}%  "
              f"{e.count:>8} calls")
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

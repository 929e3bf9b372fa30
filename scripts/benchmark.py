"""Speed and memory of training and full-ranking evaluation (a benchmark, not a test).

    python scripts/benchmark.py --data-dir ../shared/data --dataset baby --backbones mf lightgcn
    python scripts/benchmark.py --dataset tiktok --backbones lightgcn freedom --denoisers none guider \
        --overrides noise=random noise.ratio=0.2

    python scripts/benchmark.py --dataset baby --overrides dataset.synthetic_features=true \
        --backbones vbpr lattice freedom bm3 mgcn lgmrec smore --csv docs/benchmark_baby.csv

For each backbone x denoiser, in a fresh subprocess: the graph build (the backbone's construction
on loaded data: adjacency, kNN item graphs; graph cache off, so cold), seconds per training epoch
(mean over --epochs epochs), seconds per full validation pass (median of --evals passes: score all
valid users against all items, mask training items, top-k, metrics), and the process's peak
resident memory. With ``dataset.synthetic_features=true`` a dataset without its feature files
(Baby, Clothing here) gets random features of the real widths: right for timing, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def measure(dataset: str, backbone: str, denoise: str, data_dir: str, epochs: int, evals: int,
            overrides: list[str]) -> dict:
    import tempfile

    import torch
    from hydra import compose, initialize_config_dir

    from guider.config import CONF_DIR
    from guider.config import register_schemas
    from guider.evaluation import build_eval_set, evaluate
    from guider import pipeline
    from guider.backbones import build_backbone
    from guider.training import fit

    register_schemas()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[
            f"dataset={dataset}", f"backbone={backbone}", f"denoise={denoise}",
            f"data_dir={data_dir}", "device=cpu", "graph_cache.dir=null", *overrides,
            f"train.epochs={epochs}", f"train.eval_every={epochs}", "train.progress=false",
            "train.save_checkpoints=false"])
    if int(cfg.threads) > 0:  # threads=N honoured; 0 (the default) keeps torch's own count
        torch.set_num_threads(int(cfg.threads))
    # graph build: the backbone's construction inside prepare (adjacency, kNN item graphs,
    # projections), timed around the pipeline's build_backbone; graph cache off
    # (graph_cache.dir=null above), so always a cold build
    build_s = []

    def timed_build(*args, **kwargs):
        start = time.perf_counter()
        model = build_backbone(*args, **kwargs)
        build_s.append(time.perf_counter() - start)
        return model

    pipeline.build_backbone = timed_build
    job = pipeline.prepare(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(job.model, job.denoiser, job.data, job.root.train, job.root.eval, job.device,
                     job.root.seed, Path(tmp))
    d = job.data
    valid = build_eval_set(d.train.users, d.train.items, d.valid.users, d.valid.items,
                           d.n_users, d.n_items)
    times = []
    for _ in range(evals):
        t = time.perf_counter()
        job.model.eval()
        evaluate(job.model.scorer(), valid, job.root.eval.topk, job.root.eval.batch_users)
        times.append(time.perf_counter() - t)
    return {
        "dataset": dataset, "backbone": backbone, "denoise": denoise,
        "threads": torch.get_num_threads(),
        "feature_precision": cfg.backbone.get("feature_precision", ""),
        "n_train": len(d.train), "n_eval_users": len(valid.users),
        "build_s": build_s[0],
        "epoch_s": result.seconds["train"] / epochs,
        "eval_pass_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "valid_recall20_after": result.valid.get("Recall@20"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--dataset", default="baby")
    ap.add_argument("--backbones", nargs="+", default=["mf", "lightgcn"])
    ap.add_argument("--denoisers", nargs="+", default=["none"])
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--evals", type=int, default=5)
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one-denoise", default="none", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.dataset, args.one, args.one_denoise, args.data_dir,
                                 args.epochs, args.evals, args.overrides)))
        return
    rows = []
    for name in args.backbones:
        for denoise in args.denoisers:
            print(f"measuring {name} + {denoise} on {args.dataset} ...", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--one", name, "--one-denoise", denoise,
                                  "--dataset", args.dataset, "--data-dir", args.data_dir,
                                  "--epochs", str(args.epochs), "--evals", str(args.evals),
                                  "--overrides", *args.overrides],
                                 check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
    print(f"{'backbone':<10} {'denoise':<8} {'build s':>8} {'s/epoch':>8} {'s/valid pass':>13} "
          f"{'peak RSS MB':>12} {'train rows':>11} {'eval users':>11} threads features")
    for r in rows:
        print(f"{r['backbone']:<10} {r['denoise']:<8} {r['build_s']:8.2f} {r['epoch_s']:8.3f} "
              f"{r['eval_pass_s']:13.3f} "
              f"{r['peak_rss_mb']:12.0f} {r['n_train']:11d} {r['n_eval_users']:11d} {r['threads']:7d} "
              f"{r['feature_precision']}")


if __name__ == "__main__":
    main()

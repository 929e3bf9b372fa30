"""How time and memory grow with the data: LightGCN, FREEDOM and FREEDOM+GUIDER on the synthetic
generator at sizes growing ~4x (a benchmark, not a test; docs/scale.md).

    python scripts/benchmark_scale.py                          # 10k, 40k, 160k, 640k, 1M users
    python scripts/benchmark_scale.py --max-users 40000        # the two smallest sizes only
    python scripts/benchmark_scale.py --sizes 10000 40000 --models lightgcn
    python scripts/benchmark_scale.py --time-budget 1800 --device cuda

Size n: n users, n / 10 items, 10 n interactions (1M users: 100k items, 10M interactions), the
generator's candidate sampler (``dataset.synthetic.candidates``, default 8) and two 16-d feature
tables. Every (size, model) runs in its own subprocess, so each peak memory is that run's alone.
Per run:

* ``gen_s``: generating the data; ``graph_s``: building the model (LightGCN: the normalised
  adjacency; FREEDOM: the kNN item-item graphs and the adjacency); ``guider_init_s``: GUIDER's
  teacher and AMSC set-up (its cross-modal kNN confidence and modality gaps).
* ``epoch_s``: seconds per training epoch, EXTRAPOLATED: ``--batches`` batches are timed after
  one warm-up batch and ``batch_s`` (their mean) is multiplied by the epoch's batch count, plus the
  once-per-epoch work timed separately: ``pre_epoch_s`` (FREEDOM's edge pruning and graph
  rebuild), ``sampler_s`` (the shuffle and the negatives of a whole epoch) and, for GUIDER,
  ``amsc_refresh_s`` (a steady-state refresh; ``amsc_first_s`` includes the one-off content terms).
  Every batch of these graph models propagates over the whole graph (cost ~ interactions) and a
  fixed ``--batch-size`` makes the batch count grow with the interactions too: ``epoch_s`` then
  grows ~quadratically. ``--batches-per-epoch N`` scales the batch size instead (N batches per
  epoch), which keeps the epoch linear; ``batch_s`` shows the per-batch growth either way.
* ``eval_per_1k_s``: seconds per 1,000 evaluated users (full ranking over all items, a seeded
  sample of ``--eval-users`` validation users); ``scorer_s``: the one propagation before it.
* ``ckpt_s`` / ``ckpt_mb``: writing a resumable checkpoint (model, optimiser, denoiser state).
* ``peak_rss_mb``: the subprocess's peak resident memory (ru_maxrss; ``base_rss_mb`` is the
  interpreter with torch loaded, ``data_rss_mb`` the difference: what the run itself added);
  ``peak_cuda_mb`` on a GPU.

Sizes are run smallest first. Before each, the time and peak memory are predicted from the
smaller sizes (log-log growth); a size predicted to exceed ``--time-budget`` seconds or the
available memory is skipped with a note, and so are the larger ones (a run that still overruns
is killed at the budget and recorded as a timeout). Results: ``--csv`` (docs/scale.csv), the
fitted growth exponents per stage (``--fit-csv``, least squares of log time on log
interactions), a log-log figure (``--figure``) and the tables printed at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {"lightgcn": ("lightgcn", "none"), "freedom": ("freedom", "none"),
          "freedom+guider": ("freedom", "guider")}
STAGES = ["gen_s", "graph_s", "guider_init_s", "batch_s", "epoch_s", "amsc_refresh_s",
          "eval_per_1k_s", "scorer_s", "ckpt_s", "peak_rss_mb", "data_rss_mb"]
COLUMNS = ["model", "n_users", "n_items", "n_interactions", "n_train", "status", "note",
           "device", "threads", "batch_size", "n_batches", "batches_timed", "gen_s", "graph_s",
           "guider_init_s", "pre_epoch_s", "sampler_s", "batch_s", "epoch_s", "amsc_first_s",
           "amsc_refresh_s", "eval_users", "scorer_s", "eval_per_1k_s", "ckpt_s", "ckpt_mb",
           "base_rss_mb", "peak_rss_mb", "data_rss_mb", "peak_cuda_mb", "guider_overhead", "wall_s"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def measure(args: argparse.Namespace) -> dict:
    """One (size, model) in this process; returns the row."""
    import torch

    from guider import io
    from guider._malloc import tune_malloc
    from guider.backbones import build_backbone
    from guider.config import register_schemas
    from guider.data import BPRSampler, load_data
    from guider.denoise import build_denoiser, weighted_mean
    from guider.evaluation import build_eval_set, evaluate, sample_users
    from guider.optim import make_adam
    from guider.pipeline import check_model_size, resolve_device, validate
    from hydra import compose, initialize_config_dir

    from guider.config import CONF_DIR

    t_start = time.perf_counter()
    tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    make_adam([torch.zeros(1, requires_grad=True)], 1e-3)  # torch.optim's one-off imports (~2 s)
    base_rss = rss_mb()
    backbone, denoise = MODELS[args.one]
    n_users = args.one_users
    n_items, n_inter = items_for(n_users, args), interactions_for(n_users, args)
    register_schemas()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset=synthetic", f"backbone={backbone}", f"denoise={denoise}",
            f"device={args.device}", f"train.batch_size={args.batch_size}",
            f"dataset.synthetic.n_users={n_users}", f"dataset.synthetic.n_items={n_items}",
            f"dataset.synthetic.n_interactions={n_inter}",
            f"dataset.synthetic.candidates={args.candidates}",
            f"dataset.synthetic.modalities.image.dim={args.feature_dim}",
            f"dataset.synthetic.modalities.text.dim={args.feature_dim}",
            "train.progress=false", "train.save_checkpoints=false", *args.overrides])
    root, dataset, noise, backbone_cfg, denoise_cfg = validate(cfg)
    device = resolve_device(root.device)
    row = {"model": args.one, "n_users": n_users, "n_items": n_items, "n_interactions": n_inter,
           "device": str(device), "threads": torch.get_num_threads(),
           "batch_size": args.batch_size, "base_rss_mb": round(base_rss)}
    progress = lambda msg: print(f"  [{args.one} {n_users:,}] {msg}", file=sys.stderr, flush=True)

    data, row["gen_s"] = timed(lambda: load_data(dataset, noise, root.data_dir))
    row["n_train"] = len(data.train)
    batch_size = args.batch_size
    if args.batches_per_epoch:  # batches grow with the data: a constant number per epoch
        batch_size = -(-len(data.train) // args.batches_per_epoch)
    row["batch_size"] = batch_size
    progress(f"data {row['gen_s']:.1f} s")
    torch.manual_seed(root.seed)
    check_model_size(data, backbone_cfg, denoise_cfg, device)
    model, row["graph_s"] = timed(lambda: build_backbone(backbone_cfg, data, device))
    denoiser, init_s = timed(lambda: build_denoiser(denoise_cfg, data, model, device, root.seed))
    row["guider_init_s"] = init_s if denoise == "guider" else None
    progress(f"graphs {row['graph_s']:.1f} s, denoiser {init_s:.1f} s")

    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)
    if denoise == "guider" and denoiser.amsc is not None:
        # refresh at the end of the warm-up (lambda = 1): the first call also computes the
        # content terms cached for the run; the second is what every later epoch pays
        warm = denoiser.cfg.amsc.warmup_epochs
        _, row["amsc_first_s"] = timed(lambda: denoiser.on_epoch(warm))
        _, row["amsc_refresh_s"] = timed(lambda: denoiser.on_epoch(warm))
        progress(f"AMSC refresh {row['amsc_refresh_s']:.2f} s (first {row['amsc_first_s']:.2f} s)")

    generator = torch.Generator().manual_seed(root.seed)
    sampler = BPRSampler(data.train.users, data.train.items, data.n_items, batch_size,
                         generator, device)
    optimizer = make_adam(model.parameters(), root.train.lr)
    model.train()
    _, row["pre_epoch_s"] = timed(lambda: model.pre_epoch(0))
    batches = sampler.epoch()
    first, row["sampler_s"] = timed(lambda: next(batches))  # shuffle + the epoch's negatives

    def step(batch) -> None:
        denoiser.step(batch)
        losses = model.losses(batch)
        weights = denoiser.weights(batch, losses.main.detach())
        terms = {"main": weighted_mean(losses.main, weights), **losses.aux,
                 **denoiser.extra_loss(batch, model)}
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(first)  # warm-up
    sync()
    timed_batches = 0
    t = time.perf_counter()
    for batch in batches:
        if timed_batches == args.batches:
            break
        step(batch)
        timed_batches += 1
    sync()
    n_batches = len(sampler)
    row["batch_s"] = (time.perf_counter() - t) / max(timed_batches, 1)
    row.update(n_batches=n_batches, batches_timed=timed_batches)
    row["epoch_s"] = (row["pre_epoch_s"] + row["sampler_s"] + row["batch_s"] * n_batches
                      + (row.get("amsc_refresh_s") or 0.0))
    progress(f"{row['batch_s']:.3f} s/batch x {n_batches} batches -> ~{row['epoch_s']:.1f} s/epoch")

    model.eval()
    scorer, row["scorer_s"] = timed(lambda: model.scorer())
    valid = build_eval_set(data.train.users, data.train.items, data.valid.users,
                           data.valid.items, data.n_users, data.n_items)
    valid = valid.restrict(sample_users([valid], args.eval_users, 0))
    row["eval_users"] = len(valid.users)
    _, eval_s = timed(lambda: (evaluate(scorer, valid, root.eval.topk, root.eval.batch_users,
                                        device), sync()))
    row["eval_per_1k_s"] = eval_s / max(len(valid.users), 1) * 1000
    progress(f"eval {row['eval_per_1k_s']:.3f} s per 1,000 users")

    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "denoiser": denoiser.state_dict(), "generator": generator.get_state()}
        path = Path(tmp) / "last.pt"
        _, row["ckpt_s"] = timed(lambda: io.torch_save(path, state))
        row["ckpt_mb"] = path.stat().st_size / 2**20
    row["peak_rss_mb"] = rss_mb()
    row["data_rss_mb"] = row["peak_rss_mb"] - base_rss
    row["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() / 2**20
                           if device.type == "cuda" else None)
    row["wall_s"] = time.perf_counter() - t_start
    row["status"] = "ok"
    return row


def items_for(n_users: int, args) -> int:
    return max(100, int(round(n_users * args.items_per_user)))


def interactions_for(n_users: int, args) -> int:
    return int(round(n_users * args.interactions_per_user))


def size_list(args) -> list[int]:
    if args.sizes:
        return sorted(args.sizes)
    sizes, n = [], args.min_users
    while n <= args.max_users:
        sizes.append(n)
        n *= args.step
    if sizes and args.max_users > sizes[-1] * 1.5:
        sizes.append(args.max_users)
    return sizes


def loglog_fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """(exponent b, log-intercept a) of log y = a + b log x by least squares; None under 2
    usable points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return b, my - b * mx


def predict(rows: list[dict], key: str, x: float) -> float | None:
    """Extrapolate ``key`` to x interactions from the measured rows (at least linear growth)."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get(key)]
    if not ok:
        return None
    fit = loglog_fit([r["n_interactions"] for r in ok], [r[key] for r in ok])
    last = ok[-1]
    b = max(fit[0], 1.0) if fit else 1.0
    return last[key] * (x / last["n_interactions"]) ** b


def available_mb() -> float | None:
    from guider.sizecheck import budget

    limit, _ = budget()
    return None if limit is None else limit / 2**20


def run_child(args, model: str, n_users: int, timeout: float | None) -> dict:
    cmd = [sys.executable, __file__, "--one", model, "--one-users", str(n_users)]
    for key in ("device", "batch_size", "batches_per_epoch", "batches", "eval_users",
                "candidates", "feature_dim", "items_per_user", "interactions_per_user", "threads"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.overrides:
        cmd += ["--overrides", *args.overrides]
    base = {"model": model, "n_users": n_users, "n_items": items_for(n_users, args),
            "n_interactions": interactions_for(n_users, args)}
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "note": f"killed after --time-budget {timeout:.0f} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:  # killed (e.g. out of memory) before it could report
        return {**base, "status": "failed",
                "note": f"exit code {out.returncode} (see its stderr above)"}
    return json.loads(lines[-1])


def parse_cell(v: str):
    if v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def fmt(v, digits=3) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_outputs(rows: list[dict], args) -> list[dict]:
    by = {(r["model"], r["n_users"]): r for r in rows}
    for r in rows:  # GUIDER's overhead: its epoch over FREEDOM's at the same size
        f = by.get(("freedom", r["n_users"]))
        if r["model"] == "freedom+guider" and r.get("epoch_s") and f and f.get("epoch_s"):
            r["guider_overhead"] = r["epoch_s"] / f["epoch_s"]
    csv_path = REPO / args.csv
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
    fits = []
    for model in args.models:
        ok = [r for r in rows if r["model"] == model and r.get("status") == "ok"]
        for stage in STAGES:
            fit = loglog_fit([r["n_interactions"] for r in ok], [r.get(stage) for r in ok])
            if fit:
                fits.append({"model": model, "stage": stage, "exponent": round(fit[0], 3),
                             "points": sum(1 for r in ok if r.get(stage))})
    with open(REPO / args.fit_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["model", "stage", "exponent", "points"])
        w.writeheader()
        w.writerows(fits)
    plot(rows, args)
    return fits


def plot(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("time per stage (s)", ["epoch_s", "batch_s", "graph_s", "amsc_refresh_s"]),
              ("evaluation (s per 1,000 users)", ["eval_per_1k_s"]),
              ("peak memory, MB (dashed: above the interpreter)",
               ["peak_rss_mb", "data_rss_mb"])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"epoch_s": "-", "batch_s": "-.", "graph_s": "--", "amsc_refresh_s": ":",
              "eval_per_1k_s": "-", "peak_rss_mb": "-", "data_rss_mb": "--"}
    colors = {"lightgcn": "tab:blue", "freedom": "tab:orange", "freedom+guider": "tab:green"}
    for ax, (title, keys) in zip(axes, panels):
        for model in args.models:
            ok = [r for r in rows if r["model"] == model and r.get("status") == "ok"]
            for key in keys:
                pts = [(r["n_interactions"], r[key]) for r in ok if r.get(key)]
                if not pts:
                    continue
                fit = loglog_fit(*zip(*pts)) if len(pts) > 1 else None
                label = f"{model} {key}" + (f" (slope {fit[0]:.2f})" if fit else "")
                ax.plot(*zip(*pts), styles[key], marker="o", color=colors.get(model), label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    device = next((r.get("device") for r in rows if r.get("device")), "?")
    fig.suptitle(f"guider at scale (synthetic data, {device}; epoch time extrapolated from "
                 f"{args.batches} timed batches)", fontsize=10)
    fig.tight_layout()
    out = REPO / args.figure
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--min-users", type=int, default=10_000)
    ap.add_argument("--max-users", type=int, default=1_000_000)
    ap.add_argument("--step", type=int, default=4, help="growth factor between sizes")
    ap.add_argument("--sizes", type=int, nargs="*",
                    help="explicit user counts (overrides the above)")
    ap.add_argument("--items-per-user", type=float, default=0.1)
    ap.add_argument("--interactions-per-user", type=float, default=10.0)
    ap.add_argument("--candidates", type=int, default=8, help="dataset.synthetic.candidates")
    ap.add_argument("--feature-dim", type=int, default=16, help="width of both feature tables")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--batches-per-epoch", type=int, default=0,
                    help="> 0: batch size = training interactions / this (a constant number of "
                         "batches per epoch, so the epoch cost grows like one batch's); 0: the "
                         "fixed --batch-size")
    ap.add_argument("--batches", type=int, default=10, help="timed batches per run")
    ap.add_argument("--eval-users", type=int, default=2000, help="evaluated users per run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--time-budget", type=float, default=1800.0,
                    help="seconds one (size, model) run may take; a size predicted to take longer "
                         "is skipped, a run that overruns is killed")
    ap.add_argument("--csv", default="docs/scale.csv")
    ap.add_argument("--fit-csv", default="docs/scale_fit.csv")
    ap.add_argument("--figure", default="docs/figures/scale.png")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the figure and the fits from an existing --csv")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--one-users", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        try:
            print(json.dumps(measure(args)))
        except Exception as exc:  # noqa: BLE001 - e.g. a SizeError: recorded in the CSV
            import traceback

            traceback.print_exc()
            print(json.dumps({"model": args.one, "n_users": args.one_users,
                              "n_items": items_for(args.one_users, args),
                              "n_interactions": interactions_for(args.one_users, args),
                              "status": "failed", "note": f"{type(exc).__name__}: {exc}"}))
        return

    if args.replot:
        with open(REPO / args.csv) as fh:
            rows = [{k: parse_cell(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        write_outputs(rows, args)
        print(f"redrew {args.figure} and {args.fit_csv} from {args.csv}")
        return

    sizes = size_list(args)
    print(f"sizes (users): {', '.join(f'{n:,}' for n in sizes)}; models: {', '.join(args.models)}; "
          f"time budget {args.time_budget:.0f} s per run", file=sys.stderr, flush=True)
    rows: list[dict] = []
    for model in args.models:
        blocked = None
        for n_users in sizes:
            x = interactions_for(n_users, args)
            base = {"model": model, "n_users": n_users, "n_items": items_for(n_users, args),
                    "n_interactions": x}
            mine = [r for r in rows if r["model"] == model]
            if blocked:
                rows.append({**base, "status": "skipped", "note": blocked})
                continue
            wall, avail = predict(mine, "wall_s", x), available_mb()
            grown = predict(mine, "data_rss_mb", x)  # the interpreter's own share stays fixed
            peak = None if grown is None else grown + max(r.get("base_rss_mb") or 0 for r in mine)
            if wall is not None and wall > args.time_budget:
                blocked = f"predicted {wall:.0f} s > --time-budget {args.time_budget:.0f} s"
            elif peak is not None and avail is not None and peak > avail:
                blocked = f"predicted peak {peak:.0f} MB > {avail:.0f} MB available"
            if blocked:
                print(f"{model} {n_users:,} users: skipped ({blocked})", file=sys.stderr,
                      flush=True)
                rows.append({**base, "status": "skipped", "note": blocked})
                continue
            print(f"{model}: {n_users:,} users, {base['n_items']:,} items, {x:,} interactions"
                  + (f" (predicted ~{wall:.0f} s)" if wall else ""), file=sys.stderr, flush=True)
            row = run_child(args, model, n_users, args.time_budget)
            rows.append(row)
            if row.get("status") != "ok":
                blocked = f"a smaller size ended with status {row.get('status')}"
                print(f"  -> {row.get('status')}: {row.get('note')}", file=sys.stderr, flush=True)
            else:
                print(f"  -> {row['wall_s']:.0f} s, peak {row['peak_rss_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
            write_outputs(rows, args)  # keep what is measured if a later size dies
    fits = write_outputs(rows, args)

    keys = ["gen_s", "graph_s", "guider_init_s", "epoch_s", "batch_s", "amsc_refresh_s",
            "eval_per_1k_s", "ckpt_s", "peak_rss_mb", "data_rss_mb", "guider_overhead"]
    print("| model | users | items | interactions | status | " + " | ".join(keys) + " |")
    print("|---" * (5 + len(keys)) + "|")
    for r in rows:
        print(f"| {r['model']} | {r['n_users']:,} | {r['n_items']:,} | {r['n_interactions']:,} | "
              f"{r.get('status')}{' (' + r['note'] + ')' if r.get('note') else ''} | "
              + " | ".join(fmt(r.get(k)) for k in keys) + " |")
    print("\ngrowth exponents (log-log least squares on interactions):")
    print("| model | " + " | ".join(STAGES) + " |")
    print("|---" * (1 + len(STAGES)) + "|")
    for model in args.models:
        e = {f["stage"]: f["exponent"] for f in fits if f["model"] == model}
        print(f"| {model} | " + " | ".join(fmt(e.get(s)) for s in STAGES) + " |")
    print(f"\nwrote {args.csv}, {args.fit_csv}, {args.figure}")


if __name__ == "__main__":
    main()

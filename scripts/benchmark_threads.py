"""Threads under contention (a benchmark, not a test): the default job's wall time alone and
beside one busy single-threaded process, for each thread setting and OpenMP wait policy.

    python scripts/benchmark_threads.py --csv docs/benchmark_threads.csv

Each cell runs ``python -m guider.cli`` (the default job: synthetic set, FREEDOM + GUIDER) for
--epochs epochs in a fresh process and times it from start to exit (start-up included), --repeats
times, interleaved with the other settings; the median is reported. "busy"
starts a pure-Python loop (one core at 100%) first and stops it afterwards. Run it on an otherwise
idle machine: the point is the difference between the columns.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (label, threads override, OMP_WAIT_POLICY in the environment or None = unset)
SETTINGS = (
    ("2 threads, wait policy active (torch's default)", "threads=2", "ACTIVE"),
    ("2 threads, wait policy passive", "threads=2", "PASSIVE"),
    ("1 thread", "threads=1", "ACTIVE"),
    ("default (threads=0, guider-train's own policy)", "threads=0", None),
)


def run_job(threads: str, policy: str | None, epochs: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    env["PYTHONWARNINGS"] = "ignore"
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "guider.cli", threads, f"train.epochs={epochs}",
             "train.progress=false", f"hydra.run.dir={out}", "graph_cache.dir=null"],
            cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for load in ("alone", "beside one busy process"):
        busy = None
        if load != "alone":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            times: dict[str, list[float]] = {label: [] for label, _, _ in SETTINGS}
            for _ in range(args.repeats):  # interleaved, so drift hits every setting alike
                for label, threads, policy in SETTINGS:
                    times[label].append(run_job(threads, policy, args.epochs))
            for label, _, _ in SETTINGS:
                values = sorted(times[label])
                median = values[len(values) // 2]
                rows.append({"load": load, "setting": label, "epochs": args.epochs,
                             "median_seconds": round(median, 1),
                             "all_seconds": " ".join(f"{v:.1f}" for v in times[label])})
                print(f"{load:24s} {label:50s} {median:6.1f} s  ({rows[-1]['all_seconds']})",
                      flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

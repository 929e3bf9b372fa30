"""Whole-run cost of GUIDER runs whose teacher freezes part-way, priced at a benchmark's per-epoch
seconds (guider/reporting/cost.py says how).

    python scripts/run_cost.py docs/results/tiktok_random0.2_recipe \
        --where variant=budget_teacher2x --base 0.771 --sync 2.313 --frozen 1.03

--base, --sync and --frozen are seconds per training epoch measured by scripts/benchmark.py on an
idle machine (the student alone, an in-sync epoch of the setting, and a frozen one: a run of a
few epochs with denoise.teacher_epochs=1, less its first epoch); --teacher-eval the seconds of one
validation pass (its eval_pass_s), paid for the teacher at each validation before it froze.
--where keeps the runs whose summary column equals the value (repeatable; the columns of the
folder's runs.csv: variant, seed, denoise.teacher_lr, ...); the runs kept must share one setting,
since they are priced alike.
Prints each run's epochs, epochs in sync, frozen epoch and cost, then the mean, the range and the
pooled cost (all seconds over all students' seconds); --csv writes the per-run table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of run folders (a sweep, docs/results/...)")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                        help="keep runs whose summary column has this value (repeatable)")
    parser.add_argument("--base", type=float, required=True, help="seconds per epoch, the student alone")
    parser.add_argument("--sync", type=float, required=True, help="seconds per in-sync epoch")
    parser.add_argument("--frozen", type=float, required=True, help="seconds per frozen epoch")
    parser.add_argument("--teacher-eval", type=float, default=0.0, metavar="SECONDS",
                        help="seconds per validation pass of the teacher (teacher_patience runs "
                             "validate it every train.eval_every epochs until it freezes; "
                             "benchmark.py's eval_pass_s; default 0: not counted)")
    parser.add_argument("--limit", type=float, default=2.0, help="count the runs above this multiple")
    parser.add_argument("--csv", type=Path, default=None, help="write the per-run table here")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"no such folder: {args.folder}")

    from guider.reporting.cost import EpochCosts, pooled_multiple, run_costs
    from guider.reporting.summary import _matches, collect_runs

    try:
        costs = EpochCosts(base=args.base, sync=args.sync, frozen=args.frozen,
                           teacher_eval=args.teacher_eval)
    except ValueError as e:
        parser.error(str(e))
    runs, _ = collect_runs(args.folder)
    runs = runs[runs["status"] == "completed"] if "status" in runs else runs
    for clause in args.where:
        column, sep, value = clause.partition("=")
        if not sep or not column:
            parser.error(f"--where {clause!r}: write COLUMN=VALUE")
        if column not in runs:
            known = ", ".join(c for c in runs.columns if not c.startswith(("cfg.", "valid.", "test.",
                                                                             "detection.", "seconds.")))
            parser.error(f"--where {clause!r}: no column {column!r} in these runs (columns: {known})")
        runs = runs[runs[column].map(lambda v: _matches(v, value))]
    if runs.empty:
        parser.error(f"no completed run in {args.folder} matches {' '.join(args.where) or 'anything'}")

    table = run_costs(runs, args.folder, costs)
    shown = [c for c in ("variant", "seed", "epochs_run", "best_epoch", "frozen_epoch",
                         "in_sync_epochs", "teacher_validations", "cost_x") if c in table]
    print(table[shown].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    values = table["cost_x"].tolist()
    above = sum(v > args.limit for v in values)
    print(f"\n{len(values)} runs: mean {statistics.mean(values):.2f}x, range {min(values):.2f}-"
          f"{max(values):.2f}x, pooled {pooled_multiple(table, costs):.2f}x; "
          f"{above} above {args.limit:g}x (per epoch: in sync {args.sync / args.base:.2f}x, "
          f"frozen {args.frozen / args.base:.2f}x)")
    if args.csv is not None:
        table[["run", *shown]].to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

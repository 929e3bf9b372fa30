"""``guider-summarize``: summarise a folder of runs (a sweep folder, or any folder holding run
folders).

    guider-summarize outputs/multirun/noise_sweep/2026-11-27_14-00-00
    guider-summarize outputs/multirun --out reports/all          # every sweep at once
    guider-summarize sweeps/tiktok --reference oracle            # paired against the ceiling

Writes runs.csv (one row per run, failed and unfinished runs included), summary.csv and
summary.md (mean, std and count over seeds per setting; the paired differences to --reference,
default none; the noise-detection table) and figures/*.png into the folder (or --out), and
prints the markdown. The same summary is written automatically at the end of every
`guider-train -m` sweep. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="guider-summarize", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("folder", type=Path, help="sweep folder (searched recursively for runs)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the folder)")
    parser.add_argument("--reference", default="none",
                        help="denoiser that paired differences are taken against (default: none); "
                             "settings after its name pick one of its configurations: "
                             "'guider variant=student_flags denoise.amsc.rho_max=0.1'")
    parser.add_argument("--reference-backbone", default=None, metavar="BACKBONE",
                        help="pair across models: every run against --reference on this backbone "
                             "(e.g. backbone=damrs against lightgcn with denoise=none)")
    parser.add_argument("--eval", dest="evaluation", default=None, metavar="NAME",
                        help="take valid/test metrics from each run's eval-NAME.json (written by "
                             "guider-eval --out <run>/eval-NAME.json) instead of its training")
    parser.add_argument("--quiet", action="store_true", help="do not print the tables")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"no such folder: {args.folder}")

    from .summary import BadReference, parse_reference, summarize

    try:
        parse_reference(args.reference)  # a malformed one even where the folder holds no run
        result = summarize(args.folder, args.out, reference=args.reference,
                           evaluation=args.evaluation, reference_backbone=args.reference_backbone)
    except BadReference as e:
        parser.error(str(e))
    if not args.quiet:
        print(result.markdown)
    for path in result.files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

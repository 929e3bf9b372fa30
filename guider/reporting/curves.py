"""Paired validation curves: each run against its reference partner at the same epochs.

A run's ``history.csv`` holds its validation metric at every validated epoch. When the runs of a
folder stop at different epochs (a time budget, early stopping at different points), their final
numbers compare different amounts of training; the curves compare like with like: run minus
partner at each epoch both validated, then mean and standard error over the pairs of a
configuration. Pairs are the ones of the paired differences (``summary.pair_runs``). A folder
without histories (exported results keep only metrics and configs) gets no curve section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from . import figures
from .tables import fmt_diff, fmt_value, label, markdown_table, slug, sort_key


def read_history(run_dir: Path, metric: str) -> pd.Series | None:
    """The validation ``metric`` of a run by epoch, from its history.csv; None without one."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if "epoch" not in frame or metric not in frame:
        return None
    frame = frame.drop_duplicates("epoch", keep="last")  # an epoch validated twice: the later
    return pd.to_numeric(frame.set_index("epoch")[metric], errors="coerce").dropna()


def _metric_of(row: pd.Series) -> str:
    metric = row.get("valid_metric")
    return metric if isinstance(metric, str) and metric else "Recall@20"


def pair_histories(pairing: Any, root: Path) -> list[tuple[dict, list[pd.DataFrame]]]:
    """Per configuration: its settings and, per completed pair with both histories, a frame
    indexed by the epochs both validated with columns ``run`` and ``reference``."""
    out = []
    for group, partners in pairing.groups:
        config = {c: group.iloc[0][c] for c in pairing.config_keys}
        pairs = []
        for (_, row), partner in zip(group.iterrows(), partners):
            if partner is None or row["status"] != "completed":
                continue
            metric = _metric_of(row)
            mine = read_history(root / row["run"], metric)
            theirs = read_history(root / partner["run"], _metric_of(partner))
            if mine is None or theirs is None or _metric_of(partner) != metric:
                continue
            both = pd.concat({"run": mine, "reference": theirs}, axis=1, join="inner")
            if len(both):
                pairs.append(both)
        if pairs:
            out.append((config, pairs))
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    s = pd.Series(values, dtype=float)
    return float(s.mean()), (float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else math.nan)


def paired_curves(pairing: Any, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``pairing``: a ``summary.Pairing``. Returns (curves, at_common): ``curves`` has per
    configuration and epoch the number of pairs that validated at that epoch, the mean paired
    difference and its standard error; ``at_common``
    has per configuration the last epoch every pair reached (run and partner) and, there, the
    paired difference of the metric and of the best value so far (each side's maximum over the
    epochs both validated up to it)."""
    curves, common = [], []
    for config, pairs in pair_histories(pairing, root):
        diff = pd.concat([p["run"] - p["reference"] for p in pairs], axis=1)
        for epoch, values in diff.iterrows():
            v = values.dropna().tolist()
            mean, se = _mean_se(v)
            curves.append({**config, "epoch": int(epoch), "pairs": len(v), "diff": mean, "se": se})
        last = int(min(p.index.max() for p in pairs))
        upto = [p.loc[:last] for p in pairs]  # a pair without that exact epoch: its last before
        at = [float(u["run"].iloc[-1] - u["reference"].iloc[-1]) for u in upto]
        best = [float(u["run"].max() - u["reference"].max()) for u in upto]
        (at_mean, at_se), (best_mean, best_se) = _mean_se(at), _mean_se(best)
        common.append({**config, "pairs": len(pairs), "epoch": last, "diff": at_mean,
                       "se": at_se, "best diff": best_mean, "best se": best_se})
    curves_frame = pd.DataFrame(curves)
    common_frame = pd.DataFrame(common)
    if len(common_frame):
        keys = pairing.config_keys
        curves_frame = curves_frame.sort_values(by=[*keys, "epoch"], key=sort_key, kind="stable")
        common_frame = common_frame.sort_values(by=keys, key=sort_key, kind="stable")
    return curves_frame.reset_index(drop=True), common_frame.reset_index(drop=True)


def curves_markdown(pairing: Any, common: pd.DataFrame, metric: str) -> str:
    lines = ["", f"## Validation at equal epochs, paired with {pairing.label}", "",
             f"From each run's history.csv: the run's validation {metric} minus its partner's at "
             f"the same epoch (mean ± standard error over the pairs), at the last epoch every "
             f"pair reached, and the same for the best value up to that epoch. Final numbers "
             f"compare different amounts of training when runs stop at different epochs (a time "
             f"budget); these do not. Every epoch: paired_curves.csv and "
             f"figures/paired_valid_curve_vs_{slug(pairing.reference)}.png.", ""]
    headers = [*pairing.config_keys, "pairs", "epoch", f"Δ valid {metric} there",
               f"Δ best valid {metric} up to it"]
    rows = [[*[fmt_value(r[c]) for c in pairing.config_keys], str(int(r["pairs"])),
             str(int(r["epoch"])), fmt_diff(r["diff"], r["se"]),
             fmt_diff(r["best diff"], r["best se"])] for _, r in common.iterrows()]
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines) + "\n"


def write_curves_figure(pairing: Any, curves: pd.DataFrame, out_dir: Path, metric: str,
                        context: str = "") -> Path:
    """One line per configuration: the mean paired difference by epoch with a ± s.e. band."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = figures.new_axes()
    keys = pairing.config_keys
    data = curves.assign(__series=[label(r, keys) for _, r in curves.iterrows()])
    for name, part in data.groupby("__series", sort=True):
        x = part["epoch"].to_numpy(float)
        y = part["diff"].to_numpy(float)
        se = part["se"].fillna(0.0).to_numpy(float)
        line, = ax.plot(x, y, marker=".", label=name)
        ax.fill_between(x, y - se, y + se, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    figures.mark_paired(ax, f"Δ valid {metric} vs {pairing.label}",
                        f"Paired difference of valid {metric} at equal epochs (mean ± s.e.)",
                        context)
    return figures.save(fig, out_dir / f"paired_valid_curve_vs_{slug(pairing.reference)}.png")


# --- detection over training (history.csv's detect_* columns) -----------------------------

DETECTION_TRACE = (("detect_auc", "detection AUC"), ("detect_precision", "precision of the flags"),
                   ("detect_recall", "recall of the flags"))


def detection_curves(runs: pd.DataFrame, varying: list[str], root: Path) -> pd.DataFrame:
    """Per configuration (the varying settings except seed) and epoch: the mean and standard
    error over its completed runs of each detection number their histories hold (``detect_*``,
    written where the noise is known). Empty when no run has them."""
    keys = [k for k in varying if k != "seed"]
    rows = []
    done = runs[runs["status"] == "completed"] if "status" in runs else runs
    frame = done.assign(__series=[label(r, keys) for _, r in done.iterrows()])
    for _, group in frame.groupby("__series", sort=True):
        for column, _ in DETECTION_TRACE:
            series = [s for s in (read_history(root / r, column) for r in group["run"])
                      if s is not None and len(s)]
            if not series:
                continue
            table = pd.concat(series, axis=1)
            for epoch, values in table.iterrows():
                v = values.dropna().tolist()
                if not v:
                    continue
                mean, se = _mean_se(v)
                rows.append({**{k: group.iloc[0][k] for k in keys}, "metric": column,
                             "epoch": int(epoch), "runs": len(v), "mean": mean, "se": se})
    return pd.DataFrame(rows)


def write_detection_figure(curves: pd.DataFrame, keys: list[str], out_dir: Path,
                           context: str = "") -> Path:
    """One panel per detection number, one line per configuration (mean ± s.e. over seeds), a
    configuration in the same colour in every panel (a run without flags has no precision or
    recall line, and the colour cycle alone would shift the others to its colour)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    present = [(c, name) for c, name in DETECTION_TRACE if c in set(curves["metric"])]
    fig, axes = figures.new_axes(width=4.2 * len(present), ncols=len(present))
    axes = list(axes) if len(present) > 1 else [axes]
    keys = [k for k in keys if k in curves]
    data = curves.assign(__series=[label(r, keys) for _, r in curves.iterrows()])
    colours = {s: f"C{i % 10}" for i, s in enumerate(sorted(set(data["__series"])))}
    for ax, (column, name) in zip(axes, present):
        for series, part in data[data["metric"] == column].groupby("__series", sort=True):
            x = part["epoch"].to_numpy(float)
            y = part["mean"].to_numpy(float)
            se = part["se"].fillna(0.0).to_numpy(float)
            ax.plot(x, y, marker=".", markersize=3, label=series, color=colours[series])
            ax.fill_between(x, y - se, y + se, color=colours[series], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Detection of the known noise over training (mean ± s.e. over seeds)"
                 + (f"\n{context}" if context else ""), fontsize=9)
    return figures.save(fig, out_dir / "detection_over_training.png")

"""Sweep summary: one table row per run folder, aggregated over seeds, as CSV, markdown and PNG.

A run folder is any folder under the sweep folder holding ``metrics.json`` or Hydra's
``.hydra/config.yaml``. Its settings come from the resolved ``config.yaml`` the run wrote
(Hydra's ``.hydra/config.yaml`` when the run failed before writing one) and its overrides from
``.hydra/overrides.yaml``. Failed and unfinished runs are rows like the others, with their status
and error; they are never dropped.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from omegaconf import OmegaConf

from ..identity import current_form, is_setting_column, value_before_key
from ..record import read_record
from . import figures
from .curves import (curves_markdown, detection_curves, paired_curves, write_curves_figure,
                     write_detection_figure)
from .tables import fmt_diff as _fmt_diff
from .tables import fmt_metric as _fmt_metric
from .tables import fmt_value as _fmt_value
from .tables import label as _label
from .tables import markdown_table
from .tables import missing as _missing
from .tables import slug as _slug
from .tables import sort_key as _sort_key

log = logging.getLogger("guider")

# Columns that name what a run is; shown when they vary across the runs of the folder.
IDENTITY = {
    "dataset": "dataset.name",
    "backbone": "backbone.name",
    "denoise": "denoise.name",
    "noise": "noise.type",
    "noise.ratio": "noise.ratio",
}
# Overrides that never change a result (resources, resuming, progress bars, paths).
# Metrics aggregated in summary.csv / summary.md: (column, label, higher is better).
DEFAULT_METRICS = (
    ("valid.Recall@20", "valid Recall@20", True),
    ("test.Recall@20", "test Recall@20", True),
    ("test.NDCG@20", "test NDCG@20", True),
    ("detection.auc", "detection AUC", True),
    ("seconds.total", "seconds", False),
)
STATUS_ORDER = ("completed", "failed", "incomplete", "unreadable")


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    elif prefix:
        out[prefix[:-1]] = obj
    return out


def _load_yaml(path: Path, resolve: bool) -> dict:
    conf = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(conf, resolve=resolve)
    except Exception:  # an interpolation that only resolves inside the run (e.g. ${hydra:...})
        return OmegaConf.to_container(conf, resolve=False)


def read_config(run_dir: Path) -> tuple[dict, str | None]:
    """A run's settings and the first problem met reading them: the resolved config.yaml the run
    wrote, else Hydra's .hydra/config.yaml (a run that failed before writing one, resolved here);
    ({}, None) when there is neither."""
    error = None
    for path, resolve in ((run_dir / "config.yaml", False), (run_dir / ".hydra" / "config.yaml", True)):
        if path.is_file():
            try:
                return _load_yaml(path, resolve), error
            except Exception as exc:  # keep looking; name the problem
                error = error or f"{path.name}: {exc}"
    return {}, error


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) that holds one run."""
    root = Path(root)
    found = []
    for path in sorted([root, *root.rglob("*")]):
        if not path.is_dir():
            continue
        rel = path.relative_to(root).parts
        if any(part.startswith(".") or part in ("checkpoints", "figures") for part in rel):
            continue
        if (path / "metrics.json").is_file() or (path / ".hydra" / "config.yaml").is_file():
            found.append(path)
    return found


def _parse_override(text: str) -> tuple[str, str] | None:
    key, sep, value = str(text).partition("=")
    if not sep or key.startswith("~"):
        return None
    return key.lstrip("+"), value


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides (Hydra's .hydra/overrides.yaml) as key -> value."""
    overrides: dict[str, str] = {}
    opath = run_dir / ".hydra" / "overrides.yaml"
    if opath.is_file():
        try:
            items = OmegaConf.to_container(OmegaConf.load(opath)) or []
        except Exception:
            items = []
        for item in items:
            parsed = _parse_override(item)
            if parsed:
                overrides[parsed[0]] = parsed[1]
    return overrides


def read_run(run_dir: Path, root: Path, evaluation: str | None = None) -> tuple[dict, dict[str, str]]:
    """One run folder -> (row, {column: raw override value}) where the row holds the run's
    status, error, identity, flattened config (``cfg.`` prefix) and flattened metrics. With
    ``evaluation``, the valid and test metrics come from the run's ``eval-<evaluation>.json``
    (written by ``guider-eval --out``); a completed run without that file is ``incomplete``."""
    run_dir = Path(run_dir)
    rel = run_dir.relative_to(root).as_posix() if run_dir != root else "."
    row: dict[str, Any] = {"run": rel}
    metrics: dict | None = None
    try:
        metrics = read_record(run_dir)
    except ValueError as exc:
        row.update(status="unreadable", error=f"metrics.json: {exc}")
    if metrics is not None:
        row["status"] = str(metrics.get("status", "completed"))
        row["error"] = metrics.get("error")
    elif "status" not in row:
        row.update(status="incomplete", error="no metrics.json (still running, killed, or interrupted)")

    cfg, cfg_error = read_config(run_dir)
    if cfg_error:  # keep the row; name the problem
        row["error"] = row.get("error") or cfg_error
    # an older GUIDER run also holds its teacher's keys under today's names (teacher_dim as
    # teacher.embedding_dim, ...), so that it groups with newer runs that vary them
    flat_cfg = {**_flatten(current_form(cfg)), **_flatten(cfg)}
    for column, key in IDENTITY.items():
        row[column] = flat_cfg.get(key)
    row["seed"] = flat_cfg.get("seed")
    for key, value in flat_cfg.items():
        row[f"cfg.{key}"] = value

    overrides = read_overrides(run_dir)
    if metrics is not None and row["status"] == "completed" and evaluation:
        again = run_dir / f"eval-{evaluation}.json"
        try:
            redo = json.loads(again.read_text())
            metrics = {**metrics, "valid": redo["valid"], "test": redo["test"]}
        except (OSError, ValueError, KeyError):
            row.update(status="incomplete", error=f"no readable {again.name} (guider-eval "
                                                  f"{run_dir.name} ... --out {again.name})")
    if metrics is not None and row["status"] == "completed":
        for section in ("valid", "test", "detection", "seconds"):
            for key, value in _flatten({section: metrics.get(section) or {}}).items():
                if isinstance(value, (int, float)) or value is None:
                    row[key] = value
        for key in ("best_epoch", "epochs_run", "stop_reason", "valid_metric"):
            row[key] = metrics.get(key)
    return row, overrides


def _column_for(key: str, flat_cfg_keys: set[str]) -> tuple[str, str | None]:
    """Summary column of one override key and the config key its value comes from."""
    if key in IDENTITY:
        return key, IDENTITY[key]
    if key.startswith("denoise/"):  # a group of the denoiser's (denoise/teacher=freedom)
        return key.replace("/", "."), None
    if "/" in key:  # a config group below another (e.g. experiment/variant): the choice
        return key.rsplit("/", 1)[-1], None
    if key in flat_cfg_keys:
        return key, key
    return key, None  # a group choice, or a key absent from the saved config


def _group_choice(row: dict, column: str) -> Any:
    """The choice of a denoiser's config group (``denoise.teacher``) in a run that did not
    override it, read from its saved config (the chosen node's ``name``; a string in the
    older form): so the default teacher reads ``freedom``, not an empty cell."""
    if not column.startswith("denoise."):
        return None
    value = row.get(f"cfg.{column}.name", row.get(f"cfg.{column}"))
    return value if isinstance(value, str) else None


def collect_runs(root: str | Path, evaluation: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """All runs under ``root``: (one row per run, the setting columns that vary across runs).

    The varying columns are the identity columns (dataset, backbone, denoise, noise,
    noise.ratio) and the overridden keys whose values differ between runs; ``seed`` comes last
    and is what the summary aggregates over."""
    root = Path(root)
    rows, all_overrides = [], []
    for run_dir in find_run_dirs(root):
        row, overrides = read_run(run_dir, root, evaluation)
        rows.append(row)
        all_overrides.append(overrides)
    if not rows:
        return pd.DataFrame(columns=["run", "status", "error"]), []
    flat_keys = {c[4:] for row in rows for c in row if c.startswith("cfg.")}
    sources: dict[str, str | None] = {}  # extra column -> config key its value comes from
    for overrides in all_overrides:
        for key in overrides:
            if not is_setting_column(key):
                continue
            column, source = _column_for(key, flat_keys)
            if column not in IDENTITY and column != "seed" and column not in sources:
                sources[column] = source
    raw_key = {column: key for overrides in all_overrides for key in overrides
               for column in [_column_for(key, flat_keys)[0]]}
    for row, overrides in zip(rows, all_overrides):
        for column, source in sources.items():
            value = row.get(f"cfg.{source}") if source else None
            if value is None or isinstance(value, (dict, list)):
                value = overrides.get(raw_key[column])
            if value is None and source:  # a run older than the key: the value it behaved as
                value = value_before_key(source, row.get("denoise"))
            if value is None and "/" in raw_key[column]:  # a group left at its default choice:
                value = _group_choice(row, column)       # the saved config names it
            row[column] = value
    candidates = [*IDENTITY, *sources]
    table = pd.DataFrame(rows)
    varying = [c for c in candidates if c in table and table[c].astype(str).nunique(dropna=False) > 1]
    for column in hidden_differences(table, varying):  # e.g. a default that changed between runs
        table[column] = table[f"cfg.{column}"]
        varying.append(column)
    if "seed" in table and table["seed"].astype(str).nunique(dropna=False) > 1:
        varying.append("seed")
    front = ["run", "status", "error", *varying]
    metric_cols = [c for c in table.columns if c.split(".")[0] in ("valid", "test", "detection", "seconds")]
    rest = [c for c in ("best_epoch", "epochs_run", "stop_reason", "valid_metric") if c in table]
    constant = [c for c in [*IDENTITY, "seed", *[c for c in candidates if c not in IDENTITY]]
                if c in table and c not in varying]
    cfg_cols = sorted(c for c in table.columns if c.startswith("cfg."))
    table = table[[*front, *metric_cols, *rest, *constant, *cfg_cols]]
    table = table.sort_values(by=[c for c in [*varying, "run"]], key=_sort_key, kind="stable")
    return table.reset_index(drop=True), varying


def hidden_differences(table: pd.DataFrame, varying: list[str]) -> list[str]:
    """Settings no override names that still differ between runs the varying columns cannot tell
    apart (runs made before and after a default changed): each becomes a column, so that such runs
    are never averaged or paired as one configuration. Only keys every run of such a group holds
    (an older run without a key is read by the rules of ``value_before_key`` instead)."""
    cfg_cols = [c for c in table.columns if c.startswith("cfg.") and c[4:] != "seed"
                and is_setting_column(c[4:]) and c[4:] not in varying]
    if not cfg_cols:
        return []
    keys = [c for c in varying if c != "seed" and c in table]
    frame = table.assign(__group=[tuple(repr(r[k]) for k in keys) for _, r in table.iterrows()]
                         if keys else 0)
    groups = [group for _, group in frame.groupby("__group", sort=False) if len(group) > 1]

    def differs(values: pd.Series) -> bool:
        return not values.map(_missing).any() and values.map(repr).nunique() > 1

    return [col[4:] for col in cfg_cols if any(differs(group[col]) for group in groups)]


def aggregate(runs: pd.DataFrame, group_keys: list[str],
              metrics: Iterable[tuple[str, str, bool]] = DEFAULT_METRICS) -> pd.DataFrame:
    """One row per setting (the varying columns except seed): run counts by status, the errors,
    and for each metric its mean, std (sample std, n - 1; empty for one run) and count over the
    completed runs."""
    metric_cols = [m[0] for m in metrics if m[0] in runs]
    keys = [k for k in group_keys if k != "seed"]
    frame = runs.copy()
    for key in keys:  # group on strings so that None/NaN settings form their own group
        frame[f"__{key}"] = frame[key].map(lambda v: "" if _missing(v) else repr(v))
    out_rows = []
    grouped = frame.groupby([f"__{k}" for k in keys], sort=False, dropna=False) if keys else [((), frame)]
    for _, group in grouped:
        first = group.iloc[0]
        row: dict[str, Any] = {k: first[k] for k in keys}
        counts = group["status"].value_counts()
        n_done = int(counts.get("completed", 0))
        n_failed = int(counts.get("failed", 0))
        row["runs"] = len(group)
        row["completed"] = n_done
        row["failed"] = n_failed
        row["incomplete"] = len(group) - n_done - n_failed
        if n_done == len(group):
            row["status"] = "completed"
        elif n_done == 0:
            row["status"] = "failed" if n_failed else "incomplete"
        else:
            row["status"] = "partial"
        errors = [str(e) for e in group["error"].tolist() if not _missing(e)]
        row["error"] = "; ".join(dict.fromkeys(errors)) or None
        done = group[group["status"] == "completed"]
        for col in metric_cols:
            values = pd.to_numeric(done[col], errors="coerce").dropna()
            row[f"{col} mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{col} std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row[f"{col} count"] = int(len(values))
        out_rows.append(row)
    table = pd.DataFrame(out_rows)
    if keys:
        table = table.sort_values(by=keys, key=_sort_key, kind="stable").reset_index(drop=True)
    return table


# ---------------------------------------------------------------------------------------------
# markdown


def summary_markdown(summary: pd.DataFrame, runs: pd.DataFrame, group_keys: list[str],
                     metrics: Iterable[tuple[str, str, bool]] = DEFAULT_METRICS,
                     title: str = "Sweep summary") -> str:
    metrics = [m for m in metrics if f"{m[0]} mean" in summary and summary[f"{m[0]} mean"].notna().any()]
    keys = [k for k in group_keys if k != "seed"]
    counts = runs["status"].value_counts() if len(runs) else {}
    status_text = ", ".join(f"{int(counts[s])} {s}" for s in STATUS_ORDER if s in counts)
    lines = [f"# {title}", "", f"{len(runs)} runs: {status_text or 'none'}."]
    fixed = fixed_settings(runs, group_keys)
    if fixed:
        lines.append(f"Same in every run: {', '.join(fixed)}.")
    lines += ["", "Each cell: mean ± sample standard deviation over the completed runs (seeds) of the "
              "row; n = completed runs / runs. **Bold**: the best mean in its column (highest; lowest "
              "for seconds).", ""]
    best: dict[str, float] = {}
    for col, _, higher in metrics:
        means = summary[f"{col} mean"].dropna()
        if len(means):
            best[col] = means.max() if higher else means.min()
    headers = [*keys, "n", *[label for _, label, _ in metrics], "status"]
    rows = []
    for _, row in summary.iterrows():
        cells = [_fmt_value(row[k]) for k in keys]
        cells.append(f"{row['completed']}/{row['runs']}")
        for col, _, higher in metrics:
            mean, std = row[f"{col} mean"], row[f"{col} std"]
            text = _fmt_metric(mean, std, not higher)
            if not _missing(mean) and col in best and mean == best[col]:
                text = f"**{text}**"
            cells.append(text)
        cells.append(row["status"])
        rows.append(cells)
    lines.append(markdown_table(headers, rows))
    if "stop_reason" in runs:
        budget = runs[runs["stop_reason"] == "time_budget"]
        if len(budget):
            lines += ["", f"{len(budget)} completed run(s) ended by their time budget "
                      f"(train.max_minutes), not by early stopping: their scores may still have "
                      f"been rising ({', '.join(budget['run'].astype(str))})."]
    bad = runs[runs["status"] != "completed"]
    if len(bad):
        lines += ["", "## Runs that did not complete", ""]
        cols = [k for k in group_keys if k in bad]
        table_rows = [[r["run"], *[_fmt_value(r[c]) for c in cols], r["status"], _fmt_value(r["error"])]
                      for _, r in bad.iterrows()]
        lines.append(markdown_table(["run", *cols, "status", "error"], table_rows))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# paired comparisons

# Metrics compared seed by seed against the reference denoiser: (column, label).
PAIRED_METRICS = (
    ("test.Recall@20", "test Recall@20"),
    ("test.NDCG@20", "test NDCG@20"),
    ("valid.Recall@20", "valid Recall@20"),
)
# Detection columns of the detection table: (column, label).
DETECTION_METRICS = (
    ("detection.auc", "AUC"),
    ("detection.band_auc", "band AUC"),
    ("detection.degree_auc", "degree-only AUC"),
    ("detection.degree_band_auc", "degree-only band AUC"),
    ("detection.popularity_auc", "popularity-only AUC"),
    ("detection.item_band_auc", "item-band AUC"),
    ("detection.popularity_band_auc", "popularity-only item-band AUC"),
    ("detection.precision", "precision"),
    ("detection.recall", "recall"),
)


def denoiser_columns(group_keys: list[str]) -> list[str]:
    """The setting columns that describe the denoiser (what a paired comparison varies):
    ``denoise``, any ``denoise.*`` override and an experiment ``variant``."""
    return [k for k in group_keys
            if k == "denoise" or k.startswith("denoise.") or k == "variant"]


@dataclass
class Paired:
    """Per configuration: the mean paired difference to the reference, its standard error and
    the number of pairs (``table``); the runs without a partner (``unpaired``)."""

    reference: str
    table: pd.DataFrame
    unpaired: pd.DataFrame
    config_keys: list[str]
    reference_backbone: str | None = None  # pairing across models (--reference-backbone)

    @property
    def label(self) -> str:
        return pairing_label(self.reference, self.reference_backbone)


def pairing_label(reference: str, reference_backbone: str | None = None) -> str:
    """What the runs are paired with, e.g. "denoise=none" or "denoise=none on backbone=lightgcn"."""
    return f"denoise={reference}" + (f" on backbone={reference_backbone}"
                                     if reference_backbone is not None else "")


class BadReference(ValueError):
    """A ``--reference`` that names no single configuration of the folder's runs."""


def parse_reference(reference: str) -> tuple[str, dict[str, str]]:
    """``--reference``: a denoiser's name, optionally followed by the settings (summary columns,
    ``key=value``) that pick one of its configurations as the reference, e.g.
    ``"guider variant=student_flags denoise.amsc.rho_max=0.1"``: a lever against the setting it
    would replace, seed by seed."""
    name, *rest = reference.split() or [""]
    if not name or "=" in name:
        raise BadReference(f"--reference {reference!r}: start with a denoiser's name (none, oracle, "
                         "guider, ...), then any key=value settings")
    settings = {}
    for token in rest:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise BadReference(f"--reference {reference!r}: {token!r} is not key=value")
        settings[key] = value
    return name, settings


def _matches(value: Any, text: str) -> bool:
    """Whether a run's setting equals ``text`` as typed on the command line."""
    if _missing(value):
        return text.lower() in ("", "null", "none")
    return _same_setting(value, text, text.lower() in ("true", "false"))


def _same_setting(value: Any, other: Any, boolean: bool = False) -> bool:
    """A run's setting against another value: booleans (either side, or ``boolean``) by their
    lower-case text, numbers as floats, anything else as text."""
    if boolean or isinstance(value, bool) or isinstance(other, bool):
        return str(value).lower() == str(other).lower()
    try:
        return float(value) == float(other)
    except (TypeError, ValueError):
        return str(value) == str(other)


def _at_default(denoiser: str, column: str, value: Any) -> bool:
    """Whether a run's ``column`` (``denoise.<key>``, or ``variant``) leaves the denoiser
    ``denoiser`` at its registered default: the value is missing or equals the schema's."""
    if _missing(value):
        return True
    if not column.startswith("denoise."):
        return False
    try:
        from ..denoise import DENOISERS

        default: Any = DENOISERS.get(denoiser).schema()
        for part in column.split(".")[1:]:
            default = getattr(default, part)
    except (KeyError, AttributeError, TypeError):
        return False
    if hasattr(default, "name") and not isinstance(value, dict):  # a group's choice (teacher)
        return str(value) == str(default.name)
    return _same_setting(value, default)


def _pair_group(group: pd.DataFrame, partners: list[pd.Series | None], config_cols: list[str],
                metric_cols: list[str], label: str) -> tuple[dict, list[dict]]:
    """One configuration's runs against their reference partners: (its row of the paired table:
    settings, pairs, mean difference and standard error per metric; its unpaired runs)."""
    first = group.iloc[0]
    out: dict[str, Any] = {c: first[c] for c in config_cols}
    diffs: dict[str, list[float]] = {c: [] for c in metric_cols}
    unpaired, n_pairs = [], 0
    for (_, row), partner in zip(group.iterrows(), partners):
        if row["status"] != "completed" or partner is None:
            why = ("run not completed" if row["status"] != "completed"
                   else f"no completed {label} run with the same seed and settings")
            unpaired.append({"run": row["run"], **{c: row[c] for c in config_cols},
                             "seed": row.get("seed"), "status": row["status"], "why": why})
            continue
        n_pairs += 1
        for col in metric_cols:
            a = pd.to_numeric(pd.Series([row[col], partner[col]]), errors="coerce")
            if a.notna().all():
                diffs[col].append(float(a[0] - a[1]))
    out["pairs"] = n_pairs
    for col in metric_cols:
        values = pd.Series(diffs[col], dtype=float)
        out[f"{col} diff"] = float(values.mean()) if len(values) else math.nan
        out[f"{col} se"] = (float(values.std(ddof=1) / math.sqrt(len(values)))
                            if len(values) > 1 else math.nan)
    return out, unpaired


@dataclass
class Pairing:
    """Every run that is not the reference, by configuration, with its reference partner (None
    where it has none): what ``paired_differences`` and the paired curves aggregate."""

    reference: str
    config_keys: list[str]
    groups: list[tuple[pd.DataFrame, list[pd.Series | None]]]
    reference_backbone: str | None = None

    @property
    def label(self) -> str:
        return pairing_label(self.reference, self.reference_backbone)


def pair_runs(runs: pd.DataFrame, group_keys: list[str], reference: str = "none",
              reference_backbone: str | None = None) -> Pairing | None:
    """Pair every run with the completed run of ``denoise=<reference>`` that shares everything
    but the denoiser: the same seed, the same noise seed and the same values of every other
    varying setting (backbone, noise ratio, ...). The reference is the plain configuration of
    that denoiser: its overridden keys (``denoise.*`` columns) unset or at the registered
    defaults, no ``variant``. None when the folder holds no reference run or no other denoiser.

    ``reference_backbone``: pair across models too: the reference is ``denoise=<reference>`` on
    that backbone, and every run of every backbone is paired with it (a model that denoises by
    itself, DA-MRS, against the model it builds on)."""
    if not len(runs) or "denoise" not in runs:
        return None
    keys = [k for k in group_keys if k != "seed"]
    den = denoiser_columns(keys)
    if "denoise" not in den:
        den = ["denoise", *den]
    if reference_backbone is not None:
        if "backbone" not in runs:
            return None
        den = ["backbone", *[c for c in den if c != "backbone"]]
        keys = [*keys, "backbone"] if "backbone" not in keys else keys
    base = [k for k in keys if k not in den]
    pair_cols = [*base, "seed", *(["cfg.noise.seed"] if "cfg.noise.seed" in runs else [])]

    def key_of(row: pd.Series) -> tuple:
        return tuple("" if _missing(row.get(c)) else repr(row.get(c)) for c in pair_cols)

    name, settings = parse_reference(reference)
    is_ref = runs["denoise"].astype(str) == name
    if reference_backbone is not None:
        is_ref &= runs["backbone"].astype(str) == reference_backbone
    for col, text in settings.items():
        if col not in runs:
            raise BadReference(f"--reference {reference!r}: no run in this folder has a setting "
                             f"{col!r}; the settings that vary: {', '.join(den)}")
        if col in base or col == "seed":
            raise BadReference(f"--reference {reference!r}: {col!r} is not a denoiser's setting; "
                             "runs are paired across it (--reference-backbone pairs across "
                             "models)")
        is_ref &= runs[col].map(lambda v, text=text: _matches(v, text))
    for col in den:  # the plain reference: each of its denoiser keys unset or at its default
        if col in ("denoise", "backbone") or col in settings:
            continue
        at_default = runs[col].map(lambda v, col=col: _at_default(name, col, v))
        if not settings or (is_ref & at_default).any():
            # with settings, a key they do not name stays at its default where a run has it
            # so (a variant's own keys, e.g. dbpr.enabled=true, are kept as the variant set them)
            is_ref &= at_default
    if settings:
        chosen = runs.loc[is_ref, den].drop_duplicates()
        if len(chosen) > 1:
            raise BadReference(f"--reference {reference!r} matches {len(chosen)} configurations; "
                             "name more settings to pick one:\n" + chosen.to_string(index=False))
    refs = runs[is_ref]
    others = runs[~is_ref]  # with a variant as reference, its plain form is compared too
    if not len(refs) or not len(others):
        return None
    ref_by_key: dict[tuple, pd.Series] = {}
    for _, row in refs.iterrows():
        if row["status"] == "completed":
            ref_by_key.setdefault(key_of(row), row)
    frame = others.copy()
    config_cols = [*base, *den]
    frame["__config"] = [tuple("" if _missing(r[c]) else repr(r[c]) for c in config_cols)
                         for _, r in frame.iterrows()]
    groups = [(group, [ref_by_key.get(key_of(row)) for _, row in group.iterrows()])
              for _, group in frame.groupby("__config", sort=False)]
    return Pairing(reference, config_cols, groups, reference_backbone)


def paired_differences(runs: pd.DataFrame, group_keys: list[str], reference: str = "none",
                       metrics: Iterable[tuple[str, str]] = PAIRED_METRICS,
                       reference_backbone: str | None = None) -> Paired | None:
    """The runs paired as ``pair_runs`` pairs them. Per configuration (the setting columns
    except seed) give mean(metric - reference metric) over its pairs, the standard error
    std / sqrt(n) (sample std, empty for one pair) and n. Runs of other configurations without a
    partner (the reference run missing, failed or unfinished; or the run itself not completed)
    are returned in ``unpaired``, never silently dropped. None when the folder holds no
    reference run or no other denoiser."""
    pairing = pair_runs(runs, group_keys, reference, reference_backbone)
    return differences(pairing, runs, metrics) if pairing is not None else None


def differences(pairing: Pairing, runs: pd.DataFrame,
                metrics: Iterable[tuple[str, str]] = PAIRED_METRICS) -> Paired:
    """The paired table of ``paired_differences`` from pairs already made."""
    metric_cols = [(c, label) for c, label in metrics if c in runs]
    rows, unpaired = [], []
    for group, partners in pairing.groups:
        out, missing = _pair_group(group, partners, pairing.config_keys,
                                   [c for c, _ in metric_cols], pairing.label)
        rows.append(out)
        unpaired += missing
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(by=pairing.config_keys, key=_sort_key, kind="stable")
    return Paired(pairing.reference, table.reset_index(drop=True), pd.DataFrame(unpaired),
                  pairing.config_keys, pairing.reference_backbone)


def paired_markdown(paired: Paired, metrics: Iterable[tuple[str, str]] = PAIRED_METRICS) -> str:
    metrics = [(c, label) for c, label in metrics if f"{c} diff" in paired.table]
    lines = ["", f"## Paired differences to {paired.label}", "",
             f"Each run minus the {paired.label} run with the same seed, noise seed and "
             f"other settings; mean ± standard error over the pairs (sample std / sqrt(n)); "
             f"pairs = n. A difference smaller than about two standard errors decides nothing.", ""]
    headers = [*paired.config_keys, "pairs", *[f"Δ {label}" for _, label in metrics]]
    rows = [[*[_fmt_value(r[c]) for c in paired.config_keys], str(int(r["pairs"])),
             *[_fmt_diff(r[f"{c} diff"], r[f"{c} se"]) for c, _ in metrics]]
            for _, r in paired.table.iterrows()]
    lines.append(markdown_table(headers, rows))
    if len(paired.unpaired):
        lines += ["", f"Unpaired runs ({len(paired.unpaired)}), left out of the differences:", ""]
        cols = [c for c in ["run", *paired.config_keys, "seed", "status", "why"]
                if c in paired.unpaired]
        lines.append(markdown_table(cols, [[_fmt_value(r[c]) for c in cols]
                                           for _, r in paired.unpaired.iterrows()]))
    return "\n".join(lines) + "\n"


def detection_markdown(summary: pd.DataFrame, runs: pd.DataFrame, group_keys: list[str]) -> str:
    """The detection table: per setting (mean over seeds) the overall AUC next to the band AUC,
    the trivial degree and popularity AUCs, precision, recall, and the AUC within each user-degree
    band that holds noise. Empty when no run has detection numbers."""
    keys = [k for k in group_keys if k != "seed"]
    cols = [(c, label) for c, label in DETECTION_METRICS
            if f"{c} mean" in summary and summary[f"{c} mean"].notna().any()]
    band_cols = [c for c in runs.columns if c.startswith("detection.bands.") and c.endswith(".auc")]
    band_cols = [c for c in band_cols if pd.to_numeric(runs[c], errors="coerce").notna().any()]
    if not cols:
        return ""
    done = runs[runs["status"] == "completed"].copy()
    for key in keys:
        done[f"__{key}"] = done[key].map(lambda v: "" if _missing(v) else repr(v))
    band_means: dict[tuple, dict[str, float]] = {}
    if keys and band_cols:
        for name, group in done.groupby([f"__{k}" for k in keys], sort=False):
            name = name if isinstance(name, tuple) else (name,)
            band_means[name] = {c: pd.to_numeric(group[c], errors="coerce").mean() for c in band_cols}
    headers = [*keys, "n", *[label for _, label in cols],
               *[f"AUC, n_u {c.split('.')[2]}" for c in band_cols]]
    rows = []
    for _, row in summary.iterrows():
        values = [row[f"{c} mean"] for c, _ in cols]
        if all(_missing(v) for v in values):
            continue
        name = tuple("" if _missing(row[k]) else repr(row[k]) for k in keys)
        bands = band_means.get(name, {})
        rows.append([*[_fmt_value(row[k]) for k in keys], f"{row['completed']}/{row['runs']}",
                     *[_fmt_metric(row[f"{c} mean"], row[f"{c} std"], False) for c, _ in cols],
                     *["n/a" if _missing(bands.get(c)) else f"{bands[c]:.4f}" for c in band_cols]])
    if not rows:
        return ""
    return "\n".join([
        "", "## Noise detection", "",
        "Mean ± std over seeds. *band AUC*: the AUC over (noisy, clean) pairs whose users fall in "
        "the same training-degree band; *degree-only* / *popularity-only*: the AUC of the trivial "
        "scores \"the user has few training items\" / \"the item has few training "
        "interactions\"; *item-band AUC*: the AUC over pairs whose items fall in the same fifth "
        "of item training degree (the popularity-only one: what popularity still gives there). "
        "A denoiser shows detection beyond the trivial scores only where its AUC "
        "beats them. The last columns: the AUC within each band of user training degree n_u (mean over "
        "seeds).",
        "", markdown_table(headers, rows)]) + "\n"


# ---------------------------------------------------------------------------------------------
# figures


def fixed_settings(runs: pd.DataFrame, group_keys: list[str]) -> list[str]:
    """``key=value`` for the identity settings shared by every run."""
    if not len(runs):
        return []
    return [f"{c}={_fmt_value(runs[c].iloc[0])}" for c in [*IDENTITY, "seed"]
            if c in runs and c not in group_keys and not _missing(runs[c].iloc[0])]


def _plot_vs_ratio(ax, summary: pd.DataFrame, col: str, label: str, keys: list[str],
                   context: str) -> str:
    """One line per setting (mean, ± std band) against noise.ratio; returns the file name."""
    mean, std = f"{col} mean", f"{col} std"
    series_keys = [k for k in keys if k != "noise.ratio"]
    data = summary[summary[mean].notna()].copy()
    data["__series"] = [_label(r, series_keys, context or "all runs") for _, r in data.iterrows()]
    for name, part in data.groupby("__series", sort=True):
        part = part.sort_values("noise.ratio", key=_sort_key)
        x = pd.to_numeric(part["noise.ratio"], errors="coerce").to_numpy(float)
        y = part[mean].to_numpy(float)
        s = part[std].fillna(0.0).to_numpy(float)
        line, = ax.plot(x, y, marker="o", label=name)
        ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("noise ratio")
    ax.legend(fontsize=8)
    ax.set_title(f"{label} vs injected noise (mean ± std over seeds)"
                 + (f"\n{context}" if context else ""), fontsize=9)
    return f"{_slug(label)}_vs_noise_ratio.png"


def _plot_bars(ax, summary: pd.DataFrame, col: str, label: str, keys: list[str],
               context: str) -> str:
    """One bar per setting (± std error bars); returns the file name."""
    mean, std = f"{col} mean", f"{col} std"
    data = summary[summary[mean].notna()]
    labels = [_label(r, keys) for _, r in data.iterrows()]
    pos = list(range(len(labels)))
    ax.bar(pos, data[mean].to_numpy(float), yerr=data[std].fillna(0.0).to_numpy(float),
           capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(pos)
    tilt = len(labels) > 3
    ax.set_xticklabels(labels, rotation=30 if tilt else 0, ha="right" if tilt else "center",
                       fontsize=8)
    ax.set_title(f"{label} (mean ± std over seeds)" + (f"\n{context}" if context else ""),
                 fontsize=9)
    return f"{_slug(label)}_bars.png"


def write_figures(summary: pd.DataFrame, group_keys: list[str], out_dir: Path,
                  metrics: Iterable[tuple[str, str, bool]] = DEFAULT_METRICS,
                  context: str = "") -> list[Path]:
    """Metric vs noise ratio per remaining setting (mean line, ± std band) when noise.ratio varies;
    otherwise one bar per setting (± std error bars). Seconds are not plotted."""
    keys = [k for k in group_keys if k != "seed"]
    written = []
    plotted = [m for m in metrics if m[0] != "seconds.total" and f"{m[0]} mean" in summary
               and summary[f"{m[0]} mean"].notna().any()]
    if out_dir.is_dir():  # figures of an earlier summary of this folder would be stale
        for old in [*out_dir.glob("*_vs_noise_ratio.png"), *out_dir.glob("*_bars.png")]:
            old.unlink()
    if not plotted:
        return written
    out_dir.mkdir(parents=True, exist_ok=True)
    by_ratio = "noise.ratio" in keys
    for col, label, _ in plotted:
        n_bars = 0 if by_ratio else len(summary)
        fig, ax = figures.new_axes(0.45 * n_bars)
        plot = _plot_vs_ratio if by_ratio else _plot_bars
        name = plot(ax, summary, col, label, keys, context)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        written.append(figures.save(fig, out_dir / name))
    return written


def write_paired_figure(paired: Paired, out_dir: Path, context: str = "",
                        metric: tuple[str, str] = PAIRED_METRICS[0]) -> list[Path]:
    """The paired difference of ``metric`` to the reference: against the noise ratio (one line
    per configuration, ± standard-error bars) when noise.ratio varies, else one bar per
    configuration."""
    col, label = metric
    table = paired.table
    if f"{col} diff" not in table or not table[f"{col} diff"].notna().any():
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = figures.new_axes(0.45 * len(table))
    data = table[table[f"{col} diff"].notna()].copy()
    series = [k for k in paired.config_keys if k != "noise.ratio"]
    if "noise.ratio" in paired.config_keys and data["noise.ratio"].nunique() > 1:
        data["__series"] = [_label(r, series) for _, r in data.iterrows()]
        for name, part in data.groupby("__series", sort=True):
            part = part.sort_values("noise.ratio", key=_sort_key)
            x = pd.to_numeric(part["noise.ratio"], errors="coerce").to_numpy(float)
            ax.errorbar(x, part[f"{col} diff"].to_numpy(float),
                        yerr=part[f"{col} se"].fillna(0.0).to_numpy(float), marker="o",
                        capsize=3, label=name)
        ax.set_xlabel("noise ratio")
        ax.legend(fontsize=8)
    else:
        labels = [_label(r, paired.config_keys) for _, r in data.iterrows()]
        pos = list(range(len(labels)))
        ax.bar(pos, data[f"{col} diff"].to_numpy(float),
               yerr=data[f"{col} se"].fillna(0.0).to_numpy(float), capsize=4,
               color="tab:blue", alpha=0.8)
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    figures.mark_paired(ax, f"Δ {label} vs {paired.label}",
                        f"Paired difference of {label} to {paired.label} (mean ± s.e.)", context)
    return [figures.save(fig, out_dir / f"paired_{_slug(label)}_vs_{_slug(paired.reference)}.png")]


# ---------------------------------------------------------------------------------------------


@dataclass
class Summary:
    folder: Path
    runs: pd.DataFrame
    summary: pd.DataFrame
    group_keys: list[str]
    markdown: str
    files: list[Path] = field(default_factory=list)
    paired: Paired | None = None


def _valid_metric(runs: pd.DataFrame) -> str:
    """The validation metric the runs selected on (the most common; Recall@20 when unknown)."""
    values = runs["valid_metric"].dropna() if "valid_metric" in runs else pd.Series(dtype=str)
    return str(values.mode().iloc[0]) if len(values) else "Recall@20"


def summarize(folder: str | Path, out_dir: str | Path | None = None,
              metrics: Iterable[tuple[str, str, bool]] = DEFAULT_METRICS,
              reference: str = "none", evaluation: str | None = None,
              reference_backbone: str | None = None) -> Summary:
    """Collect every run under ``folder`` and write ``runs.csv`` (one row per run),
    ``summary.csv`` and ``summary.md`` (aggregated over seeds, with the paired differences to
    ``denoise=<reference>`` and the detection table) and ``figures/*.png`` into ``out_dir``
    (default: ``folder``)."""
    from .. import io

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    out = Path(out_dir) if out_dir is not None else folder
    metrics = list(metrics)
    runs, varying = collect_runs(folder, evaluation)
    summary = aggregate(runs, varying, [*metrics, *[(c, label, True) for c, label in
                                                    DETECTION_METRICS if c not in
                                                    {m[0] for m in metrics}]]) \
        if len(runs) else pd.DataFrame()
    title = f"Sweep summary: {folder}" + (f" (valid/test metrics of eval-{evaluation}.json)"
                                          if evaluation else "")
    md = (summary_markdown(summary, runs, varying, metrics, title=title)
          if len(runs) else f"# Sweep summary: {folder}\n\nNo run folders found.\n")
    pairing = pair_runs(runs, varying, reference, reference_backbone) if len(runs) else None
    paired = differences(pairing, runs) if pairing is not None else None
    if paired is not None and len(paired.table):
        md += paired_markdown(paired)
        keys = [c for c in paired.config_keys if c in summary]
        if keys:  # the paired columns beside each configuration's row of summary.csv
            extra = paired.table.rename(columns={
                c: f"{c} vs {reference}" for c in paired.table.columns
                if c not in paired.config_keys})
            left = summary.assign(__k=[tuple(_fmt_value(r[k]) for k in keys)
                                       for _, r in summary.iterrows()])
            right = extra.assign(__k=[tuple(_fmt_value(r[k]) for k in keys)
                                      for _, r in extra.iterrows()]).drop(
                columns=[c for c in paired.config_keys])
            summary = left.merge(right, on="__k", how="left").drop(columns="__k")
    curves = common = pd.DataFrame()
    if pairing is not None and evaluation is None:  # validation at equal epochs (history.csv)
        curves, common = paired_curves(pairing, folder)
        if len(common):
            md += curves_markdown(pairing, common, _valid_metric(runs))
    if len(runs):
        md += detection_markdown(summary, runs, varying)
    traced = (detection_curves(runs, varying, folder)
              if len(runs) and evaluation is None else pd.DataFrame())
    if len(traced):
        md += ("\nDetection over training (each run's history.csv, where the noise is known): "
               "detection_curves.csv, figures/detection_over_training.png.\n")
    files = [out / "runs.csv", out / "summary.csv", out / "summary.md"]
    for name, table in (("paired_curves.csv", curves), ("detection_curves.csv", traced)):
        if len(table):
            files.append(out / name)
            io.write_text(files[-1], table.to_csv(index=False))
        elif (out / name).is_file():
            (out / name).unlink()
    io.write_text(files[0], runs.drop(columns=[c for c in runs.columns if c.startswith("cfg.")])
                  .to_csv(index=False))
    io.write_text(files[1], summary.to_csv(index=False))
    io.write_text(files[2], md)
    if len(summary) or (out / "figures").is_dir():
        context = ", ".join(f for f in fixed_settings(runs, varying) if not f.startswith("seed="))
        files += write_figures(summary, varying, out / "figures", metrics, context)
        for old in (out / "figures").glob("paired_*.png") if (out / "figures").is_dir() else []:
            old.unlink()
        if paired is not None and len(paired.table):
            files += write_paired_figure(paired, out / "figures", context)
        if pairing is not None and len(curves):
            files.append(write_curves_figure(pairing, curves, out / "figures",
                                             _valid_metric(runs), context))
        old_trace = out / "figures" / "detection_over_training.png"
        if len(traced):
            files.append(write_detection_figure(traced, varying, out / "figures", context))
        elif old_trace.is_file():
            old_trace.unlink()
    return Summary(folder, runs, summary, varying, md, files, paired)

"""Formatting shared by the summary and the paired curves: markdown tables, cell values, sort
keys and file-name slugs (pure functions of pandas values; no run folders read here)."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd


def sort_key(series: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.notna().sum() == series.notna().sum():
        return numeric
    return series.astype(str)


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_value(value: Any) -> str:
    if missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def fmt_metric(mean: float, std: float, seconds: bool) -> str:
    if missing(mean):
        return "n/a"
    digits = 1 if seconds else 4
    text = f"{mean:.{digits}f}"
    if not missing(std):
        text += f" ± {std:.{digits}f}"
    return text


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_diff(mean: float, se: float) -> str:
    if missing(mean):
        return "n/a"
    text = f"{mean:+.4f}"
    if not missing(se):
        text += f" ± {se:.4f}"
    return text


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def label(row: pd.Series, keys: list[str], default: str = "all runs") -> str:
    return " / ".join(v for v in (fmt_value(row[k]) for k in keys) if v) or default

"""Shared steps of ``guider-prepare``: reading raw tables, de-duplication, iterative k-core,
per-user train/valid/test split, id maps, item features with their missing-value rule, and the
writers of an MMRec-format folder (``<name>.inter``, ``<modality>_feat.npy``, id-mapping CSVs,
``README.md``, ``prepare.json``).

Everything works on a pandas frame of raw interactions with the columns ``user``, ``item``
(strings), optionally ``rating`` and ``timestamp``, and ``order`` (the row's position in the raw
file, the tie-breaker for chronological order). All steps are vectorised (numpy / pandas group
codes); none loops over users in Python.

Split rule (``split_counts``): the MMRec toolbox's per-user rule, generalised to any ratios. For a
user with n interactions and ratios (train, valid, test) = (a, b, c), normalised to sum 1:
``held = floor(n (b + c))``, ``n_valid = floor(held b / (b + c))``, ``n_test = held - n_valid``;
then at least one valid and one test item when b, c > 0 (MMRec: "n < 10 -> 1 valid, 1 test"),
and, our addition, at least one training item (users with 1 or 2 interactions give up valid,
then test). With 0.8/0.1/0.1 this is MMRec's rule exactly: 5 -> 3/1/1, 10 -> 8/1/1,
15 -> 12/1/2, 20 -> 16/2/2, 25 -> 20/2/3. The last ``n_valid + n_test`` interactions of a user in
the split order (chronological, or a seeded random permutation) are valid then test.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.errors import DataError

USER_SYNONYMS = ("user", "userid", "user_id", "reviewerid", "uid")
ITEM_SYNONYMS = ("item", "itemid", "item_id", "videoid", "video_id", "asin", "iid", "movieid")
RATING_SYNONYMS = ("rating", "overall", "score")
TIME_SYNONYMS = ("timestamp", "time", "unixreviewtime", "ts", "datetime")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class PrepareError(DataError):
    """Bad input to ``guider-prepare``; the message names the file, the problem and the fix."""


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def open_text(path: Path):
    """A text handle on ``path`` (gzip-compressed when it ends in .gz), UTF-8."""
    if str(path).endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def sniff_sep(path: Path) -> str:
    """Tab if the first line has a tab, else comma."""
    with open_text(path) as fh:
        first = fh.readline()
    return "\t" if "\t" in first else ","


def require_file(path: Path | str | None, what: str, hint: str = "") -> Path:
    if path is None:
        raise PrepareError(f"no {what} given. {hint}".strip())
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{what} not found: {path}. {hint}".strip())
    return path


def pick_column(columns: Sequence[str], wanted: str | None, synonyms: Sequence[str], path: Path,
                role: str, required: bool = True) -> str | None:
    """The column playing ``role``: ``wanted`` if given (must exist), else the first column whose
    lower-cased name is one of ``synonyms``."""
    if wanted is not None:
        if wanted not in columns:
            raise PrepareError(
                f"{path}: no column '{wanted}' for the {role}; the file has "
                f"{', '.join(map(str, columns))}. Name the right one with --{role}-col."
            )
        return wanted
    lower = {str(c).strip().lower(): c for c in columns}
    for name in synonyms:
        if name in lower:
            return lower[name]
    if required:
        raise PrepareError(
            f"{path}: cannot tell which column holds the {role}; found "
            f"{', '.join(map(str, columns))}, expected one of {', '.join(synonyms)}. Rename the "
            f"header or pass --{role}-col NAME (or --names for a file without a header)."
        )
    return None


def read_interactions(path: Path, sep: str | None = None, names: Sequence[str] | None = None,
                      user_col: str | None = None, item_col: str | None = None,
                      rating_col: str | None = None, time_col: str | None = None,
                      use_rating: bool = True, use_time: bool = True) -> pd.DataFrame:
    """Read a CSV/TSV of interactions into the canonical frame (user, item[, rating, timestamp],
    order). ``names`` gives the column names of a file without a header."""
    sep = sep or sniff_sep(path)
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                         header=None if names else "infer", names=list(names) if names else None,
                         engine="c", quoting=0)
    except Exception as exc:  # pandas raises many kinds for malformed text
        raise PrepareError(f"{path}: could not be parsed as a {'TSV' if sep == chr(9) else 'CSV'} "
                           f"table ({exc})") from exc
    if len(df) == 0:
        raise PrepareError(f"{path}: no interaction rows")
    cols = list(df.columns)
    ucol = pick_column(cols, user_col, USER_SYNONYMS, path, "user")
    icol = pick_column(cols, item_col, ITEM_SYNONYMS, path, "item")
    rcol = pick_column(cols, rating_col, RATING_SYNONYMS, path, "rating", required=False) \
        if use_rating else None
    tcol = pick_column(cols, time_col, TIME_SYNONYMS, path, "time", required=False) \
        if use_time else None
    out = pd.DataFrame({"user": df[ucol].str.strip(), "item": df[icol].str.strip()})
    empty = (out["user"] == "") | (out["item"] == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise PrepareError(f"{path}: {int(empty.sum())} row(s) with an empty user or item id "
                           f"(first at data row {row + 1}). Remove them or fix the file.")
    if rcol is not None:
        out["rating"] = _numeric(df[rcol], path, rcol, "a number (the rating)")
    if tcol is not None:
        out["timestamp"] = _timestamps(df[tcol], path, tcol)
    out["order"] = np.arange(len(out), dtype=np.int64)
    return out


def _numeric(col: pd.Series, path: Path, name: str, what: str) -> pd.Series:
    vals = pd.to_numeric(col.str.strip(), errors="coerce")
    bad = vals.isna()
    if bad.any():
        example = col[bad].iloc[0]
        raise PrepareError(
            f"{path}: column '{name}' must hold {what}; found '{example}' in "
            f"{int(bad.sum())} row(s). Are the columns in the order you said (--names)?"
        )
    return vals


def _timestamps(col: pd.Series, path: Path, name: str) -> pd.Series:
    """Integer seconds: numbers are taken as they are, ISO dates are parsed."""
    vals = pd.to_numeric(col.str.strip(), errors="coerce")
    if vals.isna().any():
        parsed = pd.to_datetime(col.str.strip(), errors="coerce", utc=True, format="mixed")
        if parsed.isna().any():
            example = col[parsed.isna() & vals.isna()].iloc[0]
            raise PrepareError(
                f"{path}: column '{name}' must hold timestamps (numbers or dates); found "
                f"'{example}'. Fix the file or name another column with --time-col."
            )
        seconds = (parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
        vals = pd.Series(seconds.to_numpy(np.int64), index=col.index)
    return vals.astype(np.int64) if (vals % 1 == 0).all() else vals


def read_item_table(path: Path, value_kind: str, item_col: str | None = None,
                    value_col: str | None = None) -> pd.DataFrame:
    """A two-column CSV/TSV mapping raw item id -> text or image path (columns item, value)."""
    sep = sniff_sep(path)
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise PrepareError(f"{path}: could not be parsed as a table ({exc})") from exc
    cols = list(df.columns)
    icol = pick_column(cols, item_col, ITEM_SYNONYMS, path, "item")
    synonyms = {"text": ("text", "title", "description", "content"),
                "path": ("path", "image", "image_path", "file", "filename", "cover")}[value_kind]
    if value_col is None:
        others = [c for c in cols if c != icol]
        lower = {str(c).strip().lower(): c for c in others}
        vcol = next((lower[s] for s in synonyms if s in lower), None)
        if vcol is None and len(others) == 1:
            vcol = others[0]
        if vcol is None:
            raise PrepareError(
                f"{path}: cannot tell which column holds the item {value_kind}; found "
                f"{', '.join(map(str, cols))}. Expected two columns (item,{value_kind}) or a "
                f"column named one of {', '.join(synonyms)}."
            )
    else:
        vcol = pick_column(cols, value_col, (), path, value_kind)
    out = pd.DataFrame({"item": df[icol].str.strip(), "value": df[vcol]})
    dup = out["item"].duplicated()
    if dup.any():
        first = out["item"][dup].iloc[0]
        raise PrepareError(
            f"{path}: item '{first}' appears {int((out['item'] == first).sum())} times "
            f"({int(dup.sum())} duplicate row(s) in all); keep one {value_kind} per item."
        )
    return out


def images_in_folder(covers: Path, items: pd.Index, flag: str) -> tuple[list[Path | None], int]:
    """Path of each item's image ``<item>.<ext>`` in a folder (None when absent), and how many
    image files match no item."""
    if not covers.is_dir():
        raise PrepareError(f"{flag} {covers}: not a folder")
    by_stem: dict[str, Path] = {}
    for p in sorted(covers.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            by_stem.setdefault(p.stem, p)
    if not by_stem:
        raise PrepareError(f"{flag} {covers}: no image files (*{', *'.join(IMAGE_EXTENSIONS)}) "
                           f"named after item ids")
    paths = [by_stem.get(str(item)) for item in items]
    unmatched = len(set(by_stem) - set(map(str, items)))
    return paths, unmatched


def check_known_ids(side_ids: pd.Series, known: np.ndarray, path: Path, what: str,
                    ignore_unknown: bool) -> int:
    """Ids in a per-item side file that never occur in the raw interactions. An error unless
    ``ignore_unknown`` (then they are counted and dropped); always an error when none is known."""
    unknown = ~np.isin(side_ids.to_numpy(), known)
    n_unknown = int(unknown.sum())
    if n_unknown == len(side_ids) and len(side_ids):
        raise PrepareError(
            f"{path}: none of its {len(side_ids)} item ids occurs in the interactions (e.g. "
            f"'{side_ids.iloc[0]}'); is it the {what} file of the same release?"
        )
    if n_unknown and not ignore_unknown:
        raise PrepareError(
            f"{path}: {n_unknown} of {len(side_ids)} item id(s) never occur in the interactions "
            f"(e.g. '{side_ids[unknown].iloc[0]}'). Check that the {what} file belongs to the same "
            f"release, or pass --ignore-unknown-ids to drop those rows."
        )
    return n_unknown


# ---------------------------------------------------------------------------------------------
# cleaning, k-core, split
# ---------------------------------------------------------------------------------------------


def sort_for_split(df: pd.DataFrame, mode: str, seed: int) -> pd.DataFrame:
    """Rows grouped by user, each user's rows in split order: chronological (timestamp, then
    file order) or a seeded random permutation."""
    if mode == "chrono":
        keys = [df["order"].to_numpy()]
        if "timestamp" in df:
            keys.append(df["timestamp"].to_numpy())
    elif mode == "random":
        rng = np.random.default_rng(seed)
        keys = [rng.random(len(df))]
    else:
        raise PrepareError(f"unknown split order '{mode}': use chrono or random")
    codes = pd.factorize(df["user"], sort=True)[0]
    idx = np.lexsort(keys + [codes])
    return df.iloc[idx].reset_index(drop=True)


def drop_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one row per (user, item): the earliest (by timestamp when known, else file order)."""
    sort_cols = (["timestamp"] if "timestamp" in df else []) + ["order"]
    ordered = df.sort_values(sort_cols, kind="stable")
    keep = ~ordered.duplicated(subset=["user", "item"], keep="first")
    out = ordered[keep].sort_values("order", kind="stable").reset_index(drop=True)
    return out, int((~keep).sum())


def kcore(users: np.ndarray, items: np.ndarray, user_k: int, item_k: int) -> np.ndarray:
    """Iterative k-core: repeatedly drop every interaction of a user with fewer than ``user_k``
    or an item with fewer than ``item_k`` interactions (both counted on the current set) until
    none is left to drop. Returns the boolean mask of kept interactions. ``users``/``items`` are
    integer codes."""
    keep = np.ones(len(users), dtype=bool)
    if user_k <= 1 and item_k <= 1:
        return keep
    n_u = int(users.max()) + 1 if len(users) else 0
    n_i = int(items.max()) + 1 if len(items) else 0
    while True:
        udeg = np.bincount(users[keep], minlength=n_u)
        ideg = np.bincount(items[keep], minlength=n_i)
        bad = keep & ((udeg[users] < user_k) | (ideg[items] < item_k))
        if not bad.any():
            return keep
        keep &= ~bad


def apply_kcore(df: pd.DataFrame, user_k: int, item_k: int, source: str) -> pd.DataFrame:
    u = pd.factorize(df["user"])[0]
    i = pd.factorize(df["item"])[0]
    keep = kcore(u, i, user_k, item_k)
    if not keep.any():
        raise PrepareError(
            f"{source}: nothing is left after the {user_k}-core on users and {item_k}-core on "
            f"items ({len(df)} interactions, {len(np.unique(u))} users, {len(np.unique(i))} items "
            f"before). Lower --kcore (or --user-core / --item-core)."
        )
    return df[keep].reset_index(drop=True)


def split_counts(n: np.ndarray, ratios: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(n_valid, n_test) per user for history lengths ``n`` (see the module docstring)."""
    a, b, c = (float(r) for r in ratios)
    total = a + b + c
    b, c = b / total, c / total
    n = np.asarray(n, dtype=np.int64)
    eps = 1e-9
    held = np.floor(n * (b + c) + eps).astype(np.int64)
    n_valid = np.floor(held * (b / (b + c)) + eps).astype(np.int64) if b + c > 0 else held * 0
    n_test = held - n_valid
    if b > 0:
        n_valid = np.maximum(n_valid, 1)
    if c > 0:
        n_test = np.maximum(n_test, 1)
    # at least one training interaction: give up valid first, then test
    over = np.maximum(n_valid + n_test - (n - 1), 0)
    cut = np.minimum(over, n_valid)
    n_valid = n_valid - cut
    n_test = np.maximum(n_test - (over - cut), 0)
    return n_valid, n_test


def assign_split(df: pd.DataFrame, ratios: Sequence[float]) -> pd.DataFrame:
    """Add ``x_label`` to a frame already grouped by user in split order (``sort_for_split``):
    per user, the last n_test rows are test (2), the n_valid before them valid (1)."""
    codes = pd.factorize(df["user"])[0]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    if len(np.unique(codes)) != len(starts):
        raise ValueError("rows must be grouped by user before assign_split")
    lengths = np.diff(np.r_[starts, len(df)])
    n_valid, n_test = split_counts(lengths, ratios)
    rank = np.arange(len(df)) - np.repeat(starts, lengths)
    n_rep = np.repeat(lengths, lengths)
    label = np.zeros(len(df), dtype=np.int64)
    label[rank >= n_rep - np.repeat(n_valid + n_test, lengths)] = 1
    label[rank >= n_rep - np.repeat(n_test, lengths)] = 2
    out = df.copy()
    out["x_label"] = label
    return out


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in str(text).replace(":", ",").split(",")]
    except ValueError as exc:
        raise PrepareError(f"--ratios '{text}': expected three numbers like 0.8,0.1,0.1") from exc
    if len(parts) != 3 or any(p < 0 for p in parts) or parts[0] <= 0:
        raise PrepareError(f"--ratios '{text}': expected three non-negative numbers "
                           f"train,valid,test with train > 0, like 0.8,0.1,0.1")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# ids
# ---------------------------------------------------------------------------------------------


def _natural_sorted(values: np.ndarray) -> np.ndarray:
    """Numeric order when every id is an integer, else lexicographic."""
    as_num = pd.to_numeric(pd.Series(values), errors="coerce")
    if not as_num.isna().any() and (as_num % 1 == 0).all():
        return values[np.argsort(as_num.to_numpy(), kind="stable")]
    return np.sort(values)


def id_map(raw: pd.Series, order: str) -> pd.Index:
    """Raw ids in the order of their new ids 0..n-1: 'sorted' (numerically if all ids are
    integers) or 'appearance' (first occurrence in the file)."""
    uniq = pd.unique(raw)
    if order == "sorted":
        uniq = _natural_sorted(np.asarray(uniq, dtype=object))
    elif order != "appearance":
        raise PrepareError(f"unknown --id-order '{order}': use sorted or appearance")
    return pd.Index(uniq)


def apply_id_maps(df: pd.DataFrame, order: str) -> tuple[pd.DataFrame, pd.Index, pd.Index]:
    """Map raw ids to 0-based contiguous ids. The id order looks at the frame in file order."""
    by_file = df.sort_values("order", kind="stable")
    users = id_map(by_file["user"], order)
    items = id_map(by_file["item"], order)
    out = df.copy()
    out["userID"] = users.get_indexer(df["user"])
    out["itemID"] = items.get_indexer(df["item"])
    return out, users, items


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------


def fill_missing(features: np.ndarray, present: np.ndarray, normalise: bool) -> np.ndarray:
    """Rows not ``present`` get the mean of the present rows (re-normalised to unit length when
    ``normalise``, for unit-norm text features). With no present row at all this is an error."""
    if not present.any():
        raise PrepareError("no item has this modality's content, so there is nothing to average "
                           "for the missing ones; drop the modality (--no-text / --no-image)")
    out = features.astype(np.float32, copy=True)
    if (~present).any():
        mean = out[present].mean(axis=0)
        if normalise:
            norm = float(np.linalg.norm(mean))
            mean = mean / norm if norm > 0 else mean
        out[~present] = mean
    return out


@dataclass
class FeatureReport:
    modality: str
    source: str
    dim: int
    n_items: int
    n_missing: int
    rule: str
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# output folder
# ---------------------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


class OutputFolder:
    """``<out>/<name>/`` built in ``<out>/<name>.partial/`` and renamed into place at the end,
    so the final folder is never half-written. The partial folder survives a failure and keeps
    the encoders' finished chunks (``.encode_<modality>/``) for a rerun; everything else in it is
    cleared before the outputs are written. An existing final folder is refused unless
    ``overwrite``; nothing is created until the inputs have been read and checked."""

    def __init__(self, out: str | Path, name: str, overwrite: bool):
        if not name or "/" in name or name.startswith(".") or name.endswith(".partial"):
            raise PrepareError(f"--name '{name}': use a plain folder name like 'microlens'")
        self.root = Path(out)
        self.name = name
        self.final = self.root / name
        self.partial = self.root / f"{name}.partial"
        if self.final.exists() and not overwrite:
            raise PrepareError(
                f"output folder {self.final} already exists; pass --overwrite to replace it, or "
                f"choose another --out / --name"
            )
        if self.root.exists() and not self.root.is_dir():
            raise PrepareError(f"--out {self.root}: exists and is not a folder")

    def scratch(self, modality: str) -> Path:
        """Where the encoder of ``modality`` keeps its finished chunks."""
        return self.partial / f".encode_{modality}"

    def start_writing(self) -> None:
        self.partial.mkdir(parents=True, exist_ok=True)
        for entry in self.partial.iterdir():
            if entry.name.startswith(".encode_"):
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def path(self, filename: str) -> Path:
        return self.partial / filename

    def commit(self) -> Path:
        for scratch in self.partial.glob(".encode_*"):
            shutil.rmtree(scratch)
        if self.final.exists():
            old = self.root / f".{self.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.final, old)
            os.replace(self.partial, self.final)
            shutil.rmtree(old)
        else:
            os.replace(self.partial, self.final)
        return self.final


def write_outputs(folder: OutputFolder, df: pd.DataFrame, users: pd.Index, items: pd.Index,
                  user_label: str, item_label: str, features: dict[str, np.ndarray]) -> None:
    """``<name>.inter`` sorted by (userID, x_label, itemID), id-mapping CSVs (tab-separated,
    MMRec's layout ``<raw name>\\t<new name>``) and ``<modality>_feat.npy`` (float32)."""
    folder.start_writing()
    cols = ["userID", "itemID"] + [c for c in ("rating", "timestamp") if c in df] + ["x_label"]
    inter = df[cols].sort_values(["userID", "x_label", "itemID"], kind="stable")
    inter.to_csv(folder.path(f"{folder.name}.inter"), sep="\t", index=False)
    pd.DataFrame({user_label: users, "userID": np.arange(len(users))}).to_csv(
        folder.path("u_id_mapping.csv"), sep="\t", index=False)
    pd.DataFrame({item_label: items, "itemID": np.arange(len(items))}).to_csv(
        folder.path("i_id_mapping.csv"), sep="\t", index=False)
    for modality, arr in features.items():
        if arr.shape[0] != len(items):
            raise RuntimeError(f"{modality} features have {arr.shape[0]} rows for {len(items)} items")
        np.save(folder.path(f"{modality}_feat.npy"), np.ascontiguousarray(arr, dtype=np.float32))


def split_stats(df: pd.DataFrame) -> dict:
    counts = np.bincount(df["x_label"].to_numpy(), minlength=3)
    per_user = df.groupby("userID").size()
    return {
        "users": int(df["userID"].nunique()),
        "items": int(df["itemID"].nunique()),
        "interactions": int(len(df)),
        "train": int(counts[0]), "valid": int(counts[1]), "test": int(counts[2]),
        "interactions_per_user": {"min": int(per_user.min()), "median": float(per_user.median()),
                                  "max": int(per_user.max())},
        "density": float(len(df) / (df["userID"].nunique() * df["itemID"].nunique())),
    }


def command_line(args) -> str:
    """The command as typed (``guider-prepare <subcommand> ...``), for the README."""
    argv = getattr(args, "_argv", None)
    if argv is None:
        argv = sys.argv[1:]
    return "guider-prepare " + " ".join(shlex.quote(str(a)) for a in argv)


def process_interactions(df: pd.DataFrame, args, source: str) -> tuple[pd.DataFrame, pd.Index,
                                                                      pd.Index, list[str]]:
    """De-duplicate, k-core, split and re-index; returns the labelled frame (userID, itemID,
    x_label, ...), the raw ids in new-id order and the README's description of each step."""
    steps = []
    n0 = len(df)
    df, n_dup = drop_duplicates(df)
    steps.append(f"Read {n0:,} interactions from `{source}`; dropped {n_dup:,} repeated "
                 f"(user, item) pair(s), keeping the earliest"
                 f"{' (by timestamp, then file order)' if 'timestamp' in df else ' (file order)'}.")
    user_k, item_k = args.user_core, args.item_core
    if user_k > 1 or item_k > 1:
        before = (len(df), df["user"].nunique(), df["item"].nunique())
        df = apply_kcore(df, user_k, item_k, source)
        steps.append(f"Iterative k-core (users >= {user_k}, items >= {item_k} interactions): "
                     f"{before[0]:,} -> {len(df):,} interactions, {before[1]:,} -> "
                     f"{df['user'].nunique():,} users, {before[2]:,} -> {df['item'].nunique():,} items.")
    else:
        steps.append("No k-core filtering (--kcore 0).")
    df = sort_for_split(df, args.split, args.seed)
    df = assign_split(df, args.ratios)
    ratios = "/".join(f"{r:g}" for r in args.ratios)
    if args.split == "chrono":
        order = ("chronological per user (timestamp, ties in file order)" if "timestamp" in df
                 else "chronological per user (the file's order)")
    else:
        order = f"a random permutation per user (numpy default_rng, seed {args.seed})"
    steps.append(f"Per-user split {ratios} (train/valid/test) in {order}: the MMRec toolbox's "
                 f"counts, held = floor(n x (valid + test)), valid = floor(held x valid / (valid + "
                 f"test)), test = held - valid, at least 1 valid and 1 test (and 1 train); the "
                 f"last items in that order are valid then test.")
    df, users, items = apply_id_maps(df, args.id_order)
    how = ("sorted raw-id order (numeric when all ids are integers)" if args.id_order == "sorted"
           else "order of first appearance in the input file")
    steps.append(f"Ids: 0-based, contiguous, in {how} (--id-order {args.id_order}).")
    return df, users, items, steps


def finish(folder: OutputFolder, df: pd.DataFrame, users: pd.Index, items: pd.Index,
           user_label: str, item_label: str, features: dict[str, np.ndarray],
           reports: list[FeatureReport], provenance: list[tuple[str, Path]], steps: list[str],
           title: str, started: float, command: str, notes: Sequence[str] = ()) -> Path:
    write_outputs(folder, df, users, items, user_label, item_label, features)
    stats = split_stats(df)
    stats["has_rating"] = "rating" in df
    stats["has_timestamp"] = "timestamp" in df
    write_readme(folder, title, provenance, steps, stats, reports, command,
                 time.perf_counter() - started, notes)
    return folder.commit()


def write_readme(folder: OutputFolder, title: str, provenance: list[tuple[str, Path]],
                 steps: list[str], stats: dict, features: list[FeatureReport], command: str,
                 seconds: float, notes: Sequence[str] = ()) -> None:
    """README.md (for people) and prepare.json (for programs) describing the folder."""
    from .. import __version__ as guider_version

    inputs = []
    for role, path in provenance:
        path = Path(path)
        if path.is_file():
            inputs.append({"role": role, "path": str(path.resolve()), "bytes": path.stat().st_size,
                           "sha256": file_digest(path)})
        else:
            inputs.append({"role": role, "path": str(path.resolve()), "bytes": None, "sha256": None})
    lines = [f"# {folder.name}: {title}", "",
             f"Prepared by `guider-prepare` (guider {guider_version}) on "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, in {seconds:.1f} s "
             f"(python {platform.python_version()}).", "",
             "Command:", "", "```", command, "```", "",
             "## Inputs", "", "| role | file | bytes | sha256 |", "|---|---|---|---|"]
    for inp in inputs:
        lines.append(f"| {inp['role']} | `{inp['path']}` | {inp['bytes'] if inp['bytes'] is not None else '-'} | "
                     f"{inp['sha256'] or '(folder)'} |")
    lines += ["", "## Steps", ""] + [f"{k + 1}. {s}" for k, s in enumerate(steps)]
    lines += ["", "## Counts", "", "| | value |", "|---|---|"]
    for key in ("users", "items", "interactions", "train", "valid", "test"):
        lines.append(f"| {key} | {stats[key]:,} |")
    ipu = stats["interactions_per_user"]
    lines.append(f"| interactions per user (min / median / max) | {ipu['min']} / {ipu['median']:g} / {ipu['max']} |")
    lines.append(f"| density | {stats['density']:.6f} |")
    lines += ["", "## Files", "",
              f"- `{folder.name}.inter`: tab-separated, header; columns userID, itemID"
              f"{', rating' if stats.get('has_rating') else ''}"
              f"{', timestamp' if stats.get('has_timestamp') else ''}, x_label (0 train, 1 valid, "
              f"2 test); 0-based contiguous ids; rows sorted by userID, x_label, itemID.",
              "- `u_id_mapping.csv`, `i_id_mapping.csv`: tab-separated, raw id -> new id.",
              ]
    for f in features:
        lines.append(f"- `{f.modality}_feat.npy`: {f.n_items} x {f.dim} float32, row k = itemID k; "
                     f"{f.source}. Items without content: {f.n_missing} ({f.rule})"
                     + (f"; details {json.dumps(f.extra)}" if f.extra else "") + ".")
    if not features:
        lines.append("- no feature files (none requested).")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (folder.path("README.md")).write_text("\n".join(lines) + "\n")
    manifest = {"name": folder.name, "title": title, "command": command, "seconds": seconds,
                "inputs": inputs, "steps": steps, "counts": stats,
                "features": [f.__dict__ for f in features], "notes": list(notes)}
    (folder.path("prepare.json")).write_text(json.dumps(manifest, indent=2) + "\n")

"""``guider-prepare microlens``: an MMRec-format folder from the official MicroLens release.

Inputs (found in ``raw_dir`` by name, or given one by one):

* ``MicroLens-<size>_pairs.tsv``: one line per user, ``user<TAB>item item item ...`` with the
  items in chronological order; or ``MicroLens-<size>_pairs.csv`` with the columns user, item,
  timestamp (any header naming them: userID / user_id, videoID / item / item_id, timestamp).
* ``MicroLens-<size>_titles.csv``: ``item,title`` (the English titles).
* optionally a folder of cover images named ``<item>.<jpg|jpeg|png|webp|bmp|gif>``.

Defaults reproduce the shipped development copy of MicroLens-50k exactly (``../shared/data/
microlens`` from its ``official/`` files): no k-core (the release already holds users with >= 5
interactions; items with fewer are kept), a chronological 0.8/0.1/0.1 split with MMRec's per-user
counts, ids in ascending order of the official numeric ids, and title features from
all-MiniLM-L6-v2. See docs/prepare.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import encoders
from .common import (OutputFolder, PrepareError, check_known_ids, command_line, finish,
                     images_in_folder, open_text, process_interactions, read_interactions,
                     read_item_table)
from .features import encode_images, encode_texts


def find_one(raw_dir: Path, patterns: tuple[str, ...], what: str, flag: str) -> Path:
    found: list[Path] = []
    for pattern in patterns:
        found = sorted(raw_dir.glob(pattern))
        if found:
            break
    if not found:
        raise PrepareError(
            f"{raw_dir}: no {what} file (looked for {', '.join(patterns)}); give it with {flag}"
        )
    if len(found) > 1:
        raise PrepareError(
            f"{raw_dir}: several {what} files ({', '.join(p.name for p in found)}); choose one "
            f"with {flag}"
        )
    return found[0]


def read_pairs_tsv(path: Path) -> pd.DataFrame:
    """``user<TAB>item item ...`` lines -> (user, item, order), items in the line's order."""
    try:
        raw = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False,
                          names=["user", "items"], engine="c")
    except Exception as exc:
        raise PrepareError(
            f"{path}: expected lines 'user<TAB>item item ...' (the official MicroLens pairs "
            f"format), could not parse ({exc})") from exc
    if len(raw) == 0:
        raise PrepareError(f"{path}: no lines")
    if raw["items"].str.strip().eq("").any():
        row = int(np.flatnonzero(raw["items"].str.strip().eq("").to_numpy())[0])
        raise PrepareError(
            f"{path}: line {row + 1} (user '{raw['user'].iloc[row]}') has no items after the tab; "
            f"expected 'user<TAB>item item ...'")
    items = raw["items"].str.split()
    df = pd.DataFrame({"user": np.repeat(raw["user"].str.strip().to_numpy(), items.str.len()),
                       "item": np.concatenate(items.to_numpy())})
    df["order"] = np.arange(len(df), dtype=np.int64)
    return df


def read_pairs(path: Path, args) -> pd.DataFrame:
    """The official TSV (one tab per line, then a space-separated item list) or a table with
    user, item and timestamp columns."""
    if path.name.endswith((".tsv", ".tsv.gz")):
        with open_text(path) as fh:
            first = fh.readline()
        if first.count("\t") == 1:
            return read_pairs_tsv(path)
    return read_interactions(path, user_col=args.user_col, item_col=args.item_col,
                             time_col=args.time_col, use_rating=False)


def input_files(args) -> tuple[Path, Path | None]:
    """The pairs file and the titles file (None with --no-text), given or found in RAW_DIR."""
    raw_dir = Path(args.raw_dir) if args.raw_dir else None
    if raw_dir is not None and not raw_dir.is_dir():
        raise PrepareError(f"{raw_dir}: not a folder (the official MicroLens files go there)")
    if args.pairs:
        pairs = Path(args.pairs)
    elif raw_dir is not None:
        pairs = find_one(raw_dir, ("*_pairs.tsv", "*_pairs.csv", "*pairs*.tsv", "*pairs*.csv"),
                         "pairs", "--pairs")
    else:
        raise PrepareError("give the folder of the official files (RAW_DIR) or --pairs")
    if not pairs.is_file():
        raise PrepareError(f"pairs file not found: {pairs}")
    titles = None
    if not args.no_text:
        if args.titles:
            titles = Path(args.titles)
        elif raw_dir is not None:
            titles = find_one(raw_dir, ("*_titles.csv", "*title*.csv"), "titles", "--titles")
        if titles is None:
            raise PrepareError("text features need the titles file: give --titles, or --no-text")
        if not titles.is_file():
            raise PrepareError(f"titles file not found: {titles}")
    return pairs, titles


def run(args) -> Path:
    started = time.perf_counter()
    pairs, titles = input_files(args)
    covers = Path(args.covers) if args.covers else None

    folder = OutputFolder(args.out, args.name, args.overwrite)
    if titles is not None:
        encoders.require_extra("text")
    if covers is not None and not args.no_image:
        encoders.require_extra("image")
    raw = read_pairs(pairs, args)
    known_items = raw["item"].unique()
    title_table = None
    n_unknown = 0
    if titles is not None:
        title_table = read_item_table(titles, "text")
        n_unknown = check_known_ids(title_table["item"], known_items, titles, "titles",
                                    args.ignore_unknown_ids)
    df, users, items, steps = process_interactions(raw, args, pairs.name)

    features: dict[str, np.ndarray] = {}
    reports = []
    provenance: list[tuple[str, Path]] = [("pairs", pairs)]
    if title_table is not None:
        provenance.append(("titles", titles))
        lookup = dict(zip(title_table["item"], title_table["value"]))
        texts = [lookup.get(str(i)) for i in items]
        features["text"], rep = encode_texts(texts, folder, args, "titles")
        if n_unknown:
            rep.extra["title_rows_for_unknown_items_dropped"] = n_unknown
        reports.append(rep)
        steps.append("Text: each item's title, as written in the titles file, encoded with "
                     "all-MiniLM-L6-v2.")
    if covers is not None and not args.no_image:
        provenance.append(("covers", covers))
        paths, unmatched = images_in_folder(covers, items, "--covers")
        features["image"], rep = encode_images(paths, folder, args, "covers")
        rep.extra["image_files_matching_no_item"] = unmatched
        reports.append(rep)
        steps.append("Image: each item's cover image encoded with EfficientNet-Lite0.")
    notes = ["MicroLens (Ni et al., 2023; westlake-repl/MicroLens). Its authors forbid "
             "redistributing modified copies: keep this folder for your own experiments."]
    return finish(folder, df, users, items, "user_id", "video_id", features, reports, provenance,
                  steps, "MicroLens, prepared from the official files", started,
                  command_line(args), notes)


def add_arguments(p) -> None:
    p.add_argument("raw_dir", nargs="?", help="folder with the official files "
                   "(MicroLens-<size>_pairs.tsv or _pairs.csv, MicroLens-<size>_titles.csv)")
    p.add_argument("--pairs", help="the pairs file (.tsv: 'user<TAB>item item ...'; .csv: user, "
                   "item, timestamp columns); default: found in RAW_DIR")
    p.add_argument("--titles", help="the titles CSV (item,title); default: found in RAW_DIR")
    p.add_argument("--covers", help="folder of cover images named <item>.jpg (optional)")
    p.add_argument("--user-col", help="pairs CSV: the user column (default: guessed from the header)")
    p.add_argument("--item-col", help="pairs CSV: the item column")
    p.add_argument("--time-col", help="pairs CSV: the timestamp column")

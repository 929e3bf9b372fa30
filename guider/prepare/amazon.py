"""``guider-prepare amazon``: an MMRec-format folder from the public Amazon review release of one
category (McAuley lab, 2014 or 2018 editions), the way the MMRec toolbox prepares Baby, Sports
and Clothing (its ``preprocessing/`` notebooks, read for reference):

1. ratings CSV (``user,item,rating,timestamp``; the official files have no header; another column
   order is given with ``--names``): rows with the same (user, item) are dropped, keeping the
   earliest. MMRec drops duplicates of (user, item, timestamp) only; a pair rated twice at two
   times would stay twice there, which an MMRec folder cannot hold (one row per pair).
2. iterative 5-core on users and items (``--kcore``).
3. per-user random 8:1:1 split with MMRec's counts for short histories (5 -> 3/1/1,
   ``common.split_counts``); seeded (``--seed``), where MMRec's notebook shuffles unseeded.
4. ids in order of first appearance in the ratings file (MMRec's ``pd.unique``; the official
   files are sorted by item, so items come out in ASIN order).
5. text: title + brand + the first category path + description (MMRec's sentence, single spaces,
   newlines replaced by spaces) from the metadata, one JSON object per line, or the 2014
   edition's Python-dict lines (read with ``ast.literal_eval``, never ``eval``); optionally
   ``.gz``. Items with no metadata or an empty sentence get the mean vector (counted).
6. image: the published CNN features (``image_features_<cat>.b``: a 10-byte ASIN followed by
   4096 little-endian float32, repeated); items without a row get the mean of the rows found
   (MMRec/LATTICE's rule, counted in the README). A repeated ASIN keeps its last row, as MMRec's
   dictionary does.
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import encoders
from .common import (FeatureReport, OutputFolder, PrepareError, command_line, fill_missing,
                     finish, open_text, process_interactions, read_interactions, require_file,
                     sniff_sep)
from .features import encode_texts

IMAGE_RECORD = np.dtype([("asin", "S10"), ("feat", "<f4", (4096,))])
_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


# ---------------------------------------------------------------------------------------------
# ratings
# ---------------------------------------------------------------------------------------------


def _looks_like_data(fields: list[str]) -> bool:
    def num(x: str) -> bool:
        try:
            float(x)
            return True
        except ValueError:
            return False

    return len(fields) == 4 and num(fields[2]) and num(fields[3])


def read_ratings(path: Path, names: list[str]) -> pd.DataFrame:
    sep = sniff_sep(path)
    with open_text(path) as fh:
        first = fh.readline().rstrip("\n").split(sep)
    required = {"user", "item", "rating", "timestamp"}
    if _looks_like_data(first):
        if len(names) != 4 or set(names) != required:
            raise PrepareError(f"--names must list user,item,rating,timestamp in the file's order, "
                               f"got {','.join(names)}")
        return read_interactions(path, sep=sep, names=names)
    if len(first) == 4 and not {c.strip().lower() for c in first} & {
            "user", "userid", "user_id", "reviewerid", "item", "itemid", "item_id", "asin"}:
        raise PrepareError(
            f"{path}: the first line '{sep.join(first)}' is neither a header naming user, item, "
            f"rating, timestamp nor a data row with a numeric rating and timestamp in columns 3 "
            f"and 4. The official ratings files are 'user,item,rating,timestamp' without a header; "
            f"another column order is given with --names (e.g. item,user,rating,timestamp).")
    return read_interactions(path, sep=sep)


# ---------------------------------------------------------------------------------------------
# metadata -> text
# ---------------------------------------------------------------------------------------------


def _parse_line(line: str, path: Path, lineno: int) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(line)
        except (ValueError, SyntaxError) as exc:
            raise PrepareError(
                f"{path}:{lineno}: neither JSON nor a Python dict literal ({exc.__class__.__name__}); "
                f"the metadata file must hold one product object per line") from exc
    if not isinstance(obj, dict):
        raise PrepareError(f"{path}:{lineno}: expected one product object per line, got "
                           f"{type(obj).__name__}")
    return obj


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(_as_text(v) for v in value)
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value)


def item_sentence(meta: dict) -> str:
    """title + brand + first category path + description, single-spaced, one line."""
    cats = meta.get("categories")
    if cats is None:
        cats = meta.get("category")  # 2018 edition: a flat list
    if isinstance(cats, (list, tuple)) and cats and isinstance(cats[0], (list, tuple)):
        cats = cats[0]  # 2014 edition: a list of paths, MMRec uses the first
    parts = [_as_text(meta.get("title")), _as_text(meta.get("brand")), _as_text(cats),
             _as_text(meta.get("description"))]
    return " ".join(" ".join(p.split()) for p in parts if p and p.strip())


def read_metadata(path: Path, wanted: set[str]) -> tuple[dict[str, str], dict]:
    """Sentences for the ASINs in ``wanted``; lines for other ASINs are skipped unparsed."""
    sentences: dict[str, str] = {}
    stats = {"lines": 0, "other_products": 0, "without_asin": 0}
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            stats["lines"] += 1
            m = _ASIN_RE.search(line)
            if m is None:
                obj = _parse_line(line, path, lineno)
                asin = obj.get("asin")
                if asin is None:
                    stats["without_asin"] += 1
                    continue
            else:
                asin = m.group(1)
                if asin not in wanted:
                    stats["other_products"] += 1
                    continue
                obj = _parse_line(line, path, lineno)
                asin = str(obj.get("asin", asin))
            if asin not in wanted:
                stats["other_products"] += 1
                continue
            sentences[asin] = item_sentence(obj)
    if stats["lines"] == 0:
        raise PrepareError(f"{path}: no metadata lines")
    if not sentences:
        raise PrepareError(
            f"{path}: none of its {stats['lines']} products is among the rated items; is it the "
            f"metadata file of the same category?")
    return sentences, stats


# ---------------------------------------------------------------------------------------------
# image-feature binary
# ---------------------------------------------------------------------------------------------


def read_image_features(path: Path, items: pd.Index) -> tuple[np.ndarray, np.ndarray, dict]:
    """(n_items, 4096) features in item order, the mask of items found, and counts."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_RECORD.itemsize:
        raise PrepareError(
            f"{path}: {size} bytes is not a whole number of records of {IMAGE_RECORD.itemsize} "
            f"bytes (a 10-byte ASIN followed by 4096 float32); is it the published "
            f"image_features_<category>.b file?")
    records = np.memmap(path, dtype=IMAGE_RECORD, mode="r")
    asins = pd.Index(np.char.decode(np.asarray(records["asin"]), "ascii", "replace"))
    pos = pd.Index(items).get_indexer(asins)
    matched = np.flatnonzero(pos >= 0)
    feats = np.zeros((len(items), 4096), dtype=np.float32)
    found = np.zeros(len(items), dtype=bool)
    # in file order, so a repeated ASIN keeps its last row
    feats[pos[matched]] = np.asarray(records["feat"][matched], dtype=np.float32)
    found[pos[matched]] = True
    if not found.any():
        raise PrepareError(f"{path}: none of its {len(asins)} ASINs is among the rated items; "
                           f"is it the image-feature file of the same category?")
    if not np.isfinite(feats[found]).all():
        raise PrepareError(f"{path}: some feature rows hold NaN or inf")
    stats = {"records": int(len(asins)), "records_for_other_products": int((pos < 0).sum()),
             "repeated_asins": int(len(matched) - found.sum())}
    return feats, found, stats


# ---------------------------------------------------------------------------------------------


def run(args) -> Path:
    started = time.perf_counter()
    ratings = require_file(args.ratings, "ratings file")
    meta = require_file(args.metadata, "metadata file",
                        "Give the category's metadata (meta_<Category>.json[.gz]) or --no-text.") \
        if args.metadata and not args.no_text else None
    if meta is None and not args.no_text:
        raise PrepareError("text features need the metadata file: give --metadata "
                           "meta_<Category>.json[.gz], or --no-text")
    image_bin = require_file(args.image_features, "image-feature file") \
        if args.image_features and not args.no_image else None
    names = [n.strip() for n in args.names.split(",")]

    folder = OutputFolder(args.out, args.name, args.overwrite)
    if meta is not None:
        encoders.require_extra("text")
    raw = read_ratings(ratings, names)
    df, users, items, steps = process_interactions(raw, args, ratings.name)
    features: dict[str, np.ndarray] = {}
    reports: list[FeatureReport] = []
    provenance: list[tuple[str, Path]] = [("ratings", ratings)]
    if meta is not None:
        provenance.append(("metadata", meta))
        sentences, mstats = read_metadata(meta, set(items))
        texts = [sentences.get(a) for a in items]
        features["text"], rep = encode_texts(texts, folder, args, "metadata")
        rep.extra.update({"items_without_metadata": int(sum(a not in sentences for a in items)),
                          "metadata_lines_for_other_products": mstats["other_products"]})
        reports.append(rep)
        steps.append("Text: title + brand + first category path + description of each item's "
                     "metadata, single-spaced, encoded with all-MiniLM-L6-v2.")
    if image_bin is not None:
        provenance.append(("image features", image_bin))
        feats, found, istats = read_image_features(image_bin, items)
        features["image"] = fill_missing(feats, found, normalise=False)
        reports.append(FeatureReport(
            "image", f"the published 4096-d CNN features ({image_bin.name})", 4096, len(items),
            int((~found).sum()), "items without a feature row -> mean of the rows found", istats))
        steps.append("Image: the published 4096-d feature rows of the items, in item order.")
    notes = ["Amazon review data (McAuley lab, UCSD), for research use; cite the release you used."]
    return finish(folder, df, users, items, "user_id", "asin", features, reports, provenance,
                  steps, "Amazon reviews, MMRec-style preparation", started,
                  command_line(args), notes)


def add_arguments(p) -> None:
    p.add_argument("ratings", help="the category's ratings CSV (user,item,rating,timestamp; "
                   "optionally .gz)")
    p.add_argument("--metadata", help="the category's metadata, one product per line (JSON or "
                   "the 2014 Python-dict format; optionally .gz)")
    p.add_argument("--image-features", help="the published image_features_<category>.b file "
                   "(optional)")
    p.add_argument("--names", default="user,item,rating,timestamp",
                   help="column order of a ratings file without a header "
                   "(default user,item,rating,timestamp)")

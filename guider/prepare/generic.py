"""``guider-prepare generic``: an MMRec-format folder from any table of interactions.

* interactions: CSV or TSV (separator sniffed from the first line) with a header naming the
  user and item columns (user / userID / user_id ..., item / itemID / item_id / asin ...), and
  optionally rating and timestamp; or no header and ``--names user,item,rating,timestamp``.
  Pick columns explicitly with ``--user-col`` / ``--item-col`` / ``--rating-col`` /
  ``--time-col``.
* ``--text FILE``: per-item text, two columns (item, text).
* ``--images FILE``: per-item image path, two columns (item, path); relative paths are taken
  from the folder of FILE. Or ``--image-dir DIR`` with files named ``<item>.<ext>``.

The same steps as the other subcommands (duplicates, optional k-core, per-user split with MMRec's
counts, id maps, encoders); defaults: no k-core, random split 0.8/0.1/0.1 (seed 0), ids sorted.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import encoders
from .common import (FeatureReport, OutputFolder, PrepareError, check_known_ids, command_line,
                     finish, images_in_folder, process_interactions, read_interactions,
                     read_item_table, require_file)
from .features import encode_images, encode_texts


def listed_image_paths(image_table, base: Path, items) -> list[Path | None]:
    """Each item's image path from an (item, path) table, relative paths taken from ``base``
    (the list's folder); None for an item without one."""
    lookup = {}
    for item, value in zip(image_table["item"], image_table["value"]):
        value = str(value).strip()
        if value:
            p = Path(value)
            lookup[item] = p if p.is_absolute() else base / p
    return [lookup.get(str(i)) for i in items]


def run(args) -> Path:
    started = time.perf_counter()
    inter = require_file(args.interactions, "interactions file")
    text = require_file(args.text, "text file") if args.text and not args.no_text else None
    images = require_file(args.images, "image list") if args.images and not args.no_image else None
    image_dir = Path(args.image_dir) if args.image_dir and not args.no_image else None
    if images is not None and image_dir is not None:
        raise PrepareError("give either --images (a CSV item,path) or --image-dir, not both")
    names = [n.strip() for n in args.names.split(",")] if args.names else None

    folder = OutputFolder(args.out, args.name, args.overwrite)
    if text is not None:
        encoders.require_extra("text")
    if images is not None or image_dir is not None:
        encoders.require_extra("image")
    raw = read_interactions(inter, names=names, user_col=args.user_col, item_col=args.item_col,
                            rating_col=args.rating_col, time_col=args.time_col)
    known = raw["item"].unique()
    text_table = image_table = None
    unknown = {}
    if text is not None:
        text_table = read_item_table(text, "text")
        unknown["text"] = check_known_ids(text_table["item"], known, text, "text",
                                          args.ignore_unknown_ids)
    if images is not None:
        image_table = read_item_table(images, "path")
        unknown["image"] = check_known_ids(image_table["item"], known, images, "image list",
                                           args.ignore_unknown_ids)
    df, users, items, steps = process_interactions(raw, args, inter.name)

    features: dict[str, np.ndarray] = {}
    reports: list[FeatureReport] = []
    provenance: list[tuple[str, Path]] = [("interactions", inter)]
    if text_table is not None:
        provenance.append(("text", text))
        lookup = dict(zip(text_table["item"], text_table["value"]))
        features["text"], rep = encode_texts([lookup.get(str(i)) for i in items], folder, args,
                                             "text")
        if unknown["text"]:
            rep.extra["text_rows_for_unknown_items_dropped"] = unknown["text"]
        reports.append(rep)
        steps.append("Text: each item's text from the text file, encoded with all-MiniLM-L6-v2.")
    if image_table is not None or image_dir is not None:
        if image_table is not None:
            provenance.append(("image list", images))
            paths = listed_image_paths(image_table, images.parent, items)
            extra = {"image_rows_for_unknown_items_dropped": unknown["image"]}
        else:
            provenance.append(("image folder", image_dir))
            paths, unmatched = images_in_folder(image_dir, items, "--image-dir")
            extra = {"image_files_matching_no_item": unmatched}
        features["image"], rep = encode_images(paths, folder, args, "images")
        rep.extra.update(extra)
        reports.append(rep)
        steps.append("Image: each item's image encoded with EfficientNet-Lite0.")
    return finish(folder, df, users, items, "user_id", "item_id", features, reports, provenance,
                  steps, f"prepared from {inter.name}", started, command_line(args))


def add_arguments(p) -> None:
    p.add_argument("interactions", help="CSV/TSV of interactions: user, item[, rating, timestamp]")
    p.add_argument("--names", help="column names of a file without a header, in order, e.g. "
                   "user,item,rating,timestamp")
    p.add_argument("--user-col", help="the user column (default: guessed from the header)")
    p.add_argument("--item-col", help="the item column")
    p.add_argument("--rating-col", help="the rating column (optional)")
    p.add_argument("--time-col", help="the timestamp column (optional; numbers or dates)")
    p.add_argument("--text", help="CSV/TSV item,text (optional)")
    p.add_argument("--images", help="CSV/TSV item,path (optional; relative paths from its folder)")
    p.add_argument("--image-dir", help="folder of images named <item>.<ext> (optional)")

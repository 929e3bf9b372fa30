"""Loader for MMRec-format dataset folders.

``<data_dir>/<folder>/<name>.inter``: tab-separated with a header; required columns ``userID``,
``itemID``, ``x_label`` (0 train, 1 valid, 2 test); ``rating`` / ``timestamp`` and any other
columns are accepted and ignored. Feature files ``<modality>_feat.npy`` hold one row per item
(row k = item k), float16 or float32. With ``dataset.synthetic_features=true`` an absent feature
file is replaced by seeded Gaussian noise (``synthetic_features``), recorded and warned about.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import Interactions, Split
from .errors import DataError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("userID", "itemID", "x_label")
# Width of generated stand-in features (dataset.synthetic_features=true) for a modality that
# dataset.feature_dims does not declare: MMRec's VGG16 image (4096) and sentence-transformer text
# (384) features, TikTok's audio (128).
SYNTHETIC_FEATURE_DIMS = {"image": 4096, "text": 384, "audio": 128}


def read_inter(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            f"interaction file not found: {path}. Point data_dir at the folder that holds "
            f"'{path.parent.name}/' (e.g. data_dir=../shared/data), or see the README section "
            f"'Data set-up' for how to obtain it."
        )
    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as exc:  # pandas raises many types for malformed text
        raise DataError(f"{path}: could not be parsed as a tab-separated table ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}. "
            f"An MMRec .inter file is tab-separated with a header naming at least "
            f"{', '.join(REQUIRED_COLUMNS)}."
        )
    if len(df) == 0:
        raise DataError(f"{path}: no interactions (only a header). Fill it with one "
                        f"tab-separated row per interaction (userID, itemID, x_label: 0 train, "
                        f"1 valid, 2 test), or point data_dir / dataset.inter_file at the right "
                        f"file")
    for col in REQUIRED_COLUMNS:
        if not pd.api.types.is_integer_dtype(df[col]):
            bad = df[col][pd.to_numeric(df[col], errors="coerce").isna()
                          | (pd.to_numeric(df[col], errors="coerce") % 1 != 0)]
            example = bad.iloc[0] if len(bad) else df[col].iloc[0]
            raise DataError(
                f"{path}: column {col} must hold integers, found e.g. '{example}'. "
                f"Map raw ids to 0..n-1 integers first (guider-prepare does this, docs/prepare.md)."
            )
    return df


def _check_ids(path: Path, values: np.ndarray, column: str) -> int:
    if values.min() < 0:
        raise DataError(f"{path}: column {column} has negative ids (e.g. {values.min()})")
    n = int(values.max()) + 1
    present = np.zeros(n, dtype=bool)
    present[values] = True
    if not present.all():
        gaps = np.flatnonzero(~present)
        raise DataError(
            f"{path}: {column} ids are not contiguous: {len(gaps)} of 0..{n - 1} never occur "
            f"(first missing: {gaps[0]}). Re-index them to 0..n-1 (MMRec's format requires it)."
        )
    return n


def split_frame(path: Path, df: pd.DataFrame) -> tuple[int, int, Split, Split, Split]:
    users = df["userID"].to_numpy(np.int64)
    items = df["itemID"].to_numpy(np.int64)
    labels = df["x_label"].to_numpy(np.int64)
    n_users = _check_ids(path, users, "userID")
    n_items = _check_ids(path, items, "itemID")
    bad = ~np.isin(labels, (0, 1, 2))
    if bad.any():
        raise DataError(
            f"{path}: x_label must be 0 (train), 1 (valid) or 2 (test); found {labels[bad][0]} "
            f"in {int(bad.sum())} row(s)"
        )
    keys = users * n_items + items
    uniq, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        k = uniq[counts > 1][0]
        raise DataError(
            f"{path}: {int((counts > 1).sum())} duplicate (userID, itemID) pair(s), e.g. "
            f"user {k // n_items} item {k % n_items}. Keep one row per pair (drop duplicates)."
        )
    splits = [Split(users[labels == s], items[labels == s]) for s in (0, 1, 2)]
    if len(splits[0]) == 0:
        raise DataError(f"{path}: no training rows (x_label 0)")
    return n_users, n_items, *splits


def load_features(path: Path, n_items: int) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic != b"\x93NUMPY":
            raise DataError(
                f"{path}: not a .npy file (it does not start with NumPy's .npy header; a text, "
                f"CSV or pickle file renamed to .npy cannot be read). Save the features with "
                f"numpy.save(path, array) as an items x dims float array, row k = item k")
        arr = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
    if arr.ndim != 2:
        raise DataError(f"{path}: features must be a 2-D array (items x dims), got shape {arr.shape}")
    if arr.shape[0] != n_items:
        raise DataError(
            f"{path}: {arr.shape[0]} feature rows but the .inter file has {n_items} items; "
            f"row k must be item k. Regenerate the features for this item index."
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{path}: features must be float16/float32/float64, got {arr.dtype}")
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise DataError(
            f"{path}: {len(rows)} item row(s) contain NaN or inf (first: item {rows[0]}). "
            f"Fix or zero those rows before training."
        )
    return arr


def synthetic_feature_dim(modality: str, feature_dims: dict[str, int] | None) -> int:
    if feature_dims and modality in feature_dims:
        return int(feature_dims[modality])
    if modality in SYNTHETIC_FEATURE_DIMS:
        return SYNTHETIC_FEATURE_DIMS[modality]
    raise DataError(
        f"dataset.synthetic_features=true but no width is known for modality '{modality}': add "
        f"it to feature_dims in the dataset yaml, or +dataset.feature_dims.{modality}=<dims> on "
        f"the command line (defaults exist only for "
        f"{', '.join(f'{m} {d}' for m, d in SYNTHETIC_FEATURE_DIMS.items())})"
    )


def synthetic_features(modality: str, n_items: int, dim: int, seed: int) -> np.ndarray:
    """Stand-in features for an absent file: i.i.d. standard Gaussian, float32, ``n_items x dim``.

    Pure noise by design (no signal about items or interactions): they exist so a feature model
    can be timed on a dataset whose feature files are missing, not to be learned from. The stream
    depends on ``seed`` and the modality name only (crc32, stable across processes), so two
    modalities differ and a run is reproducible."""
    rng = np.random.default_rng([seed, zlib.crc32(modality.encode())])
    return rng.standard_normal((n_items, dim), dtype=np.float32)


def load_mmrec(
    folder: Path,
    name: str,
    inter_file: str | None,
    feature_files: dict[str, str],
    required_modalities: list[str] | None = None,
    synthetic: bool = False,
    feature_dims: dict[str, int] | None = None,
    synthetic_seed: int = 0,
) -> Interactions:
    """Load one MMRec-format folder. Feature files that exist are loaded; a missing one is an
    error only when its modality is in ``required_modalities``, unless ``synthetic`` is true:
    then every missing one is replaced by seeded Gaussian noise (``synthetic_features``), the run
    warns, and ``info["synthetic_features"]`` maps each generated modality to its width."""
    path = folder / (inter_file or f"{name}.inter")
    df = read_inter(path)
    n_users, n_items, train, valid, test = split_frame(path, df)
    features: dict[str, np.ndarray] = {}
    absent: list[str] = []
    generated: dict[str, int] = {}
    for modality, fname in feature_files.items():
        fpath = folder / fname
        if fpath.is_file():
            features[modality] = load_features(fpath, n_items)
        elif synthetic:
            dim = synthetic_feature_dim(modality, feature_dims)
            features[modality] = synthetic_features(modality, n_items, dim, synthetic_seed)
            generated[modality] = dim
        elif required_modalities is not None and modality in required_modalities:
            raise DataError(
                f"feature file for modality '{modality}' not found: {fpath}. It is declared in "
                f"conf/dataset/{name}.yaml; obtain it (README 'Data set-up') or choose a model "
                f"that does not use item features."
            )
        else:
            absent.append(modality)
    data = Interactions(name, n_users, n_items, train, valid, test, features)
    if generated:
        data.info["synthetic_features"] = generated
        log.warning(
            "%s: feature file(s) absent for %s; dataset.synthetic_features=true filled them with "
            "seeded Gaussian noise (%s). These features carry no signal: use such runs for speed, "
            "never for accuracy.",
            name, ", ".join(generated), ", ".join(f"{m} {n_items}x{d}" for m, d in generated.items()),
        )
    if absent:
        data.info["absent_modalities"] = absent
        log.info("%s: feature files absent for %s (not needed by this model)", name, ", ".join(absent))
    return data


def load_id_mapping(path: Path, n: int) -> np.ndarray | None:
    """Original ids by internal id from a mapping file of the MMRec layout (``u_id_mapping.csv``
    / ``i_id_mapping.csv``: tab-separated, header, original id then internal id); None when the
    file is absent or does not cover ids 0..n-1 (then the internal ids are reported)."""
    if not Path(path).is_file():
        return None
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        internal = frame.iloc[:, 1].astype(np.int64).to_numpy()
    except (ValueError, IndexError, pd.errors.ParserError) as exc:
        log.warning("%s: not a readable id mapping (%s); internal ids are reported", path, exc)
        return None
    out = np.empty(n, dtype=object)
    covered = np.zeros(n, dtype=bool)
    ok = (internal >= 0) & (internal < n)
    out[internal[ok]] = frame.iloc[:, 0].to_numpy()[ok]
    covered[internal[ok]] = True
    if not covered.all():
        log.warning("%s maps %d of %d ids; internal ids are reported", path, int(covered.sum()), n)
        return None
    return out


def report_cold(data: Interactions) -> dict:
    """Count users/items with no training interaction; warn once. They are kept in the index;
    evaluation skips such users, and held-out interactions on such items (no ID model can rank an
    item it never saw trained; see the README, "Data set-up")."""
    udeg, ideg = data.train_degrees()
    cold = {"users": int((udeg == 0).sum()), "items": int((ideg == 0).sum())}
    if cold["users"] or cold["items"]:
        log.warning(
            "%s: %d user(s) and %d item(s) have no training interaction; they are kept but excluded "
            "from evaluation",
            data.name, cold["users"], cold["items"],
        )
    data.info["cold_start"] = cold
    return cold

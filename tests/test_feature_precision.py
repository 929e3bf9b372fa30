"""backbone.feature_precision: bfloat16 features and projections, the shared projection
helpers, and that float32 stays the default and out of a run's identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from guider.backbones.base import PAD_ROWS, Backbone
from guider.training import fit

from .helpers import LR_FAST, THREE_MODALITIES, build, first_batch, tiny_data

FEATURE_MODELS = ["vbpr", "lattice", "freedom", "bm3", "mgcn", "lgmrec", "smore"]


def test_project_rows_equals_projecting_everything():
    g = torch.Generator().manual_seed(0)
    proj = nn.Linear(24, 5)
    feats = torch.randn(50, 24, generator=g)
    rows = torch.randint(0, 50, (70,), generator=g)
    torch.testing.assert_close(Backbone.project(proj, feats, rows), proj(feats)[rows])
    # bfloat16: the row count is padded for the kernels, the padding never reaches the output
    out = Backbone.project(proj, feats.bfloat16(), rows)
    assert out.dtype == torch.float32 and out.shape == (70, 5)
    assert len(torch.unique(rows)) % PAD_ROWS  # the padded path is the one tested
    torch.testing.assert_close(out, proj(feats)[rows], rtol=0.05, atol=0.05)
    out.sum().backward()
    assert proj.weight.grad.dtype == torch.float32 and torch.isfinite(proj.weight.grad).all()


def test_project_difference_is_the_difference_of_projections():
    g = torch.Generator().manual_seed(1)
    proj = nn.Linear(16, 4)
    feats = torch.randn(30, 16, generator=g)
    a, b = torch.randint(0, 30, (40,), generator=g), torch.randint(0, 30, (40,), generator=g)
    torch.testing.assert_close(Backbone.project_difference(proj, feats, a, b),
                               proj(feats)[a] - proj(feats)[b])


@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_bfloat16_losses_close_to_float32(tiny_cfg, name):
    """Same seed, same batch: the bfloat16 model's features are bfloat16 and its losses are
    those of the float32 model up to bfloat16 rounding (~3 significant digits)."""
    data = tiny_data(THREE_MODALITIES)
    batch = first_batch(data)
    out = {}
    for prec in ("float32", "bfloat16"):
        _, model, _ = build(tiny_cfg(f"backbone={name}", f"backbone.feature_precision={prec}"),
                            data)
        feats = [b for n, b in model.named_buffers() if n.startswith("feat")]
        assert feats and all(f.dtype == getattr(torch, prec) for f in feats)
        model.train()
        torch.manual_seed(5)  # dropout masks and the like: the same draws for both
        losses = model.losses(batch)
        out[prec] = torch.stack([losses.main.mean(), *losses.aux.values()]).detach()
    torch.testing.assert_close(out["bfloat16"], out["float32"], rtol=0.03, atol=1e-3)


@pytest.mark.parametrize("name", ["vbpr", "freedom"])
def test_bfloat16_model_learns(tiny_cfg, tmp_path, name):
    cfg = tiny_cfg(f"backbone={name}", "backbone.feature_precision=bfloat16", LR_FAST,
                   "train.epochs=10", "train.patience=100")
    data = tiny_data(THREE_MODALITIES)
    root, model, denoiser = build(cfg, data)
    result = fit(model, denoiser, data, root.train, root.eval, torch.device("cpu"), root.seed,
                 tmp_path)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.05
    assert result.test["Recall@20"] > 2 * 20 / data.n_items


def test_unknown_precision_fails_naming_the_key(tiny_cfg):
    with pytest.raises(ValueError, match=r"backbone\.feature_precision.*float32, bfloat16"):
        build(tiny_cfg("backbone=freedom", "backbone.feature_precision=float16"),
              tiny_data(THREE_MODALITIES))


def test_default_precision_leaves_run_identity_unchanged(tiny_cfg):
    from omegaconf import OmegaConf

    from guider.pipeline import prepare
    from guider.identity import config_hash

    c = tiny_cfg("backbone=freedom")
    plain = OmegaConf.to_container(c, resolve=True)
    del plain["backbone"]["feature_precision"]
    del plain["train"]["max_minutes"]
    assert config_hash(c) == config_hash(plain)  # older run folders keep their hash
    assert config_hash(tiny_cfg("backbone=freedom", "backbone.feature_precision=bfloat16")) \
        != config_hash(c)
    assert config_hash(tiny_cfg("backbone=freedom", "train.max_minutes=5")) != config_hash(c)
    assert "feature_precision" not in prepare(c).fingerprint["backbone"]

"""The ViT: parameter counts (dense, HiLo, BiFormer), shapes, learning, bad names."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from flax import nnx

from models import vision_attention
from models.data import batch_rng, images
from models.layers import count_params
from models.vit import ViT, ViTConfig, classification_loss
from tests.models_util import fit

OPTIONS = vision_attention.VisionOptions(
    hilo_window=2, hilo_alpha=0.5, regions=2, topk=2, lce_kernel=3
)


def _config(**kw) -> ViTConfig:
    base = dict(image_size=16, patch_size=2, dim=32, num_layers=2, num_heads=4, options=OPTIONS)
    return ViTConfig(**{**base, **kw})


def _hilo_params(c, heads, alpha):
    d = c // heads
    lo = int(heads * alpha)
    hd, ld = (heads - lo) * d, lo * d
    return 3 * c * hd + hd * hd + hd + 3 * c * ld + ld * ld + ld


def _biformer_params(c, k):
    return c * 3 * c + 3 * c + c * c + c + k * k * c + c


@pytest.mark.parametrize("attention", ["dense", "hilo", "biformer"])
def test_param_count_matches_formula(attention):
    cfg = _config(attention=attention)
    c, n = cfg.dim, cfg.num_layers
    dense_attn = 4 * c * c + 4 * c
    per_layer = {
        "dense": dense_attn,
        "hilo": _hilo_params(c, cfg.num_heads, 0.5),
        "biformer": _biformer_params(c, 3),
    }[attention]
    want = cfg.num_params() - n * dense_attn + n * per_layer
    assert count_params(ViT(cfg, rngs=nnx.Rngs(0))) == want


@pytest.mark.parametrize("attention", ["dense", "hilo", "biformer", "window,neighborhood"])
def test_few_steps_reduce_the_loss(attention):
    cfg = _config(attention=attention)
    batch = images.ImageTask(name="digits", image_size=16).batch(
        batch_rng(0, "train", 0), 16, "train"
    )
    x, y = jnp.asarray(batch["images"]), jnp.asarray(batch["labels"])
    model = ViT(cfg, rngs=nnx.Rngs(0))
    losses = fit(model, lambda m: classification_loss(m(x), y)[0])
    assert losses[-1] < losses[0] - 0.2, losses


def test_bad_names_list_the_valid_ones():
    with pytest.raises(
        ValueError, match="valid attentions: dense, window, neighborhood, hilo, biformer"
    ):
        _config(attention="swin")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        _config(image_size=15)

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


def test_wrongly_shaped_images_are_errors():
    model = ViT(_config(image_size=8), rngs=nnx.Rngs(0))
    want = r"images must be \[B, 8, 8, 1\] \(image_size=8, channels=1\), got shape "
    with pytest.raises(ValueError, match=want + r"\(2, 3, 8, 8, 1\)\.$"):
        model(jnp.zeros((2, 3, 8, 8, 1)))  # a video
    with pytest.raises(ValueError, match=want + r"\(8, 8, 1\)\. Add a batch axis"):
        model(jnp.zeros((8, 8, 1)))
    for shape in [(2, 12, 12, 1), (2, 8, 8, 3)]:
        with pytest.raises(ValueError, match=want):
            model(jnp.zeros(shape))


def test_bad_labels_are_errors():
    with pytest.raises(ValueError, match=r"labels must be ids in \[0, 10\).*got 12\."):
        classification_loss(jnp.zeros((2, 10)), jnp.array([3, 12]))
    with pytest.raises(TypeError, match="labels must be an integer array, got dtype float32"):
        classification_loss(jnp.zeros((2, 10)), jnp.array([3.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels \[B\], got shapes \(2, 10\) and \(3,\)"):
        classification_loss(jnp.zeros((2, 10)), jnp.array([3, 1, 2]))


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("patch_size", -2, ValueError, "patch_size=-2 must be >= 1"),
        ("patch_size", 0, ValueError, "patch_size=0 must be >= 1"),
        ("image_size", 0, ValueError, "image_size=0 must be >= 1"),
        ("dim", 0, ValueError, "dim=0 must be >= 1"),
        ("channels", 0, ValueError, "channels=0 must be >= 1"),
        ("num_classes", 0, ValueError, "num_classes=0 must be >= 1"),
        ("num_heads", 0, ValueError, "num_heads=0 must be >= 1"),
        ("mlp_ratio", 2.5, TypeError, "mlp_ratio must be an int, got 2.5"),
    ],
)
def test_bad_config_values_are_errors(field, value, error, message):
    with pytest.raises(error, match=f"ViTConfig: {message}"):
        _config(**{field: value})


def test_bad_vision_options_are_errors():
    with pytest.raises(ValueError, match="lce_kernel=-1 must be >= 0"):
        vision_attention.VisionOptions(lce_kernel=-1)
    with pytest.raises(ValueError, match="lce_kernel=2 must be odd, or 0"):
        vision_attention.VisionOptions(lce_kernel=2)
    with pytest.raises(TypeError, match="hilo_alpha must be a number in \\[0, 1\\], got '0.5'"):
        vision_attention.VisionOptions(hilo_alpha="0.5")


@pytest.mark.parametrize(
    ("attention", "message"),
    [
        (
            "biformer",
            r"7x7 token grid \(image_size=14 / patch_size=2\) is not a multiple of "
            r"VisionOptions.regions=2; use an image_size that is a multiple of 4 \(e.g. 12 or 16\)",
        ),
        (
            "dense,hilo",
            r"7x7 token grid .* VisionOptions.hilo_window=2; .* set hilo_window to "
            r"a divisor of the grid \(1, 7\)",
        ),
    ],
)
def test_grids_the_attention_cannot_tile_are_refused_at_build_time(attention, message):
    with pytest.raises(ValueError, match=message):
        _config(image_size=14, attention=attention)
    with pytest.raises(ValueError, match="7x7 token grid is not a multiple"):  # GridAttention
        vision_attention.check_grid(attention.split(",")[-1], (7, 7), OPTIONS)


@pytest.mark.parametrize(
    "grid, window, shift",
    [((5, 5), 8, (0, 0)), ((8, 8), 4, (2, 2)), ((8, 4), 4, (2, 0)), ((2, 8, 8), 8, (0, 0, 0))],
)
def test_shifted_windows_do_not_shift_along_an_axis_they_cover(grid, window, shift):
    # Swin turns the shift off where the window spans the input: a shifted window that
    # covers an axis would only split that axis in two (a 5x5 grid: 2x2-and-3x3 pieces).
    options = vision_attention.VisionOptions(window=window)
    layer = vision_attention.GridAttention(
        "window", 16, 2, grid=grid, options=options, shifted=True, rngs=nnx.Rngs(0)
    )
    assert layer.attn.pattern.shift == shift

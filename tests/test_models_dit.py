"""The DiT: parameter counts, adaLN-Zero identity at init, learning on images and video."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import flow, vision_attention
from models.data import batch_rng, images, videos
from models.dit import DiT, DiTConfig
from models.layers import count_params, patchify, unpatchify
from tests.models_util import fit

OPTIONS = vision_attention.VisionOptions(window=2, kernel=3, kernel_frames=3)


def _config(**kw) -> DiTConfig:
    base = dict(
        image_size=8,
        patch_size=2,
        dim=32,
        num_layers=2,
        num_heads=4,
        num_classes=6,
        options=OPTIONS,
    )
    return DiTConfig(**{**base, **kw})


@pytest.mark.parametrize("frames", [0, 3])
def test_param_count_matches_formula(frames):
    cfg = _config(frames=frames)
    assert count_params(DiT(cfg, rngs=nnx.Rngs(0))) == cfg.num_params()


def test_patchify_roundtrip():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 2))
    np.testing.assert_array_equal(unpatchify(patchify(x, 2), 2, 2), x)


def test_adaln_zero_starts_at_zero():
    """Zero-initialised modulation and output: the untrained DiT predicts 0 everywhere."""
    cfg = _config(frames=3, attention="neighborhood,window")
    model = DiT(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, *cfg.input_shape))
    forward = nnx.jit(lambda m, x, t, y: m(x, t, y))
    v = forward(model, x, jnp.array([0.1, 0.9]), jnp.array([0, 5], jnp.int32))
    assert v.shape == x.shape
    np.testing.assert_array_equal(v, 0.0)


@pytest.mark.parametrize(("attention", "frames"), [("window,neighborhood", 0), ("neighborhood", 4)])
def test_few_steps_reduce_the_loss(attention, frames):
    cfg = _config(attention=attention, frames=frames)
    rng = batch_rng(0, "train", 0)
    if frames:
        batch = videos.VideoTask(frames=frames, image_size=8).batch(rng, 8, "train")
    else:
        batch = images.ImageTask(name="shapes", image_size=8).batch(rng, 8, "train")
    x, y = jnp.asarray(batch["images"]), jnp.asarray(batch["labels"])
    losses = fit(DiT(cfg, rngs=nnx.Rngs(0)), lambda m: flow.flow_loss(m, x, y, jax.random.key(1)))
    assert losses[-1] < losses[0] * 0.9, losses


def test_sampler_shape():
    cfg = _config()
    model = DiT(cfg, rngs=nnx.Rngs(0))
    x = flow.sample(
        model, jnp.arange(3, dtype=jnp.int32), cfg.input_shape, jax.random.key(0), steps=2
    )
    assert x.shape == (3, *cfg.input_shape)


def test_bad_inputs_are_errors():
    model = DiT(_config(num_classes=3, num_layers=1), rngs=nnx.Rngs(0))
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2)
    with pytest.raises(ValueError, match=r"labels must be ids in \[0, 4\) .* got 7\."):
        model(x, t, jnp.array([0, 7]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        model(x, t, jnp.array([0.0, 1.0]))
    with pytest.raises(
        ValueError, match=r"x must be \[B, 8, 8, 1\] .* got shape \(2, 3, 8, 8, 1\)"
    ):
        model(jnp.zeros((2, 3, 8, 8, 1)), t, jnp.array([0, 1]))
    with pytest.raises(ValueError, match=r"t must be \[B\] = \(2,\), one per example, got shape"):
        model(x, jnp.zeros(()), jnp.array([0, 1]))
    assert model(x, t, jnp.array([0, 3])).shape == x.shape  # 3: no class


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        (dict(num_heads=0), ValueError, "num_heads=0 must be >= 1"),
        (dict(frames=2.5), TypeError, "frames must be an int, got 2.5"),
        (dict(frames=-1), ValueError, "frames=-1 must be >= 0. 0 means images"),
        (dict(image_size=12, attention="biformer"), ValueError, "6x6 token grid"),
    ],
)
def test_bad_config_values_are_errors(kw, error, message):
    with pytest.raises(error, match=message):
        _config(**kw)

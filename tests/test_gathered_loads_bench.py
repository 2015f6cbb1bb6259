"""bench/gathered_loads_gpu.py: its tile lists and its load kernel (GPU interpret mode)."""

import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gathered_loads_gpu as gl  # noqa: E402

from jaxsparse.ops import pallas_gpu  # noqa: E402


def test_tile_lists_hold_the_union_tiles_and_the_selected_tokens():
    rng = np.random.default_rng(0)
    bits = rng.random((2, 80, 5)) < 0.2  # [K, T, nb]; T not a multiple of 16
    bits[:, 64:] = False  # the lists cover whole 16-token groups only
    lists = gl.tile_lists(bits, per_cta=3)
    for name in ("packed", "gathered"):
        tokens, heads = lists[name]
        assert tokens.shape[1] == gl.TOKENS and len(tokens) == len(heads)
        assert len(tokens) % 3 == 0
    tokens, heads = lists["packed"]
    union = {(g, j, i) for g in range(2) for j in range(5) for i in range(4)
             if bits[g, 16 * i : 16 * i + 16, j].any()}  # fmt: skip
    assert (np.diff(tokens, axis=1) == 1).all() and (tokens[:, 0] % 16 == 0).all()
    assert len(union) <= len(tokens) < len(union) + 3
    assert {(int(h), int(t // 16)) for h, t in zip(heads, tokens[:, 0], strict=True)} == {
        (g, i) for g, _, i in union
    }
    tokens, heads = lists["gathered"]
    pairs = sum(int(bits[g, :, j].sum()) for g in range(2) for j in range(5))
    assert len(tokens) < pairs / 16 + 2 * 5 + 3  # at most one part-filled tile per block
    for g in range(2):
        picked = set(tokens[heads == g].ravel().tolist())
        assert picked == set(np.flatnonzero(bits[g].any(-1)).tolist())


@pytest.mark.parametrize("boxes", [True, False])
def test_load_kernel_loads_the_listed_rows_in_interpret_mode(boxes):
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.standard_normal((1, 64, 4, 64)), jnp.float32)
    dout = -q
    if boxes:
        tokens = np.array([np.arange(16) + s for s in (0, 16, 48, 32)], np.int32)
    else:
        tokens = rng.integers(0, 64, (4, 16)).astype(np.int32)
    heads = np.array([0, 1, 1, 0], np.int32)
    with pallas_gpu.interpret_context(True):
        last = gl.load_tiles(
            q, dout, jnp.asarray(tokens), jnp.asarray(heads), group=2, per_cta=2,
            boxes=boxes, interpret=plgpu.InterpretGPUParams(detect_races=True),
        )  # fmt: skip
    last = np.asarray(last)  # [ctas, 2, 16, group, D]: each CTA's last tile (tiles 1 and 3)
    for c, tile in enumerate((1, 3)):
        hs = heads[tile] * 2 + np.arange(2)
        want = np.asarray(q[0])[tokens[tile][:, None], hs[None]]
        np.testing.assert_array_equal(last[c, 0], want)
        np.testing.assert_array_equal(last[c, 1], -want)


@pytest.mark.parametrize("boxes", [True, False])
def test_load_kernel_lowers_for_a_gpu(boxes):
    # Interpret mode runs the logic, not the Mosaic GPU lowering (TMA boxes of one
    # token's [8, D] slab): lower it for CUDA at the bench's shapes.
    import functools

    import jax

    q = jnp.zeros((1, 256, 16, 128), jnp.bfloat16)
    tokens = jnp.zeros((8, 16), jnp.int32)
    heads = jnp.zeros((8,), jnp.int32)
    fn = functools.partial(gl.load_tiles, group=8, per_cta=4, boxes=boxes)
    with pallas_gpu.interpret_context(True):  # an abstract H100 for the architecture queries
        jax.jit(fn).trace(q, q, tokens, heads).lower(lowering_platforms=("cuda",))

"""dK/dV of per-token selections over gathered query tiles (`ops.gathered`, the GPU kernel).

The tiles must hold exactly the (token, block) pairs of the bits, once per
64-key tile, with limits that let each row see what its token may; and the
gradients through the kernel (GPU interpret mode) must equal the dense f32
oracle of the pattern's mask.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse.ops import gathered, pallas_gpu
from pallas_kernels.gpu import backward_dkv_gathered as bdg
from pallas_kernels.gpu import common as cm
from tests.test_packed import check_against_mask, token_block_mask
from tests.test_routed import random_bits


def decode(tiles, g: gathered.Gathering, hx: int, c: int):
    """{(f, key tile, token)} of the live items' rows that see a key, and each row's limit;
    checks that no pair is listed twice and that an item's tiles are its own bit head's."""
    tokens, limits, heads, items = (np.asarray(x) for x in tiles)
    seen, limit_of = set(), {}
    for f, kj, lo, hi in items:
        for i in range(lo, hi):
            assert heads[i] == f, "a tile of another bit head in the item"
            for tok, lim in zip(tokens[i], limits[i], strict=True):
                if lim < 0:
                    continue
                pair = (int(f), int(kj), int(tok))
                assert pair not in seen, f"pair {pair} listed twice"
                seen.add(pair)
                limit_of[pair] = int(lim)
    return seen, limit_of


@settings(max_examples=12, deadline=None)
@given(
    t=st.integers(1, 60),
    extra=st.integers(0, 70),
    hx=st.sampled_from([1, 2]),
    group=st.sampled_from([8, 16, 64]),
    col_block=st.sampled_from([64, 128]),
    causal=st.booleans(),
    item_tiles=st.sampled_from([1, 2, 256]),
    chunk=st.sampled_from([0, 0, 1, 8, 32]),
    seed=st.integers(0, 2**16),
)
def test_tiles_hold_each_selected_pair_once_per_key_tile(
    t, extra, hx, group, col_block, causal, item_tiles, chunk, seed
):
    s = t + extra
    cap = 2
    bits = random_bits(np.random.default_rng(seed), 2, hx, t, s, col_block, cap, s - t, causal)
    c = bits.shape[-1]
    g = gathered.Gathering(
        batch=2, group=group, col_block=col_block, q_len=t, kv_len=s, q_offset=s - t,
        causal=causal, slots=cap + causal, item_tiles=item_tiles, chunk=chunk,
    )  # fmt: skip
    tiles = jax.jit(g.tiles)(jnp.asarray(bits))
    assert np.asarray(tiles.tokens).shape[1] == 64 // group
    seen, limit_of = decode(tiles, g, hx, c)
    per = col_block // 64
    want = set()
    for b, x, tok, j in zip(*np.nonzero(bits), strict=True):
        for sub in range(per):
            if (j * per + sub) * 64 < s:  # key tiles past the keys hold nothing
                want.add((int(b * hx + x), int(j * per + sub), int(tok)))
    assert seen == want
    for (_, _, tok), lim in limit_of.items():
        assert lim == (min(tok + s - t, s - 1) if causal else s - 1)
    items = np.asarray(tiles.items)
    live = items[:, 3] > items[:, 2]
    assert (items[live, 3] - items[live, 2] <= item_tiles).all()
    tokens, limits = np.asarray(tiles.tokens), np.asarray(tiles.limits)
    for _, _, lo, hi in items[live]:  # a block's tokens come in ascending order
        order = tokens[lo:hi][limits[lo:hi] >= 0]
        assert (np.diff(order) > 0).all(), order
    if chunk:
        check_chunk_order(items[live], tokens, g)


def check_chunk_order(items, tokens, g: gathered.Gathering):
    """Live items in (bit head, chunk, key tile) order, each within one chunk (a tile's
    chunk: its first token's, or the first its block can hold)."""
    per = g.col_block // 64
    first = g.first_chunks(-(-g.kv_len // g.col_block))
    keys = []
    for f, kj, lo, hi in items:
        chunks = {max(int(tokens[i, 0]) // g.chunk, int(first[kj // per])) for i in range(lo, hi)}
        assert len(chunks) == 1, f"item {(f, kj, lo, hi)} spans chunks {sorted(chunks)}"
        keys.append((int(f), chunks.pop(), int(kj)))
    assert keys == sorted(keys), keys


@pytest.fixture
def spy_gathered(monkeypatch):
    """The `with_dq` of each call of the gathered kernel's entry point."""
    calls = []
    dkv = bdg.dkv
    monkeypatch.setattr(
        bdg, "dkv", lambda *a, **k: calls.append(k.get("with_dq", False)) or dkv(*a, **k)
    )
    return calls


CASES = [
    # b, t, s, h, kh, col_block, capacity, causal, item tiles
    (1, 100, 128, 16, 2, 64, 1, True, 2),  # NSA-like: chunked prefill, group 8, items of 2 tiles
    (2, 48, 192, 16, 1, 128, 1, False, 3),  # MQA group 16, bidirectional, two key tiles a block
]


@pytest.mark.parametrize(
    "case, dq, chunk, dq_stages",
    # Block order with dQ runs on CASES[1]; chunks of 24 tokens split CASES[0]'s 100 in 5.
    [
        (CASES[0], False, 0, None),
        (CASES[1], True, 0, 2),
        (CASES[0], True, 24, 2),
        (CASES[0], True, 24, 4),
    ],
    ids=str,
)
def test_gathered_dkv_matches_dense_mask_in_interpret_mode(
    case, dq, chunk, dq_stages, monkeypatch, spy_gathered
):
    """dq: the gathered kernel gives dQ too (its interpret-mode read-add-write in place
    of the TMA reduce-add), or the dQ kernel walks the packed tiles; chunk: the items
    in chunks of that many tokens (`Config.gpu_gathered_chunk`); dq_stages: its Q/dO
    slots, one or two a warpgroup (`DQ_STAGES`)."""
    b, t, s, h, kh, cb, cap, causal, item_tiles = case
    if dq_stages is not None:
        monkeypatch.setattr(bdg, "DQ_STAGES", dq_stages)
    # Short runs of tiles per work item: a block's tiles shared by several CTAs.
    monkeypatch.setattr(gathered.Gathering, "__init__", _with_item_tiles(item_tiles))
    bits = random_bits(np.random.default_rng(3), b, kh, t, s, cb, cap, s - t, causal)
    check_against_mask(
        bits, s=s, h=h, kh=kh, d=64, col_block=cb, cap=cap, causal=causal, seed=7,
        config=js.Config(
            interpret=True, gpu_gathered_dkv=True, gpu_gathered_dq=dq, gpu_gathered_chunk=chunk
        ),
    )  # fmt: skip
    calls = spy_gathered  # with_dq of each call of the gathered kernel
    assert calls == [dq] * len(calls) and calls, "the backward did not take the gathered kernel"


def _with_item_tiles(item_tiles):
    init = gathered.Gathering.__init__

    def patched(self, **kw):
        init(self, **{**kw, "item_tiles": item_tiles})

    return patched


@pytest.mark.parametrize("with_dq, dq_stages", [(False, 2), (True, 2), (True, 4)])
def test_gathered_kernel_lowers_for_a_gpu(with_dq, dq_stages, monkeypatch):
    # Interpret mode runs the logic, not the Mosaic GPU lowering (TMA boxes of one
    # token's [8, D] rows into 8-row slices of the swizzled tiles; with dQ, the
    # transposed dS^T operand and the TMA reduce-adds): lower it for CUDA.
    q = jnp.zeros((1, 256 * 8, 2, 128), jnp.bfloat16)
    k = jnp.zeros((1, 256, 2, 128), jnp.bfloat16)
    tiles = bdg.GatheredTiles(
        tokens=jnp.zeros((8, 8), jnp.int32),
        limits=jnp.zeros((8, 8), jnp.int32),
        heads=jnp.zeros((8,), jnp.int32),
        items=jnp.zeros((4, 4), jnp.int32),
    )
    lse = jnp.zeros((1, 2, 256 * 8), jnp.float32)
    st_ = cm.AttentionStatics(
        mask_fn=None, mask_factors=None, q_offset=0, kv_len=256, kv_padded=False, scale=0.1,
        logits_soft_cap=None, has_segments=False, segments_on_full_tiles=False, interpret=None,
    )  # fmt: skip
    monkeypatch.setattr(bdg, "DQ_STAGES", dq_stages)
    fn = functools.partial(bdg.dkv, group=8, num_stages=2, st=st_, with_dq=with_dq)
    with pallas_gpu.interpret_context(True):  # an abstract H100 for the architecture queries
        jax.jit(fn).trace(q, k, k, q, lse, lse, tiles).lower(lowering_platforms=("cuda",))


def test_packed_row_views_invert():
    """`by_token` / `by_row` are inverse layouts, and `token_view` of the natural
    `[B, T, H, D]` layout is `by_token` of its packed rows (the packed path packs q and
    dO, and unpacks O, with them)."""
    x = jnp.arange(2 * 3 * 8 * 2 * 4, dtype=jnp.float32).reshape(2, 3 * 8, 2, 4)  # G = 8
    tok = bdg.by_token(x, 8)
    assert tok.shape == (2, 3, 2, 8, 4)
    # Token t, bit head x, head j of the group: packed row t * G + j.
    np.testing.assert_array_equal(tok[1, 2, 1, 5], x[1, 2 * 8 + 5, 1])
    np.testing.assert_array_equal(bdg.by_row(tok), x)
    natural = tok.reshape(2, 3, 16, 4)  # [B, T, H, D]: head x * G + j
    np.testing.assert_array_equal(bdg.token_view(natural, 8), tok)


def test_gathered_items_in_chunks_by_default_from_64k_tokens():
    from jaxsparse.ops import packed

    at = packed.GATHERED_DQ_FROM_TOKENS
    assert packed.gathered_chunk(js.Config(), at - 1) == 0
    assert packed.gathered_chunk(js.Config(), at) == gathered.CHUNK_TOKENS > 0
    assert packed.gathered_chunk(js.Config(), 1 << 20) == gathered.CHUNK_TOKENS
    assert packed.gathered_chunk(js.Config(gpu_gathered_chunk=1024), at) == 1024
    assert packed.gathered_chunk(js.Config(gpu_gathered_chunk=0), 1 << 20) == 0
    assert packed.gathered_chunk(js.Config(gpu_gathered_chunk=512), 64) == 512
    with pytest.raises(ValueError, match="gpu_gathered_chunk=-1 must be >= 0"):
        js.Config(gpu_gathered_chunk=-1)
    with pytest.raises(TypeError, match="gpu_gathered_chunk must be an int"):
        js.Config(gpu_gathered_chunk=True)


def test_gathered_dq_by_default_from_64k_tokens():
    from jaxsparse.ops import packed

    assert not packed.gathered_dq(js.Config(), packed.GATHERED_DQ_FROM_TOKENS - 1)
    assert packed.gathered_dq(js.Config(), packed.GATHERED_DQ_FROM_TOKENS)
    assert packed.gathered_dq(js.Config(gpu_gathered_dq=True), 64)
    assert not packed.gathered_dq(js.Config(gpu_gathered_dq=False), 1 << 20)
    with pytest.raises(TypeError, match="gpu_gathered_dq must be True, False or None"):
        js.Config(gpu_gathered_dq=1)


@pytest.mark.parametrize("threshold, want", [(101, False), (100, True)])
def test_the_default_dq_form_follows_the_query_length(threshold, want, monkeypatch):
    """Config(gpu_gathered_dq=None) through the API: the packed call of 100 query tokens
    builds its Gathering with the length rule's answer, and with dQ the shorter items
    (`DQ_ITEM_TILES`; traced only, not run)."""
    from jaxsparse.ops import packed

    monkeypatch.setattr(packed, "GATHERED_DQ_FROM_TOKENS", threshold)
    seen = []
    init = gathered.Gathering.__init__
    monkeypatch.setattr(
        gathered.Gathering,
        "__init__",
        lambda self, **kw: seen.append((kw["dq"], kw["item_tiles"])) or init(self, **kw),
    )
    b, t, s, h, kh, cb, cap = 1, 100, 128, 16, 2, 64, 1
    bits = random_bits(np.random.default_rng(3), b, kh, t, s, cb, cap, s - t, True)
    pattern = token_block_mask(bits, h=h, col_block=cb, cap=cap, causal=True)
    q = jnp.zeros((b, t, h, 64), jnp.bfloat16)
    k = jnp.zeros((b, s, kh, 64), jnp.bfloat16)
    config = js.Config(interpret=True, gpu_gathered_dkv=True)

    def loss(q, k, v):
        out = js.attention(q, k, v, pattern=pattern, implementation="pallas_gpu", config=config)
        return out.astype(jnp.float32).sum()

    with pallas_gpu.interpret_context(True):
        jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, k)
    tiles = gathered.DQ_ITEM_TILES if want else gathered.ITEM_TILES
    assert seen and set(seen) == {(want, tiles)}
    assert gathered.DQ_ITEM_TILES < gathered.ITEM_TILES


def test_gathered_dq_under_vmap_matches_each_call(spy_gathered):
    """The gathered dQ's float32 buffer is a `jax.new_ref` the kernel writes in place:
    under vmap each batch element must add into its own (interpret mode)."""
    b, t, s, h, kh, cb, cap = 1, 40, 64, 8, 1, 64, 1
    bits = random_bits(np.random.default_rng(4), b, kh, t, s, cb, cap, s - t, True)
    pattern = token_block_mask(bits, h=h, col_block=cb, cap=cap, causal=True)
    config = js.Config(interpret=True, gpu_gathered_dkv=True, gpu_gathered_dq=True)
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, b, t, h, 64), jnp.bfloat16)
    k = jax.random.normal(keys[1], (b, s, kh, 64), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, s, kh, 64), jnp.bfloat16)
    cot = jax.random.normal(keys[3], (b, t, h, 64), jnp.float32)

    def grad_q(q):
        def loss(q):
            out = js.attention(q, k, v, pattern=pattern, implementation="pallas_gpu", config=config)
            return (out.astype(jnp.float32) * cot).sum()

        return jax.grad(loss)(q)

    with pallas_gpu.interpret_context(True):
        batched = jax.jit(jax.vmap(grad_q))(q)
        each = [jax.jit(grad_q)(q[i]) for i in range(2)]
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(batched[i], np.float32), np.asarray(each[i], np.float32), atol=1e-2
        )
    assert float(jnp.abs(each[0].astype(jnp.float32)).max()) > 0
    assert spy_gathered and all(spy_gathered), "the backward did not take the gathered dQ"


def test_gathered_kernel_rejects_groups_it_cannot_tile():
    with pytest.raises(NotImplementedError, match="group of 8 to 64"):
        bdg.check_support(4, 64, 64, 2)
    with pytest.raises(NotImplementedError, match="even num_stages"):
        bdg.check_support(8, 64, 64, 3)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dq, chunk, dq_stages", [(True, 0, 4), (False, 0, 4), (True, 512, 4), (True, 512, 2)]
)
def test_gathered_dkv_on_the_gpu(dq, chunk, dq_stages, monkeypatch):
    """NSA's layout on the H100: group 8, 15 blocks a token, against the dense f32 mask;
    dQ from the gathered kernel's TMA reduce-adds, or from the dQ kernel; work items
    in block order or in chunks of 512 tokens; two Q/dO slots a warpgroup or one (the
    dQ staging in the slot's own bytes either way)."""
    monkeypatch.setattr(bdg, "DQ_STAGES", dq_stages)
    b, t, h, kh, cb, cap = 1, 4096, 16, 2, 64, 15
    bits = random_bits(np.random.default_rng(5), b, kh, t, t, cb, cap, 0, True)
    check_against_mask(
        bits, s=t, h=h, kh=kh, d=128, col_block=cb, cap=cap, causal=True, seed=6,
        config=js.Config(gpu_gathered_dkv=True, gpu_gathered_dq=dq, gpu_gathered_chunk=chunk),
    )  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    c=st.integers(1, 300),
    slots=st.integers(1, 20),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_first_selected_lists_each_rows_lowest_set_bits(rows, c, slots, density, seed):
    from jaxsparse.ops import routed

    bits = np.random.default_rng(seed).random((2, rows, c)) < density
    got = np.asarray(routed.first_selected(jnp.asarray(bits), slots))
    for i, j in np.ndindex(2, rows):
        want = np.flatnonzero(bits[i, j])[:slots]
        assert list(got[i, j]) == list(want) + [c] * (slots - len(want))


@pytest.mark.parametrize("gather, dq", [(True, False), (False, False), (True, True)])
def test_packed_forward_and_backward_lower_for_a_gpu(gather, dq, monkeypatch):
    # The whole packed path of a per-token selection (forward, dQ with its warpgroups'
    # skipped entries, gathered or packed dK/dV; or dQ, dK, dV all from the gathered
    # kernel) lowered for CUDA on the CPU.

    monkeypatch.setattr(pallas_gpu, "check_device", lambda interpret: None)
    b, t, h, kh, cb = 1, 256, 16, 2, 64
    bits = random_bits(np.random.default_rng(0), b, kh, t, t, cb, 2, 0, True)
    pattern = token_block_mask(bits, h=h, col_block=cb, cap=2, causal=True)
    q = jnp.zeros((b, t, h, 128), jnp.bfloat16)
    k = jnp.zeros((b, t, kh, 128), jnp.bfloat16)
    config = js.Config(gpu_gathered_dkv=gather, gpu_gathered_dq=dq)

    def loss(q, k, v):
        out = js.attention(q, k, v, pattern=pattern, implementation="pallas_gpu", config=config)
        return out.astype(jnp.float32).sum()

    with pallas_gpu.interpret_context(True):  # an abstract H100 for the architecture queries
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, k).lower(
            lowering_platforms=("cuda",)
        )

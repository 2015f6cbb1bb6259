"""Per-token selections run key-block-major (`jaxsparse.ops.routed`) against a dense mask.

The routed decomposition (own block by `ChunkedCausal`, the other selected
blocks as sorted (row, block) pairs with segment ids, merged by lse) must give
exactly the `TokenBlockMask`'s attention: output, lse and every gradient.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.ops import call as call_lib
from jaxsparse.ops import routed
from tests import dynamic_refs as R
from tests import oracle


def random_bits(rng, b, hx, t, s, col_block, capacity, q_offset, causal, own_prob=0.8):
    """Up to `capacity` key blocks per row besides the own one, kept with `own_prob`."""
    c = -(-s // col_block)
    bits = np.zeros((b, hx, t, c), bool)
    for bb, hh, i in np.ndindex(b, hx, t):
        own = (q_offset + i) // col_block
        visible = list(range(min(own, c))) if causal else list(range(c))
        take = int(rng.integers(0, capacity + 1))
        chosen = list(rng.permutation(visible)[:take])
        if causal and own < c and rng.random() < own_prob:
            chosen.append(own)
        bits[bb, hh, i, chosen] = True
    return bits


def token_mask(pattern, bits, t, s, h, q_offset):
    """The `TokenBlockMask`'s element mask `[B, H, T, S]` from its `mask_fn`."""
    pattern = pattern.bind(q_len=t, kv_len=s, q_offset=q_offset, num_heads=h)
    qp = (q_offset + np.arange(t))[:, None]
    kp = np.arange(s)[None, :]
    out = np.zeros((bits.shape[0], h, t, s), bool)
    for bb in range(bits.shape[0]):
        one = P.TokenBlockMask(
            bits[bb],
            row_block=1,
            col_block=pattern.col_block,
            group=pattern.group,
            causal=pattern.causal,
            q_offset=q_offset,
        )
        for hh in range(h):
            out[bb, hh] = np.asarray(one.mask_fn(qp, kp, hh))
    return out


def routed_attention(q, k, v, pattern, implementation="xla", config=None):
    b, t, h, d = q.shape
    s = k.shape[1]
    q_offset = s - t
    call = call_lib.Call(
        q=q,
        k=k,
        v=v,
        pattern=pattern.bind(q_len=t, kv_len=s, q_offset=q_offset, num_heads=h),
        sparsity=None,
        q_segment_ids=None,
        kv_segment_ids=None,
        scale=d**-0.5,
        logits_soft_cap=None,
        q_offset=q_offset,
        config=config or js.Config(),
    )
    assert routed.applies(call)
    return routed.run(call, implementation)


CASES = [
    # b, t, s, h, kh, bit heads, col_block, capacity, causal
    (2, 37, 37, 4, 2, "q", 8, 3, True),  # per query head (MoBA), GQA, ragged last block
    (1, 24, 56, 4, 2, "kv", 8, 4, True),  # shared by the GQA group (NSA), chunked prefill
    (1, 33, 33, 2, 1, "one", 5, 2, True),  # one selection for all heads, MQA
    (2, 20, 29, 2, 2, "q", 6, 2, False),  # bidirectional (VMoBA-like)
    # Blocks of 16 / 32 keys: closed-form pair tables (key tiles divide the block).
    (1, 64, 64, 4, 2, "q", 16, 2, True),
    (2, 50, 70, 2, 1, "kv", 32, 3, True),
    (1, 40, 40, 2, 2, "one", 16, 2, False),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_routed_matches_dense_mask(case):
    b, t, s, h, kh, heads, cb, cap, causal = case
    hx = {"q": h, "kv": kh, "one": 1}[heads]
    q_offset = s - t
    bits = random_bits(np.random.default_rng(0), b, hx, t, s, cb, cap, q_offset, causal)
    pattern = P.TokenBlockMask(
        jnp.asarray(bits),
        row_block=1,
        col_block=cb,
        group=h // hx,
        causal=causal,
        row_capacity=cap,
    )
    mask = jnp.asarray(token_mask(pattern, bits, t, s, h, q_offset))
    assert (~mask.any(-1)).any(), "the case should include rows that attend nothing"
    q, k, v, cot = R.random_qkv(b, t, h, kh, 16, s=s, dv=8, seed=3)
    R.assert_close_to_ref(
        lambda q, k, v: routed_attention(q, k, v, pattern),
        lambda q, k, v: R.dense_ref(q, k, v, mask),
        q,
        k,
        v,
        cot,
    )


@pytest.mark.parametrize(
    "block_q, block_kv, col_block, kv_len", [(16, 16, 32, 100), (8, 16, 16, 64)]
)
def test_pair_tables_cover_every_pair_and_full_tiles_are_full(block_q, block_kv, col_block, kv_len):
    rng = np.random.default_rng(1)
    c = -(-kv_len // col_block)
    cells = np.sort(rng.choice(np.arange(c + 1), size=(3, 53), p=None), axis=1)  # c: empty slot
    sp = routed._pair_sparsity(jnp.asarray(cells), c, col_block, kv_len, block_q, block_kv)
    q_ids = np.where(cells < c, cells, -1)
    mask = q_ids[:, None, :, None] == (np.arange(kv_len) // col_block)[None, None, None, :]
    R.assert_lists_cover_mask(sp, mask, exact=False)
    # Key-major lists: every tile holding a pair of the key tile's block is listed.
    want = R.tile_codes_of_mask(mask, block_q, block_kv)[:, 0]  # [F, Tb, Sb]
    q_idx, q_cnt, q_full = (np.asarray(x)[:, 0] for x in (sp.q_indices, sp.q_counts, sp.q_full))
    for f, j in np.ndindex(q_cnt.shape):
        listed = set(q_idx[f, j, : q_cnt[f, j]].tolist())
        assert listed == set(np.flatnonzero(want[f, :, j]).tolist())
        for e in range(q_cnt[f, j]):
            assert not q_full[f, j, e] or want[f, q_idx[f, j, e], j] == 2


def test_routed_only_for_per_token_selections_with_a_capacity():
    q, k, v, _ = R.random_qkv(1, 8, 2, 2, 8)
    bits = jnp.ones((1, 2, 8, 2), bool)

    def applies(**kw):
        pattern = P.TokenBlockMask(bits, col_block=4, **kw)
        call = call_lib.Call(
            q=q,
            k=k,
            v=v,
            pattern=pattern,
            sparsity=None,
            q_segment_ids=None,
            kv_segment_ids=None,
            scale=1.0,
            logits_soft_cap=None,
            q_offset=0,
            config=js.Config(),
        )
        return routed.applies(call)

    assert applies(row_capacity=2)
    assert not applies()  # no static bound: the union lists and an in-tile mask instead
    with pytest.raises(ValueError, match="row_capacity=-1 must be >= 0"):
        P.TokenBlockMask(bits, col_block=4, row_capacity=-1)


@pytest.mark.parametrize(
    "implementation, t, d, block_size",
    [
        ("pallas_gpu", 256, 64, 64),  # Mosaic GPU interpret mode
        ("pallas_tpu", 512, 128, 128),  # Pallas TPU interpret mode (tiles of 128)
    ],
)
def test_moba_on_the_kernels_in_interpret_mode(implementation, t, d, block_size):
    """MoBA through the routed path on a kernel backend equals the XLA path."""
    q, k, v, cot = R.random_qkv(1, t, 2, 1, d, seed=5, dtype=jnp.bfloat16)
    pattern = P.MoBA(block_size=block_size, top_k=2)

    def fn(implementation, config=None):
        return lambda q, k, v: js.attention(
            q,
            k,
            v,
            pattern=pattern,
            implementation=implementation,
            config=config,
            return_lse=True,
        )

    R.assert_close_to_ref(
        fn(implementation, js.Config(interpret=True)), fn("xla"), q, k, v, cot, tol=2e-2
    )


@pytest.mark.gpu
@pytest.mark.parametrize("t, block_size, top_k", [(8192, 512, 3), (4096, 256, 4)])
def test_moba_kernels_on_the_gpu(t, block_size, top_k):
    """MoBA on the H100 through the routed kernels, against the dense f32 mask of its bits."""
    from jaxsparse.patterns.dynamic import moba

    q, k, v, cot = R.random_qkv(1, t, 4, 2, 128, seed=6, dtype=jnp.bfloat16)
    bits = np.asarray(
        R.jitted(moba.moba_select, q, k, block_size=block_size, top_k=top_k, q_offset=0)
    )
    sel = np.take(bits, np.arange(t) // block_size, axis=-1)
    mask = jnp.asarray(sel & R.causal_np(t, t, 0)[None, None])
    pattern = P.MoBA(block_size=block_size, top_k=top_k)
    R.assert_close_to_ref(
        lambda q, k, v: js.attention(
            q, k, v, pattern=pattern, implementation="pallas_gpu", return_lse=True
        ),
        lambda q, k, v: R.dense_ref(q, k, v, mask),
        q,
        k,
        v,
        cot,
        tol=2e-2,
    )


@pytest.mark.gpu
def test_nsa_kernels_on_the_gpu_match_the_xla_path():
    """`jaxsparse.nsa` on the kernels: each branch against the XLA path, given one selection.

    The top-n choice is discontinuous: importance computed in bfloat16 by two
    backends can order near-equal blocks differently, so the outputs are not
    compared end to end. Instead: branches 1 and 3 (same inputs) directly; the
    kernels' selection is checked to be a top-n of the float32 importance up to
    bfloat16 rounding; branch 2 given that selection, with every gradient, against
    the XLA path given the same selection.
    """
    import jax

    from jaxsparse.methods import NSAConfig, nsa_compress, nsa_selection

    b, t, h, kh, d = 1, 4096, 4, 1, 128
    q, k, v, cot = R.random_qkv(b, t, h, kh, d, seed=7, dtype=jnp.bfloat16)
    cfg = NSAConfig()
    gates = jax.nn.sigmoid(jax.random.normal(jax.random.key(8), (b, t, h, 3)))
    k_cmp, v_cmp = (
        nsa_compress.mean_compress(x, kernel_size=cfg.kernel_size, stride=cfg.stride)
        for x in (k, v)
    )

    def branches(implementation):
        return jax.jit(
            lambda q, k, v: js.nsa(
                q,
                k,
                v,
                gates,
                k_cmp=k_cmp,
                v_cmp=v_cmp,
                config=cfg,
                implementation=implementation,
                return_branches=True,
            )[1]
        )(q, k, v)

    gpu, xla = branches("pallas_gpu"), branches("xla")
    for name in ("o_cmp", "o_win", "lse_cmp"):
        err = oracle.rel_err(getattr(gpu, name), getattr(xla, name))
        assert err < 1e-2, f"{name}: relative error {err:.3g}"

    # The selection: a top-n of the float32 importance, up to bfloat16 rounding.
    imp = np.asarray(
        nsa_selection.block_importance(
            q.astype(jnp.float32),
            jnp.moveaxis(xla.lse_cmp, 1, 2),
            k_cmp.astype(jnp.float32),
            jnp.arange(t),
            kernel_size=cfg.kernel_size,
            stride=cfg.stride,
            block_size=cfg.block_size,
            num_blocks=t // cfg.block_size,
            scale=d**-0.5,
        )
    )[0, 0]  # [T, blocks]
    bits = np.asarray(gpu.selection.bits)[0, 0]
    own = np.arange(t) // cfg.block_size
    j = np.arange(bits.shape[1])
    visible = j[None] <= own[:, None]
    forced = (j[None] < cfg.init_blocks) | (
        (own[:, None] - j[None] >= 0) & (own[:, None] - j[None] < cfg.local_blocks)
    )
    assert (bits <= visible).all()
    assert (bits.sum(1) == np.minimum(cfg.top_n, visible.sum(1))).all()
    assert (bits | ~forced).all()
    chosen = np.where(bits & ~forced, imp, np.inf).min(1)
    passed_over = np.where(visible & ~bits, imp, -np.inf).max(1)
    slack = 1e-2 * imp.max(1) + 1e-6  # bfloat16 importance: ~2^-8 relative
    assert (chosen >= passed_over - slack).all()

    # Branch 2 given the kernels' selection, forward and gradients.
    def selected(implementation):
        return lambda q, k, v: js.attention(
            q, k, v, pattern=gpu.selection, implementation=implementation, return_lse=True
        )

    R.assert_close_to_ref(selected("pallas_gpu"), selected("xla"), q, k, v, cot, tol=2e-2)

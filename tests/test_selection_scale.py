"""Every content-aware selection at 16k tokens (tiny heads): the widths the methods use.

The oracle tests run at a few hundred tokens, where rows hold tens of blocks.
At 16k, BlockTopK and Seer rank 256 blocks and VerticalSlash 16,384 columns,
and the top-k dispatch once recursed without end there (seen on the H200 at
16k and 64k, 2026-12-03). Each selection runs under jit and its counts are
checked against what the method promises.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse.methods import NSAConfig, nsa_compress, nsa_selection, seer
from jaxsparse.patterns.dynamic import block_topk, flex_prefill, moba, vertical_slash

T, H, K, D = 16384, 2, 1, 64


@pytest.fixture(scope="module")
def qk():
    q = jax.random.normal(jax.random.key(0), (1, T, H, D), jnp.float32)
    k = jax.random.normal(jax.random.key(1), (1, T, K, D), jnp.float32)
    return q, k


def test_block_topk_keeps_top_k_of_its_visible_blocks(qk):
    bits = jax.jit(block_topk.block_topk_select, static_argnames=("block_size", "top_k"))(
        *qk, block_size=64, top_k=100, q_offset=0
    )
    rows = np.arange(T // 64)
    counts = np.asarray(bits).sum(-1)
    np.testing.assert_array_equal(counts, np.broadcast_to(np.minimum(100, rows + 1), counts.shape))


@pytest.mark.parametrize("top_k", [3, 12])  # 12 of 32 chunks; 3 of 32 (the paper's 8k setting)
def test_moba_keeps_top_k_chunks_or_all_past_ones(qk, top_k):
    bits = jax.jit(lambda q, k: moba.moba_select(q, k, block_size=512, top_k=top_k, q_offset=0))(
        *qk
    )
    own = np.arange(T) // 512
    counts = np.asarray(bits).sum(-1)
    np.testing.assert_array_equal(counts, np.broadcast_to(np.minimum(top_k, own + 1), counts.shape))


def test_vertical_slash_keeps_its_columns_and_diagonals(qk):
    p = P.VerticalSlash()
    vert, slash = jax.jit(
        lambda q, k: vertical_slash.vertical_slash_select(
            q,
            k,
            vertical_size=p.vertical_size,
            slash_size=p.slash_size,
            last_q=p.last_q,
            init_columns=p.init_columns,
            local_diagonals=p.local_diagonals,
            q_offset=0,
        )
    )(*qk)
    assert (np.asarray(vert).sum(-1) == max(p.vertical_size, p.init_columns)).all()
    assert (np.asarray(slash).sum(-1) == max(p.slash_size, p.local_diagonals)).all()
    assert np.asarray(vert)[..., : p.init_columns].all()
    assert np.asarray(slash)[..., : p.local_diagonals].all()


def test_flex_prefill_keeps_the_first_block_and_the_diagonal(qk):
    p = P.FlexPrefill()
    bits, _ = jax.jit(
        lambda q, k: flex_prefill.flex_prefill_select(
            q,
            k,
            gamma=p.gamma,
            tau=p.tau,
            min_budget=p.min_budget,
            max_budget=p.max_budget,
            block_size=p.block_size,
            q_offset=0,
        )
    )(*qk)
    bits = np.asarray(bits)
    nb = T // p.block_size
    assert bits[..., 0].all() and bits[..., np.arange(nb), np.arange(nb)].all()
    assert not np.triu(bits, 1).any()  # block-causal
    lo = math.ceil(p.min_budget / p.block_size)
    assert (bits.sum(-1)[..., lo:] >= lo).all()  # every head keeps at least its minimum budget


def test_seer_top_ratio_keeps_its_share_of_blocks():
    sb = T // 64
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(2), (1, H, sb, sb)), axis=-1)
    keep = jax.jit(
        lambda p: seer.gate_block_mask(p, q_len=T, kv_len=T, block_size=64, nz_ratio=0.1)
    )(probs)
    n = max(1, round((1 - math.sqrt(0.9)) * sb))
    counts = np.asarray(keep).sum(-1)[0, :, : sb - 2]  # the last two rows are dense
    rows = np.arange(sb - 2)
    # The top n visible blocks, or every one; the diagonal is added when it lost.
    assert ((counts == np.minimum(n, rows + 1)) | (counts == n + 1)).all()


def test_nsa_selects_top_n_blocks_per_token(qk):
    q, k = qk
    cfg = NSAConfig()
    k_cmp = nsa_compress.mean_compress(k, kernel_size=cfg.kernel_size, stride=cfg.stride)

    @jax.jit
    def bits(q, k_cmp):
        _, lse = js.attention(
            q, k_cmp, k_cmp, pattern=P.CompressedCausal(cfg.kernel_size, cfg.stride),
            q_offset=0, return_lse=True,
        )  # fmt: skip
        return nsa_selection.nsa_select(
            q, k_cmp, lse, kv_len=T, kernel_size=cfg.kernel_size, stride=cfg.stride,
            block_size=cfg.block_size, top_n=cfg.top_n, init_blocks=cfg.init_blocks,
            local_blocks=cfg.local_blocks, scale=D**-0.5, q_offset=0,
        )  # fmt: skip

    got = np.asarray(bits(q, k_cmp))  # [B, K, T, blocks]
    own = np.arange(T) // cfg.block_size
    counts = got.sum(-1)
    np.testing.assert_array_equal(
        counts, np.broadcast_to(np.minimum(cfg.top_n, own + 1), counts.shape)
    )
    assert got[..., 0].all() and got[0, 0, np.arange(T), own].all()  # initial and own block

"""`jaxsparse.nsa`: Native Sparse Attention (Yuan et al., arXiv 2502.11089), functional form.

Three branches over the same queries, combined by per-token, per-head gates:

  1. compressed: attention to compressed keys/values (one token per window of
     `kernel_size` keys, stride `stride`), visible once the whole window is past;
  2. selected: attention to the `top_n` blocks of `block_size` keys with the
     highest importance, read from branch 1's probabilities, shared by the
     query heads of a GQA group, the first `init_blocks` and the
     `local_blocks` most recent blocks forced;
  3. sliding window: the `window` most recent keys.

`out = g_cmp * o_cmp + g_slc * o_slc + g_win * o_win`; each branch has its
own softmax. Everything is differentiable except the top-n choice (as in the
paper): gradients reach q, k, v through all three branches, the compressed
keys/values (hence the compressor) through branch 1, and the gates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxsparse.methods import merge, nsa_compress, nsa_selection
from jaxsparse.ops import api, validate
from jaxsparse.patterns import base
from jaxsparse.patterns.causal import Causal
from jaxsparse.patterns.compressed_causal import CompressedCausal
from jaxsparse.patterns.dynamic import common, token_block_mask
from jaxsparse.patterns.sliding_window import SlidingWindow
from jaxsparse.selection import ranges


@dataclasses.dataclass(frozen=True, kw_only=True)
class NSAConfig:
    """NSA's static hyper-parameters (paper defaults), validated on construction.

    Attributes:
      kernel_size: compression window l (32).
      stride: compression stride d (16); divides kernel_size and block_size.
      block_size: selection block l' (64).
      top_n: selected blocks per token, forced ones included (16).
      init_blocks: leading blocks always selected (1).
      local_blocks: most recent blocks always selected, the token's own
        included (2).
      window: sliding-window length w (512): keys `(t - w, t]`.
    """

    kernel_size: int = 32
    stride: int = 16
    block_size: int = 64
    top_n: int = 16
    init_blocks: int = 1
    local_blocks: int = 2
    window: int = 512

    def __post_init__(self):
        for name in ("kernel_size", "stride", "block_size", "top_n", "window"):
            base.check_int(name, getattr(self, name), minimum=1, owner="NSA")
        for name in ("init_blocks", "local_blocks"):
            base.check_int(name, getattr(self, name), minimum=0, owner="NSA")
        if self.kernel_size % self.stride or self.block_size % self.stride:
            raise ValueError(
                f"NSA: stride={self.stride} must divide kernel_size={self.kernel_size} and "
                f"block_size={self.block_size} (compressed windows map onto selection blocks by "
                "whole strides); e.g. kernel_size=32, stride=16, block_size=64."
            )
        if self.top_n < self.init_blocks + self.local_blocks:
            raise ValueError(
                f"NSA: top_n={self.top_n} cannot hold the {self.init_blocks} initial + "
                f"{self.local_blocks} local forced blocks; raise top_n or force fewer blocks."
            )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NSABranches:
    """Per-branch results of `nsa(..., return_branches=True)`.

    o_cmp / o_slc / o_win `[B, T, H, Dv]`; lse_cmp `[B, H, T]`; selection: the
    `TokenBlockMask` of branch 2 (bits `[B, K, T, ceil(S / block_size)]`).
    """

    o_cmp: Any
    o_slc: Any
    o_win: Any
    lse_cmp: Any
    selection: Any


def _check(q, k, v, gates, k_cmp, v_cmp, cfg: NSAConfig):
    if not isinstance(cfg, NSAConfig):
        raise TypeError(
            f"nsa: config must be an NSAConfig, got {type(cfg).__name__}; e.g. "
            "config=NSAConfig(top_n=8)."
        )
    validate.check_batched_qkv("nsa", q, k, v)
    for name, x in (("k_cmp", k_cmp), ("v_cmp", v_cmp)):
        if not hasattr(x, "dtype") or x.dtype != q.dtype:
            raise TypeError(
                f"nsa: {name} has dtype {getattr(x, 'dtype', type(x).__name__)}, q/k/v have "
                f"{q.dtype}; cast it, e.g. {name}.astype(q.dtype)."
            )
    if not hasattr(gates, "dtype") or not jnp.issubdtype(gates.dtype, jnp.floating):
        raise TypeError(
            f"nsa: gates must be a float array [B, T, H, 3], got "
            f"{getattr(gates, 'dtype', type(gates).__name__)}; e.g. jax.nn.sigmoid(logits)."
        )
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    nc = nsa_compress.num_compressed(s, cfg.kernel_size, cfg.stride)
    if tuple(gates.shape) != (b, t, h, 3):
        raise ValueError(
            f"nsa: gates have shape {tuple(gates.shape)}; expected [B, T, H, 3] = {[b, t, h, 3]} "
            "(compressed, selected, window), after a sigmoid."
        )
    for name, x, dim in (("k_cmp", k_cmp, d), ("v_cmp", v_cmp, v.shape[-1])):
        if tuple(x.shape) != (b, nc, kh, dim):
            raise ValueError(
                f"nsa: {name} has shape {tuple(x.shape)}; with S={s}, kernel_size="
                f"{cfg.kernel_size}, stride={cfg.stride} it must be [B, Nc, K, {dim}] = "
                f"{[b, nc, kh, dim]} (Nc = floor((S - kernel_size) / stride) + 1, or 0)."
            )
    common.check_causal_geometry("nsa", q_len=t, kv_len=s, q_offset=s - t)


def nsa(
    q,
    k,
    v,
    gates,
    *,
    k_cmp,
    v_cmp,
    config: NSAConfig | None = None,
    scale: float | None = None,
    implementation: str | None = None,
    attention_config: Any = None,
    return_branches: bool = False,
):
    """Native Sparse Attention over already projected (and rotated) q, k, v.

    Args:
      q: `[B, T, H, D]`; k: `[B, S, K, D]`; v: `[B, S, K, Dv]`; the queries are
        the last T positions (`q_offset = S - T`: prefill, chunked prefill).
      gates: `[B, T, H, 3]` branch gates in [0, 1] (compressed, selected, window).
      k_cmp, v_cmp: compressed keys / values `[B, Nc, K, D|Dv]` (see
        `jaxsparse.methods.nsa_compress`); token i covers keys
        `[i*stride, i*stride + kernel_size)`.
      config: `NSAConfig` (paper defaults when None).
      scale: logit scale of all branches (default `D ** -0.5`).
      implementation, attention_config: passed to `jaxsparse.attention`.
      return_branches: also return an `NSABranches`.

    Returns:
      `out [B, T, H, Dv]` in q's dtype (and `NSABranches`).

    Details:
      Sequences shorter than `kernel_size` have no compressed token: branch 1
      outputs 0. With at most `top_n` visible blocks (the query's own
      included), branch 2 is dense causal attention. Queries whose window
      is still empty cannot happen (a query always sees itself).
    """
    cfg = NSAConfig() if config is None else config
    _check(q, k, v, gates, k_cmp, v_cmp, cfg)
    b, t, h, d = q.shape
    s = k.shape[1]
    q_offset = s - t
    scale = d**-0.5 if scale is None else scale
    kw = dict(scale=scale, implementation=implementation, config=attention_config)

    # Branch 1: compressed keys, visible when their whole window is in the past.
    if k_cmp.shape[1]:
        o_cmp, lse_cmp = api.attention(
            q,
            k_cmp,
            v_cmp,
            pattern=CompressedCausal(kernel_size=cfg.kernel_size, stride=cfg.stride),
            q_offset=q_offset,
            return_lse=True,
            **kw,
        )
    else:
        o_cmp = jnp.zeros(q.shape[:3] + v.shape[-1:], q.dtype)
        lse_cmp = jnp.full((b, h, t), -jnp.inf, jnp.float32)

    # Branch 2: top-n blocks from branch 1's probabilities, shared by each GQA group.
    bits = nsa_selection.nsa_select(
        q,
        k_cmp,
        lse_cmp,
        kv_len=s,
        kernel_size=cfg.kernel_size,
        stride=cfg.stride,
        block_size=cfg.block_size,
        top_n=cfg.top_n,
        init_blocks=cfg.init_blocks,
        local_blocks=cfg.local_blocks,
        scale=scale,
        q_offset=q_offset,
        implementation=implementation,
        config=attention_config,
    )
    selection = token_block_mask.TokenBlockMask(
        bits,
        row_block=1,
        col_block=cfg.block_size,
        group=h // k.shape[2],
        causal=True,
        row_capacity=cfg.top_n - min(cfg.local_blocks, 1),  # the own block is forced
        q_offset=q_offset,
    )
    tile = common.natural_tile(cfg.block_size, s)
    bq, bk = common.tiles(attention_config, q_len=t, kv_len=s, block_q=tile, block_kv=tile)
    bound = min(-(-s // bk), bq * cfg.top_n * ranges.max_cells(cfg.block_size, bk, s))
    sparsity = token_block_mask.token_block_sparsity(
        selection,
        num_heads=h,
        block_q=bq,
        block_kv=bk,
        q_len=t,
        kv_len=s,
        q_offset=q_offset,
        max_kv_blocks=bound,
    )
    o_slc = api.attention(q, k, v, pattern=selection, sparsity=sparsity, q_offset=q_offset, **kw)

    # Branch 3: sliding window of the `window` most recent keys, (t - w, t].
    o_win = api.attention(
        q, k, v, pattern=Causal() & SlidingWindow(left=cfg.window - 1), q_offset=q_offset, **kw
    )

    out = merge.gated_sum((o_cmp, o_slc, o_win), gates).astype(q.dtype)
    if return_branches:
        return out, NSABranches(
            o_cmp=o_cmp, o_slc=o_slc, o_win=o_win, lse_cmp=lse_cmp, selection=selection
        )
    return out

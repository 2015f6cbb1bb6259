"""`jaxsparse.pyramid_attention`: PSA over a concatenated key pyramid, with an exact log bias.

PSA attends, for each key block, the level chosen by `Pyramid`: `K^h` is K
mean-pooled by `f = 2**(h-1)` (V likewise), and a pooled key stands for the
`c` keys it averages, so its logit gets `+ ln c` (`(h-1) ln 2` for whole
groups): the probability mass of a pooled block then matches the block it
replaces when its keys are alike.

Two exact implementations, neither needing a bias in the kernels:

* **Per level** (when S is a multiple of the coarsest factor, so every
  pooled key of level h averages `f = 2**(h-1)` keys): one block-sparse call
  per level over its pooled keys (`PooledLevel`; blocks of fewer than 64
  pooled keys padded to a tile), the level's blocks as the tile lists; the
  bias `ln f` is a constant per call, added to its lse, and the levels merge
  by log-sum-exp (disjoint key sets: one softmax). Head dim D: the GPU
  kernels run it, gradients included.
* **Concatenated** (otherwise: the last pooled key of a level averages fewer
  keys): the levels in one key sequence, the per-key bias through one extra
  feature, `q' = [q, 1]`, `k' = [k, ln(c) / scale]`, so
  `scale * q'.k' = scale * q.k + ln c`, and one call with `PyramidMask`.
  The head dim grows by one, which only the XLA path takes.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from jaxsparse.methods import merge
from jaxsparse.ops import api
from jaxsparse.patterns.dynamic import common, pyramid, pyramid_level, pyramid_mask
from jaxsparse.selection import pooling


def pyramid_kv(k, v, *, num_levels: int):
    """Concatenated pooled levels `[B, sum_h ceil(S / 2**(h-1)), K, D|Dv]` in k's dtype."""
    ks = [k] + [
        pooling.pool(k, 2 ** (h - 1), kind="mean", axis=1).astype(k.dtype)
        for h in range(2, num_levels + 1)
    ]
    vs = [v] + [
        pooling.pool(v, 2 ** (h - 1), kind="mean", axis=1).astype(v.dtype)
        for h in range(2, num_levels + 1)
    ]
    return jnp.concatenate(ks, axis=1), jnp.concatenate(vs, axis=1)


def with_log_bias(q, k_cat, counts: np.ndarray, scale: float):
    """`[q, 1]` and `[k, ln(count) / scale]`: logits gain exactly `ln(count)` per key."""
    ones = jnp.ones(q.shape[:-1] + (1,), q.dtype)
    bias = jnp.asarray(np.log(counts) / scale, k_cat.dtype)[None, :, None, None]
    bias = jnp.broadcast_to(bias, k_cat.shape[:-1] + (1,))
    return jnp.concatenate([q, ones], -1), jnp.concatenate([k_cat, bias], -1)


def pyramid_attention(
    q,
    k,
    v,
    *,
    pattern: pyramid.Pyramid | None = None,
    scale: float | None = None,
    q_offset: int | None = None,
    implementation: str | None = None,
    config=None,
    return_lse: bool = False,
    return_levels: bool = False,
    levels=None,
):
    """Pyramid Sparse Attention: each key block at its importance-chosen pooling level.

    Args:
      q: `[B, T, H, D]`; k: `[B, S, K, D]`; v: `[B, S, K, Dv]`.
      pattern: a `jaxsparse.patterns.Pyramid` (defaults when None).
      scale: logit scale (default `D ** -0.5`).
      q_offset: position of query 0 (default S - T); matters when causal.
      implementation, config: as in `jaxsparse.attention` (config tiles the
        concatenated keys).
      return_lse: also return lse `[B, H, T]`.
      return_levels: also return the level map `[B, H, Tb, Sb]`.
      levels: a precomputed level map (`pattern.levels(q, k, q_offset=...)`),
        e.g. to time the selection apart from the attention.

    Returns:
      `out [B, T, H, Dv]` (and lse, levels).
    """
    pattern = pyramid.Pyramid() if pattern is None else pattern
    if not isinstance(pattern, pyramid.Pyramid):
        raise TypeError(f"pyramid_attention: pattern must be a Pyramid, got {pattern!r}.")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "pyramid_attention: q, k, v must be [B, T, H, D], [B, S, K, D], "
            f"[B, S, K, Dv]; got {q.shape}, {k.shape}, {v.shape}."
        )
    t, s, d = q.shape[1], k.shape[1], q.shape[-1]
    q_offset = s - t if q_offset is None else q_offset
    scale = d**-0.5 if scale is None else scale
    if levels is None:
        levels = pattern.levels(q, k, q_offset=q_offset)
    kw = dict(scale=scale, q_offset=q_offset, implementation=implementation, config=config)
    if s % 2 ** (pattern.num_levels - 1) == 0:
        out, lse = _per_level(q, k, v, levels, pattern=pattern, **kw)
    else:
        out, lse = _concatenated(q, k, v, levels, pattern=pattern, **kw)
    result = (out,) + ((lse,) if return_lse else ()) + ((levels,) if return_levels else ())
    return result[0] if len(result) == 1 else result


def _per_level(q, k, v, levels, *, pattern, scale, q_offset, implementation, config):
    """One call per level over its pooled keys, `+ ln f` on its lse, merged by log-sum-exp."""
    t, s, bs = q.shape[1], k.shape[1], pattern.block_size
    bq = _dividing(getattr(config, "block_q", None), bs) or _pow2_tile(bs)
    pad_to = 64 if bs >= 64 else 1  # blocks of at least one GPU kernel tile
    outs, lses = [], []
    for lev in range(1, pattern.num_levels + 1):
        f = 2 ** (lev - 1)
        p = pyramid_level.PooledLevel(
            factor=f, block_size=bs, kv_len=s, pad_to=pad_to, causal=pattern.causal
        )
        lay = p.layout
        bk = _dividing(getattr(config, "block_kv", None), lay.stride) or _pow2_tile(lay.stride)
        sp = pyramid_level.level_sparsity(
            levels, lev, p, num_heads=q.shape[2], q_len=t, q_offset=q_offset, block_q=bq,
            block_kv=bk,
        )  # fmt: skip
        out, lse = api.attention(
            q,
            lay.keys(k),
            lay.keys(v),
            pattern=p,
            sparsity=sp,
            scale=scale,
            q_offset=q_offset,
            implementation=implementation,
            config=config,
            return_lse=True,
        )
        outs.append(out)
        lses.append(lse + math.log(f))
    return merge.lse_merge(outs, lses)


def _dividing(tile, n: int):
    return tile if tile and n % tile == 0 else None


def _pow2_tile(n: int) -> int:
    """The largest power of two up to 128 dividing n."""
    return min(128, n & -n)


def _concatenated(q, k, v, levels, *, pattern, scale, q_offset, implementation, config):
    """One call over the concatenated levels with the bias as an extra feature."""
    t, s = q.shape[1], k.shape[1]
    mask = pyramid_mask.PyramidMask(
        levels,
        block_size=pattern.block_size,
        num_levels=pattern.num_levels,
        kv_len=s,
        causal=pattern.causal,
        q_offset=q_offset,
    )
    k_cat, v_cat = pyramid_kv(k, v, num_levels=pattern.num_levels)
    q_aug, k_aug = with_log_bias(q, k_cat, mask.layout.columns["count"], scale)
    bq, bk = common.tiles(
        config,
        q_len=t,
        kv_len=k_cat.shape[1],
        block_q=common.natural_tile(pattern.block_size, t),
        block_kv=min(128, pattern.block_size),
    )
    sp = pyramid_mask.pyramid_sparsity(
        mask, num_heads=q.shape[2], q_len=t, q_offset=q_offset, block_q=bq, block_kv=bk
    )
    out, lse = api.attention(
        q_aug,
        k_aug,
        v_cat,
        pattern=mask,
        sparsity=sp,
        scale=scale,
        q_offset=q_offset,
        implementation=implementation,
        config=config,
        return_lse=True,
    )
    return out, lse

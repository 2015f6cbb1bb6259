"""`jaxsparse.pyramid_attention`: PSA over a pyramid of pooled keys, with an exact log bias.

PSA attends, for each key block, the level chosen by `Pyramid`: `K^h` is K
mean-pooled by `f = 2**(h-1)` (V likewise), and a pooled key stands for the
`c` keys it averages, so its logit gets `+ ln c` (`(h-1) ln 2` for whole
groups): the probability mass of a pooled block then matches the block it
replaces when its keys are alike.

No kernel needs a bias: each level's whole pooled keys (all `c = f`) are
one block-sparse call (`PooledLevel`; blocks of fewer than 64 pooled keys
padded to a tile), the level's blocks as the tile lists and `ln f` added to
its lse. When S is not a multiple of f, the level's last pooled key
averages `c = S mod f` keys; those tails (at most one per level) are scored
together in a small dense step with their own `ln c`. The parts are disjoint
key sets, so they merge exactly by log-sum-exp into one softmax. Head dim D:
the GPU kernels run the levels, gradients included. (`PyramidMask` over
`pyramid_kv` states the same selection as one mask over the concatenated
levels.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.methods import merge
from jaxsparse.ops import api
from jaxsparse.patterns.dynamic import pyramid, pyramid_level
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
      implementation, config: as in `jaxsparse.attention`, for each level's
        call (config's tiles are used where they divide the block and the
        level's padded block).
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
    outs, lses = _per_level(q, k, v, levels, pattern=pattern, **kw)
    tails = _ragged_tails(q, k, v, levels, pattern=pattern, scale=scale, q_offset=q_offset)
    if tails is not None:
        outs.append(tails[0])
        lses.append(tails[1])
    out, lse = merge.lse_merge(outs, lses)
    result = (out,) + ((lse,) if return_lse else ()) + ((levels,) if return_levels else ())
    return result[0] if len(result) == 1 else result


def _per_level(q, k, v, levels, *, pattern, scale, q_offset, implementation, config):
    """Per level, `(out, lse + ln f)` of one call over its whole pooled keys."""
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
    return outs, lses


def _dividing(tile, n: int):
    return tile if tile and n % tile == 0 else None


def _pow2_tile(n: int) -> int:
    """The largest power of two up to 128 dividing n."""
    return min(128, n & -n)


def _ragged_tails(q, k, v, levels, *, pattern, scale, q_offset):
    """`(out, lse)` over the levels' shorter last pooled keys, or None when S has none.

    Level h's tail averages the last `S mod f` keys (`f = 2**(h-1)`), logit
    `+ ln(S mod f)`; a query row reads it when its query block chose level h
    for the tail's key block (and, causal, when key S - 1 is past). At most
    `num_levels - 1` keys: a dense float32 step, `[B, H, T, tails]` logits.
    """
    b, t, h, _ = q.shape
    s, kh = k.shape[1], k.shape[2]
    bs = pattern.block_size
    tails = [
        (lev, (s // f) * f, s % f)
        for lev, f in ((lev, 2 ** (lev - 1)) for lev in range(2, pattern.num_levels + 1))
        if s % f
    ]
    if not tails:
        return None
    # Pooled like the levels: a float32 mean, kept in the input dtype.
    k_t = jnp.stack([k[:, a:].astype(jnp.float32).mean(1).astype(k.dtype) for _, a, _ in tails], 1)
    v_t = jnp.stack([v[:, a:].astype(jnp.float32).mean(1).astype(v.dtype) for _, a, _ in tails], 1)
    group = h // kh
    qg = q.astype(jnp.float32).reshape(b, t, kh, group, q.shape[-1])
    logits = jnp.einsum("btkgd,bnkd->bkgtn", qg, k_t.astype(jnp.float32)).reshape(b, h, t, -1)
    bias = jnp.asarray(np.log([c for *_, c in tails]), jnp.float32)[None, None, None, :]
    logits = logits * scale + bias
    rows = jnp.arange(t) // bs
    chosen = jnp.stack([levels[:, :, rows, a // bs] == lev for lev, a, _ in tails], -1)
    live = jnp.broadcast_to(chosen, logits.shape)  # levels may have one head row
    if pattern.causal:
        live = live & (s - 1 <= q_offset + jnp.arange(t))[None, None, :, None]
    m = jnp.where(live, logits, -jnp.inf).max(-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.where(live, jnp.exp(jnp.where(live, logits, 0.0) - m), 0.0)
    total = e.sum(-1, keepdims=True)
    has = total > 0
    p = (e / jnp.where(has, total, 1.0)).reshape(b, kh, group, t, -1)
    out = jnp.einsum("bkgtn,bnkd->btkgd", p, v_t.astype(jnp.float32))
    lse = jnp.where(has, m + jnp.log(jnp.where(has, total, 1.0)), -jnp.inf)[..., 0]
    return out.reshape(b, t, h, v.shape[-1]), lse

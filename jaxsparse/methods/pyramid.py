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
averages `c = S mod f` keys; each such tail (at most one per level) is a
one-key dense step with its own `ln c` on its lse. The parts are disjoint
key sets, so they merge exactly by log-sum-exp into one softmax. Head dim D:
the GPU kernels run the levels, gradients included. (`PyramidMask` over
`pyramid_kv` states the same selection as one mask over the concatenated
levels.)
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxsparse.methods import merge
from jaxsparse.ops import api, validate
from jaxsparse.patterns.dynamic import common, pyramid, pyramid_level
from jaxsparse.reference import dense
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
        e.g. to time the selection apart from the attention: integers
        `[B, H, Tb, Sb]`, 0 to skip a block, else its level 1..L; any other
        value also skips it (values are not checked under jit).

    Returns:
      `out [B, T, H, Dv]` (and lse, levels).
    """
    pattern = pyramid.Pyramid() if pattern is None else pattern
    if not isinstance(pattern, pyramid.Pyramid):
        raise TypeError(f"pyramid_attention: pattern must be a Pyramid, got {pattern!r}.")
    validate.check_batched_qkv("pyramid_attention", q, k, v)
    t, s, d = q.shape[1], k.shape[1], q.shape[-1]
    q_offset = validate.check_q_offset(q_offset, t, s)
    scale = d**-0.5 if scale is None else scale
    if levels is None:
        levels = pattern.levels(q, k, q_offset=q_offset)
    else:
        _check_levels(levels, q, k, pattern)
    kw = dict(scale=scale, q_offset=q_offset, implementation=implementation, config=config)
    outs, lses = _per_level(q, k, v, levels, pattern=pattern, **kw)
    tail_outs, tail_lses = _ragged_tails(
        q, k, v, levels, pattern=pattern, scale=scale, q_offset=q_offset
    )
    out, lse = merge.lse_merge(outs + tail_outs, lses + tail_lses)
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


def _check_levels(levels, q, k, pattern) -> None:
    if not hasattr(levels, "dtype") or not jnp.issubdtype(levels.dtype, jnp.integer):
        raise TypeError(
            f"pyramid_attention: levels must be an integer array (0 skip, 1..{pattern.num_levels}"
            f" a level), got {getattr(levels, 'dtype', type(levels).__name__)}; build it with "
            "pattern.levels(q, k, q_offset=...)."
        )
    common.check_block_map(
        "pyramid_attention", "levels", levels, q_len=q.shape[1], kv_len=k.shape[1],
        block_size=pattern.block_size,
    )  # fmt: skip
    if tuple(levels.shape[:2]) != (q.shape[0], q.shape[2]):
        raise ValueError(
            f"pyramid_attention: levels has shape {tuple(levels.shape)}; it must be [B, H, Tb, "
            f"Sb] with B={q.shape[0]}, H={q.shape[2]}."
        )


def _dividing(tile, n: int):
    return tile if tile and n % tile == 0 else None


def _pow2_tile(n: int) -> int:
    """The largest power of two up to 128 dividing n."""
    return min(128, n & -n)


def _ragged_tails(q, k, v, levels, *, pattern, scale, q_offset):
    """Per level with a shorter last pooled key (S not a multiple of f), `(out, lse + ln c)`
    of attention to that one key, which averages the last `c = S mod f` keys.

    A query row reads level h's tail when its query block chose level h for
    the tail's key block (and, causal, when key S - 1 is past). One key per
    call, so its bias is a constant on the lse, as for the levels; the dense
    float32 attention of `jaxsparse.reference` computes it (`[B, H, T, 1]`).
    """
    t, s = q.shape[1], k.shape[1]
    rows = jnp.arange(t) // pattern.block_size
    outs, lses = [], []
    for lev in range(2, pattern.num_levels + 1):
        c = s % 2 ** (lev - 1)
        if not c:
            continue
        # Pooled as the levels' keys are (`LevelLayout.keys`), kept in the input dtype.
        k_t, v_t = (pooling.pool(x[:, s - c :], c, kind="mean", axis=1).astype(x.dtype)
                    for x in (k, v))  # fmt: skip
        mask = (levels[:, :, rows, (s - c) // pattern.block_size] == lev)[..., None]
        if pattern.causal:
            mask = mask & (s - 1 <= q_offset + jnp.arange(t))[None, None, :, None]
        out, lse = dense.attention_reference(q, k_t, v_t, mask, scale=scale)
        outs.append(out)
        lses.append(lse + math.log(c))
    return outs, lses

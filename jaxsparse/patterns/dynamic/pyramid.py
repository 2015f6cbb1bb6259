"""`Pyramid`: PSA's level choice (Pyramid Sparse Attention, arXiv 2512.04025, Sec. 3).

Instead of keeping or dropping a key block, each (query block, key block)
pair reads the block at a pooling level chosen by its importance: blocks
are ranked by an estimated attention mass per query block, and a block whose
*preceding* cumulative mass (exclusive) is at most `thresholds[0]` is read at
full resolution, at most `thresholds[1]` pooled 2x, ... up to
`2**(L-1)`x; beyond `thresholds[-1]` it is skipped (PSA's
`thresholdbound` mode; the most important block is always full resolution).

Estimated importance: `softmax(scale * mean(Q_block) . mean(K_block))` over
the visible key blocks (a pooled, score-only estimate, ALGORITHMS.md P3; the
PSA code samples tokens instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import block_topk, common
from jaxsparse.selection import cumulative, estimate, pooling


def pyramid_select(
    q, k, *, block_size: int, thresholds: tuple[float, ...], causal: bool, q_offset: int
):
    """Levels int8 `[B, H, Tb, Sb]`: 0 skip, else 1..L (pooling `2**(level-1)`)."""
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    t, s, d = q.shape[1], k.shape[1], q.shape[-1]
    qm = pooling.pool(q, block_size, kind="mean", axis=1)
    km = pooling.pool(k, block_size, kind="mean", axis=1)
    tb, sb = qm.shape[1], km.shape[1]
    if causal:
        visible = block_topk.block_causal(
            q_len=t, kv_len=s, q_offset=q_offset, block_q=block_size, block_kv=block_size
        )
    else:
        visible = jnp.ones((tb, sb), bool)
    visible = visible[None, None]
    probs = estimate.masked_softmax(estimate.grouped_logits(qm, km) * d**-0.5, visible)
    _, before = cumulative.sorted_cumsum(probs)
    level = jnp.ones(probs.shape, jnp.int8)
    for tau in thresholds[:-1]:
        level = level + (before > tau).astype(jnp.int8)
    keep = (before <= thresholds[-1]) & visible
    if causal:  # unaligned chunks: the key block of each query block's first row, full
        forced = block_topk.straddled_blocks(
            q_len=t, kv_len=s, q_offset=q_offset, block_size=block_size
        )[None, None]
        level = jnp.where(forced, jnp.int8(1), level)
        keep = keep | forced
    return jnp.where(keep, level, jnp.int8(0))


@base.pattern_dataclass
class Pyramid(common.DynamicPattern):
    """PSA: each key block read at a pooling level set by its importance (multi-source keys).

    ```
    levels of one query block row, most important first:
    block:  j3   j0   j5   j1   j2   j4
    level:  1x   1x   2x   4x   8x   skip     (cumulative mass bands)
    ```

    Use it through `jaxsparse.pyramid_attention(q, k, v, pattern=Pyramid(...))`:
    a pattern cannot add key sources, so that function pools the key levels,
    runs each as its own block-sparse attention with its pooled keys'
    log-multiplicity bias added exactly, and merges them by log-sum-exp.

    Args:
      block_size: query and key block (PSA: 128); divisible by `2**(L-1)`.
      thresholds: cumulative-mass bounds of levels 1..L, non-decreasing, in
        (0, 1] (Wan2.1-1.3B config: 0.5, 0.6, 0.7, 0.8; mass beyond the last
        is skipped; use 1.0 last to never skip).
      causal: PSA's causal variant; a pooled key is visible when the last key
        it pools is in the past. Default bidirectional (video DiTs).

    Details:
      Sequences of one block are dense at full resolution (a row's best
      block is always level 1). Causal with a `q_offset` not a multiple of
      `block_size`, each query block also reads the key block of its first
      position at full resolution (`block_topk.straddled_blocks`): a block
      that starts after some of its rows could otherwise be all they get.
    """

    block_size: int = 128
    thresholds: tuple = (0.5, 0.6, 0.7, 0.8)
    causal: bool = False

    def __post_init__(self):
        base.check_int("block_size", self.block_size, minimum=1, owner="Pyramid")
        th = self.thresholds
        if isinstance(th, np.ndarray) and th.ndim == 1:
            th = th.tolist()
        if not isinstance(th, (tuple, list)) or not th:
            raise TypeError(
                f"Pyramid: thresholds must be a non-empty tuple of fractions, one per level, "
                f"got {th!r}; e.g. thresholds=(0.5, 0.6, 0.7, 0.8)."
            )
        for i, x in enumerate(th):
            common.check_fraction("Pyramid", f"thresholds[{i}]", x)
        object.__setattr__(self, "thresholds", tuple(float(x) for x in th))
        if not isinstance(self.causal, (bool, np.bool_)):
            raise TypeError(f"Pyramid: causal must be a bool, got {self.causal!r}.")
        if any(b < a for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)):
            raise ValueError(f"Pyramid: thresholds={self.thresholds} must be non-decreasing.")
        factor = 2 ** (self.num_levels - 1)
        if self.block_size % factor:
            raise ValueError(
                f"Pyramid: block_size={self.block_size} must be divisible by the coarsest "
                f"pooling 2**(levels-1)={factor}; use fewer thresholds or a larger block."
            )

    @property
    def num_levels(self) -> int:
        return len(self.thresholds)

    def bind(self, *, q_len, kv_len, q_offset, num_heads):
        raise TypeError(
            "Pyramid reads extra pooled key sources, which a pattern cannot add: call "
            "jaxsparse.pyramid_attention(q, k, v, pattern=Pyramid(...)) instead of "
            "jaxsparse.attention."
        )

    def select(self, q, k, *, q_offset, config):
        raise TypeError("Use jaxsparse.pyramid_attention with a Pyramid pattern.")

    def levels(self, q, k, *, q_offset: int):
        """The level map `[B, H, Tb, Sb]` for queries q `[B, T, H, D]` and keys k `[B, S, K, D]`."""
        if self.causal:
            common.check_causal_geometry(
                "Pyramid(causal=True)", q_len=q.shape[1], kv_len=k.shape[1], q_offset=q_offset
            )
        return pyramid_select(
            q,
            k,
            block_size=self.block_size,
            thresholds=self.thresholds,
            causal=self.causal,
            q_offset=q_offset,
        )

    def __repr__(self):
        return f"Pyramid(block_size={self.block_size}, thresholds={self.thresholds})"

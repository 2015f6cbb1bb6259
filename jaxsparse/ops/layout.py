"""Padding to whole tiles, shared by every backend."""

from __future__ import annotations

import math

import jax.numpy as jnp

# Padded query and key positions get different segment ids, so padding never
# matches anything (key padding is also masked by position).
Q_PAD_SEGMENT, KV_PAD_SEGMENT = -1, -2


def pad_axis(x, axis: int, multiple: int, value=0):
    """Pad `x` along `axis` up to a multiple of `multiple`."""
    n = x.shape[axis]
    extra = math.ceil(n / multiple) * multiple - n
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def pad_inputs(call, block_q: int, block_kv: int):
    """q, k, v and segment ids padded to whole tiles along the sequence axes."""
    q = pad_axis(call.q, 1, block_q)
    k = pad_axis(call.k, 1, block_kv)
    v = pad_axis(call.v, 1, block_kv)
    segs = (None, None)
    if call.has_segments:
        segs = (
            pad_axis(call.q_segment_ids, 1, block_q, Q_PAD_SEGMENT),
            pad_axis(call.kv_segment_ids, 1, block_kv, KV_PAD_SEGMENT),
        )
    return q, k, v, segs

"""Jensen-Shannon distance between distributions (FlexPrefill's pattern test)."""

from __future__ import annotations

import jax.numpy as jnp


def js_distance(p, q):
    """`sqrt(JS(p || q))` with natural logs, over the last axis; in `[0, sqrt(ln 2)]`.

    `p` and `q` are non-negative and each sums to 1 along the last axis.
    Zero entries contribute 0 (the `0 log 0 = 0` convention).
    """
    p = p.astype(jnp.float32)
    q = q.astype(jnp.float32)
    m = 0.5 * (p + q)

    def kl(a):
        safe = jnp.where(a > 0, a / jnp.where(m > 0, m, 1.0), 1.0)
        return jnp.where(a > 0, a * jnp.log(safe), 0.0).sum(-1)

    return jnp.sqrt(jnp.maximum(0.5 * kl(p) + 0.5 * kl(q), 0.0))

"""Forward pass of the XLA path for one head: online softmax over a tile list."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsparse.ops.xla import tiles


def forward_head(st: tiles.Static, pattern, head, q, k, v, qb, kb, code, q_seg, kv_seg):
    """Attention of one query head over its tile list.

    Args:
      q `[Tp, D]`, k `[Sp, D]`, v `[Sp, Dv]` (padded to whole tiles);
      qb, kb, code `[P]` work items (P a multiple of `st.chunk`);
      q_seg `[Tp]`, kv_seg `[Sp]` segment ids or None.

    Returns:
      out `[Tp, Dv]` float32 and lse `[Tp]` float32.
    """
    bq, bk = st.block_q, st.block_kv
    tb, sb = q.shape[0] // bq, k.shape[0] // bk
    qt = q.astype(jnp.float32).reshape(tb, bq, -1)
    kt = k.astype(jnp.float32).reshape(sb, bk, -1)
    vt = v.astype(jnp.float32).reshape(sb, bk, -1)
    qs = None if q_seg is None else q_seg.reshape(tb, bq)
    ks = None if kv_seg is None else kv_seg.reshape(sb, bk)

    def step(carry, item):
        m, l, acc = carry
        qi, ki, ci = item
        s, mask, _ = tiles.chunk_logits(
            st,
            pattern,
            head,
            qt[qi],
            kt[ki],
            qi,
            ki,
            ci,
            None if qs is None else qs[qi],
            None if ks is None else ks[ki],
        )
        s = jnp.where(mask, s, -jnp.inf)
        # Merge the chunk into the running max; several tiles may share a row.
        m_new = m.at[qi].max(s.max(-1))
        m_ref = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        alpha = jnp.exp(m - m_ref)
        p = jnp.exp(s - m_ref[qi][:, :, None])
        l = (l * alpha).at[qi].add(p.sum(-1))
        acc = (acc * alpha[..., None]).at[qi].add(jnp.einsum("cqk,ckd->cqd", p, vt[ki]))
        return (m_new, l, acc), None

    init = (
        jnp.full((tb, bq), -jnp.inf, jnp.float32),
        jnp.zeros((tb, bq), jnp.float32),
        jnp.zeros((tb, bq, vt.shape[-1]), jnp.float32),
    )
    items = tuple(x.reshape(-1, st.chunk) for x in (qb, kb, code))
    (m, l, acc), _ = jax.lax.scan(step, init, items)
    has_keys = l > 0
    l_safe = jnp.where(has_keys, l, 1.0)
    out = acc / l_safe[..., None]
    lse = jnp.where(has_keys, m + jnp.log(l_safe), -jnp.inf)
    return out.reshape(tb * bq, -1), lse.reshape(tb * bq)

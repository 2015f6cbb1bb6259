"""Dense references for the content-aware methods (ALGORITHMS.md section 0), and comparisons.

Each method's test builds an explicit token mask (and, for PSA, a bias) from
its algorithm description and compares the library's output, lse and every
gradient with autodiff of this plain jnp attention.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tests import oracle


def dense_ref(q, k, v, mask, bias=None, scale=None):
    """Attention in float32 with an explicit mask `[B|1, H|1, T, S]` (and additive bias).

    q `[B, T, H, D]`, k / v `[B, S, K, D]`; query head h uses key head
    `h // (H // K)`. Fully masked rows give output 0 and lse -inf.
    """
    b, t, h, d = q.shape
    g = h // k.shape[2]
    k = jnp.repeat(k.astype(jnp.float32), g, axis=2)
    v = jnp.repeat(v.astype(jnp.float32), g, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), k)
    s = s * (d**-0.5 if scale is None else scale)
    if bias is not None:
        s = s + bias
    s = jnp.where(mask, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m)
    l = p.sum(-1, keepdims=True)
    out = jnp.einsum("bhts,bshd->bthd", p / jnp.where(l > 0, l, 1.0), v)
    lse = jnp.where(l[..., 0] > 0, jnp.log(jnp.where(l > 0, l, 1.0))[..., 0] + m[..., 0], -jnp.inf)
    return out, lse


def random_qkv(b, t, h, kh, d, s=None, dv=None, seed=0, dtype=jnp.float32):
    s = t if s is None else s
    dv = d if dv is None else dv
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, t, h, d), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, s, kh, d), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, s, kh, dv), jnp.float32).astype(dtype)
    cot = jax.random.normal(ks[3], (b, t, h, dv), jnp.float32)
    return q, k, v, cot


def _loss_and_grads(fn, q, k, v, cot, extra=()):
    def loss(q, k, v, *extra):
        out, lse = fn(q, k, v, *extra)
        finite = jnp.where(jnp.isfinite(lse), lse, 0.0)
        return (out.astype(jnp.float32) * cot).sum() + 0.1 * finite.sum(), (out, lse)

    argnums = tuple(range(3 + len(extra)))
    (_, (out, lse)), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(
        q, k, v, *extra
    )
    return (out, lse) + tuple(grads)


def assert_close_to_ref(fn, ref_fn, q, k, v, cot, *, extra=(), tol=1e-5, jit=True):
    """`fn(q, k, v, *extra) -> (out, lse)` against `ref_fn`, forward and every gradient by name."""
    run = jax.jit(_loss_and_grads, static_argnums=0) if jit else _loss_and_grads
    got = run(fn, q, k, v, cot, extra)
    want = jax.jit(_loss_and_grads, static_argnums=0)(ref_fn, q, k, v, cot, extra)
    names = ("out", "lse", "dq", "dk", "dv") + tuple(f"d_extra{i}" for i in range(len(extra)))
    errors = {}
    for name, a, b in zip(names, got, want, strict=True):
        limit = tol if name in ("out", "lse") else 2 * tol
        errors[name] = err = oracle.rel_err(a, b)
        assert err <= limit, f"{name}: relative error {err:.3g} > {limit:.3g}"
    return errors


def jitted(f, *args, **static):
    """`f(*args, **static)` compiled once (selection functions take static keywords)."""
    return jax.jit(functools.partial(f, **static))(*args)


def block_to_token(bits, row_block, col_block, t, s):
    """Repeat a block mask `[..., R, C]` to tokens `[..., t, s]` (numpy)."""
    bits = np.asarray(bits)
    return np.repeat(np.repeat(bits, row_block, -2), col_block, -1)[..., :t, :s]


def causal_np(t, s, q_offset):
    return np.arange(s)[None, :] <= (q_offset + np.arange(t))[:, None]


def tile_codes_of_mask(mask, bq, bk):
    """Exact tile codes `[..., Tb, Sb]` of an element mask (numpy): 0 empty, 1 partial, 2 full."""
    mask = np.asarray(mask)
    t, s = mask.shape[-2:]
    tb, sb = -(-t // bq), -(-s // bk)
    out = np.zeros(mask.shape[:-2] + (tb, sb), np.int8)
    for i, j in np.ndindex(tb, sb):
        tile = mask[..., i * bq : (i + 1) * bq, j * bk : (j + 1) * bk]
        full = tile.all((-2, -1)) & (min((j + 1) * bk, s) - j * bk == bk)
        out[..., i, j] = np.where(tile.any((-2, -1)), np.where(full, 2, 1), 0)
    return out


def assert_lists_cover_mask(sp, mask, *, exact: bool):
    """Listed tiles contain every tile the mask touches (equal when `exact`); FULL means full."""
    codes = np.asarray(sp.to_dense())
    want = tile_codes_of_mask(mask, sp.block_q, sp.block_kv)
    want = np.broadcast_to(want, np.broadcast_shapes(want.shape, codes.shape))
    codes = np.broadcast_to(codes, want.shape)
    assert not ((want > 0) & (codes == 0)).any(), "a tile the mask touches is not listed"
    assert not ((codes == 2) & (want != 2)).any(), "a tile marked FULL is not full"
    if exact:
        np.testing.assert_array_equal(codes > 0, want > 0)


def over_leading_axis(fn, n: int = 2):
    """`fn(*args) -> pytree` run under `jax.vmap` over an extra leading axis: every
    argument `[B, ...]` split to `[n, B // n, ...]`, the outputs merged back to `[B, ...]`."""

    def run(*args):
        split = [oracle.split_leading(x, n) for x in args]
        return jax.tree.map(oracle.merge_leading, jax.vmap(fn)(*split))

    return run

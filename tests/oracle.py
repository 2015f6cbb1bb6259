"""Shared test machinery: random inputs, tolerances, and the oracle comparison.

Every backend is checked the same way: forward output and lse, and each
gradient by name (dq, dk, dv), against autodiff of the dense f32 oracle
(`implementation="reference"`), with one tolerance table per dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxsparse as js

# Relative Frobenius error ||x - ref|| / ||ref|| allowed per dtype; gradients get 2x.
TOLERANCE = {
    jnp.float32: 1e-5,
    jnp.bfloat16: 2e-2,
    jnp.float16: 4e-3,
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One attention problem of the shared suite."""

    pattern: Any
    b: int = 2
    t: int = 37
    s: int | None = None  # None: same as t
    h: int = 4
    k: int = 2
    d: int = 16
    dv: int | None = None
    dtype: Any = jnp.float32
    soft_cap: float | None = None
    segments: bool = False
    q_offset: int | None = None
    block: int | None = 16
    interpret: bool = False  # Pallas kernels in interpret mode (CPU)

    @property
    def id(self) -> str:
        s = self.t if self.s is None else self.s
        dv = "" if self.dv is None else f"-Dv{self.dv}"
        pattern = _short(self.pattern)
        parts = [
            f"B{self.b}-T{self.t}" + (f"-S{s}" if s != self.t else ""),
            f"H{self.h}K{self.k}-D{self.d}{dv}",
            jnp.dtype(self.dtype).name,
            "".join(pattern.split()),
        ]
        if self.soft_cap:
            parts.append(f"cap{self.soft_cap:g}")
        if self.segments:
            parts.append("seg")
        if self.q_offset is not None:
            parts.append(f"off{self.q_offset}")
        return "-".join(parts)


def inputs(case: Case, seed: int = 0):
    s = case.t if case.s is None else case.s
    dv = case.d if case.dv is None else case.dv
    kq, kk, kv, ks, kd = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(kq, (case.b, case.t, case.h, case.d), jnp.float32).astype(case.dtype)
    k = jax.random.normal(kk, (case.b, s, case.k, case.d), jnp.float32).astype(case.dtype)
    v = jax.random.normal(kv, (case.b, s, case.k, dv), jnp.float32).astype(case.dtype)
    kwargs: dict[str, Any] = dict(
        pattern=case.pattern, logits_soft_cap=case.soft_cap, q_offset=case.q_offset
    )
    if case.block or case.interpret:
        kwargs["config"] = js.Config(
            block_q=case.block, block_kv=case.block, interpret=case.interpret
        )
    if case.segments:
        # Sorted document ids with a ragged boundary per example.
        q_ids = (jnp.arange(case.t)[None, :] * 3 // case.t + jnp.arange(case.b)[:, None]) % 4
        kv_ids = (jnp.arange(s)[None, :] * 3 // s + jnp.arange(case.b)[:, None]) % 4
        kwargs["segment_ids"] = (q_ids.astype(jnp.int32), kv_ids.astype(jnp.int32))
    cot = jax.random.normal(kd, (case.b, case.t, case.h, dv), jnp.float32)
    return q, k, v, kwargs, cot


def rel_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    finite = np.isfinite(ref)
    if not np.array_equal(np.isfinite(x), finite):
        return float("inf")
    if not finite.all():  # -inf lse rows must match exactly
        if not np.array_equal(x[~finite], ref[~finite]):
            return float("inf")
        x, ref = x[finite], ref[finite]
    denom = max(np.linalg.norm(ref), 1e-6)
    return float(np.linalg.norm(x - ref) / denom)


def outputs_and_grads(implementation: str, q, k, v, kwargs, cot, transform=None):
    """(out, lse, dq, dk, dv); the loss uses both out and lse, so dlse is exercised."""

    def f(q, k, v):
        out, lse = js.attention(q, k, v, implementation=implementation, return_lse=True, **kwargs)
        finite_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
        loss = (out.astype(jnp.float32) * cot).sum() + 0.1 * finite_lse.sum()
        return loss, (out, lse)

    if transform is not None:
        f = transform(f)
    (_, (out, lse)), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return (out, lse, *grads)


NAMES = ("out", "lse", "dq", "dk", "dv")


def assert_matches_oracle(case: Case, implementation: str, transform=None, seed: int = 0):
    q, k, v, kwargs, cot = inputs(case, seed)
    got = outputs_and_grads(implementation, q, k, v, kwargs, cot, transform)
    # The oracle runs in f32 on the same (rounded) inputs.
    return _against_the_oracle(case, got, q, k, v, kwargs, cot, case.id)


def _against_the_oracle(case, got, q, k, v, kwargs, cot, label):
    """Relative errors of `got` (out, lse, dq, dk, dv) against the f32 oracle on the same
    (rounded) inputs; each must be within the case's tolerance (gradients: twice it)."""
    q32, k32, v32 = (x.astype(jnp.float32) for x in (q, k, v))
    ref = outputs_and_grads("reference", q32, k32, v32, kwargs, cot)
    tol = TOLERANCE[case.dtype]
    errors = {}
    for name, a, b in zip(NAMES, got, ref, strict=True):
        limit = tol if name in ("out", "lse") else 2 * tol
        errors[name] = err = rel_err(a, b)
        assert err <= limit, f"{label}: {name} relative error {err:.3g} > {limit:.3g}"
    return errors


def _short(pattern) -> str:
    """A pattern's repr for test ids, explicit masks by their shape (also inside & and |)."""
    if hasattr(pattern, "block_mask"):
        return f"BlockMask{list(np.shape(pattern.block_mask))}"
    if hasattr(pattern, "mask"):
        return f"Mask{list(np.shape(pattern.mask))}"
    if pattern.holds_arrays and hasattr(pattern, "a"):
        op = "&" if type(pattern).__name__ == "And" else "|"
        return f"({_short(pattern.a)}{op}{_short(pattern.b)})"
    return repr(pattern)


def split_leading(x, n: int = 2):
    """`[B, ...]` as `[n, B // n, ...]`: an extra leading axis for `jax.vmap`."""
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])


def merge_leading(x):
    """Inverse of `split_leading`."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def assert_matches_oracle_under_jit_vmap(case: Case, implementation: str, seed: int = 0):
    """`jax.jit(jax.vmap(attention))` over an extra leading axis (the batch split in two)
    against the oracle of the whole batch: output, lse, dq, dk, dv by name."""
    q, k, v, kwargs, cot = inputs(case, seed)
    assert case.b % 2 == 0, "the batch is split over a leading axis of 2"
    segments = kwargs.pop("segment_ids", None)

    def one(q, k, v, cot, segments):
        out, lse = js.attention(
            q, k, v, implementation=implementation, return_lse=True,
            segment_ids=segments, **kwargs,
        )  # fmt: skip
        finite_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
        return (out.astype(jnp.float32) * cot).sum() + 0.1 * finite_lse.sum(), (out, lse)

    def f(q, k, v):
        split = jax.tree.map(split_leading, (q, k, v, cot, segments))
        loss, (out, lse) = jax.vmap(one)(*split)
        return loss.sum(), (merge_leading(out), merge_leading(lse))

    (_, (out, lse)), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
        q, k, v
    )
    got = (out, lse, *grads)
    if segments is not None:
        kwargs["segment_ids"] = segments
    return _against_the_oracle(case, got, q, k, v, kwargs, cot, f"{case.id} (jit+vmap)")

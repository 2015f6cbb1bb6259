"""`implementation="pallas_tpu"`: the Pallas TPU kernels in TPU interpret mode on CPU.

Through the public API against the oracle (forward, lse and every gradient by
name, with a loss that uses lse, so the dlse path runs), plus kernel-level
checks of what the oracle cannot see: padding entries of the block lists map
to the same tile (so the TPU pipeline issues no DMA for them), and FULL tiles
really skip mask math. Interpret mode (`pltpu.InterpretParams`) simulates the
TPU's memories and the pipeline's block copies; it says nothing about speed
or Mosaic lowering (see pallas_kernels/tpu/NOTES.md).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse import patterns as P
from jaxsparse import sparsity as sparsity_lib
from jaxsparse.ops import dispatch
from pallas_kernels.tpu import api as tpu_api
from pallas_kernels.tpu import common as tpu_common
from pallas_kernels.tpu import tables as tpu_tables
from tests import oracle

f32, bf16, f16 = jnp.float32, jnp.bfloat16, jnp.float16
_RNG = np.random.default_rng(7)


def C(pattern, **kw):  # noqa: N802 - reads like a constructor
    base = dict(b=1, t=200, h=2, k=1, d=64, dtype=f32, block=128, interpret=True)
    return oracle.Case(pattern, **{**base, **kw})


def _random_blocks(shape, density=0.5):
    mask = _RNG.random(shape) < density
    mask[..., 0, :] = False  # a query block that attends nothing: out 0, lse -inf
    return mask


SMOKE = C(P.Causal() & P.SlidingWindow(left=100, right=9), segments=True, dtype=bf16)

CASES = [
    # Odd length, batch 2, f32, D = 64 (operands transposed to [B, H, T, D]).
    C(P.Causal(), b=2, t=300),
    # Non-causal window, D = 128 (operands stay [B, T, H * D]), bf16.
    C(P.SlidingWindow(left=150, right=40), t=300, d=128, dtype=bf16),
    # A random block mask, cross attention (S > T), GQA with 2 kv heads.
    C(P.BlockMask(_random_blocks((3, 4)), block_q=128, block_kv=128), t=300, s=400, h=4, k=2),
    # Per-head block masks: tables with one list per query head (Hx = H), MQA.
    C(P.BlockMask(_random_blocks((4, 3, 3)), block_q=128, block_kv=128), t=300, h=4, k=1),
    # Per-head element patterns (head-dependent mask_fn), soft cap, S != T, q_offset = S - T.
    C(P.PerHead([P.Causal(), P.ChunkedCausal(48)]), soft_cap=4.0, t=170, s=350),
    # Dv != D, GQA, float16.
    C(P.Causal(), d=64, dv=128, h=4, k=2, dtype=f16, t=250),
    # Queries at negative positions attend nothing (fully masked rows), StreamingLLM shape.
    C(P.Causal() & (P.Sink(4) | P.SlidingWindow(left=60)), t=260, q_offset=-20),
    # Segments with D = Dv = 128 and a soft cap.
    C(P.Causal(), segments=True, b=2, t=270, d=128, soft_cap=20.0),
]


def test_matches_oracle_smoke():
    oracle.assert_matches_oracle(SMOKE, "pallas_tpu")


@pytest.mark.tpu_interpret
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_oracle(case):
    oracle.assert_matches_oracle(case, "pallas_tpu")


@pytest.mark.tpu_interpret
@pytest.mark.slow
def test_under_jit_and_deterministic():
    case = C(P.Causal() & P.SlidingWindow(left=130), t=300, h=4, k=2, dtype=bf16)
    oracle.assert_matches_oracle(case, "pallas_tpu", transform=jax.jit)
    q, k, v, kwargs, cot = oracle.inputs(case)
    grads = jax.jit(lambda q, k, v: oracle.outputs_and_grads("pallas_tpu", q, k, v, kwargs, cot))
    first, second = grads(q, k, v), grads(q, k, v)
    for name, a, b in zip(oracle.NAMES, first, second, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), f"{name} is not deterministic"


def _compare_with_reference(q, k, v, kwargs, cot, dtype):
    got = oracle.outputs_and_grads("pallas_tpu", q, k, v, kwargs, cot)
    q32, k32, v32 = (x.astype(f32) for x in (q, k, v))
    ref = oracle.outputs_and_grads("reference", q32, k32, v32, kwargs, cot)
    tol = oracle.TOLERANCE[dtype]
    for name, a, b in zip(oracle.NAMES, got, ref, strict=True):
        err = oracle.rel_err(a, b)
        limit = tol if name in ("out", "lse") else 2 * tol
        assert err <= limit, f"{name} relative error {err:.3g} > {limit:.3g}"


@pytest.mark.tpu_interpret
@pytest.mark.slow
def test_caller_tables_and_segments():
    """Caller-built tables do not know the segments: FULL tiles that mix documents
    must still apply the segment test (`segments_on_full_tiles`)."""
    case = C(P.Causal(), segments=True, b=2, t=300, h=2, k=1)
    q, k, v, kwargs, cot = oracle.inputs(case)
    kwargs["sparsity"] = sparsity_lib.from_pattern(
        P.Causal(), q_len=300, kv_len=300, block_q=128, block_kv=128
    )
    _compare_with_reference(q, k, v, kwargs, cot, f32)


@pytest.mark.tpu_interpret
@pytest.mark.slow
def test_device_tables_per_batch_and_head():
    """Traced tables with one list per (batch, head): Bx = B, Hx = H."""
    case = C(P.Full(), b=2, t=256, s=384, h=2, k=1, dtype=bf16)
    q, k, v, kwargs, cot = oracle.inputs(case)
    mask = jnp.asarray(_random_blocks((2, 2, 2, 3), density=0.6))

    def run(impl, q, k, v):
        sp = sparsity_lib.from_block_mask(mask, block_q=128, block_kv=128, q_len=256, kv_len=384)
        assert sp.kv_indices.shape[:2] == (2, 2)
        return oracle.outputs_and_grads(impl, q, k, v, {**kwargs, "sparsity": sp}, cot)

    got = jax.jit(lambda q, k, v: run("pallas_tpu", q, k, v))(q, k, v)
    ref = run("reference", *(x.astype(f32) for x in (q, k, v)))
    for name, a, b in zip(oracle.NAMES, got, ref, strict=True):
        limit = oracle.TOLERANCE[bf16] * (1 if name in ("out", "lse") else 2)
        assert oracle.rel_err(a, b) <= limit, name


@pytest.mark.tpu_interpret
@pytest.mark.slow
def test_vmap():
    q = jax.random.normal(jax.random.key(1), (2, 1, 200, 2, 64), f32)
    cfg = js.Config(block_q=128, block_kv=128, interpret=True)

    def loss(x, impl):
        out = js.attention(x, x, x, pattern=P.Causal(), implementation=impl, config=cfg)
        return (out * out).sum(), out

    got = jax.vmap(jax.grad(lambda x: loss(x, "pallas_tpu"), has_aux=True))(q)
    want = [jax.grad(lambda x: loss(x, "reference"), has_aux=True)(x) for x in q]
    for a, b in zip(got, (jnp.stack(w) for w in zip(*want, strict=True)), strict=True):
        assert oracle.rel_err(a, b) <= 2 * oracle.TOLERANCE[f32]


# --- kernel level -------------------------------------------------------------------------


def _walk(index, grid_rows, indices, counts, full):
    """Follow one kernel's index map over its grid in order; returns the number of
    steps whose tile differs from the previous step's (the copies a TPU issues)."""
    indices, counts = np.asarray(indices), np.asarray(counts)
    entries = np.asarray(tpu_tables.pack_entries(jnp.asarray(indices), jnp.asarray(full)))
    flat_counts = counts.reshape(-1)
    copies, budget, previous = 0, 0, None
    for prefix, (bx, hx, r) in grid_rows:
        count = int(counts[bx, hx, r])
        visited = []
        for e in range(indices.shape[-1]):
            tile = index(*prefix, e, entries, flat_counts)
            if e < count:
                visited.append(int(tile[2]))
            elif e > 0:
                assert tile == previous, f"padding entry {e} of {prefix} moves to {tile}"
            copies += tile != previous
            previous = tile
        assert visited == indices[bx, hx, r, :count].tolist()
        budget += max(count, 1)
    assert copies <= budget
    return copies


@pytest.mark.parametrize(
    "pattern, heads, kv_heads",
    [
        (P.Causal() & P.SlidingWindow(left=300), 2, 1),
        (
            P.PerHead([P.Causal(), P.Sink(130) | P.SlidingWindow(left=10), P.Full(), P.Causal()]),
            4,
            2,
        ),
    ],
    ids=["H2K1-Causal&SlidingWindow", "H4K2-PerHead"],
)
def test_padding_entries_issue_no_new_dma(pattern, heads, kv_heads):
    """Walk the grids in order through the kernels' own index maps: steps past a
    list's count map to the tile of the step before (the pipeline then skips
    the copy), and the steps within the count visit exactly the listed tiles."""
    nb, group = 8, heads // kv_heads
    sp = sparsity_lib.from_pattern(
        pattern, q_len=1000, kv_len=1000, block_q=128, block_kv=128, num_heads=heads
    )
    hx = sp.kv_indices.shape[1]
    sh = tpu_common.Shapes(B=1, Tp=1024, Sp=1024, H=heads, K=kv_heads, D=64, Dv=64, Bx=1, Hx=hx)

    def table_head(h):
        return h if hx == heads else 0

    q_major = [
        ((0, h, i), (0, table_head(h), i)) for h, i in itertools.product(range(heads), range(nb))
    ]
    kv_major = [
        ((0, kh, jb, g), (0, table_head(kh * group + g), jb))
        for kh, jb, g in itertools.product(range(kv_heads), range(nb), range(group))
    ]
    _walk(
        tpu_tables.q_major_kv_index(sh, nb, sp.kv_indices.shape[-1]),
        q_major,
        sp.kv_indices,
        sp.kv_counts,
        sp.kv_full,
    )
    _walk(
        tpu_tables.kv_major_q_index(sh, nb, sp.q_indices.shape[-1]),
        kv_major,
        sp.q_indices,
        sp.q_counts,
        sp.q_full,
    )


@pytest.mark.tpu_interpret
@pytest.mark.slow
def test_lists_per_kv_head_equal_lists_repeated_per_query_head():
    """Tables with one list per kv head (Hx = K) read like the same lists repeated
    for every query head of the group (Hx = H), forward and backward."""
    keys = jax.random.split(jax.random.key(5), 4)
    q = jax.random.normal(keys[0], (1, 256, 4, 64), f32)
    k, v = (jax.random.normal(key, (1, 384, 2, 64), f32) for key in keys[1:3])
    dout = jax.random.normal(keys[3], (1, 256, 4, 64), f32)
    mask = jnp.asarray(_random_blocks((2, 2, 3), density=0.7))
    per_kv = sparsity_lib.from_block_mask(mask, block_q=128, block_kv=128, q_len=256, kv_len=384)
    per_q = sparsity_lib.from_block_mask(
        jnp.repeat(mask, 2, axis=0), block_q=128, block_kv=128, q_len=256, kv_len=384
    )
    results = []
    for sp in (per_kv, per_q):
        tables = [getattr(sp, n) for n in ("kv_indices", "kv_counts", "kv_full")]
        out, lse = tpu_api.block_sparse_attention_fwd(q, k, v, *tables, interpret=True)
        grads = tpu_api.block_sparse_attention_bwd(
            q,
            k,
            v,
            out,
            lse,
            dout,
            jnp.ones_like(lse),
            *tables,
            sp.q_indices,
            sp.q_counts,
            sp.q_full,
            interpret=True,
        )
        results.append((out, lse, *grads))
    assert per_kv.kv_indices.shape[1] == 2 and per_q.kv_indices.shape[1] == 4
    for name, a, b in zip(oracle.NAMES, *results, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6, err_msg=name)


def test_full_tiles_skip_mask_math():
    """A tile the tables call FULL is used whole; a PARTIAL one evaluates mask_fn.

    With a mask_fn that allows nothing, all-FULL tables give plain attention and
    all-PARTIAL tables give fully masked rows (out 0, lse -inf).
    """
    q, k, v = (
        jax.random.normal(key, (1, 256, 1, 64), f32)
        for key in jax.random.split(jax.random.key(3), 3)
    )
    indices = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (1, 1, 2, 2))
    counts = jnp.full((1, 1, 2), 2, jnp.int32)

    def run(full):
        return tpu_api.block_sparse_attention_fwd(
            q,
            k,
            v,
            indices,
            counts,
            jnp.full((1, 1, 2, 2), full),
            mask_fn=lambda qp, kp, h: qp < -(10**6),
            interpret=True,
        )

    out, lse = run(True)
    dense = js.attention(q, k, v, implementation="reference", return_lse=True)
    assert oracle.rel_err(out, dense[0]) <= 1e-5
    assert oracle.rel_err(lse, dense[1]) <= 1e-5
    out, lse = run(False)
    assert np.all(np.asarray(out) == 0) and np.all(np.isneginf(np.asarray(lse)))


def test_check_support():
    tpu_api.check_support(128, 128, 512, 512, bf16)
    tpu_api.check_support(64, 256, 128, 256, f32)
    for args, match in [
        ((96, 64, 128, 128), "multiple of 64"),
        ((64, 64, 64, 128), "multiple of 128"),
        ((256, 256, 2048, 2048), "VMEM"),
    ]:
        with pytest.raises(NotImplementedError, match=match):
            tpu_api.check_support(*args)


# --- wiring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("given_lists", [False, True])
def test_block_mask_and_causal_run_on_the_kernels(given_lists):
    # A BlockMask on the kernels' tiles is constant inside every listed tile, so
    # `BlockMask & Causal()` runs as Causal() there instead of falling back to XLA; with
    # caller lists marking every tile FULL, the excluded tiles are dropped and the
    # diagonal ones masked.
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 256, 2, 64)), f32) for _ in range(3))
    pattern = P.BlockMask(np.array([[True, False], [False, True]]), 128, 128) & P.Causal()
    sp = None
    if given_lists:
        sp = js.sparsity.from_block_mask(
            np.ones((2, 2), bool), block_q=128, block_kv=128, q_len=256, kv_len=256
        )

    def run(impl, cfg=None):
        return js.attention(
            q, k, v, pattern=pattern, sparsity=sp, implementation=impl, config=cfg,
            return_lse=True,
        )  # fmt: skip

    got, want = run("pallas_tpu", js.Config(interpret=True)), run("reference")
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_unsupported_inputs_raise_not_implemented():
    cfg = js.Config(interpret=True)
    q = jnp.ones((1, 64, 2, 48), f32)
    with pytest.raises(NotImplementedError, match="multiple of 64"):
        js.attention(q, q, q, implementation="pallas_tpu", config=cfg)
    q = jnp.ones((1, 64, 2, 64), f32)
    with pytest.raises(NotImplementedError, match="multiples of 128"):
        js.attention(
            q,
            q,
            q,
            implementation="pallas_tpu",
            config=js.Config(block_q=64, block_kv=64, interpret=True),
        )
    with pytest.raises(NotImplementedError, match="holds arrays"):
        js.attention(
            q,
            q,
            q,
            pattern=P.Mask(np.ones((64, 64), bool)),
            implementation="pallas_tpu",
            config=cfg,
        )
    with pytest.raises(NotImplementedError, match="^Mask holds arrays"):  # names the part
        js.attention(
            q, q, q, pattern=P.Causal() & P.Mask(np.ones((64, 64), bool)),
            implementation="pallas_tpu", config=cfg,
        )  # fmt: skip


def test_without_a_tpu_it_raises_and_the_dispatcher_falls_back(monkeypatch):
    q = jnp.ones((1, 8, 2, 64), bf16)
    with pytest.raises(NotImplementedError, match="need a TPU"):
        js.attention(q, q, q, implementation="pallas_tpu")
    # On a TPU, an input the kernels do not take (D = 48) falls back to the XLA path.
    assert dispatch.order_for("tpu") == ("pallas_tpu", "xla")
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    q = jnp.ones((1, 8, 2, 48), bf16)
    assert js.attention(q, q, q).shape == (1, 8, 2, 48)

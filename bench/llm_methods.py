"""Issue 4 methods at their default settings, split into selection and attention.

Each `Method` has `select(q, k) -> state` (jit-able; the content-aware part,
timed apart as "selection overhead") and `attend(q, k, v, state) -> (out, lse)`
(block-sparse attention over the selection), plus `tiles(state)`: the visited
(query, key) tile area, for density. Per-token selections that the kernels run
routed (`jaxsparse.ops.routed.routes`: MoBA, NSA's selected branch) skip the
union tile lists they would not read, where the kernels run (the XLA path
reads them), and report the keys of their selected (row, block) pairs as the
area instead. Shared by `quality.py` (CPU) and
`llm_sparse_gpu.py` (H100).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxsparse as js  # noqa: E402
from jaxsparse import patterns as P  # noqa: E402
from jaxsparse.methods import NSAConfig, nsa_compress, nsa_selection, seer  # noqa: E402
from jaxsparse.ops import dispatch, routed  # noqa: E402
from jaxsparse.patterns.dynamic import common, token_block_mask  # noqa: E402
from jaxsparse.selection import ranges  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    select: Callable[[Any, Any], Any]
    attend: Callable[[Any, Any, Any, Any], tuple[Any, Any]]
    # Visited tile area (elements) summed over lists, with the lists' (Bx, Hx); None: static.
    tiles: Callable[[Any], Any] | None
    pattern: Any = None  # static methods: the pattern (density from host metadata)
    note: str = ""
    # Stages of `select` timed on their own, name -> f(q, k) (e.g. NSA's compressed branch,
    # whose output NSA uses anyway).
    parts: dict[str, Callable[[Any, Any], Any]] = dataclasses.field(default_factory=dict)


def _area(sp):
    """Visited tile area of a BlockSparsity, per (batch, head) list, summed."""
    counts = sp.kv_counts.astype(jnp.float32)
    b = counts.shape[0]
    h = counts.shape[1]
    return counts.sum() * sp.block_q * sp.block_kv, b, h


def static_method(name: str, pattern, config=None, note: str = "") -> Method:
    def select(q, k):
        return None

    def attend(q, k, v, state):
        return js.attention(q, k, v, pattern=pattern, config=config, return_lse=True)

    return Method(name, select, attend, None, pattern=pattern, note=note)


def _routed_area(pattern):
    """(query, key) area of a routed selection: the visible keys of every selected
    (row, block) pair (a causal row sees its own block up to itself)."""
    bits = jnp.asarray(pattern.bits)  # [B, Hx, T, C] (row_block 1)
    t, c, cb = bits.shape[2], bits.shape[3], pattern.col_block
    pos = (pattern.q_offset or 0) + jnp.arange(t)[:, None]
    start = cb * jnp.arange(c)[None, :]
    keys = jnp.clip(pos - start + 1, 0, cb) if pattern.causal else jnp.full((t, c), cb)
    area = jnp.where(bits, keys.astype(jnp.float32), 0.0).sum()
    return area, bits.shape[0], bits.shape[1]


def _kernels_route(pattern) -> bool:
    """Whether this backend's first implementation runs `pattern` routed (and so never
    reads union tile lists); the XLA path does read them."""
    return routed.routes(pattern) and dispatch.order_for(jax.default_backend())[0] != "xla"


def _state_area(state):
    """`Method.tiles` of a dynamic selection: `sparsity` or `(pattern, sparsity | None)`."""
    resolved, sp = state if isinstance(state, tuple) else (None, state)
    return _routed_area(resolved) if sp is None else _area(sp)


def dynamic_method(name: str, pattern, config=None, note: str = "") -> Method:
    def select(q, k):
        t, s = q.shape[1], k.shape[1]
        bound = pattern.bind(q_len=t, kv_len=s, q_offset=s - t, num_heads=q.shape[2])
        state = bound.select(q, k, q_offset=s - t, config=config)
        if isinstance(state, tuple) and _kernels_route(state[0]):
            return state[0], None  # the routed path builds its own tile lists
        return state

    def attend(q, k, v, state):
        resolved, sp = state if isinstance(state, tuple) else (pattern, state)
        return js.attention(q, k, v, pattern=resolved, sparsity=sp, config=config, return_lse=True)

    return Method(name, select, attend, _state_area, note=note)


def nsa_compressed_branch(q, k, cfg: NSAConfig):
    """`(k_cmp, lse_cmp)`: mean-compressed keys and branch 1's lse over them (its values do
    not matter to the selection)."""
    k_cmp = nsa_compress.mean_compress(k, kernel_size=cfg.kernel_size, stride=cfg.stride)
    _, lse_cmp = js.attention(
        q,
        k_cmp,
        k_cmp,
        pattern=P.CompressedCausal(cfg.kernel_size, cfg.stride),
        q_offset=k.shape[1] - q.shape[1],
        return_lse=True,
    )
    return k_cmp, lse_cmp


def nsa_bits(q, k, cfg: NSAConfig, config=None):
    """NSA's selection bits `[B, K, T, blocks]` with the mean compressor (`nsa_select`,
    `config` to its importance)."""
    t, s = q.shape[1], k.shape[1]
    k_cmp, lse_cmp = nsa_compressed_branch(q, k, cfg)
    return nsa_selection.nsa_select(
        q,
        k_cmp,
        lse_cmp,
        kv_len=s,
        kernel_size=cfg.kernel_size,
        stride=cfg.stride,
        block_size=cfg.block_size,
        top_n=cfg.top_n,
        init_blocks=cfg.init_blocks,
        local_blocks=cfg.local_blocks,
        scale=q.shape[-1] ** -0.5,
        q_offset=s - t,
        config=config,
    )


def nsa_selection_method(
    cfg: NSAConfig,
    note: str = "",
    config=None,
    name: str = "NSA-selected",
    select_config=None,
) -> Method:
    """NSA's selected branch with a parameter-free (mean) compressor: its importance and blocks.

    `config` goes to the selected branch's attention, `select_config` to the selection's.
    """

    def compressed_branch(q, k):
        return nsa_compressed_branch(q, k, cfg)

    def importance(q, k):
        """Branch 1 and the importance of every block (the attention calls or the kernel)."""
        k_cmp, lse_cmp = compressed_branch(q, k)
        return nsa_selection.whole_importance(
            q,
            k_cmp,
            lse_cmp,
            kernel_size=cfg.kernel_size,
            stride=cfg.stride,
            block_size=cfg.block_size,
            num_blocks=-(-k.shape[1] // cfg.block_size),
            scale=q.shape[-1] ** -0.5,
            q_offset=k.shape[1] - q.shape[1],
            config=select_config,
        )

    def select(q, k):
        t, h, s = q.shape[1], q.shape[2], k.shape[1]
        bits = nsa_bits(q, k, cfg, select_config)
        pattern = P.TokenBlockMask(
            bits,
            row_block=1,
            col_block=cfg.block_size,
            group=h // k.shape[2],
            causal=True,
            row_capacity=cfg.top_n - min(cfg.local_blocks, 1),
            q_offset=s - t,
        )
        if _kernels_route(pattern):
            return pattern, None  # the routed path builds its own tile lists
        tile = common.natural_tile(cfg.block_size, s)
        bound = min(-(-s // tile), tile * cfg.top_n * ranges.max_cells(cfg.block_size, tile, s))
        sp = token_block_mask.token_block_sparsity(
            pattern,
            num_heads=h,
            block_q=tile,
            block_kv=tile,
            q_len=t,
            kv_len=s,
            q_offset=s - t,
            max_kv_blocks=bound,
        )
        return pattern, sp

    def attend(q, k, v, state):
        pattern, sp = state
        return js.attention(q, k, v, pattern=pattern, sparsity=sp, config=config, return_lse=True)

    return Method(
        name,
        select,
        attend,
        _state_area,
        note=note,
        parts={"compressed_branch": compressed_branch, "importance": importance},
    )


def vertical_slash_method(pattern) -> Method:
    """MInference vertical-slash with the kept columns gathered (exact, cheaper than tiles)."""
    from jaxsparse.methods import vertical_slash as vs

    def select(q, k):
        return vs.vertical_slash_plan(q, k, pattern=pattern)

    def attend(q, k, v, plan):
        return js.vertical_slash_attention(q, k, v, pattern=pattern, plan=plan, return_lse=True)

    def tiles(plan):
        a, bx, hx = _area(plan.diagonal_sparsity)
        c, _, _ = _area(plan.column_sparsity)
        return a + c, bx, hx

    return Method(
        "MInference-VerticalSlash",
        select,
        attend,
        tiles,
        note="v=1000, s=6096; columns gathered, diagonals as tiles",
    )


def pyramid_method(pattern) -> Method:
    def select(q, k):
        return pattern.levels(q, k, q_offset=k.shape[1] - q.shape[1])

    def attend(q, k, v, levels):
        return js.pyramid_attention(q, k, v, pattern=pattern, levels=levels, return_lse=True)

    def tiles(levels):
        # Keys read per (query block, key block): block_size / 2**(level-1), 0 when skipped.
        bs = pattern.block_size
        per = jnp.where(levels > 0, bs / jnp.exp2((levels - 1).astype(jnp.float32)), 0.0)
        return per.sum() * bs, levels.shape[0], levels.shape[1]

    return Method(
        "PSA-Pyramid",
        select,
        attend,
        tiles,
        note="keys are pooled: mass and density count pooled keys",
    )


def seer_oracle_method(block_size: int = 64, threshold: float = 2e-3) -> Method:
    """SeerAttention with an oracle gate (its distillation target): the gate's upper bound."""

    def select(q, k):
        target = seer.attn_gate_target(q, k, block_size=block_size)
        mask = seer.gate_block_mask(
            target, q_len=q.shape[1], kv_len=k.shape[1], block_size=block_size, threshold=threshold
        )
        return _gated_lists(mask, q, k, block_size)

    return Method(
        f"Seer-oracle(th={threshold:g})",
        select,
        _attend_state,
        _state_area,
        note="oracle gate = block-max of the dense map (needs O(T^2)); upper bound",
    )


def seer_gate_method(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    nz_ratio: float = 0.1,
    block_size: int = 64,
) -> Method:
    """SeerAttention with an (untrained) AttnGate and a fixed non-zero ratio: for timing.

    The top-k ranks the gate's logits (`gate_block_mask` with `nz_ratio` needs
    only each row's order; no softmax).
    """
    from flax import nnx

    import jaxsparse.nn as jsnn

    gate = jsnn.AttnGate(num_heads, num_kv_heads, head_dim, block_size=block_size, rngs=nnx.Rngs(0))
    graph, params = nnx.split(gate)

    def gate_logits(q, k):
        g = nnx.merge(graph, params)
        return g(q.astype(jnp.float32), k.astype(jnp.float32))

    def block_mask(q, k):
        return seer.gate_block_mask(
            gate_logits(q, k),
            q_len=q.shape[1],
            kv_len=k.shape[1],
            block_size=block_size,
            nz_ratio=nz_ratio,
        )

    def select(q, k):
        return _gated_lists(block_mask(q, k), q, k, block_size)

    return Method(
        f"Seer-gate(nz={nz_ratio:g})",
        select,
        _attend_state,
        _state_area,
        note="untrained gate",
        parts={"gate_logits": gate_logits, "block_mask": block_mask},
    )


def _gated_lists(mask, q, k, block_size: int):
    """A Seer block mask's `(pattern, sparsity)`: its tile lists are built with the selection,
    as `dynamic_method`'s are (before session 11 the Seer rows built them in `attend`)."""
    return seer.gated_sparsity(
        mask, q_len=q.shape[1], kv_len=k.shape[1], num_heads=q.shape[2], block_size=block_size
    )


def _attend_state(q, k, v, state):
    pattern, sp = state
    return js.attention(q, k, v, pattern=pattern, sparsity=sp, return_lse=True)


def default_methods(*, include_oracle: bool = True) -> list[Method]:
    """Each method at its published default sparsity."""
    out = [
        static_method("dense-causal", P.Causal()),
        static_method("MInference-AShape", P.AShape(), note="n_init=128, n_local=3968"),
        dynamic_method(
            "MInference-VerticalSlash(1 call)",
            P.VerticalSlash(),
            note="v=1000, s=6096; one call: tiles holding a column are visited",
        ),
        vertical_slash_method(P.VerticalSlash()),
        dynamic_method("MInference-BlockTopK", P.BlockTopK(), note="block 64, top-100"),
        dynamic_method("MoBA(512,3)", P.MoBA(block_size=512, top_k=3), note="paper 8K setting"),
        dynamic_method(
            "MoBA(512,3) XLA gate",
            P.MoBA(block_size=512, top_k=3),
            config=js.Config(gpu_gate_kernel=False),
            note="gate + top-k in XLA instead of the fused kernel",
        ),
        dynamic_method(
            "MoBA(4096,12)", P.MoBA(block_size=4096, top_k=12), note="long-context setting"
        ),
        dynamic_method("FlexPrefill", P.FlexPrefill(0.9, 0.1), note="gamma=0.9 tau=0.1"),
        nsa_selection_method(NSAConfig(), note="l=32 d=16 l'=64 n=16; mean compressor"),
        nsa_selection_method(
            NSAConfig(),
            note="as NSA-selected, with the (token, block) pairs routed key-block-major",
            config=js.Config(gpu_token_selection="routed"),
            name="NSA-selected routed",
        ),
        nsa_selection_method(
            NSAConfig(),
            note="as NSA-selected, query tiles of 64 rows (8 tokens x 8 heads)",
            config=js.Config(block_q=64),
            name="NSA-selected packed bq64",
        ),
        nsa_selection_method(
            NSAConfig(),
            note="as NSA-selected, the importance from eight attention calls (no fused kernel)",
            select_config=js.Config(gpu_importance_kernel=False),
            name="NSA-selected importance by calls",
        ),
        pyramid_method(P.Pyramid(causal=True)),
    ]
    if include_oracle:
        out.append(seer_oracle_method())
    return out

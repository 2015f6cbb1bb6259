"""Per-layer attention of the LM: names, patterns, and a causal layer with a KV cache.

A layer's attention is named by a kind (`dense`, `sliding_window`, `streaming`,
`moba`, `vertical_slash`, `nsa`). A model's attention spec is one kind, a
named mix (`hybrid_moba` = three MoBA layers then one dense, repeated), or a
comma-separated list cycled over the layers (`moba,moba,moba,dense`).

Positional kinds decode with `jaxsparse.nn.SparseAttention`'s own cache.
Content-aware kinds select keys from q and k: MoBA decodes exactly (each new
query gates the cached chunks as the full pass would, see `llm_decode`);
vertical-slash is a prefill method (MInference), so it decodes densely and its
cached generation matches the full pass only while the sequence is shorter
than its budgets. NSA uses `jaxsparse.nn.NativeSparseAttention`, which has no
KV cache yet: a model with NSA layers generates by recomputing the full pass
(`llm.generate` does this by itself).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

import jaxsparse as js
from jaxsparse import nn as jnn
from jaxsparse import patterns as P
from models import llm_decode
from models.registry import Registry


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerOptions:
    """Hyper-parameters of the sparse kinds (ignored by the kinds that do not use them).

    Attributes:
      window: keys a sliding-window query sees, itself included (`sliding_window`,
        `streaming`).
      sink: leading tokens every query sees (`streaming`).
      moba_block_size, moba_top_k: MoBA's chunk length and chunks per query (own included).
      vertical_size, slash_size, last_q, init_columns, local_diagonals: `VerticalSlash`.
      nsa_kernel_size, nsa_stride, nsa_block_size, nsa_top_n, nsa_window: NSA.
    """

    window: int = 256
    sink: int = 4
    moba_block_size: int = 256
    moba_top_k: int = 3
    vertical_size: int = 128
    slash_size: int = 256
    last_q: int = 64
    init_columns: int = 4
    local_diagonals: int = 64
    nsa_kernel_size: int = 32
    nsa_stride: int = 16
    nsa_block_size: int = 64
    nsa_top_n: int = 8
    nsa_window: int = 256

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("sink", "init_columns") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"LayerOptions: {f.name}={value!r} must be an int >= {minimum}.")


KINDS = Registry("attention")
MIXES = {
    "hybrid_moba": ("moba", "moba", "moba", "dense"),
    "hybrid_nsa": ("nsa", "nsa", "nsa", "dense"),
    "hybrid_swa": ("sliding_window", "sliding_window", "sliding_window", "dense"),
}


def valid_specs() -> tuple[str, ...]:
    """Every single name `layer_kinds` accepts (lists of kinds are accepted too)."""
    return KINDS.names() + tuple(MIXES)


def layer_kinds(spec: str, num_layers: int) -> tuple[str, ...]:
    """The attention kind of each layer for an attention spec (see the module docstring)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"attention spec must be a non-empty string, got {spec!r}.")
    cycle = MIXES.get(spec) or tuple(s.strip() for s in spec.split(","))
    for kind in cycle:
        if kind not in KINDS:
            raise ValueError(
                f"unknown attention {kind!r} in {spec!r}; valid attentions: "
                f"{', '.join(valid_specs())}, or a comma-separated list of "
                f"{', '.join(KINDS.names())} cycled over the layers."
            )
    return tuple(cycle[i % len(cycle)] for i in range(num_layers))


@KINDS.register("dense")
def _dense(opt: LayerOptions) -> P.Pattern:
    return P.Causal()


@KINDS.register("sliding_window")
def _sliding_window(opt: LayerOptions) -> P.Pattern:
    return P.Causal() & P.SlidingWindow(left=opt.window - 1)


@KINDS.register("streaming")
def _streaming(opt: LayerOptions) -> P.Pattern:
    # StreamingLLM / A-shape: attention sinks plus a local window.
    return P.Causal() & (P.Sink(opt.sink) | P.SlidingWindow(left=opt.window - 1))


@KINDS.register("moba")
def _moba(opt: LayerOptions) -> P.Pattern:
    return P.MoBA(block_size=opt.moba_block_size, top_k=opt.moba_top_k)


@KINDS.register("vertical_slash")
def _vertical_slash(opt: LayerOptions) -> P.Pattern:
    return P.VerticalSlash(
        vertical_size=opt.vertical_size,
        slash_size=opt.slash_size,
        last_q=opt.last_q,
        init_columns=opt.init_columns,
        local_diagonals=opt.local_diagonals,
    )


@KINDS.register("nsa")
def _nsa(opt: LayerOptions) -> None:
    return None  # a module of its own, built by `_build_nsa`


def nsa_available() -> bool:
    return hasattr(jnn, "NativeSparseAttention")


class CausalSelfAttention(nnx.Module):
    """One LM attention layer of a given kind, with RoPE, GQA and a KV cache.

    Args:
      kind: a name in `KINDS`.
      dim, num_heads, num_kv_heads, head_dim: widths (C, H, K, D).
      options: `LayerOptions` for the sparse kinds.
      rope_base, rotary_dim: RoPE wavelength base and rotated channels per head.
      implementation: passed to `jaxsparse.attention` (None: best for the device).
      dtype, param_dtype, rngs: as in Flax NNX.
    """

    def __init__(
        self,
        kind: str,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int,
        head_dim: int,
        options: LayerOptions,
        rope_base: float = 10_000.0,
        rotary_dim: int | None = None,
        implementation: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kind = kind
        self.pattern = KINDS.get(kind)(options)
        rope = jnn.RoPE(base=rope_base, rotary_dim=rotary_dim)
        common = dict(
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            rope=rope,
            implementation=implementation,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        if kind == "nsa":
            self.attn = _build_nsa(dim, num_heads, options, common)
        else:
            self.attn = jnn.SparseAttention(dim, num_heads, pattern=self.pattern, **common)

    def __call__(self, x: Float[Array, "B T C"]) -> Float[Array, "B T C"]:
        return self.attn(x)

    @property
    def can_decode(self) -> bool:
        """Whether the layer has a KV cache (NSA's module has none yet)."""
        return hasattr(self.attn, "init_cache")

    def init_cache(self, batch_size: int, max_length: int) -> None:
        self.attn.init_cache(batch_size, max_length)

    def decode(self, x: Float[Array, "B t C"]) -> Float[Array, "B t C"]:
        """Append `t` tokens to the cache and attend over it (see the module docstring)."""
        if isinstance(self.pattern, P.MoBA):
            return llm_decode.cached_attention(self.attn, x, llm_decode.moba_mask(self.pattern))
        if self.pattern is not None and self.pattern.is_dynamic:
            return llm_decode.cached_attention(self.attn, x, llm_decode.causal_mask)
        return self.attn(x, decode=True)


def _build_nsa(dim: int, num_heads: int, opt: LayerOptions, common: dict) -> nnx.Module:
    if not nsa_available():
        raise ValueError(
            "attention 'nsa' needs jaxsparse.nn.NativeSparseAttention (issue 4), which this "
            f"jaxsparse {js.__version__} does not have; choose another attention."
        )

    local = min(2, opt.nsa_top_n - 1)
    config = js.NSAConfig(
        kernel_size=opt.nsa_kernel_size,
        stride=opt.nsa_stride,
        block_size=opt.nsa_block_size,
        top_n=opt.nsa_top_n,
        init_blocks=1,
        local_blocks=local,
        window=opt.nsa_window,
    )
    return jnn.NativeSparseAttention(dim, num_heads, nsa=config, **common)

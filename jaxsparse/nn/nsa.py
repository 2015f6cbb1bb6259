"""`NativeSparseAttention`: NSA (arXiv 2502.11089) as a Flax NNX module, trainable end to end.

`x -> q, k, v` (GQA), the learned compressors phi_K and phi_V (an MLP over
each window of `kernel_size` keys with an intra-window position embedding,
applied before RoPE; compressed token i is rotated at position `i * stride`),
RoPE on q and k, per-token, per-head sigmoid gates `Linear(C, 3H)`, then
`jaxsparse.nsa` and the output projection. Gradients reach every parameter:
the compressors through the compressed branch, the gates through the gated
sum, the projections through all three branches (top-n is not
differentiated, as in the paper). No decoding cache yet.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxsparse.methods import nsa_attention as nsa_lib
from jaxsparse.methods import nsa_compress
from jaxsparse.nn import dtypes
from jaxsparse.nn import rope as rope_lib

DEFAULT_ROPE = rope_lib.RoPE()  # theta 10000, whole head


def _per_head_init():
    # Xavier-uniform per head: fans are the last two axes, the first is the head.
    return nnx.initializers.variance_scaling(
        1.0, "fan_avg", "uniform", in_axis=-2, out_axis=-1, batch_axis=(0,)
    )


class Compressor(nnx.Module):
    """phi: `[B, S, K, D] -> [B, Nc, K, D]`, one MLP per key/value head over each window."""

    def __init__(
        self,
        num_kv_heads: int,
        dim: int,
        *,
        kernel_size: int,
        stride: int,
        hidden: int,
        dtype: Any,
        param_dtype: Any,
        rngs: nnx.Rngs,
    ):
        self.kernel_size, self.stride, self.dtype = kernel_size, stride, dtype
        init = _per_head_init()
        kh, l = num_kv_heads, kernel_size
        self.pe = nnx.Param(jnp.zeros((kh, l, dim), param_dtype))
        self.w1 = nnx.Param(init(rngs.params(), (kh, l * dim, hidden), param_dtype))
        self.b1 = nnx.Param(jnp.zeros((kh, hidden), param_dtype))
        self.w2 = nnx.Param(init(rngs.params(), (kh, hidden, dim), param_dtype))
        self.b2 = nnx.Param(jnp.zeros((kh, dim), param_dtype))

    def __call__(self, x):
        params = nsa_compress.CompressorParams(
            pe=self.pe[...], w1=self.w1[...], b1=self.b1[...], w2=self.w2[...], b2=self.b2[...]
        )
        return nsa_compress.compress(
            x.astype(self.dtype), params, kernel_size=self.kernel_size, stride=self.stride
        )


class NativeSparseAttention(nnx.Module):
    """NSA self-attention: compressed + selected + sliding-window branches, gated.

    Basics:
      >>> attn = NativeSparseAttention(512, 16, num_kv_heads=2, rngs=nnx.Rngs(0))
      >>> y = attn(x)                       # x [B, T, 512] -> [B, T, 512]

    Args:
      in_features: model width C.
      num_heads: query heads H; num_kv_heads: key/value heads K (default H).
      head_dim: D (default C // H).
      out_features: output width (default C).
      nsa: `jaxsparse.methods.NSAConfig` (paper defaults: l=32, d=16, l'=64,
        n=16 with 1 initial + 2 local blocks forced, w=512).
      compress_hidden: hidden width of phi (default D).
      rope: RoPE settings (default `RoPE()`), or None.
      gate_per_head: gates `Linear(C, 3H)` (fla) when True, `Linear(C, 3)`
        shared by the heads (FSA) when False.
      scale: logit scale (default D ** -0.5).
      implementation, config: passed to `jaxsparse.attention`.
      dtype: computation dtype (default `param_dtype`); param_dtype: parameters.
      rngs: parameter initialisation (keyword-only).
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        out_features: int | None = None,
        nsa: nsa_lib.NSAConfig | None = None,
        compress_hidden: int | None = None,
        rope: rope_lib.RoPE | None = DEFAULT_ROPE,
        gate_per_head: bool = True,
        scale: float | None = None,
        implementation: str | None = None,
        config: Any = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        required = dict(in_features=in_features, num_heads=num_heads, num_kv_heads=num_kv_heads)
        optional = dict(
            head_dim=head_dim, compress_hidden=compress_hidden, out_features=out_features
        )
        given = {**required, **{n: x for n, x in optional.items() if x is not None}}
        for name, value in given.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                default = " (or None for its default)" if name in optional else ""
                raise ValueError(
                    f"NativeSparseAttention: {name}={value!r} must be a positive int{default}."
                )
        in_features, num_heads, num_kv_heads = int(in_features), int(num_heads), int(num_kv_heads)
        head_dim, compress_hidden, out_features = (
            None if x is None else int(x) for x in (head_dim, compress_hidden, out_features)
        )
        if num_heads % num_kv_heads:
            raise ValueError(
                f"NativeSparseAttention: num_heads={num_heads} must be a multiple of "
                f"num_kv_heads={num_kv_heads}: NSA shares each selection across a GQA group."
            )
        if head_dim is None:
            if in_features % num_heads:
                raise ValueError(
                    f"NativeSparseAttention: in_features={in_features} is not divisible by "
                    f"num_heads={num_heads}; pass head_dim."
                )
            head_dim = in_features // num_heads
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        if nsa is not None and not isinstance(nsa, nsa_lib.NSAConfig):
            raise TypeError(
                f"NativeSparseAttention: nsa must be a jaxsparse.methods.NSAConfig, got "
                f"{type(nsa).__name__}; e.g. nsa=NSAConfig(top_n=8)."
            )
        self.nsa = nsa_lib.NSAConfig() if nsa is None else nsa
        self.in_features = in_features
        if rope is not None:
            rope.check_head_dim("NativeSparseAttention", head_dim)
        self.rope, self.scale = rope, scale
        self.implementation, self.config = implementation, config
        if not isinstance(gate_per_head, (bool, np.bool_)):
            raise TypeError(
                "NativeSparseAttention: gate_per_head must be True or False, got "
                f"{gate_per_head!r}."
            )
        self.gate_per_head = bool(gate_per_head)
        self.dtype = dtypes.module_dtype(type(self).__name__, dtype, param_dtype)
        out_features = in_features if out_features is None else out_features
        linear = dict(use_bias=False, dtype=self.dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(in_features, num_heads * head_dim, **linear)
        self.k_proj = nnx.Linear(in_features, num_kv_heads * head_dim, **linear)
        self.v_proj = nnx.Linear(in_features, num_kv_heads * head_dim, **linear)
        self.o_proj = nnx.Linear(num_heads * head_dim, out_features, **linear)
        self.gate = nnx.Linear(
            in_features,
            3 * num_heads if gate_per_head else 3,
            use_bias=True,
            dtype=self.dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        comp = dict(
            kernel_size=self.nsa.kernel_size,
            stride=self.nsa.stride,
            hidden=head_dim if compress_hidden is None else compress_hidden,
            dtype=self.dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.compress_k = Compressor(num_kv_heads, head_dim, **comp)
        self.compress_v = Compressor(num_kv_heads, head_dim, **comp)

    def __call__(self, x, *, positions=None, return_branches: bool = False):
        """`x [B, T, C] -> [B, T, out_features]`; positions `[T]` or `[B, T]` for RoPE."""
        if x.ndim != 3 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"NativeSparseAttention takes [B, T, C] with C = in_features = "
                f"{self.in_features}, got shape {x.shape}."
            )
        x = x.astype(self.dtype)
        b, t, _ = x.shape
        h, kh, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(b, t, h, d)
        k = self.k_proj(x).reshape(b, t, kh, d)
        v = self.v_proj(x).reshape(b, t, kh, d)
        # Branch 1 keys/values are compressed before RoPE (FSA / native-sparse-attention order).
        k_cmp, v_cmp = self.compress_k(k), self.compress_v(v)
        if self.rope is not None:
            pos = jnp.arange(t, dtype=jnp.int32) if positions is None else positions
            q, k = self.rope(q, pos), self.rope(k, pos)
            nc = k_cmp.shape[1]
            if nc:
                k_cmp = self.rope(
                    k_cmp, pos[..., : (nc - 1) * self.nsa.stride + 1 : self.nsa.stride]
                )
        gates = jax.nn.sigmoid(self.gate(x).astype(jnp.float32)).astype(self.dtype)
        gates = (
            gates.reshape(b, t, h, 3)
            if self.gate_per_head
            else jnp.broadcast_to(gates[:, :, None, :], (b, t, h, 3))
        )
        out = nsa_lib.nsa(
            q,
            k,
            v,
            gates,
            k_cmp=k_cmp,
            v_cmp=v_cmp,
            config=self.nsa,
            scale=self.scale,
            implementation=self.implementation,
            attention_config=self.config,
            return_branches=return_branches,
        )
        out, branches = out if return_branches else (out, None)
        y = self.o_proj(out.reshape(b, t, h * d))
        return (y, branches) if return_branches else y

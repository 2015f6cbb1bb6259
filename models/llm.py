"""Decoder-only language model (Llama-style: RoPE, GQA, RMSNorm, SwiGLU), sparse per layer.

cfg = LLMConfig(vocab_size=512, dim=128, num_layers=4, attention="hybrid_moba")
model = LLM(cfg, rngs=nnx.Rngs(0))
logits = model(tokens)                                    # [B, T, V]
new = generate(model, prompt, max_new_tokens=16)          # greedy, KV cache
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from jaxsparse.patterns.base import check_int
from models import llm_attention
from models.layers import SwiGLU, check_ids


@dataclasses.dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """Shape and attention of an `LLM` (static, hashable, stored beside checkpoints).

    Attributes:
      vocab_size: V.
      dim: model width C.
      num_layers: L.
      num_heads, num_kv_heads: query heads H and key/value heads K (GQA; H % K == 0).
      head_dim: D (None: C // H).
      mlp_hidden: SwiGLU width F (None: 8C/3 rounded up to a multiple of 32).
      attention: attention spec (see `llm_attention`): a kind, a mix or a list.
      layer_options: hyper-parameters of the sparse kinds.
      rope_base: RoPE base.
      rotary_dim: leading channels of each head that RoPE rotates (None: all); the
        others carry no position (GPT-NeoX's partial rotary).
      embed_std: standard deviation of the initial token embeddings (untied). With
        pre-norm blocks the embeddings' scale against the residual updates
        matters: 1.0 keeps token identity dominant early on, which recall tasks
        need (they learn several times faster than with Flax's 1/sqrt(C)).
      norm_eps: RMSNorm epsilon.
      tie_embeddings: use the embedding matrix as the output head.
      implementation: `jaxsparse.attention` implementation (None: best available).
    """

    vocab_size: int = 256
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    mlp_hidden: int | None = None
    attention: str = "dense"
    layer_options: llm_attention.LayerOptions = dataclasses.field(
        default_factory=llm_attention.LayerOptions
    )
    rope_base: float = 10_000.0
    rotary_dim: int | None = None
    embed_std: float = 1.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    implementation: str | None = None

    def __post_init__(self):
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LLMConfig: {name}={value!r} must be a positive int.")
        for name in ("head_dim", "mlp_hidden"):
            value = getattr(self, name)
            if value is not None:
                check_int(
                    name, value, minimum=1, owner="LLMConfig", fix="Use None for the default."
                )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LLMConfig: num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}."
            )
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"LLMConfig: dim={self.dim} is not divisible by num_heads={self.num_heads}; "
                "set head_dim."
            )
        if isinstance(self.layer_options, dict):  # from JSON
            object.__setattr__(
                self, "layer_options", llm_attention.LayerOptions(**self.layer_options)
            )
        llm_attention.layer_kinds(self.attention, self.num_layers)  # names are valid

    @property
    def kinds(self) -> tuple[str, ...]:
        return llm_attention.layer_kinds(self.attention, self.num_layers)

    @property
    def head_size(self) -> int:
        return self.dim // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def hidden(self) -> int:
        return -(-8 * self.dim // 3 // 32) * 32 if self.mlp_hidden is None else self.mlp_hidden

    def num_params(self) -> int:
        """Parameter count from the shapes (positional and MoBA/vertical-slash layers)."""
        c, d, f, v = self.dim, self.head_size, self.hidden, self.vocab_size
        attn = c * self.num_heads * d * 2 + 2 * c * self.num_kv_heads * d  # q, o; k, v
        block = attn + 3 * c * f + 2 * c  # + SwiGLU + two RMSNorm scales
        head = 0 if self.tie_embeddings else c * v
        return v * c + self.num_layers * block + c + head


class Block(nnx.Module):
    """Pre-norm residual block: `x + attn(norm(x))`, then `x + swiglu(norm(x))`."""

    def __init__(self, cfg: LLMConfig, kind: str, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_norm = nnx.RMSNorm(cfg.dim, epsilon=cfg.norm_eps, **kw)
        self.attn = llm_attention.CausalSelfAttention(
            kind,
            cfg.dim,
            cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_size,
            options=cfg.layer_options,
            rope_base=cfg.rope_base,
            rotary_dim=cfg.rotary_dim,
            implementation=cfg.implementation,
            **kw,
        )
        self.mlp_norm = nnx.RMSNorm(cfg.dim, epsilon=cfg.norm_eps, **kw)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden, **kw)

    def __call__(self, x, *, decode: bool = False):
        h = self.attn_norm(x)
        x = x + (self.attn.decode(h) if decode else self.attn(h))
        return x + self.mlp(self.mlp_norm(x))


class LLM(nnx.Module):
    """Token ids `[B, T]` -> next-token logits `[B, T, V]` (float32).

    Args:
      cfg: `LLMConfig`.
      dtype: computation dtype (bfloat16 on the GPU for the fast kernels).
      param_dtype: parameter dtype (float32).
      rngs: `nnx.Rngs` (keyword-only).
    """

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Tied embeddings double as the output head: keep Flax's 1/sqrt(C) scale there.
        init = (
            {} if cfg.tie_embeddings else {"embedding_init": nnx.initializers.normal(cfg.embed_std)}
        )
        self.embed = nnx.Embed(cfg.vocab_size, cfg.dim, **init, **kw)
        self.blocks = nnx.List([Block(cfg, kind, **kw) for kind in cfg.kinds])
        self.norm = nnx.RMSNorm(cfg.dim, epsilon=cfg.norm_eps, **kw)
        self.head = (
            None
            if cfg.tie_embeddings
            else nnx.Linear(cfg.dim, cfg.vocab_size, use_bias=False, **kw)
        )

    def __call__(self, tokens: Int[Array, "B T"], *, decode: bool = False) -> Float[Array, "B T V"]:
        """Full causal pass, or (`decode=True`) a step that extends the KV caches.

        Token ids must be integers in `[0, vocab_size)`: the dtype and shape are
        always checked, the values only outside `jit` (traced ids out of range
        embed as zeros).
        """
        check_tokens("tokens", tokens, self.cfg.vocab_size, owner="LLM")
        x = embed_tokens(self.embed, tokens)
        for block in self.blocks:
            x = block(x, decode=decode)
        x = self.norm(x)
        logits = self.embed.attend(x) if self.head is None else self.head(x)
        return logits.astype(jnp.float32)

    @property
    def can_decode(self) -> bool:
        """Whether every layer has a KV cache (see `llm_attention`)."""
        return all(block.attn.can_decode for block in self.blocks)

    def init_cache(self, batch_size: int, max_length: int) -> None:
        """Allocate every layer's KV cache for `max_length` tokens (prompt + generation)."""
        for block in self.blocks:
            block.attn.init_cache(batch_size, max_length)


def check_tokens(name: str, tokens, vocab_size: int, *, owner: str) -> None:
    """Raise unless `tokens` are integer ids `[B, T]` in `[0, vocab_size)` (values if concrete)."""
    shape = jnp.shape(tokens)
    if len(shape) != 2 or 0 in shape:
        hint = f"; add a batch axis ({name}[None]) for one sequence" if len(shape) == 1 else ""
        raise ValueError(
            f"{owner}: {name} must be token ids [B, T] with B, T >= 1, got shape {shape}{hint}."
        )
    check_ids(name, tokens, vocab_size, owner=owner, why=f"vocab_size={vocab_size}")


# Up to this vocabulary size the embedding lookup is a one-hot matmul.
ONE_HOT_MAX_VOCAB = 4096


def embed_tokens(embed: nnx.Embed, tokens):
    """`embed(tokens)`, as a one-hot matmul for small vocabularies (same numbers).

    A gather's gradient is a scatter-add, which serialises when every token hits
    one of a few hundred rows: with vocab 256 it took 73 ms of a 77 ms training
    step at 16k tokens on the H100 (bench/profile_train_step.py, 2026-11-22).
    The matmul's gradient is a matmul. Exact: each row sums one product by 1.
    """
    table = embed.embedding[...]
    if table.shape[0] > ONE_HOT_MAX_VOCAB:
        return embed(tokens)
    dtype = embed.dtype or table.dtype
    onehot = jax.nn.one_hot(tokens, table.shape[0], dtype=dtype)
    return jnp.einsum(
        "...v,vd->...d", onehot, table.astype(dtype), precision=jax.lax.Precision.HIGHEST
    )


@nnx.jit
def _decode(model: LLM, tokens):
    return model(tokens, decode=True)


@nnx.jit
def _full(model: LLM, tokens):
    return model(tokens)


def generate(
    model: LLM, prompt: Int[Array, "B T0"], max_new_tokens: int, *, return_logits: bool = False
):
    """Greedy generation with the KV cache: prefill the prompt, then one token per step.

    Returns `[B, max_new_tokens]` new tokens (and, with `return_logits`, the
    logits of every position `[B, T0 + max_new_tokens - 1, V]`, which equal the
    full pass over the generated sequence). A model with a layer that has no
    cache (NSA) recomputes the full pass for every token instead. The cache is
    allocated for `T0 + max_new_tokens` tokens, so it always fits.
    """
    check_tokens("prompt", prompt, model.cfg.vocab_size, owner="generate")
    check_int("max_new_tokens", max_new_tokens, minimum=1, owner="generate")
    if not model.can_decode:
        return _generate_uncached(model, prompt, max_new_tokens, return_logits)
    b, t0 = prompt.shape
    model.init_cache(b, t0 + max_new_tokens)
    logits = _decode(model, prompt)
    outs, all_logits = [], [logits]
    token = jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)
    for i in range(max_new_tokens):
        outs.append(token)
        if i + 1 == max_new_tokens:
            break
        logits = _decode(model, token)
        all_logits.append(logits)
        token = jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)
    new = jnp.concatenate(outs, axis=1)
    return (new, jnp.concatenate(all_logits, axis=1)) if return_logits else new


def _generate_uncached(model, prompt, max_new_tokens, return_logits):
    """Full causal passes over a fixed-size buffer (one compile); the future is padding."""
    b, t0 = prompt.shape
    total = t0 + max_new_tokens
    buf = jnp.zeros((b, total), jnp.int32).at[:, :t0].set(prompt)
    for t in range(t0, total):
        logits = _full(model, buf)
        buf = buf.at[:, t].set(jnp.argmax(logits[:, t - 1], axis=-1).astype(jnp.int32))
    new = buf[:, t0:]
    return (new, _full(model, buf)[:, :-1]) if return_logits else new


def token_loss(logits: Float[Array, "B T V"], targets, weights) -> tuple[jax.Array, jax.Array]:
    """Weighted mean cross-entropy and accuracy over the scored positions.

    `targets` and `weights` are `[B, T]`; targets must be ids in `[0, V)`: checked
    outside `jit`, while under `jit` an id out of range gives a NaN loss.
    """
    for name, x in (("targets", targets), ("weights", weights)):
        if jnp.shape(x) != logits.shape[:-1]:
            raise ValueError(
                f"token_loss: {name} must have the logits' shape without the vocab axis, "
                f"{logits.shape[:-1]}, got {jnp.shape(x)}."
            )
    check_ids(
        "targets", targets, logits.shape[-1], owner="token_loss", why="V, the logits' last axis"
    )
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    total = jnp.maximum(weights.sum(), 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return (nll * weights).sum() / total, (correct * weights).sum() / total

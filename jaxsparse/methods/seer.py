"""SeerAttention (arXiv 2410.13276): block selection from a learned gate, and its training target.

* `attn_gate_target` — the distillation target: for query block I and key
  block J, the largest causal attention probability of any row of I on any
  key of J (`P[I, J] = max softmax(q K^T scale)`), each block row then
  normalised to sum 1 (SeerAttention's 2-D max-pooled attention map).
* `attn_gate_loss` — `KL(target || softmax(gate logits))` on block rows
  from `skip_fraction * Tb` on (SeerAttention drops the first quarter),
  averaged over elements like PyTorch's `KLDivLoss()`.
* `gate_block_mask` — the gate's probabilities to a block mask (threshold
  or non-zero ratio), last block rows dense, block-causal.
* `gated_sparsity` — a block mask's pattern and kernel tile lists.
* `gated_attention` — block-sparse attention over a block mask.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.ops import api, validate
from jaxsparse.patterns import base
from jaxsparse.patterns.dynamic import block_topk, common, token_block_mask
from jaxsparse.selection import estimate, topk


def attn_gate_target(
    q, k, *, block_size: int = 64, scale: float | None = None, q_offset: int | None = None
):
    """Block-max-pooled causal attention map `[B, H, Tb, Sb]`, rows normalised (float32).

    Computed one query block at a time (memory `B * H * block_size * S`), with
    no gradient: the base model is frozen while the gate distils.
    """
    base.check_int("block_size", block_size, minimum=1, owner="attn_gate_target")
    validate.check_batched_qkv("attn_gate_target", q, k, k)  # k stands in for v
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
    b, t, h, d = q.shape
    s = k.shape[1]
    q_offset = s - t if q_offset is None else q_offset
    common.check_causal_geometry("attn_gate_target", q_len=t, kv_len=s, q_offset=q_offset)
    scale = d**-0.5 if scale is None else scale
    tb, sb = -(-t // block_size), -(-s // block_size)
    qp = jnp.pad(q, ((0, 0), (0, tb * block_size - t), (0, 0), (0, 0)))
    qs = jnp.moveaxis(qp.reshape(b, tb, block_size, h, d), 1, 0)  # [Tb, B, bs, H, D]
    key_pos = jnp.arange(s, dtype=jnp.int32)

    def one_block(args):
        i, q_rows = args
        rows = i * block_size + jnp.arange(block_size, dtype=jnp.int32)
        pos = q_offset + rows
        mask = (key_pos[None, :] <= pos[:, None]) & (rows < t)[:, None]
        p = estimate.masked_softmax(estimate.grouped_logits(q_rows, k) * scale, mask[None, None])
        p = jnp.pad(p, ((0, 0), (0, 0), (0, 0), (0, sb * block_size - s)))
        return p.reshape(b, h, block_size, sb, block_size).max((2, 4))  # [B, H, Sb]

    pooled = jax.lax.map(one_block, (jnp.arange(tb, dtype=jnp.int32), qs))  # [Tb, B, H, Sb]
    pooled = jnp.moveaxis(pooled, 0, 2)
    total = pooled.sum(-1, keepdims=True)
    return pooled / jnp.where(total > 0, total, 1.0)


def attn_gate_loss(gate_logits, target, *, skip_fraction: float = 0.25):
    """`KL(target || softmax(gate_logits))`, mean over elements of rows `>= skip_fraction * Tb`.

    gate_logits `[B, H, Tb, Sb]` (-inf where masked), target as from
    `attn_gate_target`. Entries with zero target contribute 0.
    """
    if jnp.shape(gate_logits) != jnp.shape(target):
        raise ValueError(
            f"attn_gate_loss: gate_logits {jnp.shape(gate_logits)} and target "
            f"{jnp.shape(target)} must have one shape [B, H, Tb, Sb]; build the target with "
            "attn_gate_target from the same q, k and the gate's block_size."
        )
    if (
        isinstance(skip_fraction, (bool, np.bool_))
        or not isinstance(skip_fraction, numbers.Real)
        or not 0 <= skip_fraction < 1
    ):
        raise ValueError(
            f"attn_gate_loss: skip_fraction={skip_fraction!r} must be a number in [0, 1): the "
            "fraction of leading block rows left out (SeerAttention: 0.25; 0 keeps every row)."
        )
    tb = gate_logits.shape[-2]
    start = int(math.floor(skip_fraction * tb))
    if start >= tb:
        start = 0
    logp = jax.nn.log_softmax(gate_logits[..., start:, :].astype(jnp.float32), axis=-1)
    tgt = target[..., start:, :].astype(jnp.float32)
    live = tgt > 0
    kl = jnp.where(
        live, tgt * (jnp.log(jnp.where(live, tgt, 1.0)) - jnp.where(live, logp, 0.0)), 0.0
    )
    return kl.mean()


def gate_block_mask(
    gate_probs,
    *,
    q_len: int,
    kv_len: int,
    block_size: int,
    threshold: float | None = None,
    nz_ratio: float | None = None,
    token_budget: int | None = None,
    last_block_dense: int = 2,
    q_offset: int | None = None,
):
    """Blocks kept `[B, H, Tb, Sb]` (bool) from gate probabilities.

    Exactly one of `threshold` (keep blocks with probability above it;
    SeerAttention's README range 5e-4 .. 5e-3) or `nz_ratio` (keep the top
    `floor((1 - sqrt(1 - nz_ratio)) * Sb)` blocks per row, at least one) or
    `token_budget` (keep the top `ceil(token_budget / block_size)` blocks per
    row: about that many keys, SeerAttention-R's budget). The last
    `last_block_dense` block rows are dense, every row keeps the key blocks
    holding its own positions (a query always sees itself; two blocks where
    `q_offset` is not a multiple of `block_size`), and the mask is
    block-causal.

    With `nz_ratio` or `token_budget` only each row's order counts, so `gate_probs` may be the
    gate's logits: the softmax is increasing along a row, and skipping it
    keeps the same blocks (a row's ties go to the lower block either way; the
    logits can only separate values that the float32 softmax rounds to one
    probability). `threshold` needs the probabilities.
    """
    if sum(x is not None for x in (threshold, nz_ratio, token_budget)) != 1:
        raise ValueError(
            "gate_block_mask: give exactly one of threshold=, nz_ratio= or token_budget=."
        )
    base.check_int("block_size", block_size, minimum=1, owner="gate_block_mask")
    base.check_int("last_block_dense", last_block_dense, minimum=0, owner="gate_block_mask")
    q_offset = kv_len - q_len if q_offset is None else q_offset
    common.check_causal_geometry("gate_block_mask", q_len=q_len, kv_len=kv_len, q_offset=q_offset)
    common.check_block_map(
        "gate_block_mask", "gate_probs", gate_probs, q_len=q_len, kv_len=kv_len,
        block_size=block_size, fix="Pass the block_size the gate was built with.",
    )  # fmt: skip
    tb, sb = gate_probs.shape[-2:]
    visible = block_topk.block_causal(
        q_len=q_len, kv_len=kv_len, q_offset=q_offset, block_q=block_size, block_kv=block_size
    )[None, None]
    if threshold is not None:
        common.check_fraction("gate_block_mask", "threshold", threshold)
        keep = gate_probs > threshold
    else:
        if nz_ratio is not None:
            common.check_fraction("gate_block_mask", "nz_ratio", nz_ratio)
            n = max(1, int((1.0 - math.sqrt(1.0 - nz_ratio)) * sb))  # floored, as SeerAttention
        else:
            base.check_int("token_budget", token_budget, minimum=1, owner="gate_block_mask")
            n = min(sb, -(-token_budget // block_size))
        keep = topk.topk_mask(jnp.where(visible, gate_probs, -jnp.inf), n)
    rows = jnp.arange(tb, dtype=jnp.int32)[None, None, :, None]
    keep = keep | (rows >= tb - last_block_dense)
    # The key blocks holding the block row's own positions: two where q_offset is not a
    # multiple of block_size.
    first = (q_offset + rows * block_size) // block_size
    last = (q_offset + jnp.minimum(rows * block_size + block_size, q_len) - 1) // block_size
    cols = jnp.arange(sb, dtype=jnp.int32)[None, None, None, :]
    return (keep | ((cols >= first) & (cols <= last))) & visible


def gated_sparsity(
    block_mask, *, q_len: int, kv_len: int, num_heads: int, block_size: int, config=None
):
    """The pattern and tile lists `gated_attention` runs for `block_mask [B, H|1, Tb, Sb]`.

    Returns `(pattern, sparsity)` for `jaxsparse.attention` (causal, `q_offset =
    kv_len - q_len`): the lists of the kernel's tiles (`block_size`, capped at
    128) that hold a selected block, and inside them the causal mask only where
    a tile lies in one block. Split from `gated_attention` so that a caller can
    build the lists once, or time them with the selection.
    """
    return token_block_mask.block_selection(
        block_mask,
        block_size=block_size,
        q_len=q_len,
        kv_len=kv_len,
        q_offset=kv_len - q_len,
        num_heads=num_heads,
        config=config,
    )


def gated_attention(
    q,
    k,
    v,
    block_mask,
    *,
    block_size: int,
    scale: float | None = None,
    implementation: str | None = None,
    config=None,
    return_lse: bool = False,
):
    """Block-sparse causal attention over `block_mask [B, H|1, Tb, Sb]` (`block_size` blocks)."""
    base.check_int("block_size", block_size, minimum=1, owner="gated_attention")
    validate.check_batched_qkv("gated_attention", q, k, v)
    b, t, h = q.shape[:3]
    s = k.shape[1]
    common.check_causal_geometry("gated_attention", q_len=t, kv_len=s, q_offset=s - t)
    common.check_block_map(
        "gated_attention", "block_mask", block_mask, q_len=t, kv_len=s, block_size=block_size,
        fix="Pass the block_size the mask was built with.",
    )  # fmt: skip
    if getattr(block_mask, "dtype", None) != jnp.bool_:
        raise TypeError(
            f"gated_attention: block_mask must be a bool array, got dtype "
            f"{getattr(block_mask, 'dtype', type(block_mask).__name__)}; build it with "
            "gate_block_mask, or compare probabilities yourself (probs > threshold)."
        )
    if jnp.shape(block_mask)[0] not in (1, b) or jnp.shape(block_mask)[1] not in (1, h):
        raise ValueError(
            f"gated_attention: block_mask {jnp.shape(block_mask)} must be [B or 1, H or 1, Tb, "
            f"Sb] for q with B={b}, H={h}."
        )
    pattern, sp = gated_sparsity(
        block_mask, q_len=t, kv_len=s, num_heads=h, block_size=block_size, config=config
    )
    return api.attention(
        q,
        k,
        v,
        pattern=pattern,
        sparsity=sp,
        scale=scale,
        q_offset=s - t,
        implementation=implementation,
        config=config,
        return_lse=return_lse,
    )

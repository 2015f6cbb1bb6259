"""Public entry points of the Mosaic GPU block-sparse attention kernels.

Conventions (jax.nn order):
  q [B, Tp, H, D], k [B, Sp, K, D], v [B, Sp, K, Dv]; bfloat16 or float16.
  Tp % block_q == 0 and Sp % block_kv == 0 (the caller pads).
  Query head h uses kv head h // (H // K) (GQA / MQA).
  Logits: s = (q . k) * scale; with a soft cap s = cap * tanh(s / cap); then
  the mask; then softmax over keys. lse is the natural-log logsumexp.
  A fully masked row gives out = 0 and lse = -inf (no NaN).

Block tables (Bx in {1, B}, Hx in {1, H}):
  kv_indices int32 [Bx, Hx, Tb, Kmax]: for q block i the kv blocks
    kv_indices[..., i, :kv_counts[..., i]], ascending; later entries repeat
    the last valid index (0 when the count is 0).
  kv_counts int32 [Bx, Hx, Tb].
  kv_full bool/int [Bx, Hx, Tb, Kmax]: True means every (q, kv) pair in the
    tile is allowed by mask_fn and no key in it is padding, so the kernel
    skips all mask math for it; False (partial) evaluates mask_fn, the
    padding test kv_pos < kv_len and the segment test in the tile.
  q_indices / q_counts / q_full: the same for the transposed (kv-major)
    lists, [Bx, Hx, Sb, Qmax], used by the dK/dV kernel.

Segment ids: pairs with different ids are masked. By default
(segments_on_full_tiles=True) the segment test runs on every visited tile,
full or partial, so the tables need not know the segments; pass False when
the tables already mark every tile that mixes segments as partial (then the
test runs in partial tiles only, which is faster).

Bitmaps (`diagonals=`, `key_columns=`): per-(batch, head) bit sets read in
partial tiles, for masks that are exact at the token level but not
arithmetic (MInference's kept diagonals and columns). Segment ids may also
compare `kv id <= q id` (`segments_le=True`: ids are positions of gathered
keys).

Supported (anything else raises NotImplementedError so callers can fall
back): dtype bfloat16/float16; D and Dv multiples of 64 up to 256 (forward),
D, Dv <= 128 (backward, the dK and dV accumulators of a warpgroup must fit in
registers); block_q in {64, 128}; block_kv a multiple of 64 whose compute
sub-tile (block_kv_compute) is 64 or 128; positive scale and soft cap; the
SMEM footprint of the chosen tiles must fit in 227 KiB.
"""

from pallas_kernels.gpu.api_backward import (
    block_sparse_attention_bwd,
    check_backward_support,
    gathered_attention_bwd,
)
from pallas_kernels.gpu.api_forward import block_sparse_attention_fwd

__all__ = [
    "block_sparse_attention_bwd",
    "block_sparse_attention_fwd",
    "check_backward_support",
    "gathered_attention_bwd",
]

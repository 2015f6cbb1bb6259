"""`Config`: static tuning knobs of one attention call."""

from __future__ import annotations

import dataclasses

from jaxsparse.patterns import base as pbase


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Static tuning for `jaxsparse.attention` (hashable; safe under jit).

    Attributes:
      block_q: query tile size; None picks a per-backend default from the
        sequence length and head dim.
      block_kv: key tile size; None as above.
      xla_chunk_elements: XLA path only: logits elements (tiles x block_q x
        block_kv, over batch and heads) computed per step. Bounds memory:
        about 4 bytes x 6 of these are live at once.
      gpu_num_stages: Mosaic GPU kernel: K/V pipeline depth (None: default).
      gpu_persistent: Mosaic GPU forward kernel: one CTA per SM looping over
        tiles (True), one CTA per tile (False), or None: persistent when every
        key list is short (at most 2,048 keys), see pallas_kernels/gpu/NOTES.md.
      gpu_dkv_split_heads: Mosaic GPU dK/dV kernel: one CTA per query head,
        each GQA group's shares summed in float32 afterwards (True), or one
        CTA per kv head (False); None: split when a group has several query
        heads and one CTA per kv head and key block would give fewer than
        256 CTAs (short key sequences, e.g. NSA's compressed keys) or walk
        more than 256 query steps (dense causal attention); short walks over
        many key blocks (sliding windows) keep one CTA per kv head.
      gpu_token_selection: how the GPU kernels run per-token block selections
        whose bit heads each serve a GQA group (NSA): "packed" (the group's
        query heads as rows of one tile, the tile's union of blocks with a
        bit per token, `jaxsparse.ops.packed`), "routed" (each selected
        (token, block) pair as a query row, `jaxsparse.ops.routed`), or None:
        packed where it applies.
      gpu_dkv_q_split: Mosaic GPU dK/dV kernel on 64-key blocks: two
        warpgroups share each block and take alternate query tiles (True), or
        one works alone (False); None: share (see pallas_kernels/gpu/NOTES.md).
      gpu_dkv_list_splits: Mosaic GPU dK/dV kernel: CTAs that share each key
        block's list of query tiles (partial results summed in float32); None:
        split long lists where few CTAs hold them (NSA's compressed keys;
        `pallas_kernels.gpu.api_backward._list_splits`), and for packed
        per-token selections, where a forced block (NSA's initial block) is
        in every tile's list (see `jaxsparse.ops.packed`).
      gpu_heavy_first: Mosaic GPU kernels: launch the CTAs with the longest
        block lists first (True), or in block order (False); None: heavy first,
        except for packed per-token selections, whose neighbouring tiles share
        key blocks that stay in L2 when they run together.
      gpu_gate_kernel: MoBA's chunk gate and top-k as one fused Mosaic GPU
        kernel on Hopper (reads q once, keeps the scores in registers);
        False runs them in XLA.
      gpu_importance_kernel: NSA's selection-block importance as one fused
        Mosaic GPU kernel (`pallas_kernels/gpu/nsa_importance.py`: branch 1's
        probabilities summed over each GQA group and remapped onto selection
        blocks in registers) instead of eight attention calls against the
        overlap matrix (on by default: 2.06 against 3.85 ms at 64k on an H200,
        pallas_kernels/gpu/NOTES.md); False runs the attention calls.
      gpu_gathered_dkv: packed per-token selections (NSA): the dK/dV kernel
        walks, for each key block, tiles gathered from the tokens that
        selected it (`jaxsparse.ops.gathered`) instead of the packed tiles
        whose union holds it (4.3x the rows on NSA's 64k needle inputs).
        Needs a GQA group of 8 to 64 query heads per bit head in multiples of
        8; elsewhere the packed tiles are used. On by default: NSA's
        forward+backward at 64k took 34.36 against 41.62 ms on an H200
        (pallas_kernels/gpu/NOTES.md).
      gpu_gathered_dq: with the gathered dK/dV, the same kernel also gives
        dQ, adding each tile's dS K into a float32 dQ by TMA reduce-adds,
        and the dQ kernel's walk of the packed tiles (the union of 8 tokens'
        blocks) does not run; the kernel then adds dK/dV into float32 sums the
        same way. Those gradients are not bitwise deterministic (the adds of
        one row come in no fixed order). None (default): from 64k query
        tokens (`packed.gathered_dq`; NSA's step on an H200: 29.77 against
        30.46 ms at 64k, 5.54 against 5.41 ms at 16k); False always keeps
        the dQ kernel (deterministic).
      gpu_gathered_chunk: with the gathered dK/dV, the work items run in
        chunks of this many query tokens (each chunk's items, all key blocks,
        before the next chunk's), so that a token's reduce-adds into dQ and
        its Q and dO reads, which come from every block it selected, fall
        close together in time and hit L2; 0 runs the items block by block
        (each block's tokens from the whole sequence). None: chunks of
        `jaxsparse.ops.gathered.CHUNK_TOKENS` (4,096) from 64k query tokens,
        block order below (`packed.gathered_chunk`; NSA's step on an H200:
        28.48 against 29.66 ms at 64k, even at 128k, 5.51 against 5.38 ms at
        16k; on an H100 at 64k 27.97 against 28.53 ms in chunks of 1,024).
      gpu_dq_in_dkv: Mosaic GPU backward: the dK/dV kernel also gives dQ, as
        FA3's backward does (each step's dS K added into a float32 dQ by a TMA
        reduce-add), and the dQ kernel, which recomputes S and dP for every
        tile pair a second time, does not run; where its SMEM would not hold
        the dQ staging (head dim 192), the dQ kernel runs all the same. Not
        where dK/dV run over gathered tiles (`gpu_gathered_dkv`), which give
        dQ themselves or leave it to the dQ kernel. dQ is then not bitwise
        deterministic.
        Off: correct on the GPU but slower (dense causal 64k fwd+bwd 156.4
        against 124.9 ms on an H200, session 21): the dQ accumulator makes
        the dK/dV kernel spill registers (pallas_kernels/gpu/NOTES.md).
      interpret: run Pallas kernels in interpret mode (CPU tests of
        `implementation="pallas_gpu"`; slow, tiny shapes only).
    """

    block_q: int | None = None
    block_kv: int | None = None
    xla_chunk_elements: int = 1 << 24
    gpu_num_stages: int | None = None
    gpu_persistent: bool | None = None
    gpu_dkv_split_heads: bool | None = None
    gpu_dkv_q_split: bool | None = None
    gpu_dkv_list_splits: int | None = None
    gpu_heavy_first: bool | None = None
    gpu_gate_kernel: bool = True
    gpu_importance_kernel: bool = True
    gpu_token_selection: str | None = None
    gpu_gathered_dkv: bool = True
    gpu_gathered_dq: bool | None = None
    gpu_gathered_chunk: int | None = None
    gpu_dq_in_dkv: bool = False
    interpret: bool = False

    def __post_init__(self):
        for name, minimum in (
            ("block_q", 1),
            ("block_kv", 1),
            ("gpu_num_stages", 1),
            ("gpu_dkv_list_splits", 1),
            ("gpu_gathered_chunk", 0),
        ):
            value = getattr(self, name)
            if value is not None:
                pbase.check_int(name, value, minimum=minimum, owner="Config")
        pbase.check_int("xla_chunk_elements", self.xla_chunk_elements, minimum=1, owner="Config")
        for name, optional in (
            ("gpu_persistent", True),
            ("gpu_dkv_split_heads", True),
            ("gpu_dkv_q_split", True),
            ("gpu_heavy_first", True),
            ("gpu_gate_kernel", False),
            ("gpu_importance_kernel", False),
            ("gpu_gathered_dkv", False),
            ("gpu_gathered_dq", True),
            ("gpu_dq_in_dkv", False),
            ("interpret", False),
        ):
            value = getattr(self, name)
            if not (isinstance(value, bool) or (optional and value is None)):
                allowed = "True, False or None" if optional else "True or False"
                raise TypeError(f"Config: {name} must be {allowed}, got {value!r}.")
        if self.gpu_token_selection not in (None, "packed", "routed"):
            raise ValueError(
                f"Config: gpu_token_selection must be 'packed', 'routed' or None, got "
                f"{self.gpu_token_selection!r}."
            )


def default_block(length: int, preferred: int = 128, minimum: int = 16) -> int:
    """The preferred tile, shrunk (power of two, >= minimum) for short sequences."""
    size = minimum
    while size < min(length, preferred):
        size *= 2
    return min(size, preferred) if length >= minimum else minimum

"""Bitmaps the kernels read in partial tiles, packed from boolean inputs (see `common.Bitmaps`).

`diagonals` (kept offsets `q - k`) become two int32 bitmaps, one per tile
orientation (query rows: forward and dQ; key rows: dK/dV), each padded so that
every index a tile reads is in range; `key_columns` become one bit per key.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def pack_bits(bits):
    """bool `[..., L]` (L a multiple of 32) -> int32 `[..., L // 32]`, bit i at word i // 32."""
    *lead, n = bits.shape
    shifts = jnp.arange(32, dtype=jnp.uint32).reshape((1,) * (len(lead) + 1) + (32,))
    words = jnp.left_shift(bits.reshape(*lead, n // 32, 32).astype(jnp.uint32), shifts)
    return lax.bitcast_convert_type(words.sum(-1, dtype=jnp.uint32), jnp.int32)


def diag_bitmap(diagonals, *, sign: int, pad: int, length: int):
    """The kernels' diagonal bitmap: bit i is offset `o = sign * (pad - i)` (`q - k`) kept.

    sign 1: indexed by `k - q` (tiles with query rows); -1: by `q - k` (key rows).
    `length` bits, rounded up to whole words plus the words a tile reads past its end.
    """
    n = diagonals.shape[-1]
    length = -(-length // 32) * 32 + 8 * 32
    o = sign * (pad - jnp.arange(length, dtype=jnp.int32))
    kept = jnp.take(diagonals.astype(bool), jnp.clip(o, 0, n - 1), axis=-1)
    return pack_bits(kept & ((o >= 0) & (o < n))[None, None])


def pack(diagonals, key_columns, keys_mode, *, B, H, Tp, Sp, q_offset):
    """Checks the diagonal / key inputs and packs them: `(diag_pads, fwd, dkv, keys)`."""
    if keys_mode not in ("or", "exclude"):
        raise ValueError(f"key_columns_mode must be 'or' or 'exclude', got {keys_mode!r}")
    for name, x in (("diagonals", diagonals), ("key_columns", key_columns)):
        if x is not None and (x.ndim != 3 or x.shape[0] not in (1, B) or x.shape[1] not in (1, H)):
            raise ValueError(f"{name} must be bool [1 or {B}, 1 or {H}, n], got {x.shape}")
    keys = None
    if key_columns is not None:
        n = key_columns.shape[-1]
        if n > Sp:
            raise ValueError(f"key_columns cover {n} keys, more than the {Sp} padded keys")
        width = -(-Sp // 32) * 32 + 4 * 32
        keys = pack_bits(jnp.pad(key_columns.astype(bool), ((0, 0), (0, 0), (0, width - n))))
    if diagonals is None:
        return None, None, None, keys
    # Tiles with query rows read bits k - q + pad_q over k in [0, Sp), q < q_offset + Tp;
    # tiles with key rows read q - k + pad_k over q >= q_offset, k < Sp: both stay >= 0.
    pad_q, pad_k = q_offset + Tp, Sp
    fwd = diag_bitmap(diagonals, sign=1, pad=pad_q, length=pad_q + Sp)
    dkv = diag_bitmap(diagonals, sign=-1, pad=pad_k, length=pad_k + q_offset + Tp)
    return (pad_q, pad_k), fwd, dkv, keys

"""The `Pattern` base class: the one definition of *what may attend*.

A pattern is a frozen, hashable dataclass with one `mask_fn(q_pos, kv_pos, head)`.
`mask_fn` uses only `& | ~ < <= == // %` on its arguments and the pattern's
static fields, so the same function runs in numpy (metadata), in jnp (the
oracle, the XLA path) and inside Pallas kernels (partial tiles).

Structured patterns also give a closed-form *block classifier*: for a tile of
query positions `[q_lo, q_hi]` and key positions `[k_lo, k_hi]` (inclusive,
numpy arrays that broadcast) it says whether the tile is EMPTY, FULL or
PARTIAL, so metadata never costs O(T*S). A classifier that cannot tell answers
UNSURE and the metadata builder checks that tile element by element with
`mask_fn`.

Patterns compose with `&` and `|`. `bool(pattern)` raises, because `a and b`
would silently drop a pattern.

Basics:
  >>> from jaxsparse import patterns as P
  >>> p = P.Causal() & (P.Sink(4) | P.SlidingWindow(left=256))   # StreamingLLM
  >>> p.mask_fn(q_pos, kv_pos, head)    # bool array, broadcast of the inputs

Details:
  * Positions are absolute: query row i sits at `q_offset + i`, key j at `j`.
  * `head` is the query-head index (an int or a scalar array). Patterns whose
    mask differs per head set `head_dependent = True`.
  * `bind(q_len=, kv_len=, q_offset=, num_heads=)` validates the pattern for a
    call and may specialise it (explicit masks learn their offset there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np

# Block codes used by classifiers and by BlockSparsity.to_dense().
EMPTY, PARTIAL, FULL, UNSURE = 0, 1, 2, 3
# Larger than any sequence length; used for "unbounded" key ranges on the host.
UNBOUNDED = 2**40
# Positions are int32 (on device and in kernels), and masks add a pattern size to a
# position (`q + right`): both stay below 2**30, so no sum of the two wraps around.
MAX_SIZE = 2**30 - 1

REGISTRY: dict[str, type[Pattern]] = {}

# Composition tables, indexed [code_a, code_b]. A PARTIAL & PARTIAL tile may be
# empty, and a PARTIAL | PARTIAL tile may be full: those become UNSURE.
_AND = np.array(
    [
        [EMPTY, EMPTY, EMPTY, EMPTY],
        [EMPTY, UNSURE, PARTIAL, UNSURE],
        [EMPTY, PARTIAL, FULL, UNSURE],
        [EMPTY, UNSURE, UNSURE, UNSURE],
    ],
    np.int8,
)
_OR = np.array(
    [
        [EMPTY, PARTIAL, FULL, UNSURE],
        [PARTIAL, UNSURE, FULL, UNSURE],
        [FULL, FULL, FULL, FULL],
        [UNSURE, UNSURE, FULL, UNSURE],
    ],
    np.int8,
)


@dataclasses.dataclass(frozen=True)
class MaskFactors:
    """`mask_fn` split as `combine(rows(q_pos), cols(kv_pos), head)` (see `Pattern.mask_factors`).

    `rows` / `cols` return tuples (nested tuples and None entries allowed) of
    arrays shaped like their input; `combine` gets them broadcast to the tile.
    """

    rows: Callable[[Any], Any]
    cols: Callable[[Any], Any]
    combine: Callable[[Any, Any, Any], Any]


class TracedPatternError(ValueError):
    """Host-side metadata was requested for a pattern whose arrays are traced."""

    def __init__(self, pattern: Any):
        super().__init__(
            f"{type(pattern).__name__} holds a traced array, so its block metadata can only be "
            "built on device: pass the pattern to jaxsparse.attention (it does that), or build "
            "it with jaxsparse.sparsity.from_block_mask(block_mask, ...) for a block mask, or "
            "jaxsparse.sparsity.from_block_codes(jaxsparse.sparsity.codes_from_element_mask("
            "mask, ...), ...) for an element mask."
        )


def codes_from(full: Any, empty: Any, *like: Any) -> np.ndarray:
    """Block codes from two boolean arrays, broadcast with `like`.

    Computed as `(not empty) + full` (EMPTY 0, PARTIAL 1, FULL 2): one pass,
    and a tile wrongly called both full and empty comes out PARTIAL, which is
    always safe.
    """
    shape = np.broadcast_shapes(np.shape(full), np.shape(empty), *(np.shape(x) for x in like))
    out = np.empty(shape, np.int8)
    np.add(np.logical_not(empty), full, out=out, dtype=np.int8, casting="unsafe")
    return out


def pattern_dataclass(cls: type) -> type:
    """Make `cls` a frozen keyword dataclass and a pytree.

    Fields whose metadata has `{"data": True}` (arrays, sub-patterns) are pytree
    children; all other fields are static. Patterns without array data are
    therefore hashable and can be static arguments of `jax.jit`.
    """
    cls = dataclasses.dataclass(frozen=True, **getattr(cls, "_dataclass_kwargs", {}))(cls)
    data = [f.name for f in dataclasses.fields(cls) if f.metadata.get("data")]
    meta = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("data")]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


def data_field(**kwargs: Any) -> Any:
    """A dataclass field that is a pytree child (an array or a sub-pattern)."""
    return dataclasses.field(metadata={"data": True}, **kwargs)


class Pattern:
    """Base class of every pattern. See the module docstring."""

    head_dependent: ClassVar[bool] = False
    # A content-aware selection whose tile lists the library builds from the same arrays
    # (`attention(sparsity=...)` from its own method): the lists' FULL marks are exact and
    # `jaxsparse.ops.metadata.within_pattern` trusts them. Every other pattern, explicit
    # masks included, is checked: a tile stays FULL only where the pattern is full there.
    exact_given_lists: ClassVar[bool] = False

    def __init_subclass__(cls, register: bool = True, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if register:
            REGISTRY[cls.__name__] = cls

    # --- the one definition -------------------------------------------------
    def mask_fn(self, q_pos: Any, kv_pos: Any, head: Any) -> Any:
        """True where query position `q_pos` may attend key position `kv_pos`."""
        raise NotImplementedError

    # --- closed-form metadata (host, numpy) ---------------------------------
    def classify(self, q_lo, q_hi, k_lo, k_hi, head) -> np.ndarray:
        """Block codes for tiles `[q_lo, q_hi] x [k_lo, k_hi]` (inclusive).

        The default cannot tell; the builder then checks tiles element-wise.
        """
        shape = np.broadcast_shapes(np.shape(q_lo), np.shape(k_lo))
        return np.full(shape, UNSURE, np.int8)

    def kv_range(self, q_lo, q_hi, head) -> tuple[Any, Any]:
        """Inclusive key-position bounds for queries in `[q_lo, q_hi]`.

        A cheap over-estimate: keys outside it are never attended. It lets the
        metadata builder classify only candidate tiles.
        """
        return np.zeros_like(q_lo), np.full_like(q_hi, UNBOUNDED)

    def kv_ranges(self, q_lo, q_hi, head) -> list[tuple[Any, Any]]:
        """Like `kv_range`, as a union of intervals (e.g. a sink plus a window).

        Lets the builder skip the gap between disjoint key ranges, so
        StreamingLLM-style patterns cost O(tiles kept) at 1M tokens.
        """
        return [self.kv_range(q_lo, q_hi, head)]

    # --- binding to a call --------------------------------------------------
    def bind(self, *, q_len: int, kv_len: int, q_offset: int, num_heads: int) -> Pattern:
        """Validate the pattern for one call; return the pattern to use.

        Raises:
          ValueError: if the pattern cannot describe these lengths or heads.
        """
        del q_len, kv_len, q_offset, num_heads
        return self

    def mask_factors(self) -> MaskFactors | None:
        """Optional split of `mask_fn` for kernels: per-row terms, per-column terms, combine.

        `mask_fn(q, k, h) == combine(rows(q), cols(k), h)` where `rows` sees only
        query positions and `cols` only key positions, so a kernel computes them
        on a tile's row and column vectors and broadcasts: the costly integer
        arithmetic (grid coordinates) runs once per row or column, not per
        element. Patterns that define `mask_fn` this way return the pieces.
        """
        return None

    def needs_tile_mask(self, block_q: int, block_kv: int) -> bool:
        """Whether partial tiles must evaluate `mask_fn` at this tiling."""
        del block_q, block_kv
        return True

    @property
    def holds_arrays(self) -> bool:
        """Whether the pattern holds arrays (explicit masks, per-token selections): its
        mask is data, not arithmetic, and may be traced."""
        return bool(jax.tree_util.tree_leaves(self))

    @property
    def is_dynamic(self) -> bool:
        """Dynamic patterns build their metadata from q and k on device (`select`)."""
        return False

    @property
    def batched(self) -> bool:
        """True when every array leaf has a leading batch axis (size B or 1).

        `mask_fn` then sees one example's slice: backends map the pattern over
        the batch axis (e.g. per-token selections of MoBA or NSA).
        """
        return False

    def device_sparsity(
        self,
        *,
        num_heads: int,
        block_q: int,
        block_kv: int,
        q_len: int,
        kv_len: int,
        q_offset: int,
    ) -> Any:
        """Batched patterns (per-example selections): their `BlockSparsity`, built on device
        from the arrays they hold, for a call that passes no `sparsity`. None: the
        generic builders apply (host closed form, or a dense mask when traced)."""
        del num_heads, block_q, block_kv, q_len, kv_len, q_offset
        return None

    def select(self, q: Any, k: Any, *, q_offset: int, config: Any) -> Any:
        """Dynamic patterns: the `BlockSparsity` chosen from q `[B,T,H,D]`, k `[B,S,K,D]`.

        Runs on device under jit. Attention visits only the listed tiles and
        applies `mask_fn` inside partial ones; the oracle uses the same lists.
        A selection finer than a tile (per-token choices) returns
        `(pattern, sparsity)` instead: that pattern (usually batched, holding
        the selection) replaces this one for the call.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a dynamic pattern.")

    def token_permutation(self, *, q_len: int, kv_len: int) -> Any:
        """Optional token reordering that makes the pattern block-sparse.

        Returns None, or numpy int arrays `(q_perm, kv_perm)`: the call runs on
        `q[:, q_perm]`, `k[:, kv_perm]`, `v[:, kv_perm]` and `mask_fn` sees
        positions in that order; outputs come back in the caller's order.
        (Neighborhood attention tiles an image so that a tile is a box.)

        Composite patterns (`&`, `|`, `PerHead`) reorder as their parts do; all
        parts must then agree, since a part written for natural positions would
        silently see tiled ones.
        """
        return _parts_permutation(self, q_len=q_len, kv_len=kv_len)

    @classmethod
    def examples(cls) -> list[Pattern]:
        """Small instances used by the test suite and the CLI."""
        return []

    # --- algebra ------------------------------------------------------------
    def __and__(self, other: Pattern) -> Pattern:
        _check_pattern(other, "&")
        return And(self, other)

    def __or__(self, other: Pattern) -> Pattern:
        _check_pattern(other, "|")
        return Or(self, other)

    def __bool__(self):
        raise TypeError(
            f"{self!r} has no truth value: combine patterns with `&` and `|`, not `and` / `or`."
        )


def _parts(pattern: Pattern) -> list[Pattern]:
    """Sub-patterns held in data fields (`And.a`, `PerHead.patterns`, ...)."""
    out = []
    for f in dataclasses.fields(pattern) if dataclasses.is_dataclass(pattern) else ():
        value = getattr(pattern, f.name) if f.metadata.get("data") else None
        values = value if isinstance(value, (tuple, list)) else (value,)
        out += [v for v in values if isinstance(v, Pattern)]
    return out


def _parts_permutation(pattern: Pattern, *, q_len: int, kv_len: int) -> Any:
    parts = _parts(pattern)
    perms = [p.token_permutation(q_len=q_len, kv_len=kv_len) for p in parts]
    if all(p is None for p in perms):
        return None
    first = next(p for p in perms if p is not None)
    for part, perm in zip(parts, perms, strict=True):
        if perm is None or not all(np.array_equal(a, b) for a, b in zip(perm, first, strict=True)):
            raise ValueError(
                f"{pattern!r}: {part!r} orders tokens differently from the other parts "
                "(grid patterns reorder tokens into tiles); combine only grid patterns with "
                "the same grid and tile, or apply the other pattern separately."
            )
    return first


def _check_pattern(other: Any, op: str) -> None:
    if not isinstance(other, Pattern):
        raise TypeError(
            f"Cannot combine a pattern with {type(other).__name__} using `{op}`; "
            "both sides must be jaxsparse patterns."
        )


@pattern_dataclass
class And(Pattern):
    """Both patterns allow the pair: `a & b`."""

    a: Pattern = data_field()
    b: Pattern = data_field()

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return self.a.head_dependent or self.b.head_dependent

    def mask_fn(self, q_pos, kv_pos, head):
        return self.a.mask_fn(q_pos, kv_pos, head) & self.b.mask_fn(q_pos, kv_pos, head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        ca = self.a.classify(q_lo, q_hi, k_lo, k_hi, head)
        cb = self.b.classify(q_lo, q_hi, k_lo, k_hi, head)
        return _AND[ca, cb]

    def kv_range(self, q_lo, q_hi, head):
        la, ha = self.a.kv_range(q_lo, q_hi, head)
        lb, hb = self.b.kv_range(q_lo, q_hi, head)
        return np.maximum(la, lb), np.minimum(ha, hb)

    def kv_ranges(self, q_lo, q_hi, head):
        return [
            (np.maximum(la, lb), np.minimum(ha, hb))
            for la, ha in self.a.kv_ranges(q_lo, q_hi, head)
            for lb, hb in self.b.kv_ranges(q_lo, q_hi, head)
        ]

    def bind(self, **kw):
        return And(self.a.bind(**kw), self.b.bind(**kw))

    def needs_tile_mask(self, block_q, block_kv):
        return self.a.needs_tile_mask(block_q, block_kv) or self.b.needs_tile_mask(
            block_q, block_kv
        )

    def __repr__(self):
        return f"({self.a!r} & {self.b!r})"


@pattern_dataclass
class Or(Pattern):
    """Either pattern allows the pair: `a | b`."""

    a: Pattern = data_field()
    b: Pattern = data_field()

    @property
    def head_dependent(self) -> bool:  # type: ignore[override]
        return self.a.head_dependent or self.b.head_dependent

    def mask_fn(self, q_pos, kv_pos, head):
        return self.a.mask_fn(q_pos, kv_pos, head) | self.b.mask_fn(q_pos, kv_pos, head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        ca = self.a.classify(q_lo, q_hi, k_lo, k_hi, head)
        cb = self.b.classify(q_lo, q_hi, k_lo, k_hi, head)
        return _OR[ca, cb]

    def kv_range(self, q_lo, q_hi, head):
        la, ha = self.a.kv_range(q_lo, q_hi, head)
        lb, hb = self.b.kv_range(q_lo, q_hi, head)
        return np.minimum(la, lb), np.maximum(ha, hb)

    def kv_ranges(self, q_lo, q_hi, head):
        return self.a.kv_ranges(q_lo, q_hi, head) + self.b.kv_ranges(q_lo, q_hi, head)

    def bind(self, **kw):
        return Or(self.a.bind(**kw), self.b.bind(**kw))

    def needs_tile_mask(self, block_q, block_kv):
        return self.a.needs_tile_mask(block_q, block_kv) or self.b.needs_tile_mask(
            block_q, block_kv
        )

    def __repr__(self):
        return f"({self.a!r} | {self.b!r})"


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int,
    owner: str,
    fix: str = "",
    maximum: int | None = None,
    maximum_fix: str = "",
) -> None:
    """Raise a ValueError/TypeError unless `value` is an int >= `minimum` (and <= `maximum`).

    `fix` is appended to the message of a too-small value, `maximum_fix` to that
    of a too-large one.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(
            f"{owner}: {name}={value} must be >= {minimum}." + (f" {fix}" if fix else "")
        )
    if maximum is not None and value > maximum:
        raise ValueError(
            f"{owner}: {name}={value} must be <= {maximum}."
            + (f" {maximum_fix}" if maximum_fix else "")
        )


def check_size(name: str, value: Any, *, minimum: int, owner: str, fix: str = "") -> None:
    """`check_int` for a pattern size (a window side, chunk, sink...): at most `MAX_SIZE`."""
    check_int(
        name,
        value,
        minimum=minimum,
        owner=owner,
        fix=fix,
        maximum=MAX_SIZE,
        maximum_fix="Masks add sizes to int32 positions, so a pattern size must be below 2**30.",
    )


def check_positions(owner: str, *, q_offset: Any, q_len: int, kv_len: int) -> None:
    """Raise unless `q_offset` is an int that keeps every position of the call in int32."""
    check_int("q_offset", q_offset, minimum=-MAX_SIZE, owner=owner)
    if abs(q_offset) + max(q_len, kv_len) > MAX_SIZE:
        raise ValueError(
            f"{owner}: q_offset={q_offset} with q_len={q_len}, kv_len={kv_len} gives positions "
            "beyond the int32 range masks compute in; |q_offset| + max(q_len, kv_len) must be "
            "below 2**30."
        )


def broadcast_mask(mask: Any, q_pos: Any, kv_pos: Any) -> Any:
    """Broadcast a mask_fn result to the shape of `q_pos` x `kv_pos`."""
    xp = _array_module(mask, q_pos, kv_pos)
    shape = np.broadcast_shapes(np.shape(mask), np.shape(q_pos), np.shape(kv_pos))
    return xp.broadcast_to(mask, shape)


def _array_module(*xs: Any):
    import jax.numpy as jnp

    return jnp if any(isinstance(x, jax.Array) for x in xs) else np


def array_module(*xs: Any):
    """numpy when every input is a numpy value, jax.numpy otherwise."""
    return _array_module(*xs)


MaskFn = Callable[[Any, Any, Any], Any]


def batch_in_axes(pattern: Pattern) -> Any:
    """`vmap` in_axes for a pattern: 0 for leaves of batched patterns, None otherwise.

    Mirrors the pattern's pytree structure, so a composite pattern can mix
    batched (per-example selections) and static parts.
    """
    leaves, treedef = jax.tree_util.tree_flatten(pattern)
    axes = _leaf_axes(pattern)
    if len(axes) != len(leaves):  # pragma: no cover - structural invariant
        raise AssertionError("pattern leaves and batch axes disagree")
    return jax.tree_util.tree_unflatten(treedef, axes)


def _leaf_axes(node: Any, owner: Pattern | None = None) -> list:
    if isinstance(node, Pattern):
        out = []
        for f in dataclasses.fields(node):
            if f.metadata.get("data"):
                out += _leaf_axes(getattr(node, f.name), node)
        return out
    if isinstance(node, (tuple, list)) and node and all(isinstance(x, Pattern) for x in node):
        return [a for x in node for a in _leaf_axes(x, owner)]
    n = len(jax.tree_util.tree_leaves(node))
    return [0 if owner is not None and owner.batched else None] * n


def has_batched_leaves(pattern: Pattern) -> bool:
    return any(a == 0 for a in _leaf_axes(pattern))

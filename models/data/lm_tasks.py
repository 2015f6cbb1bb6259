"""Synthetic long-context language tasks, scored on their answer tokens only.

Each task returns a batch `{"inputs", "targets", "weights"}` of `[B, T]`
arrays: `targets[t]` is the token to predict at position t (the next input
token), and `weights[t]` is 1 exactly where the task asks a question whose
answer can be inferred from the context. Loss and accuracy use only those
positions, as in Zoology's MQAR (Arora et al. 2023); the other tokens are
random or blank and carry no signal.

Difficulty curriculum: with `min_pairs` set, each training sequence draws its
number of pairs uniformly from `[min_pairs, num_pairs]` (eval sequences always
use `num_pairs`). Zoology trains MQAR on a mixture of difficulties in the same
way; the easy sequences let the recall circuit form in far fewer steps.

Token layout of a vocabulary of V ids: 0 is the blank/filler token, 1-3 are
markers, keys use the lower half of the rest and values the upper half.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxsparse.patterns.base import check_int
from models.data.rng import check_batch
from models.registry import Registry

BLANK, SEP, NEEDLE, QUERY = 0, 1, 2, 3
FIRST = 4  # first ordinary token id

TASKS = Registry("task")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMTask:
    """Geometry of a synthetic task.

    Attributes:
      name: a name in `TASKS`.
      seq_len: T.
      vocab_size: V (at least 16).
      num_pairs: key-value pairs (MQAR), needles (needle) or tokens to copy
        (selective copy); None picks a default for the length.
      min_pairs: if set, training sequences use between min_pairs and num_pairs.
    """

    name: str
    seq_len: int
    vocab_size: int
    num_pairs: int | None = None
    min_pairs: int | None = None

    def __post_init__(self):
        TASKS.get(self.name)  # unknown names list the valid ones
        check_int("seq_len", self.seq_len, minimum=1, owner="LMTask")
        check_int(
            "vocab_size", self.vocab_size, minimum=16, owner="LMTask", fix="Raise --vocab-size."
        )
        for name in ("num_pairs", "min_pairs"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1, owner="LMTask")
        pairs = self.pairs
        need = _min_len(self.name, pairs)
        if self.seq_len < need:
            raise ValueError(
                f"task {self.name!r} with num_pairs={pairs} needs seq_len >= {need}, got "
                f"{self.seq_len}; lower --num-pairs or raise --seq-len."
            )
        if self.min_pairs is not None and not 1 <= self.min_pairs <= pairs:
            raise ValueError(
                f"min_pairs={self.min_pairs} must lie between 1 and num_pairs={pairs}."
            )
        keys = (self.vocab_size - FIRST) // 2
        if self.name != "selective_copy" and pairs > keys:
            raise ValueError(
                f"num_pairs={pairs} distinct keys do not fit the {keys} key ids of vocab_size="
                f"{self.vocab_size}; raise --vocab-size."
            )

    @property
    def pairs(self) -> int:
        if self.num_pairs is not None:
            return self.num_pairs
        return int(min(64, max(4, self.seq_len // 32)))

    def batch(
        self, rng: np.random.Generator, batch_size: int, split: str = "train"
    ) -> dict[str, np.ndarray]:
        """One batch `{"inputs", "targets", "weights"}`; targets/weights are next-token aligned."""
        check_batch("LMTask", batch_size, split)
        generate = TASKS.get(self.name)
        if split == "train" and self.min_pairs is not None:
            counts = rng.integers(self.min_pairs, self.pairs + 1, batch_size)
        else:
            counts = np.full(batch_size, self.pairs)
        t = self.seq_len + 1  # the batch shifts by one token
        tokens = np.zeros((batch_size, t), np.int64)
        answer = np.zeros((batch_size, t), bool)
        for n in np.unique(counts):
            rows = np.flatnonzero(counts == n)
            tokens[rows], answer[rows] = generate(rng, len(rows), t, int(n), self.vocab_size)
        inputs = tokens[:, :-1]
        targets = tokens[:, 1:]
        weights = answer[:, 1:].astype(np.float32)  # answer at t+1 is predicted at t
        return {
            "inputs": inputs.astype(np.int32),
            "targets": targets.astype(np.int32),
            "weights": weights,
        }


def _min_len(name: str, pairs: int) -> int:
    # +1: the generator writes T + 1 tokens and the batch shifts by one.
    return {
        "mqar": 4 * pairs,
        "mqar_spans": 4 * pairs,
        "needle": 6 * pairs + 2,
        "selective_copy": 2 * pairs + 2,
    }[name]


def _split_vocab(vocab_size: int) -> tuple[int, int, int]:
    """(first key id, first value id, end) for keys and values."""
    half = (vocab_size - FIRST) // 2
    return FIRST, FIRST + half, FIRST + 2 * half


def _distinct(rng: np.random.Generator, b: int, n: int, lo: int, hi: int) -> np.ndarray:
    """`[b, n]` distinct ids per row from [lo, hi)."""
    return lo + np.argsort(rng.random((b, hi - lo)), axis=1)[:, :n]


def _slots(rng: np.random.Generator, b: int, n: int, lo: int, hi: int, width: int) -> np.ndarray:
    """`[b, n]` sorted start positions of n non-overlapping `width`-token slots in [lo, hi)."""
    free = (hi - lo) // width
    starts = np.sort(np.argsort(rng.random((b, free)), axis=1)[:, :n], axis=1)
    return lo + width * starts


@TASKS.register("mqar")
def mqar(rng, b, t, n, vocab_size):
    """Multi-query associative recall: `k1 v1 ... kN vN`, then each key again, answer its value.

    The pairs open the sequence; the queries (`k` followed by its value) sit
    at random slots of the remaining blank tokens, in random order.
    """
    k0, v0, end = _split_vocab(vocab_size)
    keys = _distinct(rng, b, n, k0, v0)
    values = rng.integers(v0, end, (b, n))
    tokens = np.full((b, t), BLANK, np.int64)
    answer = np.zeros((b, t), bool)
    tokens[:, 0 : 2 * n : 2], tokens[:, 1 : 2 * n : 2] = keys, values
    pos = _slots(rng, b, n, 2 * n, t, 2)
    order = np.argsort(rng.random((b, n)), axis=1)
    rows = np.arange(b)[:, None]
    tokens[rows, pos] = keys[rows, order]
    tokens[rows, pos + 1] = values[rows, order]
    answer[rows, pos + 1] = True
    return tokens, answer


@TASKS.register("mqar_spans")
def mqar_spans(rng, b, t, n, vocab_size):
    """MQAR with recall distances of every scale: the queries of each sequence fall
    inside a random span after the pairs, whose end is log-uniform in [4n, T];
    blanks follow it.

    Meant to ease training at long T, where plain `mqar` puts most queries
    thousands of tokens after their key. On the H100 (2026-11-22, 2 layers,
    dim 256, batch 32, 4000 steps at 4096 tokens) neither task formed the
    recall circuit (eval accuracy 0.06 for both); see BENCHMARKS.md.
    """
    tokens = np.full((b, t), BLANK, np.int64)
    answer = np.zeros((b, t), bool)
    ends = np.exp(rng.uniform(np.log(4 * n), np.log(t), b)).astype(np.int64)
    for i, end in enumerate(np.clip(ends, 4 * n, t)):
        tokens[i : i + 1, :end], answer[i : i + 1, :end] = mqar(rng, 1, int(end), n, vocab_size)
    return tokens, answer


@TASKS.register("needle")
def needle(rng, b, t, n, vocab_size):
    """Needle retrieval: `NEEDLE k v` triples hidden in random filler, then `QUERY k -> v`.

    Filler tokens are drawn from the key range, so a needle is found by its
    marker, not by its token ids; every needle is asked once at the end.
    """
    k0, v0, end = _split_vocab(vocab_size)
    tokens = rng.integers(k0, v0, (b, t))
    answer = np.zeros((b, t), bool)
    keys = _distinct(rng, b, n, k0, v0)
    values = rng.integers(v0, end, (b, n))
    rows = np.arange(b)[:, None]
    tail = 3 * n
    pos = _slots(rng, b, n, 0, t - tail, 3)
    tokens[rows, pos], tokens[rows, pos + 1], tokens[rows, pos + 2] = NEEDLE, keys, values
    order = np.argsort(rng.random((b, n)), axis=1)
    q = t - tail + 3 * np.arange(n)[None, :]
    tokens[rows, q], tokens[rows, q + 1] = QUERY, keys[rows, order]
    tokens[rows, q + 2] = values[rows, order]
    answer[rows, q + 2] = True
    return tokens, answer


@TASKS.register("selective_copy")
def selective_copy(rng, b, t, n, vocab_size):
    """Selective copy (Mamba, Gu & Dao 2023): copy the scattered non-blank tokens, in order.

    `n` data tokens at random positions among blanks, then `SEP`, then the
    data tokens again (teacher forced), each scored.
    """
    _, _, end = _split_vocab(vocab_size)
    tokens = np.full((b, t), BLANK, np.int64)
    answer = np.zeros((b, t), bool)
    data = rng.integers(FIRST, end, (b, n))
    rows = np.arange(b)[:, None]
    pos = _slots(rng, b, n, 0, t - n - 1, 1)
    tokens[rows, pos] = data
    tokens[:, t - n - 1] = SEP
    tokens[:, t - n :] = data
    answer[:, t - n :] = True
    return tokens, answer

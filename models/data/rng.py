"""Deterministic per-batch random streams."""

from __future__ import annotations

import numpy as np

from jaxsparse.patterns.base import check_int

SPLITS = {"train": 0, "eval": 1}


def batch_rng(seed: int, split: str, step: int) -> np.random.Generator:
    """The generator of batch `step` of `split`: a pure function of its arguments.

    Seeding from the step (not from a running generator) is what makes resume
    exact: batch 1000 is the same whether or not the run stopped at 999.
    """
    check_split(split)
    return np.random.default_rng([seed, SPLITS[split], step])


def check_split(split: str, owner: str = "") -> None:
    """Refuse a split other than `train` / `eval` (the message starts with `owner: `)."""
    if split not in SPLITS:
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


def check_batch(owner: str, batch_size: int, split: str) -> None:
    """Refuse a batch size below 1 and a split other than `train` / `eval`."""
    check_int("batch_size", batch_size, minimum=1, owner=owner)
    check_split(split, owner)

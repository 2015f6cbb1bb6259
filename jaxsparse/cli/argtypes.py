"""Argparse types that reject bad numbers with a one-line message (exit code 2)."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is not {what}; use {minimum} or more")
    return value


def positive_int(text: str) -> int:
    """An int >= 1 (lengths, sizes, counts)."""
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An int >= 0 (indices)."""
    return _int_at_least(text, 0, "a non-negative integer")

"""Timing of jitted calls for the benchmarks (median seconds per call, back to back)."""

from __future__ import annotations

import statistics
import time

import jax

MIN_ITERS = 3


def time_fn(
    f, args, *, reps: int, target_s: float = 0.04, min_iters: int = MIN_ITERS
) -> tuple[float, float]:
    """(compile+first call seconds, median seconds per call).

    As `bench/attention_gpu.py` and the anchors script time: each of `reps`
    samples runs the call back to back enough times to fill about `target_s`,
    and at least `min_iters` times, and blocks once at the end, so the host's
    dispatch of one call overlaps the device's work on the previous one (a
    call is not charged the launch latency of a blocking call).

    Until session 15 (2026-12-04) there was no minimum: a call longer than
    `target_s` ran once per sample and was charged its whole dispatch. NSA's
    64k step (about 160 kernels and fusions) took 32.6 ms so, with 30.75 ms
    of device work, and 2.0 ms between steps in its profile.
    """
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    one = time.perf_counter() - t
    if one > 1.0:  # slow variants (explicit masks at 65k tokens): fewer repeats
        reps = min(reps, 2)
    iters = max(min_iters, min(200, int(target_s / max(one, 1e-6))))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(iters):
            out = f(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / iters)
    return first, statistics.median(times)

"""Synthetic long-context attention inputs with planted facts (generated in code, no data files).

Background, built to look like LLM attention rather than white noise: q
and k are projections of one smooth hidden state (an AR(1) random walk), so a
query resembles nearby keys (local attention, the "slash" of MInference);
every key has a salience along a direction all queries of a head share
(heavy "vertical" key columns); a random per-(query, key) part spreads the
logits (heavy-tailed weights); and position 0 is an attention sink.
Planted facts, per query head:

  * "needle": a few keys deep in the context carry a distinctive direction
    `u`; one late query row per needle *is* `u` (the question), and the
    needle's value is a code vector (the answer). Dense attention puts most
    of that row's mass on the needle.
  * "mqar" (multi-query associative recall): many (key, value) pairs spread
    through the first 90% of the context, each asked by one query in the
    last quarter (after its pair).

`retrieval_accuracy(out, task)` counts the asked rows whose output is
closest (cosine) to their own code among all codes of that head.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass
class Task:
    q: np.ndarray  # [B, T, H, D] float32
    k: np.ndarray  # [B, T, K, D]
    v: np.ndarray  # [B, T, K, D]
    rows: np.ndarray  # [H, n] asked query rows
    codes: np.ndarray  # [H, n, D] the answer codes
    kind: str


def _smooth_state(rng, t: int, d: int, rho: float) -> np.ndarray:
    """AR(1) states `[T, D]` with unit variance: neighbours are alike."""
    h = np.empty((t, d), np.float32)
    h[0] = rng.standard_normal(d)
    noise = rng.standard_normal((t, d)).astype(np.float32) * math.sqrt(1 - rho**2)
    for i in range(1, t):  # a cheap loop: T x D floats
        h[i] = rho * h[i - 1] + noise[i]
    return h


def make_task(
    kind: str,
    *,
    t: int,
    h: int,
    kh: int,
    d: int,
    seed: int = 0,
    batch: int = 1,
    num_facts: int | None = None,
    rho: float = 0.98,
    sigma_vertical: float = 1.5,
    sigma_random: float = 1.0,
) -> Task:
    """Build q, k, v `[batch, T, ...]` with planted facts (see the module docstring)."""
    if kind not in ("needle", "mqar"):
        raise ValueError(f"make_task: kind={kind!r} must be 'needle' or 'mqar'.")
    rng = np.random.default_rng(seed)
    g = h // kh
    n = num_facts or (8 if kind == "needle" else 64)
    scale = d**-0.5
    qs, ks, vs, rows_all, codes_all = [], [], [], [], []
    for _ in range(batch):
        state = _smooth_state(rng, t, d, rho)
        proj = [np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32) for _ in range(kh)]
        # Related (nearby) tokens score about 3 above unrelated ones: local, not one-hot.
        amp = math.sqrt(3.0 / math.sqrt(d))
        k = np.stack([state @ p for p in proj], 1) * amp
        k += 0.3 * rng.standard_normal(k.shape).astype(np.float32)
        q = np.stack([state @ proj[i // g] for i in range(h)], 1) * amp
        q += 0.3 * rng.standard_normal(q.shape).astype(np.float32)
        # Random content: logit std `sigma_random` between unrelated tokens.
        c = math.sqrt(sigma_random)
        q += c * rng.standard_normal(q.shape).astype(np.float32)
        k += c * rng.standard_normal(k.shape).astype(np.float32)
        # A shared per-head query direction b: key salience along b (std `sigma_vertical`
        # in logits, the same for every query: vertical lines), and key 0 matching b
        # strongly (an attention sink, logit ~ ln T - 2).
        bias = rng.standard_normal((h, d)).astype(np.float32)
        bias *= 0.5 * math.sqrt(d) / np.linalg.norm(bias, axis=-1, keepdims=True)
        q += bias[None]
        for j in range(kh):
            b_mean = bias[j * g : (j + 1) * g].mean(0)
            norm = float(np.linalg.norm(b_mean))
            unit = b_mean / norm
            salience = sigma_vertical * rng.standard_normal(t).astype(np.float32)
            k[:, j] += (salience / (scale * norm))[:, None] * unit[None, :]
            k[0, j] += (math.log(t) - 2.0) / (scale * norm) * unit
        v = rng.standard_normal((t, kh, d)).astype(np.float32)
        rows = np.zeros((h, n), np.int64)
        codes = np.zeros((h, n, d), np.float32)
        for i in range(h):
            j = i // g
            if kind == "needle":
                pos = rng.choice(np.arange(16, int(0.9 * t)), n, replace=False)
                ask = rng.choice(np.arange(t - 64, t), n, replace=False)
            else:
                ask = rng.choice(np.arange(int(0.75 * t), t), n, replace=False)
                pos = np.array([rng.integers(16, min(a, int(0.9 * t))) for a in ask])
            # Needle logit ~ ln T + sigma^2 / 2 + 3: it dominates the background's sum.
            c1 = math.sqrt(d)
            spread = 0.5 * (sigma_vertical**2 + sigma_random**2)
            c2 = (math.log(t) + spread + 3.0) / (scale * c1)
            for p, a in zip(pos, ask, strict=True):
                u = rng.standard_normal(d).astype(np.float32)
                u /= np.linalg.norm(u)
                q[a, i] = c1 * u
                k[p, j] = c2 * u + 0.1 * k[p, j]
                code = rng.standard_normal(d).astype(np.float32)
                v[p, j] = 3.0 * code / np.linalg.norm(code) * math.sqrt(d)
            rows[i] = ask
            codes[i] = v[pos, j]
        qs.append(q)
        ks.append(k)
        vs.append(v)
        rows_all.append(rows)
        codes_all.append(codes)
    return Task(
        q=np.stack(qs),
        k=np.stack(ks),
        v=np.stack(vs),
        rows=np.stack(rows_all),
        codes=np.stack(codes_all),
        kind=kind,
    )


def retrieval_accuracy(out: np.ndarray, task: Task) -> float:
    """Fraction of asked rows whose output is nearest (cosine) to their own code."""
    out = np.asarray(out, np.float32)
    hits, total = 0, 0
    for b in range(out.shape[0]):
        for i in range(out.shape[2]):
            o = out[b, task.rows[b, i], i]  # [n, D]
            c = task.codes[b, i]
            o = o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-9)
            c = c / (np.linalg.norm(c, axis=-1, keepdims=True) + 1e-9)
            hits += int((np.argmax(o @ c.T, -1) == np.arange(len(c))).sum())
            total += len(c)
    return hits / total

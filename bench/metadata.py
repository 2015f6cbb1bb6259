"""Metadata build time: `from_pattern` for causal and windowed patterns up to 1M tokens.

Usage: python bench/metadata.py [OUT_JSONL]

Each case runs in a fresh subprocess so that the first ("cold") build also
pays for first-touch memory, then repeats the build with the cache cleared
("warm", median of 3). Prints one JSON line per case.
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = [
    ("Causal()", 1 << 20, 128),
    ("Causal()", 1 << 20, 256),
    ("SlidingWindow(left=4096)", 1 << 20, 128),
    ("Causal() & (Sink(128) | SlidingWindow(left=4096))", 1 << 20, 128),
    ("Causal()", 1 << 17, 128),
]

CHILD = r"""
import json, statistics, sys, time
from jaxsparse import patterns as P
from jaxsparse.sparsity import host
expr, n, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
p = P.parse(expr)
def build():
    host._cached_build.cache_clear()
    t = time.perf_counter()
    sp = host.from_pattern(p, q_len=n, kv_len=n, block_q=block, block_kv=block)
    return time.perf_counter() - t, sp
cold, sp = build()
warm = statistics.median(build()[0] for _ in range(3))
nbytes = sum(getattr(sp, f).nbytes for f in ("kv_indices", "kv_counts", "kv_full",
                                              "q_indices", "q_counts", "q_full"))
print(json.dumps(dict(pattern=expr, seq=n, block=block, cold_s=round(cold, 4),
                      warm_s=round(warm, 4), kmax=int(sp.kv_indices.shape[-1]),
                      tables_mb=round(nbytes / 2**20, 1))))
"""


def main() -> None:
    rows = []
    for expr, n, block in CASES:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, expr, str(n), str(block)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()

"""The attention bench's `table` mode: OUT_DIR/*.jsonl merged into a markdown table
with the target ratios (`python bench/attention_gpu.py table OUT_DIR`).
"""

from __future__ import annotations

import glob
import json
import os

TARGETS = [
    # (label, kind, S, numerator impl, denominator impl, threshold, how)
    ("causal fwd >= 0.9x tokamax", "causal", 16384, "tokamax", "jaxsparse", 0.9),
    ("full fwd >= 0.9x cuDNN", "full", 16384, "cudnn", "jaxsparse", 0.9),
    ("window 1024 no slower than tokamax", "window", 16384, "tokamax", "jaxsparse", 1.0),
    ("10% blocks >= 1.5x faster than Flex", "blocksparse", 16384, "flex", "jaxsparse", 1.5),
    ("causal fwd+bwd >= 0.8x cuDNN", "causal_fwd_bwd", 16384, "cudnn", "jaxsparse", 0.8),
]


def table(out_dir):
    rows = []
    for p in sorted(glob.glob(os.path.join(out_dir, "*.jsonl"))):
        with open(p) as f:
            rows += [json.loads(l) for l in f if l.strip()]
    res = {}
    env = [r for r in rows if "mode" in r]
    for r in rows:
        if "impl" in r and "ms" in r:
            res[(r["impl"], r["kind"], r["S"])] = r
    seqs = sorted({k[2] for k in res})
    kinds = ["full", "causal", "window", "blocksparse", "causal_fwd_bwd"]
    impls = [
        *("jaxsparse", "jaxsparse[dq]", "ours", "ours[p]", "ours[np]"),
        *("cudnn", "tokamax", "flex"),
    ]
    lines = []
    for e in env:
        lines.append("- " + ", ".join(f"{k}={v}" for k, v in e.items()))
    lines.append("")
    lines.append("| impl | " + " | ".join(f"{k} {s // 1024}k" for s in seqs for k in kinds) + " |")
    lines.append("|---" * (1 + len(seqs) * len(kinds)) + "|")
    for impl in impls:
        cells = []
        for s in seqs:
            for k in kinds:
                r = res.get((impl, k, s))
                cells.append("—" if r is None else f"{r['ms']:.3f} ms ({r['tflops']:.0f})")
        lines.append(f"| {impl} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| target (16k, jaxsparse = public API) | jaxsparse | other | ratio | met |")
    lines.append("|---|---|---|---|---|")
    for label, kind, s, other, mine, thr in TARGETS:
        a, b = res.get((other, kind, s)), res.get((mine, kind, s))
        if a is None or b is None:
            lines.append(f"| {label} | — | — | — | not measured |")
            continue
        ratio = a["ms"] / b["ms"]
        lines.append(
            f"| {label} | {b['ms']:.3f} ms | {a['ms']:.3f} ms |"
            f" {ratio:.2f}x | {'yes' if ratio >= thr else 'NO'} |"
        )
    bs = res.get(("jaxsparse", "blocksparse", 16384))
    full = res.get(("jaxsparse", "full", 16384))
    if bs and full:
        bound = bs["density"] * full["ms"]
        ratio = bs["ms"] / bound
        lines.append(
            f"| 10% blocks within 1.3x of density x our dense |"
            f" {bs['ms']:.3f} ms | {bound:.3f} ms (= {bs['density']:.3f} x"
            f" {full['ms']:.3f}) | {ratio:.2f}x | {'yes' if ratio <= 1.3 else 'NO'} |"
        )
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text + "\n")

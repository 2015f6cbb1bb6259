"""Picture of the issue-4 speed results: each method against dense causal attention.

Usage (repo root):
  python bench/plot_llm.py OUT.png RESULTS_DIR [RESULTS_DIR ...] [--seq 65536]

Reads every `llm_sparse_gpu.jsonl` under the given folders (in sorted path
order, so later sessions and calls replace earlier rows of the same method)
and draws two panels for one sequence length: the forward speed-up over dense
causal attention measured in the same run (NSA's forward+backward row
against dense forward+backward), and each method's selection time as a
fraction of its attention time (`overhead_fwd`, the selection a forward call
computes, where the row has it; else `overhead`), with the issue's targets (3x for MoBA, 4x for
NSA's training step, 15 % selection overhead). Rows that fell back to the XLA
path are left out. Each bar names the run it comes from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parent))
matplotlib.use("Agg")
import llm_results  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

TARGET_OVERHEAD = 0.15
TARGETS = {"MoBA(512,3)": 3.0, "NSA train": 4.0}


def latest_rows(folders, seq_len: int) -> dict[str, dict]:
    """The last row per method at `seq_len` that ran on the kernels, with its source run."""
    rows: dict[str, dict] = {}
    for _, run, lines in llm_results.runs(folders):
        for r in lines:
            if r.get("seq_len") != seq_len or r.get("fallbacks"):
                continue
            if r["kind"] == "method":
                # The forward selection where the row has it (from session 11 on), else the
                # selection with the backward's lists, the only measure before.
                overhead = r.get("overhead_fwd", r["overhead"])
                rows[r["method"]] = dict(
                    speedup=r["speedup_fwd_vs_ours"], overhead=overhead, run=run
                )
            elif r["kind"] == "nsa_train" and r["method"] == "NSA":
                rows["NSA train"] = dict(
                    speedup=r["speedup_fwd_bwd_vs_ours"],
                    overhead=None,
                    run=run,
                    vs_cudnn=r.get("speedup_fwd_bwd_vs_cudnn"),
                )
    return rows


def plot(rows: dict[str, dict], out: Path, *, seq_len: int, device: str) -> None:
    names = sorted(rows, key=lambda n: rows[n]["speedup"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.6), sharey=True)
    speed = [rows[n]["speedup"] for n in names]
    colors = ["tab:orange" if n == "NSA train" else "tab:blue" for n in names]
    ax1.barh(names, speed, color=colors)
    ax1.axvline(1.0, color="black", lw=0.8)
    for i, n in enumerate(names):
        x = max(speed[i], TARGETS.get(n, 0.0))
        cudnn = rows[n].get("vs_cudnn")
        label = f"  {speed[i]:.2f}x" + (f", {cudnn:.2f}x vs cuDNN" if cudnn else "")
        ax1.text(x, i, f"{label} ({rows[n]['run']})", va="center", fontsize=7)
        if n in TARGETS:
            ax1.plot([TARGETS[n]] * 2, [i - 0.4, i + 0.4], color="red", lw=2)
    ax1.set_xlabel("speed-up over dense causal (same run; NSA train: forward+backward)")
    ax1.set_xlim(0, max(speed) * 1.45)
    over = [rows[n]["overhead"] or 0.0 for n in names]  # None: a training row; 0: no selection
    ax2.barh(names, over, color=["tab:green" if o < TARGET_OVERHEAD else "tab:gray" for o in over])
    ax2.axvline(TARGET_OVERHEAD, color="red", lw=1, ls="--")
    for i, n in enumerate(names):
        if rows[n]["overhead"] is None:
            continue
        label = f" {over[i]:.3f}" if over[i] > 0 else " static pattern: no selection"
        ax2.text(max(over[i], 0.01), i, label, va="center", fontsize=7)
    ax2.set_xscale("log")
    ax2.set_xlim(0.01, 3.0)
    ax2.set_xlabel("selection time / attention time (red: the 15 % target)")
    fig.suptitle(f"Issue 4 methods at {seq_len // 1024}k tokens, {device} (red marks: targets)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--device", default="NVIDIA H200")
    args = ap.parse_args(argv)
    rows = latest_rows(args.folders, args.seq)
    if not rows:
        raise SystemExit(f"no kernel rows at seq_len={args.seq} under {args.folders}")
    plot(rows, Path(args.out), seq_len=args.seq, device=args.device)
    print(f"wrote {args.out}: {len(rows)} methods")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

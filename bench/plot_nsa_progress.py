"""Picture of NSA's training step over the sessions on one kind of GPU, against 4x cuDNN.

Usage (repo root):
  python bench/plot_nsa_progress.py OUT.png RESULTS_DIR [RESULTS_DIR ...]
      [--seq 65536] [--device H100] [--row 'RUN=METHOD' ...]

Reads every `llm_sparse_gpu.jsonl` under the given folders (in sorted path
order: session by session, call by call) and keeps the runs on `--device`
(the row file's `device_kind`; files written before it was recorded count as
the device their folder names, e.g. `2026-11-22_h100_session4`). From each
run it takes the library's NSA forward+backward row (`NSA`, no glue swapped
in) and, where the run has one, cuDNN's dense causal forward+backward. It
draws one point per run: NSA's time and, beside it, a quarter of that run's
cuDNN time, the time NSA needs for the issue's 4x target. The y axis is
logarithmic (the first runs were 5x slower than the last).

`--row 's25 call9=NSA (items by 4k tokens)'` takes
that run's row of that method name (as the row file writes it, glue in
brackets) instead: for a run whose library row is not the form the library
later kept. The run's label then ends in `*`.
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

TARGET = 4.0  # the NSA fwd+bwd speed-up over dense causal attention


def runs(folders, seq_len: int, device: str, rows_by_run=None) -> list[dict]:
    """`[{run, nsa_ms, cudnn_ms or None}]`, one per run on `device` with NSA's library row
    (or, for a run label in `rows_by_run`, the row of that method name: label + "*")."""
    rows_by_run = rows_by_run or {}
    out = []
    for session, label, rows in llm_results.runs(folders):
        kinds = {r.get("device_kind") for r in rows if r["kind"] == "meta"} - {None}
        if not (any(device in k for k in kinds) if kinds else device.lower() in session.lower()):
            continue  # another card

        def pick(kind, method, rows=rows, any_glue=False):
            return next(
                (
                    r["fwd_bwd_ms"]
                    for r in rows
                    if r["kind"] == kind
                    and r["method"] == method
                    and r.get("seq_len") == seq_len
                    and (any_glue or r.get("glue", "library") == "library")
                    and not r.get("fallbacks")
                ),
                None,
            )

        if label in rows_by_run:
            nsa, label = pick("nsa_train", rows_by_run[label], any_glue=True), label + "*"
        else:
            nsa = pick("nsa_train", "NSA")
        if nsa is not None:
            out.append(dict(run=label, nsa_ms=nsa, cudnn_ms=pick("dense", "cudnn")))
    return out


def plot(points: list[dict], out: Path, *, seq_len: int, device: str) -> None:
    x = range(len(points))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(points) + 2), 4.2))
    ax.plot(x, [p["nsa_ms"] for p in points], "o-", color="tab:orange", label="NSA fwd+bwd")
    need = [(i, p["cudnn_ms"] / TARGET) for i, p in enumerate(points) if p["cudnn_ms"]]
    ax.plot(*zip(*need, strict=True), "_", color="red", ms=14, mew=2,
            label=f"cuDNN dense causal fwd+bwd / {TARGET:g} (same run)")  # fmt: skip
    last = points[-1]
    text = f"{last['nsa_ms']:.2f} ms"
    if last["cudnn_ms"]:
        text += f", {last['cudnn_ms'] / last['nsa_ms']:.2f}x cuDNN"
    ax.annotate(text, (len(points) - 1, last["nsa_ms"]), xytext=(-10, 14),
                textcoords="offset points", ha="right", fontsize=8)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(list(x), [p["run"] for p in points], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ms (log scale)")
    ax.set_title(f"NSA's training step at {seq_len // 1024}k tokens on the {device}, run by run")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--device", default="H100", help="a substring of the GPU's device kind")
    ap.add_argument(
        "--row", action="append", default=[], metavar="RUN=METHOD",
        help="take run RUN's row of method METHOD (glue in brackets) instead of the library's",
    )  # fmt: skip
    args = ap.parse_args(argv)
    bad = [r for r in args.row if "=" not in r]
    if bad:
        ap.error(f"--row {bad[0]!r}: write it as RUN=METHOD, e.g. 's25 call9=NSA [glue]'")
    rows_by_run = dict(r.split("=", 1) for r in args.row)
    points = runs(args.folders, args.seq, args.device, rows_by_run)
    missing = sorted(set(rows_by_run) - {p["run"].removesuffix("*") for p in points})
    if missing:
        raise SystemExit(f"--row: no such run or method row for {missing}")
    if not points:
        raise SystemExit(f"no NSA rows at seq_len={args.seq} on {args.device} in {args.folders}")
    plot(points, Path(args.out), seq_len=args.seq, device=args.device)
    print(f"wrote {args.out}: {len(points)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

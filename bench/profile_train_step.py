"""Top device operations of one LLM training step (where does the step time go?).

Usage (repo root, on the GPU machine):
  python bench/profile_train_step.py OUT_DIR [--attention dense] [--seq 16384] [--set F=V ...]

Times the step like `bench/train_gpu.py` (preset `gpu`, batch 1), then traces
two steps with `jax.profiler` (a Perfetto trace under OUT_DIR/trace) and prints
the 30 operations with the largest total duration, device streams only, as
JSON lines (also OUT_DIR/top_ops.jsonl).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import train_gpu  # noqa: E402

from models import train as cli  # noqa: E402
from models.training import TrainConfig  # noqa: E402


def top_ops(trace_dir: pathlib.Path, n: int = 30):
    """Largest total durations by event name on device threads of a Perfetto trace."""
    path = next(trace_dir.rglob("perfetto_trace.json.gz"))
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    names = {
        (e["pid"], e.get("tid")): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") in ("process_name", "thread_name")
    }
    pid_names = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }

    def where(e):
        return (pid_names.get(e["pid"], "") + " " + names.get((e["pid"], e.get("tid")), "")).lower()

    timed = [e for e in events if e.get("ph") == "X" and "dur" in e]
    device = [e for e in timed if "gpu" in where(e) or "stream" in where(e)]
    # No device threads (a CPU run): XLA's worker threads, not the Python thread.
    chosen = device or [e for e in timed if "python" not in where(e)]
    total = collections.Counter()
    count = collections.Counter()
    for e in chosen:
        total[e["name"]] += e["dur"]
        count[e["name"]] += 1
    top = [(name, us / 1e3, count[name]) for name, us in total.most_common(n)]
    busy_ms = sum(total.values()) / 1e3
    return top, {"device_ops_2_steps": sum(count.values()), "device_busy_ms_2_steps": busy_ms}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--attention", default="dense")
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=cli._set_pair,
        default=[],
        metavar="FIELD=VALUE",
        help="model-config field, as in `python -m models.train` "
        "(e.g. layer_options.moba_block_size=512)",
    )
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        model="llm",
        preset="gpu",
        attention=args.attention,
        task="mqar",
        seq_len=args.seq,
        batch_size=1,
        overrides=tuple(args.overrides),
        out=str(out / "unused"),
        progress=False,
    )
    trace = out / "trace"
    print(json.dumps(train_gpu.step_time(cfg, 3, trace=trace)), flush=True)
    top, totals = top_ops(trace)
    with (out / "top_ops.jsonl").open("w") as fh:
        print(json.dumps(totals))
        fh.write(json.dumps(totals) + "\n")
        for name, ms, calls in top:
            line = json.dumps({"op": name[:160], "total_ms_2_steps": round(ms, 3), "calls": calls})
            print(line)
            fh.write(line + "\n")


if __name__ == "__main__":
    main()

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
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import train_gpu  # noqa: E402
from trace_ops import top_ops  # noqa: E402

from models import train as cli  # noqa: E402
from models.training import TrainConfig  # noqa: E402


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

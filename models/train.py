"""Command line: train a reference model with sparse attention.

    python -m models.train --model llm --attention hybrid_moba --task mqar --preset smoke \\
        --out runs/llm-smoke --device cpu

Every unset option takes the value of `--preset` (smoke: seconds on a CPU;
cpu: a few CPU minutes; gpu, the default: a few minutes on an H100). Rerunning
the same command resumes from the last checkpoint in `--out`.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import Any

from models.training.config import DEVICES, DTYPES, MODELS, PRESETS, TASKS


def _set_pair(text: str) -> tuple[str, Any]:
    """`--set FIELD=VALUE`, VALUE a Python literal (`2`, `0.5`, `'xla'`) or a bare string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {text!r}.")
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", choices=MODELS, default="llm")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="gpu",
        help="defaults for every unset option (default: gpu)",
    )
    p.add_argument(
        "--attention",
        help="llm: dense, sliding_window, streaming, moba, "
        "vertical_slash, nsa, hybrid_moba, hybrid_nsa, hybrid_swa, or a comma list "
        "cycled over layers; vit/dit: dense, window, neighborhood, hilo, biformer, "
        "or a comma list",
    )
    p.add_argument("--task", help="; ".join(f"{m}: {', '.join(t)}" for m, t in TASKS.items()))
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int, help="llm: tokens per sequence")
    p.add_argument("--image-size", type=int, help="vit/dit: image side in pixels")
    p.add_argument("--frames", type=int, help="dit on moving_shapes: frames per clip")
    p.add_argument("--vocab-size", type=int)
    p.add_argument("--num-pairs", type=int, help="llm: key-value pairs / needles / tokens")
    p.add_argument(
        "--min-pairs",
        type=int,
        help="llm: train on between this and --num-pairs "
        "pairs per sequence (a difficulty mix; eval always uses --num-pairs)",
    )
    p.add_argument("--dim", type=int, help="model width")
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int, help="llm: key/value heads (GQA)")
    p.add_argument(
        "--set",
        dest="overrides",
        type=_set_pair,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any model-config field, e.g. "
        "layer_options.moba_top_k=2 (llm) or options.topk=2 (vit/dit); repeatable",
    )
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init-from",
        help="start from the parameters of this finished run directory (fine-tuning, e.g. "
        "a longer --seq-len after a short one); optimizer and step start fresh",
    )
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype (default: bfloat16 on GPU)")
    p.add_argument(
        "--implementation",
        choices=("xla", "pallas_gpu", "pallas_tpu", "reference"),
        help="jaxsparse implementation (default: best for the device)",
    )
    p.add_argument("--out", default="runs/default", help="run directory (resumes if present)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--eval-batches", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.device == "cpu":
        # Before jax starts: no GPU backend is initialised (or grabs memory).
        os.environ["JAX_PLATFORMS"] = "cpu"
    from models.training import TrainConfig, train  # imports jax

    fields = {k: v for k, v in vars(args).items() if k != "overrides"}
    try:
        cfg = TrainConfig(overrides=tuple(args.overrides), **fields)
        result = train(cfg)
    except (ValueError, NotImplementedError) as e:  # NotImplementedError: --implementation
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped; rerun the same command to resume.", file=sys.stderr)
        return 130
    print(
        json.dumps(
            {
                "out": result.out,
                "steps": result.steps,
                "final_loss": result.final_loss,
                "eval": result.eval,
                "files": result.files,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    code = main()
    if code == 130:
        # Interrupted mid-step (the state is checkpointed): XLA's threads may still hold
        # the abandoned step, and tearing them down at exit aborted the process
        # ("terminate called without an active exception", exit 134). Leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

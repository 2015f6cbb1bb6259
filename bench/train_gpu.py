"""Issue 6 evidence: sparse-attention reference models against dense ones, on one GPU.

Usage (repo root, on the H100):
  python bench/train_gpu.py OUT_DIR            # ~15 min: the runs below at full size
  python bench/train_gpu.py OUT_DIR --small    # minutes on a CPU: the same code, tiny sizes

1. LLM on MQAR at 4k tokens (`models.train --model llm --preset gpu`: 2 layers,
   task `mqar` by default (`--llm-task`), 32 pairs; training sequences
   mix 1 to 32 pairs, eval at 32): dense attention
   and MoBA (chunks of 512, top 3) in every layer; `--hybrid` adds MoBA in one
   layer of two (`moba,dense`), `--nsa` adds NSA in every layer. All start from
   the same weights (the sparse layers have no extra parameters) and train for
   the same number of steps: the preset's, or fewer if one step of each at 4k
   (timed first) says they would not fit `--llm-minutes`. A length curriculum
   comes first: a dense model trains at `--llm-warmup-seq` (512) tokens for
   6,000 steps, `--llm-warmup-seeds` tried in turn until one reaches
   `--llm-warmup-target` accuracy (the recall circuit forms in some seeds
   only), and every run above starts from its parameters (`--llm-warmup-seq 0`:
   from scratch, where the circuit does not form at 4k). Reported: eval
   accuracy on held-out sequences, each sparse/dense ratio (target >= 0.95).
2. Training step time (forward + backward + AdamW; and the forward alone) of the
   same LLMs at 16k tokens, batch 1 (`--timing-batch 1,8`: also batch 8, the
   131k tokens per step of the 4k runs), with the best implementation for the
   device (and, with `--xla-too`, all on the XLA path); target: sparse faster
   than dense. Which jaxsparse implementations fell back is recorded;
   `--profile` also writes a jax.profiler trace of two steps per model.
3. ViT on scikit-learn's digits (`--model vit --preset gpu`; the drawn shapes
   when scikit-learn is missing): dense, HiLo and BiFormer attention; target:
   sparse within 2 accuracy points of dense.

Writes OUT_DIR/train_gpu.json (updated after every run, so a run cut short
keeps what it measured), OUT_DIR/summary.md (a table for BENCHMARKS.md),
PNG plots, and one run directory per training run (metrics.jsonl, loss.png).
Parts can run as separate commands into the same OUT_DIR (`--skip`); results
accumulate, and a training run that was cut short resumes from its checkpoint
when the same command is repeated.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from models.training import TrainConfig, experiments, loop, schedule, sharding, train  # noqa: E402
from models.training import metrics as metrics_lib  # noqa: E402

MOBA_4K = (("layer_options.moba_block_size", 512), ("layer_options.moba_top_k", 3))
NSA_4K = (("layer_options.nsa_top_n", 8), ("layer_options.nsa_window", 256))


class Recorder:
    """Collects results and rewrites train_gpu.json after each addition."""

    def __init__(self, out: pathlib.Path, meta: dict):
        self.out = out
        self.data = {"meta": meta, "llm": {}, "timing": {}, "vit": {}, "targets": {}}
        previous = out / "train_gpu.json"
        if previous.exists():  # a later part, or a rerun, adds to what is there
            old = json.loads(previous.read_text())
            for section in ("llm", "timing", "vit"):
                self.data[section].update(old.get(section, {}))
            self.data["meta"] = {**old.get("meta", {}), **meta}

    def put(self, section: str, key: str, value) -> None:
        self.data[section][key] = value
        (self.out / "train_gpu.json").write_text(json.dumps(self.data, indent=2))
        print(json.dumps({section: {key: value}}), flush=True)


class FallbackLog(logging.Handler):
    """Records jaxsparse's "cannot run this call" messages (implementation fallbacks)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: set[str] = set()

    def emit(self, record):
        self.messages.add(record.getMessage()[:300])


def llm_config(args, preset: str, attention: str, **fields) -> TrainConfig:
    """A run of the LLM on `--llm-task` with `attention`, without a progress bar."""
    return TrainConfig(
        model="llm",
        preset=preset,
        attention=attention,
        task=args.llm_task,
        progress=False,
        **fields,
    )


def training_run(rec, section, name, cfg) -> None:
    start = time.perf_counter()
    try:
        result = train(cfg)
    except Exception as e:  # keep going: one failed method must not hide the others
        rec.put(section, name, {"error": f"{type(e).__name__}: {e}"[:2000]})
        return
    records = metrics_lib.read(pathlib.Path(result.out) / "metrics.jsonl")
    rates = [
        r.get("tokens_per_s") or r.get("images_per_s") for r in records if r["kind"] == "train"
    ]
    rates = [r for r in rates if r]
    rec.put(
        section,
        name,
        {
            "eval_accuracy": result.eval.get("accuracy"),
            "eval_loss": result.eval.get("loss"),
            "final_train_loss": result.final_loss,
            "steps": result.steps,
            "wall_s": round(time.perf_counter() - start, 1),
            "throughput_median": statistics.median(rates) if rates else None,
            "curve": [(r["step"], r["accuracy"]) for r in records if r["kind"] == "eval"],
            "out": result.out,
        },
    )


def step_time(cfg: TrainConfig, reps: int, trace: pathlib.Path | None = None) -> dict:
    """Median ms of one jitted training step and of the forward alone (after compiling),
    and the jaxsparse fallbacks seen; `trace`: a profiler trace of two steps there."""
    cfg = cfg.resolve()
    exp = experiments.build(cfg)
    platform_name = jax.default_backend()
    dtype = jax.numpy.dtype(cfg.dtype or ("bfloat16" if platform_name == "gpu" else "float32"))
    model = exp.build(dtype=dtype, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = schedule.optimizer(cfg)
    params = nnx.to_pure_dict(params)
    state = {
        "step": jax.numpy.zeros((), jax.numpy.int32),
        "params": params,
        "opt_state": tx.init(params),
    }
    mesh = sharding.data_mesh(jax.local_devices()[:1])
    step = loop.make_train_step(exp, graphdef, rest, tx, cfg.seed)
    batch = sharding.shard_batch(exp.batch("train", 0), mesh)
    log = FallbackLog()
    logger = logging.getLogger("jaxsparse")
    logger.addHandler(log)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        t0 = time.perf_counter()
        state, out = step(state, batch)
        jax.block_until_ready(out)
        compile_s = time.perf_counter() - t0
        # The first call's output state is committed to the device, its input was not:
        # jit specialises on that, so the second call compiles again. Keep it untimed.
        jax.block_until_ready(step(state, batch))
        times = [_timed(lambda: step(state, batch)) for _ in range(reps)]
        forward = jax.jit(lambda p, b: exp.loss(nnx.merge(graphdef, p, rest), b, None)[0])
        jax.block_until_ready(forward(state["params"], batch))  # compile
        fwd_times = [_timed(lambda: forward(state["params"], batch)) for _ in range(reps)]
        if trace is not None:
            with jax.profiler.trace(str(trace), create_perfetto_trace=True):
                for _ in range(2):
                    jax.block_until_ready(step(state, batch))
    finally:
        logger.removeHandler(log)
        logger.setLevel(old_level)
    return {
        "step_ms": 1e3 * statistics.median(times),
        "forward_ms": 1e3 * statistics.median(fwd_times),
        "compile_s": round(compile_s, 1),
        "loss": float(out["loss"]),
        "fallbacks": sorted(log.messages),
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def equal_steps(rec, llm_runs, preset, small_llm, args) -> int:
    """The preset's steps, or fewer so that every LLM run fits the budget at equal steps.

    A rerun into the same OUT_DIR reuses the steps of its first run (so it resumes).
    """
    previous = pathlib.Path(args.out) / "llm-dense" / "config.json"
    if previous.exists():
        return json.loads(previous.read_text())["run"]["steps"]
    total_ms = 0.0
    for name, overrides in llm_runs.items():
        small = {k: v for k, v in small_llm.items() if k != "steps"}
        cfg = llm_config(args, preset, name, overrides=overrides, out="unused", **small)
        resolved = cfg.resolve()
        # The key names the shape: these are training-length steps at the training batch.
        key = f"{name}@T{resolved.seq_len}xB{resolved.batch_size}"
        try:
            r = step_time(cfg, reps=3)
        except Exception as e:
            rec.put("timing", key, {"error": f"{type(e).__name__}: {e}"[:2000]})
            continue
        rec.put("timing", key, r)
        total_ms += r["step_ms"]
    preset_steps = small_llm.get("steps") or TrainConfig(model="llm", preset=preset).resolve().steps
    fit = int(args.llm_minutes * 60e3 / max(total_ms, 1e-3) / 0.9)  # 10% for evals, data
    steps = max(100, min(preset_steps, fit // 100 * 100)) if not args.small else preset_steps
    rec.data["meta"]["llm_steps"] = steps
    return steps


def warm_up(rec, out, preset, small_llm, args) -> str:
    """Dense runs at `--llm-warmup-seq` tokens, one seed after another, until one reaches
    `--llm-warmup-target` eval accuracy (the recall circuit forms in some runs only);
    returns the run directory of the first that did, else of the best."""
    best, best_acc = None, -1.0
    for seed in (int(x) for x in args.llm_warmup_seeds.split(",")):
        cfg = llm_config(
            args,
            preset,
            "dense",
            seed=seed,
            out=str(out / f"llm-warmup-s{seed}"),
            **dict(small_llm, seq_len=args.llm_warmup_seq, steps=args.llm_warmup_steps),
        )
        name = f"dense@T{args.llm_warmup_seq} (warm-up, seed {seed})"
        training_run(rec, "llm", name, cfg)
        acc = rec.data["llm"][name].get("eval_accuracy") or 0.0
        if acc > best_acc:
            best, best_acc = cfg.out, acc
        if acc >= args.llm_warmup_target:
            break
    rec.data["meta"]["llm_init_from"] = best
    return best


def plots(rec: Recorder, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vit_task = rec.data["meta"].get("vit_task", "digits")
    for section, title, fname in (
        ("llm", "LLM on MQAR: eval accuracy", "llm_mqar.png"),
        ("vit", f"ViT on {vit_task}: eval accuracy", "vit.png"),
    ):
        runs = {k: v for k, v in rec.data[section].items() if "curve" in v}
        if not runs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, r in runs.items():
            steps, accs = zip(*r["curve"], strict=True) if r["curve"] else ((), ())
            axes[0].plot(steps, accs, "o-", label=name)
        axes[0].set(xlabel="step", ylabel="eval accuracy", ylim=(0, 1.02), title=title)
        axes[0].legend()
        names = list(runs)
        axes[1].bar(names, [runs[n]["eval_accuracy"] for n in names])
        axes[1].set(ylim=(0, 1.02), ylabel="final eval accuracy")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    timing = {k: v for k, v in rec.data["timing"].items() if "step_ms" in v and "@" not in k}
    if timing:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.bar(list(timing), [v["step_ms"] for v in timing.values()])
        ax.set(ylabel="training step (ms)", title=rec.data["meta"]["timing_title"])
        plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
        fig.tight_layout()
        fig.savefig(out / "llm_step_time.png", dpi=110)
        plt.close(fig)


def targets(rec: Recorder) -> None:
    llm, vit, timing = rec.data["llm"], rec.data["vit"], rec.data["timing"]
    dense = (llm.get("dense") or {}).get("eval_accuracy")
    for name, r in llm.items():
        if name != "dense" and "@" not in name and dense and r.get("eval_accuracy") is not None:
            ratio = r["eval_accuracy"] / dense
            rec.put(
                "targets",
                f"mqar_{name}_vs_dense",
                {"ratio": round(ratio, 4), "target": ">= 0.95", "met": ratio >= 0.95},
            )
    for name, r in timing.items():
        plain = not name.endswith("[xla]") and "@" not in name
        kind, _, batch = name.partition(" ")  # "moba [B8]": batch 8; the dense of that batch
        dense_ms = (timing.get(f"dense {batch}".strip()) or {}).get("step_ms")
        if kind != "dense" and plain and dense_ms and "step_ms" in r:
            speedup = dense_ms / r["step_ms"]
            rec.put(
                "targets",
                f"step_time_{name}_vs_dense",
                {"speedup": round(speedup, 3), "target": "> 1", "met": speedup > 1},
            )
    dense = (vit.get("dense") or {}).get("eval_accuracy")
    for name, r in vit.items():
        if name != "dense" and dense is not None and r.get("eval_accuracy") is not None:
            gap = 100 * (dense - r["eval_accuracy"])
            rec.put(
                "targets",
                f"vit_{name}_vs_dense",
                {"points_below_dense": round(gap, 2), "target": "<= 2", "met": gap <= 2},
            )


def summary(rec: Recorder, out: pathlib.Path) -> None:
    m = rec.data["meta"]
    lines = [
        f"### Reference models ({m['device']}, {m['date']})",
        "",
        f"`python bench/train_gpu.py OUT_DIR{' --small' if m['small'] else ''}`",
        "",
        "| run | eval accuracy | steps | wall (s) | throughput |",
        "|---|---|---|---|---|",
    ]
    for section in ("llm", "vit"):
        for name, r in rec.data[section].items():
            if "error" in r:
                lines.append(f"| {section} {name} | error: {r['error'][:80]} | | | |")
                continue
            unit = "tok/s" if section == "llm" else "img/s"
            lines.append(
                f"| {section} {name} | {r['eval_accuracy']:.4f} | {r['steps']} | "
                f"{r['wall_s']} | {r['throughput_median'] or 0:,.0f} {unit} |"
            )
    lines += [
        "",
        f"| {m['timing_title']} | step (ms) | forward (ms) | fallbacks |",
        "|---|---|---|---|",
    ]
    for name, r in rec.data["timing"].items():
        step_ms = f"{r['step_ms']:.1f}" if "step_ms" in r else r.get("error", "")[:80]
        fwd_ms = f"{r['forward_ms']:.1f}" if "forward_ms" in r else ""
        fallbacks = "; ".join(r.get("fallbacks", []))[:160]
        lines.append(f"| {name} | {step_ms} | {fwd_ms} | {fallbacks} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    for name, r in rec.data["targets"].items():
        value = {k: v for k, v in r.items() if k != "met"}
        lines.append(f"| {name} | {value} | {r['met']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out")
    p.add_argument("--small", action="store_true", help="tiny sizes (CPU check of the script)")
    p.add_argument("--llm-steps", type=int, help="steps per LLM run (default: the gpu preset)")
    p.add_argument(
        "--vit-task",
        choices=("digits", "shapes"),
        help="ViT image task (default: digits if scikit-learn is installed, else shapes)",
    )
    p.add_argument("--vit-steps", type=int, help="steps per ViT run (default: the gpu preset)")
    p.add_argument("--timing-seq", type=int, default=16384)
    p.add_argument(
        "--timing-batch",
        default="1",
        help="comma list of batch sizes for the step times (8 at 16k: the 131k tokens per "
        "step of the 4k training runs)",
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--llm-minutes",
        type=float,
        default=8.0,
        help="training budget of all LLM runs together (sets equal steps)",
    )
    p.add_argument("--nsa", action="store_true", help="also train and time NSA in every layer")
    p.add_argument("--hybrid", action="store_true", help="also MoBA in one layer of two")
    p.add_argument("--profile", action="store_true", help="jax.profiler traces of the timings")
    p.add_argument("--xla-too", action="store_true", help="also time everything on the XLA path")
    p.add_argument("--skip", default="", help="comma list of parts to skip: llm,timing,vit")
    p.add_argument(
        "--llm-task",
        default="mqar",
        help="LLM task (mqar; mqar_spans: recall distances of every scale up to T)",
    )
    p.add_argument(
        "--vit-runs", default="dense,hilo,biformer", help="comma list of ViT attentions to train"
    )
    p.add_argument(
        "--llm-warmup-seq",
        type=int,
        help="length curriculum: first train a dense model at this length (default 512; "
        "--small: 64); every LLM run then starts from its parameters (0: no curriculum)",
    )
    p.add_argument(
        "--llm-warmup-steps", type=int, help="steps of that first run (default 6000; --small: 10)"
    )
    p.add_argument(
        "--llm-warmup-seeds",
        default="1,2,3,4,0,5",
        help="comma list of seeds to try for it, in order, until one reaches --llm-warmup-target",
    )
    p.add_argument("--llm-warmup-target", type=float, default=0.9)
    p.add_argument(
        "--llm-init-from",
        help="run directory of a finished LLM run (e.g. `python -m models.train` at a short "
        "length) whose parameters start every LLM run; instead of --llm-warmup-seq",
    )
    args = p.parse_args(argv)
    if args.llm_init_from:
        args.llm_warmup_seq = 0
    if args.llm_warmup_seq is None:
        args.llm_warmup_seq = 64 if args.small else 512
    if args.llm_warmup_steps is None:
        args.llm_warmup_steps = 10 if args.small else 6000
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    preset = "smoke" if args.small else "gpu"
    timing_seq = 512 if args.small else args.timing_seq
    devices = jax.devices()
    meta = {
        "device": f"{len(devices)} x {devices[0].device_kind}",
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "small": args.small,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "timing_title": f"LLM training step, T={timing_seq} ([Bn]: batch n, else 1)",
    }
    rec = Recorder(out, meta)

    llm_runs = {"dense": (), "moba": MOBA_4K}
    if args.hybrid:
        llm_runs["moba,dense"] = MOBA_4K
    if args.nsa:
        llm_runs["nsa"] = NSA_4K
    small_llm = (
        dict(
            seq_len=256,
            vocab_size=64,
            num_pairs=8,
            steps=args.llm_steps or 30,
            eval_every=15,
            checkpoint_every=15,
        )
        if args.small
        else {}
    )
    if args.small:
        small_moba = (("layer_options.moba_block_size", 64), ("layer_options.moba_top_k", 2))
        small_nsa = (
            ("layer_options.nsa_kernel_size", 16),
            ("layer_options.nsa_stride", 8),
            ("layer_options.nsa_block_size", 32),
            ("layer_options.nsa_top_n", 4),
            ("layer_options.nsa_window", 64),
        )
        llm_runs = {
            k: (small_nsa if k == "nsa" else small_moba) if v else v for k, v in llm_runs.items()
        }
    if "llm" not in skip:
        init_from = args.llm_init_from
        if args.llm_warmup_seq:
            init_from = warm_up(rec, out, preset, small_llm, args)
        steps = args.llm_steps or equal_steps(rec, llm_runs, preset, small_llm, args)
        for name, overrides in llm_runs.items():
            kw = dict(small_llm, steps=steps, init_from=init_from)
            cfg = llm_config(
                args, preset, name, overrides=overrides, out=str(out / f"llm-{name}"), **kw
            )
            training_run(rec, "llm", name, cfg)
    if "timing" not in skip:
        batches = [int(x) for x in args.timing_batch.split(",")]
        for batch, (name, overrides) in itertools.product(batches, llm_runs.items()):
            for impl in (None, "xla") if args.xla_too else (None,):
                # "moba", "moba [B8]" (batch 8), "moba[xla]"
                key = name + ("[xla]" if impl else "") + (f" [B{batch}]" if batch != 1 else "")
                cfg = llm_config(
                    args,
                    preset,
                    name,
                    seq_len=timing_seq,
                    batch_size=batch,
                    implementation=impl,
                    overrides=overrides,
                    out=str(out / "unused"),
                    **({"vocab_size": 64, "num_pairs": 8} if args.small else {}),
                )
                trace = out / f"trace-{key}" if args.profile else None
                try:
                    rec.put("timing", key, step_time(cfg, args.reps, trace=trace))
                except Exception as e:
                    rec.put("timing", key, {"error": f"{type(e).__name__}: {e}"[:2000]})
    if "vit" not in skip:
        # The digits ship with scikit-learn; without it, the drawn shapes (no download either).
        import importlib.util

        task = args.vit_task or ("digits" if importlib.util.find_spec("sklearn") else "shapes")
        rec.data["meta"]["vit_task"] = task
        for name in filter(None, args.vit_runs.split(",")):
            kw = {"steps": args.vit_steps or (30 if args.small else None)}
            kw = {k: v for k, v in kw.items() if v}
            cfg = TrainConfig(
                model="vit",
                preset=preset,
                attention=name,
                task=task,
                out=str(out / f"vit-{name}"),
                progress=False,
                **kw,
            )
            training_run(rec, "vit", name, cfg)
    targets(rec)
    plots(rec, out)
    summary(rec, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`train(cfg)`: the training loop with checkpoints, resume, metrics and plots.

Resume is exact: the batch of step s and the random key of step s are pure
functions of (seed, s), and the optimizer state and step counter live in the
checkpoint, so a resumed run produces the same losses as an uninterrupted one.
Ctrl-C and SIGTERM save a checkpoint of the last finished step before exiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.training import checkpoint, experiments, metrics, plots, progress, schedule, sharding
from models.training.config import TrainConfig


@dataclasses.dataclass
class Result:
    """What `train` returns (and writes to `<out>/result.json`)."""

    out: str
    steps: int
    final_loss: float | None
    eval: dict[str, float]
    files: dict[str, str]
    devices: int = 1
    interrupted: bool = False


def train(cfg: TrainConfig) -> Result:
    """Train (or resume) the run described by `cfg`; see the module docstring."""
    cfg = cfg.resolve()
    exp = experiments.build(cfg)
    devices = sharding.devices_for(cfg.device)
    platform = devices[0].platform
    if cfg.implementation is None and platform != jax.default_backend():
        # jaxsparse picks kernels for the default backend; elsewhere the XLA path runs.
        cfg = dataclasses.replace(cfg, implementation="xla")
        exp = experiments.build(cfg)
    mesh = sharding.data_mesh(devices)
    sharding.check_batch(cfg.batch_size, mesh)
    dtype = jnp.dtype(cfg.dtype or ("bfloat16" if platform == "gpu" else "float32"))

    run_dir = pathlib.Path(cfg.out)
    checkpoint.check_or_write_config(
        run_dir,
        {
            "run": cfg.run_fields(),
            "model": dataclasses.asdict(exp.model_config),
            "dtype": dtype.name,
        },
    )
    ckpt = checkpoint.Checkpointer(run_dir)

    with jax.default_device(devices[0]):
        model = exp.build(dtype=dtype, rngs=nnx.Rngs(cfg.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, lr_fn = schedule.optimizer(cfg), schedule.learning_rate(cfg)
    params = nnx.to_pure_dict(params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    state = sharding.replicate(state, mesh)
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(start, state)
    start = int(start or 0)

    step_fn = make_train_step(exp, graphdef, rest, tx, cfg.seed)
    eval_fn = make_eval_step(exp, graphdef, rest, cfg.seed)
    log = metrics.MetricsWriter(run_dir / "metrics.jsonl", resume_step=start)
    bar = progress.Bar(
        cfg.steps, start, exp.unit, enabled=cfg.progress, description=f"{cfg.model}/{cfg.attention}"
    )
    last_eval: dict[str, float] = {}
    last_loss, interrupted = None, False
    window_units, window_start = 0, time.perf_counter()
    try:
        with bar, _sigterm_as_interrupt():
            for step in range(start, cfg.steps):
                batch = exp.batch("train", step)
                state, out = step_fn(state, sharding.shard_batch(batch, mesh))
                window_units += exp.units(batch)
                done = step + 1
                if step == start:  # the first step compiles: keep it out of throughput
                    jax.block_until_ready(out)
                    log.write(
                        {
                            "kind": "compile",
                            "step": done,
                            "seconds": time.perf_counter() - window_start,
                        }
                    )
                    window_units, window_start = 0, time.perf_counter()
                if done % cfg.log_every == 0 or done == cfg.steps:
                    out = jax.device_get(out)  # waits for the step: throughput is real
                    elapsed = time.perf_counter() - window_start
                    rate = window_units / elapsed if window_units else None
                    last_loss = float(out["loss"])
                    log.write(
                        {
                            "kind": "train",
                            "step": done,
                            **_floats(out),
                            f"{exp.unit}_per_s": rate,
                            "lr": float(lr_fn(step)),
                        }
                    )
                    bar.update(done, last_loss, rate)
                    window_units, window_start = 0, time.perf_counter()
                else:
                    bar.update(done)
                if done % cfg.checkpoint_every == 0 and done != cfg.steps:
                    ckpt.save(done, state)
                if done % cfg.eval_every == 0 or done == cfg.steps:
                    last_eval = _evaluate(exp, eval_fn, state, mesh, cfg.eval_batches)
                    log.write({"kind": "eval", "step": done, **last_eval})
                    bar.print(
                        f"step {done}: "
                        + ", ".join(f"eval {k} {v:.4f}" for k, v in last_eval.items())
                    )
                    window_start = time.perf_counter()  # eval time is not training time
    except KeyboardInterrupt:
        interrupted = True
        print(
            f"\ninterrupted: saving the last finished step to {run_dir / 'checkpoints'}",
            file=sys.stderr,
        )
    finally:
        # `state` is only ever replaced whole, so it holds the last finished step.
        step = int(jax.device_get(state["step"]))
        with _sigterm_ignored():
            if step > 0:
                ckpt.save(step, state)
            ckpt.close()
            log.close()
    if not interrupted and not last_eval:  # resumed a finished run: evaluate it again
        last_eval = _evaluate(exp, eval_fn, state, mesh, cfg.eval_batches)
    files = {"metrics": str(run_dir / "metrics.jsonl")}
    if not interrupted:
        files.update(_finish(exp, cfg, graphdef, rest, state, run_dir))
    result = Result(
        out=str(run_dir),
        steps=step,
        final_loss=last_loss,
        eval=last_eval,
        files=files,
        devices=len(devices),
        interrupted=interrupted,
    )
    (run_dir / "result.json").write_text(_json(dataclasses.asdict(result)))
    if interrupted:
        raise KeyboardInterrupt
    return result


def make_train_step(exp, graphdef, rest, tx, seed: int):
    """The jitted `(state, batch) -> (state, metrics)` of one optimizer step."""

    def loss_fn(params, batch, key):
        model = nnx.merge(graphdef, params, rest)
        return exp.loss(model, batch, key)

    @jax.jit
    def step_fn(state, batch):
        key = jax.random.fold_in(jax.random.key(seed), state["step"])
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
        # optax's bias correction mixes Python floats with the int32 count, which
        # strict dtype promotion (used by the tests) rejects.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(jnp.add, state["params"], updates)
        grad_norm = jnp.sqrt(
            sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(grads))
        )
        new = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
        return new, {"loss": loss, "grad_norm": grad_norm, **aux}

    return step_fn


def make_eval_step(exp, graphdef, rest, seed: int):
    """The jitted `(params, batch, index) -> metrics` of one eval batch."""

    @jax.jit
    def eval_fn(params, batch, index):
        key = jax.random.fold_in(jax.random.key(seed + 1), index)  # fixed eval noise
        return exp.eval_metrics(nnx.merge(graphdef, params, rest), batch, key)

    return eval_fn


def _evaluate(exp, eval_fn, state, mesh, num_batches: int) -> dict[str, float]:
    """Mean eval metrics over a fixed set of held-out batches."""
    totals: dict[str, float] = {}
    for i in range(num_batches):
        batch = sharding.shard_batch(exp.batch("eval", i), mesh)
        for k, v in _floats(jax.device_get(eval_fn(state["params"], batch, i))).items():
            totals[k] = totals.get(k, 0.0) + v / num_batches
    return totals


def _finish(exp, cfg, graphdef, rest, state, run_dir: pathlib.Path) -> dict[str, str]:
    records = metrics.read(run_dir / "metrics.jsonl")
    png = run_dir / "loss.png"
    plots.loss_curve(records, png, title=f"{cfg.model} / {cfg.attention} / {cfg.task}")
    model = nnx.merge(graphdef, state["params"], rest)
    return {"loss_png": str(png), **exp.finish(model, run_dir)}


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Treat SIGTERM (a killed job) like Ctrl-C, so the run checkpoints before exiting."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigterm_ignored():
    """Finish the final checkpoint even if SIGTERM arrives again meanwhile."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _floats(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in d.items()}


def _json(d: dict) -> str:
    import json

    return json.dumps(d, indent=2)

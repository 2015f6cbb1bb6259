"""`train(cfg)`: the training loop with checkpoints, resume, metrics and plots.

Resume is exact: the batch of step s and the random key of step s are pure
functions of (seed, s), and the optimizer state and step counter live in the
checkpoint, so a resumed run produces the same losses as an uninterrupted one.
Ctrl-C and SIGTERM save a checkpoint of the last finished step before exiting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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
from models.training.config import NOT_COMPARED, TrainConfig


class DivergedError(ValueError):
    """The training loss became NaN or infinite."""


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


@dataclasses.dataclass
class _Run:
    """Everything one training run holds; `state` is replaced whole after each step."""

    cfg: TrainConfig
    exp: Any
    devices: list
    mesh: Any
    run_dir: pathlib.Path
    ckpt: checkpoint.Checkpointer
    graphdef: Any
    rest: Any
    state: dict
    start: int
    step_fn: Any
    eval_fn: Any
    last_loss: float | None = None
    last_eval: dict[str, float] = dataclasses.field(default_factory=dict)


def train(cfg: TrainConfig) -> Result:
    """Train (or resume) the run described by `cfg`; see the module docstring."""
    run = _prepare(cfg.resolve())
    log = metrics.MetricsWriter(run.run_dir / "metrics.jsonl", resume_step=run.start)
    interrupted = diverged = False
    try:
        with _sigterm_as_interrupt():
            _train_steps(run, log)
    except KeyboardInterrupt:
        interrupted = True
        print(
            f"\ninterrupted: saving the last finished step to {run.run_dir / 'checkpoints'}",
            file=sys.stderr,
        )
    except DivergedError:
        diverged = True  # its parameters are not worth a checkpoint
        raise
    finally:
        step = int(jax.device_get(run.state["step"]))
        with _sigterm_ignored():
            if step > 0 and not diverged:
                run.ckpt.save(step, run.state)
            run.ckpt.close()
            log.close()
    if run.last_loss is None:  # no step logged now (a finished run, rerun): the stored one
        train_records = [r for r in metrics.read(log.path) if r.get("kind") == "train"]
        run.last_loss = train_records[-1]["loss"] if train_records else None
    files = {"metrics": str(run.run_dir / "metrics.jsonl")}
    if not interrupted:
        if not run.last_eval:  # a finished run, resumed: evaluate it again
            run.last_eval = _evaluate(run)
        files.update(_finish(run))
    result = Result(
        out=str(run.run_dir),
        steps=step,
        final_loss=run.last_loss,
        eval=run.last_eval,
        files=files,
        devices=len(run.devices),
        interrupted=interrupted,
    )
    (run.run_dir / "result.json").write_text(json.dumps(dataclasses.asdict(result), indent=2))
    if interrupted:
        raise KeyboardInterrupt
    return result


def _prepare(cfg: TrainConfig) -> _Run:
    """Devices, the stored config (or a refusal), the model and its state, restored if saved."""
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
    stored = {
        "run": cfg.run_fields(),
        "model": dataclasses.asdict(exp.model_config),
        "dtype": dtype.name,
    }
    checkpoint.check_or_write_config(run_dir, stored, tuple(f"run.{k}" for k in NOT_COMPARED))
    with jax.default_device(devices[0]):
        model = exp.build(dtype=dtype, rngs=nnx.Rngs(cfg.seed))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = schedule.optimizer(cfg)
    params = nnx.to_pure_dict(params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    state = sharding.replicate(state, mesh)
    if cfg.init_from is not None and not checkpoint.has_checkpoint(run_dir):
        state["params"], fresh = checkpoint.restore_params(
            pathlib.Path(cfg.init_from), state["params"], stored["model"]
        )
        if fresh:
            print(
                f"init_from {cfg.init_from}: {len(fresh)} parameters it does not hold keep "
                f"their initialization: {', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}",
                file=sys.stderr,
            )
    ckpt = checkpoint.Checkpointer(run_dir)  # opened last: nothing above can leave it open
    try:
        start = ckpt.latest_step()
        if start is not None:
            state = ckpt.restore(start, state)
    except BaseException:
        ckpt.close()
        raise
    return _Run(
        cfg=cfg,
        exp=exp,
        devices=devices,
        mesh=mesh,
        run_dir=run_dir,
        ckpt=ckpt,
        graphdef=graphdef,
        rest=rest,
        state=state,
        start=int(start or 0),
        step_fn=make_train_step(exp, graphdef, rest, tx, cfg.seed),
        eval_fn=make_eval_step(exp, graphdef, rest, cfg.seed),
    )


def _train_steps(run: _Run, log: metrics.MetricsWriter) -> None:
    """Steps `run.start .. cfg.steps`, with logs, checkpoints and evals on their schedules."""
    cfg, exp = run.cfg, run.exp
    lr_fn = schedule.learning_rate(cfg)
    bar = progress.Bar(
        cfg.steps,
        run.start,
        exp.unit,
        enabled=cfg.progress,
        description=f"{cfg.model}/{cfg.attention}",
    )
    units, since = 0, time.perf_counter()
    with bar:
        for step in range(run.start, cfg.steps):
            batch = exp.batch("train", step)
            # `run.state` (what an interrupt saves) advances only once the step's train
            # record is written: a checkpoint never lies past the logged records.
            state, out = run.step_fn(run.state, sharding.shard_batch(batch, run.mesh))
            units += exp.units(batch)
            done = step + 1
            if step == run.start:  # the first step compiles: keep it out of throughput
                jax.block_until_ready(out)
                log.write({"kind": "compile", "step": done, "seconds": time.perf_counter() - since})
                units, since = 0, time.perf_counter()
            if done % cfg.log_every == 0 or done == cfg.steps:
                out = _floats(jax.device_get(out))  # waits for the step: the rate is real
                rate = units / (time.perf_counter() - since) if units else None
                if not np.isfinite(out["loss"]):  # checked only here: no extra device sync
                    raise DivergedError(
                        f"the training loss is {out['loss']} at step {done}: training diverged. "
                        f"Rerun with a lower --lr (now {cfg.lr:g}) or more --warmup-steps, "
                        "in a new --out directory."
                    )
                run.last_loss = out["loss"]
                log.write(
                    {
                        "kind": "train",
                        "step": done,
                        **out,
                        f"{exp.unit}_per_s": rate,
                        "lr": float(lr_fn(step)),
                    }
                )
                bar.update(done, run.last_loss, rate)
                units, since = 0, time.perf_counter()
            else:
                bar.update(done)
            run.state = state
            if done % cfg.checkpoint_every == 0 and done != cfg.steps:
                run.ckpt.save(done, run.state)
            if done % cfg.eval_every == 0 or done == cfg.steps:
                run.last_eval = _evaluate(run)
                log.write({"kind": "eval", "step": done, **run.last_eval})
                bar.print(
                    f"step {done}: "
                    + ", ".join(f"eval {k} {v:.4f}" for k, v in run.last_eval.items())
                )
                since = time.perf_counter()  # eval time is not training time


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


def _evaluate(run: _Run) -> dict[str, float]:
    """Mean eval metrics over a fixed set of held-out batches."""
    n = run.cfg.eval_batches
    totals: dict[str, float] = {}
    for i in range(n):
        batch = sharding.shard_batch(run.exp.batch("eval", i), run.mesh)
        out = _floats(jax.device_get(run.eval_fn(run.state["params"], batch, i)))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + v / n
    return totals


def _finish(run: _Run) -> dict[str, str]:
    """The loss-curve PNG and the experiment's extras (DiT samples)."""
    cfg = run.cfg
    png = run.run_dir / "loss.png"
    records = metrics.read(run.run_dir / "metrics.jsonl")
    plots.loss_curve(records, png, title=f"{cfg.model} / {cfg.attention} / {cfg.task}")
    model = nnx.merge(run.graphdef, run.state["params"], run.rest)
    return {"loss_png": str(png), **run.exp.finish(model, run.run_dir)}


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

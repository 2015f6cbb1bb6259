"""Helpers for the model tests: a tiny jitted optimizer loop on one fixed batch."""

from __future__ import annotations

import jax
import optax
from flax import nnx


def fit(model: nnx.Module, loss_fn, steps: int = 6, lr: float = 3e-3) -> list[float]:
    """Adam on `loss_fn(model)` for `steps` steps; the losses before each step.

    Overfitting one fixed batch must lower the loss for any working model, so
    this checks that gradients reach the parameters through sparse attention.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest)))(params)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes python floats and int32
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    return losses

"""Flow matching (rectified flow) for the DiT: the training loss and an Euler sampler.

Noise and data are joined by straight lines, `x_t = (1 - t) x_0 + t eps`
(t = 0 data, t = 1 noise), and the model learns their velocity
`v = eps - x_0` (Lipman et al. 2023; Liu et al. 2023). Sampling integrates
`dx/dt = v` from t = 1 down to t = 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def flow_loss(model, images, labels, key):
    """Mean squared error of the predicted velocity at random times and noise."""
    k_t, k_eps = jax.random.split(key)
    b = images.shape[0]
    t = jax.random.uniform(k_t, (b,), jnp.float32)
    eps = jax.random.normal(k_eps, images.shape, jnp.float32)
    expand = (slice(None),) + (None,) * (images.ndim - 1)
    x_t = (1.0 - t[expand]) * images + t[expand] * eps
    v = model(x_t, t, labels)
    return jnp.mean((v - (eps - images)) ** 2)


def sample(model, labels, shape: tuple[int, ...], key, *, steps: int = 32):
    """Euler integration from noise to data: `[B, *shape]` samples for `labels [B]`."""
    b = labels.shape[0]
    x = jax.random.normal(key, (b,) + tuple(shape), jnp.float32)
    dt = 1.0 / steps

    def euler(i, x):  # a loop, not unrolled: the model compiles once
        t = jnp.full((b,), 1.0, jnp.float32) - i.astype(jnp.float32) * dt
        return x - dt * model(x, t, labels)

    return jax.lax.fori_loop(0, steps, euler, x)

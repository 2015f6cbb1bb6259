"""The optimizer: AdamW with linear warmup, cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from models.training.config import TrainConfig


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine decay to `lr / 10` at the last step.

    Step s uses the schedule's value at s + 1, so the first step already learns
    (a warmup from 0 would spend it on a zero update).
    """
    warmup = min(cfg.warmup_steps, cfg.steps)
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.lr,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.lr / 10,
    )
    return lambda count: base(count + 1)


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    # Decay matrices only: norms' scales, biases and 1-D params are not shrunk.
    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            learning_rate(cfg), b1=0.9, b2=0.95, weight_decay=cfg.weight_decay, mask=decay_mask
        ),
    )

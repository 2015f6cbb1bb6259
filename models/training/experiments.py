"""What each model trains on: its config, model, batches, loss, eval metrics and extras.

An experiment is built from a resolved `TrainConfig` and exposes:
  * `model_config` (a frozen dataclass, stored beside checkpoints),
  * `build(dtype, rngs)` -> the `nnx.Module`,
  * `batch(split, step)` -> numpy arrays (a pure function of seed, split, step),
  * `loss(model, batch, key)` -> `(loss, metrics)` (traced),
  * `eval_metrics(model, batch, key)` -> metrics (traced; averaged over batches),
  * `units(batch)` -> tokens or images in a batch (throughput),
  * `finish(model, out_dir)` -> extra files (e.g. DiT samples).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import flow
from models.data import images, lm_tasks, videos
from models.data.rng import batch_rng
from models.dit import DiT, DiTConfig
from models.llm import LLM, LLMConfig, token_loss
from models.training.config import TrainConfig
from models.vit import ViT, ViTConfig, classification_loss


def apply_overrides(config: Any, overrides: tuple[tuple[str, Any], ...]) -> Any:
    """`dataclasses.replace` with dotted field names (`layer_options.window`)."""
    for name, value in overrides:
        head, _, rest = name.partition(".")
        fields = {f.name for f in dataclasses.fields(config)}
        if head not in fields:
            raise ValueError(
                f"unknown field {name!r} for {type(config).__name__}; valid fields: "
                f"{', '.join(sorted(fields))}."
            )
        current = getattr(config, head)
        if rest:
            if not dataclasses.is_dataclass(current):
                raise ValueError(
                    f"{type(config).__name__}.{head} is {current!r}, which has no fields: "
                    f"{name!r} cannot be set; use {head}=VALUE."
                )
            value = apply_overrides(current, ((rest, value),))
        elif dataclasses.is_dataclass(current) and type(value) is not type(current):
            inner = ", ".join(f.name for f in dataclasses.fields(current))
            raise ValueError(
                f"{type(config).__name__}.{head} holds options ({inner}); set one of them "
                f"({head}.FIELD=VALUE) instead of replacing it by {value!r}."
            )
        config = dataclasses.replace(config, **{head: value})
    return config


def _with_overrides(base: Any, cfg: TrainConfig, task_fields: dict[str, str]) -> Any:
    """`base` with the preset's and the run's overrides; `task_fields` (name -> how to set it)
    must match the data, so a `--set` of them is refused."""
    for name, _ in cfg.overrides:
        if name in task_fields:
            raise ValueError(f"--set {name}=... would not match the data; {task_fields[name]}.")
    return apply_overrides(base, cfg.model_overrides())


def _model_fields(cfg: TrainConfig, **names: str) -> dict[str, Any]:
    """TrainConfig fields that were given, renamed to the model config's names."""
    return {dst: getattr(cfg, src) for src, dst in names.items() if getattr(cfg, src) is not None}


class LLMExperiment:
    """A decoder LM on a synthetic long-context task; accuracy on the answer tokens."""

    unit = "tokens"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.task = lm_tasks.LMTask(
            name=cfg.task,
            seq_len=cfg.seq_len,
            vocab_size=cfg.vocab_size,
            num_pairs=cfg.num_pairs,
            min_pairs=cfg.min_pairs,
        )
        base = LLMConfig(
            vocab_size=cfg.vocab_size,
            attention=cfg.attention,
            implementation=cfg.implementation,
            **_model_fields(
                cfg, dim="dim", layers="num_layers", heads="num_heads", kv_heads="num_kv_heads"
            ),
        )
        self.model_config = _with_overrides(
            base, cfg, {"vocab_size": "use --vocab-size (it sizes the task's tokens too)"}
        )

    def build(self, *, dtype, rngs):
        return LLM(self.model_config, dtype=dtype, rngs=rngs)

    def batch(self, split: str, step: int) -> dict[str, np.ndarray]:
        return self.task.batch(batch_rng(self.cfg.seed, split, step), self.cfg.batch_size, split)

    def loss(self, model, batch, key):
        loss, acc = token_loss(model(batch["inputs"]), batch["targets"], batch["weights"])
        return loss, {"accuracy": acc}

    def eval_metrics(self, model, batch, key):
        loss, metrics = self.loss(model, batch, key)
        return {"loss": loss, **metrics}

    def units(self, batch) -> int:
        return int(np.prod(batch["inputs"].shape))

    def finish(self, model, out_dir: pathlib.Path) -> dict[str, Any]:
        return {}


# Model fields the image data decides.
_IMAGE_FIELDS = {
    "image_size": "use --image-size",
    "channels": "the images have 1 channel",
    "num_classes": "--task decides it (digits: 10, shapes and moving_shapes: 6)",
}


class ViTExperiment:
    """Image classification; accuracy on the held-out split."""

    unit = "images"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.task = images.ImageTask(name=cfg.task, image_size=cfg.image_size)
        patch = 4 if cfg.image_size >= 16 else 2
        base = ViTConfig(
            image_size=cfg.image_size,
            patch_size=patch,
            num_classes=self.task.num_classes,
            attention=cfg.attention,
            implementation=cfg.implementation,
            **_model_fields(cfg, dim="dim", layers="num_layers", heads="num_heads"),
        )
        self.model_config = _with_overrides(base, cfg, _IMAGE_FIELDS)

    def build(self, *, dtype, rngs):
        return ViT(self.model_config, dtype=dtype, rngs=rngs)

    def batch(self, split: str, step: int) -> dict[str, np.ndarray]:
        return self.task.batch(
            batch_rng(self.cfg.seed, split, step), self.cfg.batch_size, split, step
        )

    def loss(self, model, batch, key):
        loss, acc = classification_loss(model(batch["images"]), batch["labels"])
        return loss, {"accuracy": acc}

    def eval_metrics(self, model, batch, key):
        loss, metrics = self.loss(model, batch, key)
        return {"loss": loss, **metrics}

    def units(self, batch) -> int:
        return int(batch["images"].shape[0])

    def finish(self, model, out_dir: pathlib.Path) -> dict[str, Any]:
        return {}


class DiTExperiment:
    """Class-conditional flow matching on images or videos; eval loss and a sample grid."""

    unit = "images"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.task == "moving_shapes":
            self.task = videos.VideoTask(frames=cfg.frames, image_size=cfg.image_size)
            frames = cfg.frames
        else:
            self.task = images.ImageTask(name=cfg.task, image_size=cfg.image_size)
            frames = 0
        base = DiTConfig(
            image_size=cfg.image_size,
            frames=frames,
            patch_size=2,
            num_classes=self.task.num_classes,
            attention=cfg.attention,
            implementation=cfg.implementation,
            **_model_fields(cfg, dim="dim", layers="num_layers", heads="num_heads"),
        )
        self.model_config = _with_overrides(
            base, cfg, {**_IMAGE_FIELDS, "frames": "use --frames (with --task moving_shapes)"}
        )

    def build(self, *, dtype, rngs):
        return DiT(self.model_config, dtype=dtype, rngs=rngs)

    def batch(self, split: str, step: int) -> dict[str, np.ndarray]:
        return self.task.batch(
            batch_rng(self.cfg.seed, split, step), self.cfg.batch_size, split, step
        )

    def loss(self, model, batch, key):
        return flow.flow_loss(model, batch["images"], batch["labels"], key), {}

    def eval_metrics(self, model, batch, key):
        return {"loss": flow.flow_loss(model, batch["images"], batch["labels"], key)}

    def units(self, batch) -> int:
        shape = batch["images"].shape
        return int(shape[0] * (shape[1] if self.model_config.frames else 1))

    def finish(self, model, out_dir: pathlib.Path) -> dict[str, Any]:
        """Draw one sample per class (first frames and, for video, a strip of frames)."""
        from models.training import plots

        n = self.task.num_classes
        labels = jnp.arange(n, dtype=jnp.int32)
        shape = self.model_config.input_shape
        steps = 8 if self.cfg.preset == "smoke" else 32
        fn = nnx.jit(lambda m, y, k: flow.sample(m, y, shape, k, steps=steps))
        x = np.asarray(fn(model, labels, jax.random.key(self.cfg.seed + 7)))
        path = out_dir / "samples.png"
        plots.sample_grid(x, path, title=f"DiT ({self.model_config.attention}) samples")
        return {"samples_png": str(path)}


EXPERIMENTS = {"llm": LLMExperiment, "vit": ViTExperiment, "dit": DiTExperiment}


def build(cfg: TrainConfig):
    """The experiment of a resolved `TrainConfig`."""
    return EXPERIMENTS[cfg.model](cfg)

"""`TrainConfig`: one training run, with per-model presets.

Fields left as None take the preset's value (`resolve`); `smoke` runs in
seconds on a CPU, `cpu` trains to a visible result in a few CPU minutes,
`gpu` (the default) is sized for a few minutes on an H100.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from models.registry import check_choice

MODELS = ("llm", "vit", "dit")
PRESETS = ("smoke", "cpu", "gpu")
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cpu", "gpu")
TASKS = {
    "llm": ("mqar", "mqar_spans", "needle", "selective_copy"),
    "vit": ("digits", "shapes"),
    "dit": ("digits", "shapes", "moving_shapes"),
}

# Fields that do not change the numbers a run produces: they may differ on resume.
OPERATIONAL = (
    "out",
    "device",
    "progress",
    "checkpoint_every",
    "eval_every",
    "eval_batches",
    "log_every",
)
# Stored in config.json but not compared on resume: a resumed run ignores them.
NOT_COMPARED = ("init_from",)

# Flags of some models only (the others are refused, not silently ignored).
MODEL_FLAGS = {
    "seq_len": ("llm",),
    "vocab_size": ("llm",),
    "num_pairs": ("llm",),
    "min_pairs": ("llm",),
    "kv_heads": ("llm",),
    "image_size": ("vit", "dit"),
    "frames": ("dit",),
}
POSITIVE_INTS = (
    "steps",
    "batch_size",
    "seq_len",
    "image_size",
    "frames",
    "vocab_size",
    "num_pairs",
    "min_pairs",
    "dim",
    "layers",
    "heads",
    "kv_heads",
    "checkpoint_every",
    "eval_every",
    "eval_batches",
    "log_every",
)


def flag(name: str) -> str:
    """The command-line flag of a field: `eval_batches` -> `--eval-batches`."""
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A training run (see `python -m models.train --help` for each field).

    Model fields (`dim`, `layers`, ...) and `overrides` (`("field", value)`
    pairs, nested with dots: `("layer_options.moba_top_k", 2)`) go into the
    model's own config; see `experiments`.

    `init_from` names a finished run directory whose last checkpoint's
    parameters start this run (fine-tuning; a curriculum over sequence length:
    train at 512 tokens, continue at 4096; dense -> MoBA or NSA). Parameters the
    source does not hold (NSA's compressors and gates) keep their initialization;
    the optimizer state and the step count start fresh; a resumed run ignores
    it (its own checkpoint wins).
    """

    model: str = "llm"
    preset: str = "gpu"
    attention: str | None = None
    task: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    image_size: int | None = None
    frames: int | None = None
    vocab_size: int | None = None
    num_pairs: int | None = None
    min_pairs: int | None = None
    dim: int | None = None
    layers: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    init_from: str | None = None
    dtype: str | None = None
    implementation: str | None = None
    out: str = "runs/default"
    device: str = "auto"
    checkpoint_every: int | None = None
    eval_every: int | None = None
    eval_batches: int | None = None
    log_every: int | None = None
    progress: bool = True

    def __post_init__(self):
        check_choice("model", self.model, MODELS)
        check_choice("preset", self.preset, PRESETS)
        check_choice("device", self.device, DEVICES)
        if self.dtype is not None:
            check_choice("dtype", self.dtype, DTYPES)
        if self.task is not None:
            check_choice("task", self.task, TASKS[self.model], f" for --model {self.model}")
        for name, models in MODEL_FLAGS.items():
            if getattr(self, name) is not None and self.model not in models:
                raise ValueError(
                    f"{flag(name)} does not apply to --model {self.model} (only to "
                    f"{', '.join(models)}); drop it."
                )
        for name in POSITIVE_INTS:
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("warmup_steps", self.warmup_steps, minimum=0)
        _check_int("seed", self.seed, minimum=0, maximum=2**32 - 1)
        _check_float("lr", self.lr, positive=True)
        _check_float("grad_clip", self.grad_clip, positive=True)
        _check_float("weight_decay", self.weight_decay, positive=False)

    def resolve(self) -> TrainConfig:
        """This config with every None filled from the model's preset."""
        preset = PRESET_VALUES[self.model][self.preset]
        filled = {
            k: preset[k] for k, v in dataclasses.asdict(self).items() if v is None and k in preset
        }
        return dataclasses.replace(self, **filled)

    def model_overrides(self) -> tuple[tuple[str, Any], ...]:
        """The preset's model overrides (`PRESET_OVERRIDES`), then this run's `overrides`."""
        return PRESET_OVERRIDES.get((self.model, self.preset), ()) + tuple(self.overrides)

    def run_fields(self) -> dict[str, Any]:
        """The fields stored in config.json: all but `OPERATIONAL`; those in `NOT_COMPARED`
        (`init_from`) are not compared when resuming."""
        d = dataclasses.asdict(self)
        d["overrides"] = [list(p) for p in self.overrides]
        return {k: v for k, v in d.items() if k not in OPERATIONAL}


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    """None (the preset's value) or an int in [minimum, maximum]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name}={value!r} must be {what}; fix {flag(name)}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}={value!r} must be at most {maximum}; fix {flag(name)}.")


def _check_float(name: str, value: Any, *, positive: bool) -> None:
    """None (the preset's value) or a finite number, > 0 (`positive`) or >= 0."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        what = "a finite number > 0" if positive else "a finite number >= 0"
        raise ValueError(f"{name}={value!r} must be {what}; fix {flag(name)}.")


# fmt: off
_RUN = dict(eval_batches=4)
_SMOKE = dict(steps=6, warmup_steps=2, checkpoint_every=3, eval_every=6, log_every=1,
              eval_batches=1)
PRESET_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    # MQAR with a difficulty mix (1 to num_pairs pairs per training sequence).
    "llm": {
        "smoke": dict(_SMOKE, attention="dense", task="mqar", batch_size=8, seq_len=64,
                      vocab_size=64, num_pairs=4, dim=32, layers=2, heads=2, kv_heads=1,
                      lr=3e-3),
        "cpu": dict(_RUN, attention="dense", task="mqar", steps=1500, batch_size=64, seq_len=128,
                    vocab_size=128, num_pairs=8, min_pairs=1, dim=64, layers=2, heads=4,
                    kv_heads=4, lr=3e-3, warmup_steps=100, checkpoint_every=500,
                    eval_every=250, log_every=25),
        # Head dim 64 (the GPU kernels' minimum) and four query heads, as the cpu
        # preset (four heads formed the recall circuit more reliably than fewer).
        # 2 layers, batch 32, 4000 steps (~70 s on the H100 once the embedding's
        # scatter-add gradient became a one-hot matmul). From scratch it does not
        # form the recall circuit at 4096 tokens (accuracy 0.06); started from a
        # 512-token run that formed it (`--init-from`), dense and MoBA reach 0.99+
        # (BENCHMARKS.md, issue 6).
        "gpu": dict(_RUN, attention="dense", task="mqar", steps=4000, batch_size=32,
                    seq_len=4096, vocab_size=256, num_pairs=32, min_pairs=1, dim=256, layers=2,
                    heads=4, kv_heads=2, lr=2e-3, warmup_steps=200, checkpoint_every=500,
                    eval_every=500, log_every=50, eval_batches=8),
    },
    "vit": {
        "smoke": dict(_SMOKE, attention="dense", task="digits", batch_size=16, image_size=16,
                      dim=32, layers=2, heads=2, lr=1e-3),
        "cpu": dict(_RUN, attention="dense", task="digits", steps=400, batch_size=64,
                    image_size=16, dim=64, layers=4, heads=2, lr=2e-3, warmup_steps=40,
                    checkpoint_every=200, eval_every=100, log_every=10),
        "gpu": dict(_RUN, attention="dense", task="digits", steps=1500, batch_size=128,
                    image_size=32, dim=128, layers=6, heads=2, lr=1e-3, warmup_steps=100,
                    checkpoint_every=500, eval_every=250, log_every=20, eval_batches=8),
    },
    "dit": {
        "smoke": dict(_SMOKE, attention="dense", task="digits", batch_size=8, image_size=8,
                      frames=4, dim=32, layers=2, heads=2, lr=1e-3),
        "cpu": dict(_RUN, attention="dense", task="digits", steps=400, batch_size=32,
                    image_size=16, frames=4, dim=64, layers=4, heads=2, lr=1e-3,
                    warmup_steps=40, checkpoint_every=200, eval_every=100, log_every=10),
        "gpu": dict(_RUN, attention="dense", task="digits", steps=2000, batch_size=64,
                    image_size=16, frames=8, dim=128, layers=6, heads=2, lr=5e-4,
                    warmup_steps=100, checkpoint_every=500, eval_every=500, log_every=20),
    },
}
# fmt: on

# Model-config overrides of a preset, applied before the run's own `overrides`.
# The smoke LLM's 64 tokens would be one default MoBA chunk (256 tokens), which
# is dense attention: 4 chunks of 16, the top 2 chosen, make MoBA sparse there.
PRESET_OVERRIDES: dict[tuple[str, str], tuple[tuple[str, Any], ...]] = {
    ("llm", "smoke"): (("layer_options.moba_block_size", 16), ("layer_options.moba_top_k", 2)),
}

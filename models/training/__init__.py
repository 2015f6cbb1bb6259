"""Training of the reference models: `python -m models.train` is the command line.

* `config` — `TrainConfig` and the presets (`smoke`, `cpu`, `gpu`).
* `experiments` — what each model trains on: model, batches, loss, eval, extras.
* `loop` — `train(cfg)`: the jitted step, data parallelism, checkpoints, logs.
* `checkpoint` — orbax checkpoints with the run's config stored beside them.
* `metrics`, `progress`, `sharding`, `schedule` — JSON lines and plots, the
  progress bar, the device mesh, the optimizer.
"""

from models.training.config import TrainConfig
from models.training.loop import train

__all__ = ["TrainConfig", "train"]

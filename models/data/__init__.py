"""Data generated in code or shipped inside installed packages (no downloads).

Every generator is a pure function of `(seed, split, step)`, so a resumed run
sees exactly the batches it would have seen, and eval data never overlaps
training data.

* `lm_tasks` — long-context LM tasks with answer masks: multi-query
  associative recall (`mqar`), needle retrieval (`needle`), selective copy
  (`selective_copy`).
* `images` — scikit-learn's digits (upsampled) and procedurally drawn shapes.
* `videos` — short clips of shapes moving across the frame.
"""

from models.data import images, lm_tasks, videos
from models.data.rng import batch_rng

__all__ = ["batch_rng", "images", "lm_tasks", "videos"]

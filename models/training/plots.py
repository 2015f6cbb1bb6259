"""Matplotlib figures of a run (Agg backend: no display needed)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve(records: list[dict], path: pathlib.Path, *, title: str) -> None:
    """Training loss (and eval loss / accuracy when present) against the step."""
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    has_acc = any("accuracy" in r for r in evals)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4))
    axes = np.atleast_1d(axes)
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval")
    axes[0].set(xlabel="step", ylabel="loss", title=title)
    axes[0].set_yscale("log")
    axes[0].legend()
    if has_acc:
        axes[1].plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-")
        axes[1].set(xlabel="step", ylabel="eval accuracy", ylim=(0, 1.02), title="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sample_grid(x: np.ndarray, path: pathlib.Path, *, title: str) -> None:
    """Samples `[N, S, S, 1]` in a row, or videos `[N, F, S, S, 1]` as rows of frames."""
    x = np.clip((x + 1.0) / 2.0, 0.0, 1.0)[..., 0]
    if x.ndim == 3:
        x = x[:, None]
    n, f = x.shape[:2]
    fig, axes = plt.subplots(f, n, figsize=(1.2 * n, 1.2 * f + 0.4), squeeze=False)
    for i in range(n):
        for j in range(f):
            axes[j, i].imshow(x[i, j], cmap="gray", vmin=0, vmax=1)
            axes[j, i].axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Synthetic data: determinism by (seed, split, step), answers that follow from the context."""

from __future__ import annotations

import numpy as np
import pytest

from models.data import batch_rng, images, lm_tasks, videos


def _batch(name, seq_len=96, pairs=6, step=0, split="train"):
    task = lm_tasks.LMTask(name=name, seq_len=seq_len, vocab_size=64, num_pairs=pairs)
    return task.batch(batch_rng(0, split, step), 4)


@pytest.mark.parametrize("name", ["mqar", "mqar_spans", "needle", "selective_copy"])
def test_deterministic_and_split(name):
    a, b = _batch(name), _batch(name)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].shape == (4, 96)
    assert not np.array_equal(a["inputs"], _batch(name, step=1)["inputs"])
    assert not np.array_equal(a["inputs"], _batch(name, split="eval")["inputs"])
    assert a["weights"].sum(axis=1).tolist() == [6.0] * 4


def _solve(name, inputs, t):
    """The answer at position t, found by a brute-force reading of the context."""
    row = list(inputs[: t + 1])
    if name.startswith("mqar"):  # the value after the first occurrence of the key
        return row[row.index(row[t]) + 1]
    if name == "needle":  # the value after NEEDLE, key
        key = row[t]
        for i in range(len(row) - 2):
            if row[i] == lm_tasks.NEEDLE and row[i + 1] == key:
                return row[i + 2]
    data = [x for x in row[: row.index(lm_tasks.SEP)] if x != lm_tasks.BLANK]
    return data[t - row.index(lm_tasks.SEP)]


@pytest.mark.parametrize("name", ["mqar", "mqar_spans", "needle", "selective_copy"])
def test_answers_follow_from_the_context(name):
    b = _batch(name)
    for i in range(4):
        for t in np.flatnonzero(b["weights"][i]):
            assert b["targets"][i, t] == _solve(name, b["inputs"][i], t)


def test_bad_task_input():
    with pytest.raises(ValueError, match="valid tasks: mqar, mqar_spans, needle, selective_copy"):
        lm_tasks.LMTask(name="copy", seq_len=64, vocab_size=64)
    with pytest.raises(ValueError, match="needs seq_len >= 64"):
        lm_tasks.LMTask(name="mqar", seq_len=32, vocab_size=64, num_pairs=16)
    with pytest.raises(ValueError, match="valid image tasks: digits, shapes"):
        images.ImageTask(name="cifar")


def test_images_and_videos():
    for name, classes in (("digits", 10), ("shapes", 6)):
        task = images.ImageTask(name=name, image_size=16)
        b = task.batch(batch_rng(0, "eval", 0), 8, "eval")
        assert b["images"].shape == (8, 16, 16, 1) and task.num_classes == classes
        assert b["images"].min() >= -1 and b["images"].max() <= 1
        assert b["labels"].min() >= 0 and b["labels"].max() < classes
    clip = videos.VideoTask(frames=5, image_size=8).batch(batch_rng(0, "train", 0), 2, "train")
    assert clip["images"].shape == (2, 5, 8, 8, 1)
    assert not np.array_equal(clip["images"][:, 0], clip["images"][:, -1])  # it moves


def test_difficulty_mix_in_training_only():
    task = lm_tasks.LMTask(name="mqar", seq_len=96, vocab_size=64, num_pairs=8, min_pairs=2)
    train = task.batch(batch_rng(0, "train", 0), 32, "train")
    counts = train["weights"].sum(axis=1)
    assert counts.min() >= 2 and counts.max() <= 8 and len(set(counts)) > 2
    for i in range(4):
        for t in np.flatnonzero(train["weights"][i]):
            assert train["targets"][i, t] == _solve("mqar", train["inputs"][i], t)
    evals = task.batch(batch_rng(0, "eval", 0), 8, "eval")
    assert evals["weights"].sum(axis=1).tolist() == [8.0] * 8
    with pytest.raises(ValueError, match="min_pairs=9 must lie between 1 and num_pairs=8"):
        lm_tasks.LMTask(name="mqar", seq_len=96, vocab_size=64, num_pairs=8, min_pairs=9)


def test_digits_eval_batches_cover_the_eval_set():
    task = images.ImageTask(name="digits", image_size=8)
    seen = np.concatenate(
        [task.batch(batch_rng(0, "eval", i), 100, "eval", i)["images"] for i in range(3)]
    ).reshape(300, -1)
    assert len(np.unique(seen, axis=0)) >= 290  # 300 images (a few digits are duplicates)


def test_bad_fields_and_batch_arguments():
    """Task fields are ints (no silent rounding), splits are `train`/`eval`, batches hold >= 1."""
    lm = dict(name="mqar", seq_len=64, vocab_size=64)
    for bad, message in (
        (dict(num_pairs=2.5), "num_pairs must be an int, got 2.5"),
        (dict(num_pairs=0), "num_pairs=0 must be >= 1"),
        (dict(num_pairs=-2), "num_pairs=-2 must be >= 1"),
        (dict(min_pairs=0, num_pairs=2), "min_pairs=0 must be >= 1"),
        (dict(seq_len=64.0), "seq_len must be an int"),
        (dict(seq_len=None), "seq_len must be an int"),
        (dict(vocab_size=None), "vocab_size must be an int"),
        (dict(vocab_size=8), "vocab_size=8 must be >= 16. Raise --vocab-size"),
    ):
        with pytest.raises((TypeError, ValueError), match=message):
            lm_tasks.LMTask(**{**lm, **bad})
    with pytest.raises(TypeError, match="image_size must be an int, got 12.5"):
        images.ImageTask(name="shapes", image_size=12.5)
    with pytest.raises(TypeError, match="frames must be an int"):
        videos.VideoTask(frames=4.0)
    rng = batch_rng(0, "eval", 0)
    tasks = (
        lm_tasks.LMTask(**lm),
        images.ImageTask(name="digits", image_size=8),
        images.ImageTask(name="shapes", image_size=8),
        videos.VideoTask(frames=2, image_size=8),
    )
    for task in tasks:
        with pytest.raises(ValueError, match="unknown split 'evl'; valid splits: train, eval"):
            task.batch(rng, 2, "evl")
        with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
            task.batch(rng, 0, "train")

"""Training runs: every model trains, resume is exact, bad input is refused with clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from models import train as cli
from models.training import TrainConfig, checkpoint, experiments, loop, train


def _records(out, kind="train"):
    lines = (pathlib.Path(out) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


# One LLM run shared by the smoke check and the resume check (each run compiles).
LLM_RUN = dict(
    model="llm",
    attention="moba",
    preset="smoke",
    progress=False,
    overrides=(("layer_options.moba_block_size", 16), ("layer_options.moba_top_k", 2)),
)


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory):
    cfg = TrainConfig(out=str(tmp_path_factory.mktemp("llm") / "straight"), **LLM_RUN)
    return cfg, train(cfg)


def _check_run_dir(out, result, model):
    assert result.steps == 6 and not result.interrupted
    for name in ("config.json", "metrics.jsonl", "loss.png", "result.json"):
        assert (out / name).exists(), name
    train_records = _records(out)
    assert [r["step"] for r in train_records] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in train_records)
    # The notebooks plot from result.files["metrics"].
    assert pathlib.Path(result.files["metrics"]).samefile(out / "metrics.jsonl")
    assert "loss" in result.eval
    if model == "dit":
        assert (out / "samples.png").exists()
    else:
        assert 0.0 <= result.eval["accuracy"] <= 1.0
    # Data parallel: the conftest gives 4 host devices and the batch is split over them.
    assert len(jax.devices()) == 1 or result.devices > 1


def test_llm_smoke_run_writes_everything(llm_run):
    cfg, result = llm_run
    _check_run_dir(pathlib.Path(cfg.out), result, "llm")
    assert _records(cfg.out)[-1]["loss"] < _records(cfg.out)[0]["loss"]


@pytest.mark.parametrize(
    ("model", "attention", "task"),
    [("vit", "hilo,biformer", "digits"), ("dit", "neighborhood,window", "moving_shapes")],
)
def test_vision_smoke_run_writes_everything(tmp_path, model, attention, task):
    out = tmp_path / model
    cfg = TrainConfig(
        model=model, attention=attention, task=task, preset="smoke", out=str(out), progress=False
    )
    _check_run_dir(out, train(cfg), model)


def _final_params(out):
    ckpt = checkpoint.Checkpointer(pathlib.Path(out))
    step = ckpt.latest_step()
    state = ckpt.manager.restore(step)
    ckpt.close()
    return step, state["params"]


def test_interrupted_run_resumes_exactly(llm_run, tmp_path, monkeypatch):
    """Stop after 4 of 6 steps (checkpoints every 3): resume gives the same losses and params."""
    cfg, _ = llm_run
    resumed = dataclasses.replace(cfg, out=str(tmp_path / "resumed"))
    floats, calls = loop._floats, []

    def interrupting(d):
        calls.append(1)
        if len(calls) == 5:  # as SIGTERM while step 5's metrics are fetched (one per step)
            raise KeyboardInterrupt
        return floats(d)

    monkeypatch.setattr(loop, "_floats", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(resumed)
    # Saved on interrupt, between the checkpoints, with every train record up to it.
    assert _final_params(resumed.out)[0] == 4
    assert [r["step"] for r in _records(resumed.out)] == [1, 2, 3, 4]
    monkeypatch.setattr(loop, "_floats", floats)
    train(resumed)
    assert [r["loss"] for r in _records(resumed.out)] == [r["loss"] for r in _records(cfg.out)]
    step_a, params_a = _final_params(cfg.out)
    step_b, params_b = _final_params(resumed.out)
    assert step_a == step_b == 6
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_incompatible_checkpoint_is_refused(llm_run):
    cfg, _ = llm_run
    other = dataclasses.replace(cfg, attention="dense", dim=64)
    with pytest.raises(checkpoint.IncompatibleCheckpointError) as err:
        train(other)
    message = str(err.value)
    assert "model.attention: 'moba' -> 'dense'" in message
    assert "model.dim: 32 -> 64" in message
    assert "run.attention" in message and "--out" in message
    # Logging and eval cadence do not change the numbers: they may differ on resume.
    cadence = dataclasses.replace(cfg, eval_every=1, log_every=2, checkpoint_every=5)
    assert cadence.resolve().run_fields() == cfg.resolve().run_fields()
    assert dataclasses.replace(cfg, lr=0.5).resolve().run_fields() != cfg.resolve().run_fields()


def _damaged_copy(llm_run, tmp_path, damage):
    import shutil

    cfg, _ = llm_run
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    damage(out)
    return dataclasses.replace(cfg, out=str(out))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "config.json").unlink(), "holds checkpoints but no config.json"),
        (lambda d: (d / "config.json").write_text("{nope"), "config.json cannot be read"),
        (
            lambda d: [p.unlink() for p in (d / "checkpoints" / "6").rglob("*") if p.is_file()],
            "checkpoint 6 in .* cannot be read .* delete that step's directory",
        ),
        (
            lambda d: __import__("shutil").rmtree(d / "checkpoints"),
            "holds a finished run \\(result.json\\) but no checkpoint",
        ),
        (
            lambda d: (__import__("shutil").rmtree(d / "checkpoints"), (d / "checkpoints").touch()),
            "checkpoints is a file",
        ),
    ],
)
def test_damaged_run_directories_are_refused_by_name(llm_run, tmp_path, damage, message):
    # Not a deep orbax/json error, and never a silent fresh start or an unchecked resume.
    with pytest.raises(ValueError, match=message):
        train(_damaged_copy(llm_run, tmp_path, damage))


def test_resume_ignores_init_from_and_keeps_the_final_loss(llm_run, tmp_path):
    """A finished run, rerun with another --init-from: resumed (not refused, the source not
    read), and result.json keeps the final loss."""
    cfg, result = llm_run
    run = loop._prepare(dataclasses.replace(cfg, init_from=str(tmp_path)).resolve())
    run.ckpt.close()
    assert int(run.state["step"]) == 6
    again = train(cfg)
    assert again.final_loss == result.final_loss == _records(cfg.out)[-1]["loss"]
    stored = json.loads((pathlib.Path(cfg.out) / "result.json").read_text())
    assert stored["final_loss"] == result.final_loss


def test_config_json_is_replaced_until_the_first_checkpoint(tmp_path, capsys):
    """A first attempt that failed before its first checkpoint does not block a retry."""
    run_dir = tmp_path / "run"
    checkpoint.check_or_write_config(run_dir, {"run": {"lr": 1.0}})
    checkpoint.check_or_write_config(run_dir, {"run": {"lr": 0.5}})
    assert json.loads((run_dir / "config.json").read_text()) == {"run": {"lr": 0.5}}
    assert "holds no checkpoint yet: replacing its config.json" in capsys.readouterr().err
    (run_dir / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="run.lr: 0.5 -> 0.25"):
        checkpoint.check_or_write_config(run_dir, {"run": {"lr": 0.25}})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(eval_batches=0), "eval_batches=0 must be a positive int; fix --eval-batches"),
        (dict(eval_batches=-2), "eval_batches=-2 must be a positive int"),
        (dict(num_pairs=0), "num_pairs=0 must be a positive int; fix --num-pairs"),
        (dict(num_pairs=-2), "num_pairs=-2 must be a positive int"),
        (dict(lr=float("nan")), "lr=nan must be a finite number > 0; fix --lr"),
        (dict(lr=-1.0), "lr=-1.0 must be a finite number > 0"),
        (dict(lr=float("inf")), "lr=inf must be a finite number > 0"),
        (dict(grad_clip=0.0), "grad_clip=0.0 must be a finite number > 0; fix --grad-clip"),
        (dict(grad_clip=-1.0), "grad_clip=-1.0 must be a finite number > 0"),
        (dict(warmup_steps=-3), "warmup_steps=-3 must be an int >= 0; fix --warmup-steps"),
        (dict(weight_decay=-5.0), "weight_decay=-5.0 must be a finite number >= 0"),
        (dict(weight_decay=float("nan")), "weight_decay=nan must be a finite number >= 0"),
        (dict(seed=-1), "seed=-1 must be an int >= 0; fix --seed"),
        (dict(seed=2**64), "must be at most 4294967295; fix --seed"),
        (dict(model="vit", seq_len=999), "--seq-len does not apply to --model vit"),
        (dict(model="vit", kv_heads=7), "--kv-heads does not apply to --model vit"),
        (dict(model="dit", vocab_size=5), "--vocab-size does not apply to --model dit"),
        (dict(model="llm", image_size=16), "--image-size does not apply to --model llm"),
        (dict(model="vit", frames=4), "--frames does not apply to --model vit (only to dit)"),
    ],
)
def test_config_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(preset="smoke", **fields)
    assert TrainConfig(preset="smoke", warmup_steps=0, weight_decay=0.0, seed=0).seed == 0


def test_diverged_loss_stops_the_run_without_a_checkpoint(tmp_path, monkeypatch):
    loss = experiments.LLMExperiment.loss

    def nan_loss(self, model, batch, key):
        value, metrics = loss(self, model, batch, key)
        return value * np.float32(np.nan), metrics

    monkeypatch.setattr(experiments.LLMExperiment, "loss", nan_loss)
    cfg = TrainConfig(preset="smoke", steps=1, out=str(tmp_path / "run"), progress=False)
    with pytest.raises(
        loop.DivergedError, match=r"loss is nan at step 1.*lower --lr \(now 0.003\)"
    ):
        train(cfg)
    assert not checkpoint.has_checkpoint(tmp_path / "run")


def test_init_from_without_checkpoint_creates_nothing(llm_run, tmp_path):
    """A source with config.json but no checkpoint: refused; neither directory gets checkpoints/."""
    cfg, _ = llm_run
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text((pathlib.Path(cfg.out) / "config.json").read_text())
    out = tmp_path / "new"
    with pytest.raises(ValueError, match="holds no checkpoint; train it first"):
        train(dataclasses.replace(cfg, out=str(out), init_from=str(source)))
    assert not (source / "checkpoints").exists() and not (out / "checkpoints").exists()


def test_init_from_starts_from_the_source_parameters(llm_run, tmp_path):
    """A length curriculum: a dense run at twice the length starts from the MoBA run's
    final parameters (same shapes), with a fresh step count; then it trains."""
    cfg, _ = llm_run
    longer = dataclasses.replace(
        cfg, attention="dense", seq_len=128, steps=2, out=str(tmp_path / "ft"), init_from=cfg.out
    )
    run = loop._prepare(longer.resolve())
    run.ckpt.close()
    assert int(run.state["step"]) == 0
    restored = checkpoint._by_path(run.state["params"])
    stored = checkpoint._by_path(_final_params(cfg.out)[1])
    assert restored.keys() == stored.keys()
    for key, value in restored.items():
        np.testing.assert_array_equal(value, stored[key], err_msg=key)
    result = train(longer)
    assert result.steps == 2 and np.isfinite(result.final_loss)


def test_init_from_dense_to_nsa_keeps_the_new_parameters_fresh(llm_run, tmp_path):
    """NSA layers from the MoBA run: shared projections, norms and MLPs are copied; the
    compressors and branch gates (absent from the source) keep their initialization."""
    cfg, _ = llm_run
    nsa = (
        ("layer_options.nsa_kernel_size", 8),
        ("layer_options.nsa_stride", 4),
        ("layer_options.nsa_block_size", 8),
        ("layer_options.nsa_top_n", 2),
        ("layer_options.nsa_window", 16),
    )
    target = dataclasses.replace(
        cfg, attention="nsa", overrides=nsa, out=str(tmp_path / "nsa"), init_from=cfg.out
    ).resolve()
    fresh_run = loop._prepare(dataclasses.replace(target, init_from=None, out=str(tmp_path / "x")))
    fresh_run.ckpt.close()
    run = loop._prepare(target)
    run.ckpt.close()
    source = checkpoint._by_path(_final_params(cfg.out)[1])
    got = checkpoint._by_path(run.state["params"])
    init = checkpoint._by_path(fresh_run.state["params"])
    assert any("compress" in k for k in got) and set(source) < set(got)
    for key, value in got.items():
        want = source[key] if key in source else init[key]
        np.testing.assert_array_equal(value, want, err_msg=key)


def test_init_from_refuses_other_shapes_and_missing_runs(llm_run, tmp_path):
    cfg, _ = llm_run
    wider = dataclasses.replace(cfg, dim=64, out=str(tmp_path / "wide"), init_from=cfg.out)
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="dim: 32 -> 64"):
        train(wider)
    missing = dataclasses.replace(cfg, out=str(tmp_path / "b"), init_from=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="not a run directory"):
        train(missing)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "gpt"], "invalid choice: 'gpt' (choose from"),
        (["--attention", "mobaa"], "valid attentions: dense, sliding_window, streaming, moba"),
        (
            ["--model", "vit", "--attention", "swin"],
            "valid attentions: dense, window, neighborhood",
        ),
        (
            ["--task", "cifar"],
            "unknown task 'cifar' for --model llm; valid tasks: mqar, mqar_spans, needle",
        ),
        (["--model", "dit", "--task", "mqar"], "valid tasks: digits, shapes, moving_shapes"),
        (["--set", "layer_options.nope=1"], "unknown field 'nope' for LayerOptions; valid fields:"),
        (["--preset", "huge"], "invalid choice: 'huge' (choose from"),
        (["--batch-size", "6"], "must be a multiple of the"),
        (["--eval-batches", "0"], "error: eval_batches=0 must be a positive int"),
        (["--seed", "-1"], "error: seed=-1 must be an int >= 0; fix --seed"),
        (["--lr", "nan"], "error: lr=nan must be a finite number > 0; fix --lr"),
        (["--model", "vit", "--seq-len", "999"], "--seq-len does not apply to --model vit"),
        (["--set", "dim.x=2"], "LLMConfig.dim is 32, which has no fields: 'dim.x' cannot be set"),
        (["--set", "layer_options=3"], "set one of them (layer_options.FIELD=VALUE) instead"),
        (["--set", "vocab_size=16"], "--set vocab_size=... would not match the data; use --vocab"),
        (["--model", "vit", "--set", "num_classes=3"], "num_classes=... would not match the data"),
        (["--model", "vit", "--set", "image_size=32"], "; use --image-size"),
        (["--model", "dit", "--set", "frames=0"], "; use --frames (with --task moving_shapes)"),
        (["--out", "FILE"], "is a file; pass a directory path"),
        (["--out", "FILE/run"], "cannot write the run directory --out"),
        (["--implementation", "pallas_gpu"], "need a Hopper GPU"),
    ],
)
def test_cli_bad_names_list_the_valid_ones(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").touch()
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    args = ["--preset", "smoke", "--out", str(tmp_path / "x"), "--no-progress", *argv]
    try:
        code = cli.main(args)
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    if "multiple of the" in message and len(jax.devices()) == 1:
        pytest.skip("one device: any batch size splits")


def test_sigterm_checkpoints_the_last_finished_step(tmp_path):
    """A killed job (SIGTERM) saves its last finished step; rerunning resumes from it."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "models.train",
        "--model",
        "llm",
        "--preset",
        "smoke",
        "--steps",
        "400",
        "--checkpoint-every",
        "1000",
        "--eval-every",
        "1000",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(_records(out)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    logged = _records(out)[-1]["step"]
    saved, _ = _final_params(out)
    assert 3 <= logged <= saved < 400  # no finished step lost

"""Orbax checkpoints of a run, with the run's config stored beside them.

Layout of a run directory:
  config.json        the run's fields and the model config (written once; replaced
                     while the directory holds no checkpoint)
  checkpoints/<step> orbax checkpoints of {"step", "params", "opt_state"}
  metrics.jsonl      see `metrics`

A directory with a checkpoint whose stored config differs from the current one
in any field that changes the numbers is refused with the list of differing
fields: loading it would silently continue a different run (or fail on shapes).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class IncompatibleCheckpointError(ValueError):
    """The run directory holds a run with a different configuration."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_diff(stored: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """`"field: stored -> current"` for every differing (flattened) field not in `ignore`."""
    a, b = _flatten(stored), _flatten(current)
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if k not in ignore and a.get(k, "<absent>") != b.get(k, "<absent>")
    ]


def has_checkpoint(run_dir: pathlib.Path) -> bool:
    """Whether `run_dir/checkpoints` holds a finished checkpoint (a `<step>` directory)."""
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def check_or_write_config(
    run_dir: pathlib.Path, config: dict, ignore: tuple[str, ...] = ()
) -> None:
    """Store `config` in a new run directory, or refuse one that holds another run.

    A stored config that differs (in a field not in `ignore`) is refused if the
    directory holds a checkpoint; without one (an attempt that failed before its
    first checkpoint) it is replaced.
    """
    path = run_dir / "config.json"
    config = json.loads(json.dumps(config))  # normalise tuples, numbers as JSON sees them
    folder = run_dir / "checkpoints"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not the run's checkpoint directory; move it away.")
    if not path.is_file() and has_checkpoint(run_dir):
        raise IncompatibleCheckpointError(
            f"{run_dir} holds checkpoints but no config.json, so they cannot be checked against "
            "this configuration; restore its config.json, or use another --out directory."
        )
    if not has_checkpoint(run_dir) and (run_dir / "result.json").is_file():
        raise IncompatibleCheckpointError(
            f"{run_dir} holds a finished run (result.json) but no checkpoint to resume; "
            "use another --out directory (or delete this one to train from scratch)."
        )
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path} cannot be read ({e}); restore it, or use another --out directory."
            ) from None
        diff = config_diff(stored, config, ignore)
        if not diff:
            return
        if has_checkpoint(run_dir):
            raise IncompatibleCheckpointError(
                f"{run_dir} holds a run with a different configuration; refusing to resume it. "
                "Differing fields (stored -> requested):\n  "
                + "\n  ".join(diff)
                + "\nUse another --out directory, or repeat the original flags to resume."
            )
        print(
            f"{run_dir} holds no checkpoint yet: replacing its config.json "
            f"({len(diff)} fields differ).",
            file=sys.stderr,
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {str(run_dir)!r} is a file; pass a directory path.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
        tmp.replace(path)  # atomic: a killed process never leaves half a config
    except OSError as e:
        raise ValueError(
            f"cannot write the run directory --out {str(run_dir)!r}: {e.strerror or e} "
            f"({e.filename}); pass a directory path that can be created and written."
        ) from None


class Checkpointer:
    """Save and restore the train state `{"step", "params", "opt_state"}` of a run."""

    def __init__(self, run_dir: pathlib.Path, *, max_to_keep: int = 2, read_only: bool = False):
        """`read_only`: neither create `run_dir/checkpoints` nor clean it up (nor save)."""
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            # A background thread that `close` does not wait for (a process exiting
            # right after opening logs an orbax traceback): `_prepare` opens it last.
            cleanup_tmp_directories=not read_only,
            # Synchronous: a save has finished when `save` returns, so an interrupt
            # right after it cannot lose the step (the models here are small).
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute(), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        if self.manager.latest_step() == step:
            return
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> Any:
        """Restore `step` with `template`'s structure, shapes, dtypes and shardings.

        ValueError naming the step and its directory where orbax cannot read it.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds
            detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise ValueError(
                f"checkpoint {step} in {self.manager.directory} cannot be read "
                f"({type(e).__name__}: {detail}); delete that step's directory to resume "
                "from an earlier one, or use another --out directory."
            ) from None

    def close(self) -> None:
        self.manager.close()


def _by_path(tree: Any) -> dict[str, Any]:
    """`{"a.b.0": leaf}`: paths with every key as a string (orbax stores int keys as str)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): x for p, x in flat}


def restore_params(source: pathlib.Path, params: Any, model_config: dict) -> tuple[Any, list]:
    """`(params, fresh)`: `params` with every entry that `source`'s last checkpoint holds
    replaced by the stored array; `fresh` lists the entries it does not hold, which
    keep their initialization (dense -> NSA: the compressors and branch gates).

    Refused, naming the differing model fields (`model_config` is this run's):
    a stored entry this model lacks, or one of another shape.
    """
    config_path = source / "config.json"
    if not config_path.exists():
        raise ValueError(
            f"init_from={str(source)!r} is not a run directory (no config.json); pass the "
            "--out directory of a finished run."
        )
    if not has_checkpoint(source):
        raise ValueError(f"init_from={str(source)!r} holds no checkpoint; train it first.")
    ckpt = Checkpointer(source, read_only=True)
    try:
        step = ckpt.latest_step()
        stored = _by_path(ckpt.manager.restore(step, args=ocp.args.StandardRestore())["params"])
    finally:
        ckpt.close()
    wanted = _by_path(params)
    mismatch = sorted(
        f"{k}: {stored[k].shape} -> {getattr(wanted.get(k), 'shape', '<absent>')}"
        for k in stored
        if k not in wanted or stored[k].shape != wanted[k].shape
    )
    if mismatch:
        stored_model = json.loads(config_path.read_text()).get("model", {})
        diff = config_diff(stored_model, json.loads(json.dumps(model_config)))
        raise IncompatibleCheckpointError(
            f"the parameters in {source} (step {step}) do not fit this model. Model fields "
            "that differ (stored -> requested):\n  "
            + "\n  ".join(diff or ["(none)"])
            + "\nParameter shapes (stored -> requested):\n  "
            + "\n  ".join(mismatch[:8])
        )
    leaves, treedef = jax.tree.flatten(params)
    new = [
        jax.device_put(np.asarray(stored[k]).astype(x.dtype), x.sharding) if k in stored else x
        for k, x in zip(wanted, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, new), sorted(k for k in wanted if k not in stored)

"""Data parallelism over the local devices: a 1-D mesh, batch sharded, state replicated."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def devices_for(device: str) -> list[jax.Device]:
    """The local devices of `device` ("auto": the default backend's)."""
    platform = jax.default_backend() if device == "auto" else device
    try:
        return jax.local_devices(backend=platform)
    except RuntimeError as e:
        raise ValueError(
            f"--device {device}: no {platform} devices here ({e}). Use --device cpu, or run on "
            "a machine with a GPU and jax[cuda]."
        ) from None


def data_mesh(devices: list[jax.Device]) -> Mesh:
    return Mesh(devices, ("data",))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"--batch-size {batch_size} must be a multiple of the {n} devices it is split over "
            f"(data parallel); use e.g. --batch-size {max(n, batch_size // n * n)}."
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Split every array's leading (batch) axis over the mesh."""
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))

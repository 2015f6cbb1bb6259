"""Selection stages that run as Pallas kernels where they can, else return None.

A dynamic pattern's `select` calls these before the attention call is
dispatched; None tells it to use its XLA formulation (same indices up to the
float rounding of near-equal scores).
"""

from __future__ import annotations

import logging

from jaxsparse.ops import config as config_lib
from jaxsparse.ops import pallas_gpu

logger = logging.getLogger("jaxsparse")


def chunk_topk(q, k_mean, *, k: int, block_size: int, q_offset: int, config=None):
    """Indices `[B, H, T, k]` (int32, best first, -1: none) of each query's `k` best past
    chunks by `q . k_mean` (MoBA's gate), from one fused Mosaic GPU kernel; None where it
    cannot run (no Hopper GPU and not `config.interpret`, `config.gpu_gate_kernel` off,
    or inputs the kernel does not take: see `pallas_kernels.gpu.gate_topk`)."""
    from pallas_kernels.gpu import gate_topk

    config = config or config_lib.Config()
    if not _runs(
        config.gpu_gate_kernel, config, "the fused gate kernel", gate_topk.check, q, k_mean, k=k
    ):
        return None
    with pallas_gpu.interpret_context(config.interpret):
        return gate_topk.gate_topk(
            q, k_mean, k=k, block_size=block_size, q_offset=q_offset, interpret=_params(config)
        )


def nsa_importance(
    q,
    k_cmp,
    lse,
    *,
    kernel_size: int,
    stride: int,
    block_size: int,
    num_blocks: int,
    scale: float,
    q_offset: int,
    config=None,
):
    """NSA's group-summed selection-block importance `[B, T, K, num_blocks]` (float32) from
    one fused Mosaic GPU kernel; None where it cannot run (`config.gpu_importance_kernel`
    off; no Hopper GPU and not `config.interpret`; or settings the kernel does
    not take: see `pallas_kernels.gpu.nsa_importance`, which picks its warpgroups)."""
    from pallas_kernels.gpu import nsa_importance as kernel

    config = config or config_lib.Config()
    nsa = dict(kernel_size=kernel_size, stride=stride, block_size=block_size)
    enabled = config.gpu_importance_kernel
    if not _runs(enabled, config, "the NSA importance kernel", kernel.check, q, k_cmp, **nsa):
        return None
    with pallas_gpu.interpret_context(config.interpret):
        return kernel.block_importance(
            q,
            k_cmp,
            lse,
            **nsa,
            num_blocks=num_blocks,
            scale=scale,
            q_offset=q_offset,
            interpret=_params(config),
        )


def _runs(enabled: bool, config, what: str, check, *args, **kwargs) -> bool:
    """Whether a selection kernel runs: enabled, a Hopper GPU (or interpret mode), and
    `check(*args, **kwargs)` accepting the inputs; the reason is logged when not."""
    if not enabled:
        return False
    try:
        pallas_gpu.check_device(config.interpret)
        check(*args, **kwargs)
    except NotImplementedError as e:
        logger.debug("jaxsparse: %s cannot run here: %s", what, e)
        return False
    return True


def _params(config):
    """The kernels' `interpret` argument: None on the GPU."""
    if not config.interpret:
        return None
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu.InterpretGPUParams(detect_races=True)

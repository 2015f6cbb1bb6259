"""Test configuration: strict numerics, several host devices, warnings are errors."""

import importlib.util
import os


def _cpu_only() -> bool:
    """No accelerator plugin installed (CUDA/ROCm plugins live in `jax_plugins`, TPU in libtpu)."""
    return all(importlib.util.find_spec(m) is None for m in ("jax_plugins", "libtpu"))


# Several CPU devices for sharding tests; must be set before jax initialises.
# Without an accelerator (CI), XLA also compiles at optimization level 0: the
# suite's programs are tiny, so compiling them is most of its time, and no check
# relies on LLVM's optimizations (level 0 cuts the default run by about a quarter).
# Set XLA_FLAGS yourself to run with other flags.
_flags = ["--xla_force_host_platform_device_count=4"]
if _cpu_only():
    _flags.append("--xla_backend_optimization_level=0")
os.environ.setdefault("XLA_FLAGS", " ".join(_flags))
os.environ.setdefault("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", ""))

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# float32 references are compared at ~1e-5; GPUs would otherwise run float32
# matmuls in TF32 (relative errors ~3e-4). A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests without a GPU."""
    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    skip_gpu = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def dkv_shapes(monkeypatch):
    """The `DkvShapes` of each Mosaic GPU dK/dV kernel call the test makes (the kernel
    still runs): what the backward chose, e.g. its list splits or a CTA per query head."""
    from pallas_kernels.gpu import backward_dkv

    seen, real = [], backward_dkv.dkv_call

    def spy(*args, sh, **kw):
        seen.append(sh)
        return real(*args, sh=sh, **kw)

    monkeypatch.setattr(backward_dkv, "dkv_call", spy)
    return seen

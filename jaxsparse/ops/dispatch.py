"""Choose and run an implementation; fall back on NotImplementedError."""

from __future__ import annotations

import importlib
import logging

import jax

from jaxsparse.ops import call as call_lib

logger = logging.getLogger("jaxsparse")

# name -> module with `run(call) -> (out, lse)`; imported on first use.
_MODULES = {
    "pallas_gpu": "jaxsparse.ops.pallas_gpu",
    "pallas_tpu": "jaxsparse.ops.pallas_tpu",
    "xla": "jaxsparse.ops.xla.impl",
    "reference": "jaxsparse.ops.reference_impl",
}
_ORDER = {"gpu": ("pallas_gpu", "xla"), "tpu": ("pallas_tpu", "xla")}


def order_for(platform: str) -> tuple[str, ...]:
    """Implementations tried, best first, when `implementation=None`."""
    return _ORDER.get(platform, ("xla",))


def run(call: call_lib.Call, implementation: str | None):
    """Run `implementation`, or the best one for the default backend.

    A backend raises NotImplementedError for valid input it cannot handle (for
    example float32 on the Mosaic GPU kernel); the next one is tried. If all
    fail, an ExceptionGroup lists every reason.
    """
    if implementation is not None:
        return _module(implementation).run(call)
    errors = []
    for name in order_for(jax.default_backend()):
        try:
            result = _module(name).run(call)
        except NotImplementedError as e:
            logger.debug("jaxsparse: %s cannot run this call: %s", name, e)
            errors.append(NotImplementedError(f"{name}: {e}"))
            continue
        return result
    raise ExceptionGroup("no jaxsparse implementation can run this call", errors)


def _module(name: str):
    return importlib.import_module(_MODULES[name])

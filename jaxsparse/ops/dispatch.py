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
    example float32 on the Mosaic GPU kernel); the next one is tried. The
    first time a reason sends a call from an accelerator kernel to the XLA
    path it is logged as a warning (that path is much slower there), later
    times at debug level. If all fail, an ExceptionGroup lists every reason.
    """
    if implementation is not None:
        return _module(implementation).run(call)
    errors = []
    names = order_for(jax.default_backend())
    for i, name in enumerate(names):
        try:
            result = _module(name).run(call)
        except NotImplementedError as e:
            _log_fallback(name, str(e), last=i == len(names) - 1)
            errors.append(NotImplementedError(f"{name}: {e}"))
            continue
        return result
    raise ExceptionGroup("no jaxsparse implementation can run this call", errors)


_WARNED: set[tuple[str, str]] = set()


def _log_fallback(name: str, reason: str, *, last: bool) -> None:
    if last or (name, reason) in _WARNED:  # the last one's reason is in the error raised
        logger.debug("jaxsparse: %s cannot run this call: %s", name, reason)
        return
    _WARNED.add((name, reason))
    logger.warning(
        "jaxsparse: %s cannot run this call: %s; the next implementation runs it (on an "
        "accelerator the XLA path is much slower; implementation='xla' states the choice "
        "and silences this).",
        name,
        reason,
    )


def _module(name: str):
    return importlib.import_module(_MODULES[name])

"""The modules' `dtype` / `param_dtype` pair, checked once."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


def module_dtype(owner: str, dtype: Any, param_dtype: Any) -> Any:
    """The computation dtype (`dtype`, default `param_dtype`); both must be floating-point.

    Raises:
      TypeError: naming the argument that is not a float dtype.
    """
    for name, value in (("param_dtype", param_dtype), ("dtype", dtype)):
        if value is None and name == "dtype":
            continue
        try:
            floating = jnp.issubdtype(value, jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise TypeError(
                f"{owner}: {name}={value!r} must be a floating-point dtype, e.g. jnp.float32 "
                "or jnp.bfloat16."
            )
    return param_dtype if dtype is None else dtype

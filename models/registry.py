"""Name -> factory tables whose lookups fail with the list of valid names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """A small ordered mapping from names to factories.

    `get` raises `ValueError` naming the valid choices, so a typo on the
    command line (`--attention mobaa`) says what would have worked.
    """

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Any] = {}

    def register(self, name: str, value: Any = None) -> Any:
        """`registry.register("x", f)`, or `@registry.register("x")` as a decorator."""
        if value is None:
            return lambda v: self.register(name, v)
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is registered twice.")
        self._items[name] = value
        return value

    def get(self, name: str) -> Any:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.what} {name!r}; valid {self.what}s: {', '.join(self._items)}."
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def check_choice(what: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise `ValueError` unless `value` is one of `choices`."""
    if value not in choices:
        valid = ", ".join(map(str, choices))
        raise ValueError(f"unknown {what} {value!r}; valid {what}s: {valid}.")


def call_with(factory: Callable[..., Any], **kwargs: Any) -> Any:
    """Call `factory` with the keyword arguments it accepts (ignoring the rest)."""
    import inspect

    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    return factory(**{k: v for k, v in kwargs.items() if k in params})

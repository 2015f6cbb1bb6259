"""Name -> factory tables whose lookups fail with the list of valid names."""

from __future__ import annotations

from collections.abc import Iterator
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


def check_choice(what: str, value: Any, choices: tuple[Any, ...], context: str = "") -> None:
    """Raise `ValueError` unless `value` is one of `choices` (context: " for --model llm")."""
    if value not in choices:
        valid = ", ".join(map(str, choices))
        raise ValueError(f"unknown {what} {value!r}{context}; valid {what}s: {valid}.")

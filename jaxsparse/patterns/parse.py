"""Build a pattern from text, e.g. on the command line."""

from __future__ import annotations

import ast

from jaxsparse.patterns import base

_ALLOWED = (
    ast.Expression,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.keyword,
    ast.BinOp,
    ast.BitAnd,
    ast.BitOr,
    ast.List,
    ast.Tuple,
    ast.UnaryOp,
    ast.USub,
)


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class _CallBareNames(ast.NodeTransformer):
    """`causal` -> `causal()` wherever a name is not already called."""

    def visit_Call(self, node: ast.Call) -> ast.Call:
        node.args = [self.visit(a) for a in node.args]
        node.keywords = [self.visit(k) for k in node.keywords]
        return node

    def visit_Name(self, node: ast.Name) -> ast.Call:
        return ast.Call(func=node, args=[], keywords=[])


def parse(text: str) -> base.Pattern:
    """Parse `"Causal() & (Sink(4) | SlidingWindow(left=256))"` into a pattern.

    Names are pattern classes (CamelCase or snake_case); a bare name without
    arguments means the class with its defaults, anywhere in the expression:
    `"causal & (sink(4) | sliding_window(8))"`.

    Raises:
      ValueError: for anything that is not a pattern expression.
    """
    names = {}
    for name, cls in base.REGISTRY.items():
        names[name] = names[_snake(name)] = cls
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"Cannot parse pattern {text!r}: {e.msg}.") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ValueError(
                f"Pattern {text!r} may only use pattern calls, numbers, lists, `&` and `|`; "
                f"found {type(node).__name__}."
            )
        if isinstance(node, ast.Name) and node.id not in names:
            known = ", ".join(sorted(base.REGISTRY))
            raise ValueError(f"Unknown pattern {node.id!r} in {text!r}. Known: {known}.")
    tree = ast.fix_missing_locations(_CallBareNames().visit(tree))
    try:
        value = eval(compile(tree, "<pattern>", "eval"), {"__builtins__": {}}, names)  # noqa: S307
    except TypeError as e:
        raise ValueError(f"Cannot build pattern {text!r}: {e}") from None
    if not isinstance(value, base.Pattern):
        raise ValueError(f"{text!r} is not a pattern (got {type(value).__name__}).")
    return value

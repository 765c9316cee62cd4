"""What each config field means, read from the docstring under it, for `dlm presets --show`.

Field docstrings (a string literal right after the field, as in PEP 257's attribute docstrings)
are the one place a field is documented; this module reads them from the source with `ast`, so
the text a user sees can never drift from the code.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from dataclasses import fields, is_dataclass


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name → the first line of its docstring ('' when it has none)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # the class statement's body
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = following.value.value.strip().splitlines()[0].strip()
    return {f.name: docs.get(f.name, "") for f in fields(cls)}


def _literal(value) -> str:
    """The value as a key=value override would spell it."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def describe_config(cfg, title: str = "") -> str:
    """Every field of a (nested) config dataclass as `section.name = value  # what it means`."""
    rows: list[tuple[str, str, str]] = []

    def walk(obj, prefix: str) -> None:
        docs = field_docs(type(obj))
        for f in fields(obj):
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", _literal(value), docs[f.name]))

    walk(cfg, "")
    key_width = max(len(k) for k, _, _ in rows)
    value_width = min(max(len(v) for _, v, _ in rows), 28)
    lines = [title] if title else []
    lines += [f"{k:<{key_width}} = {v:<{value_width}}  # {doc}" for k, v, doc in rows]
    return "\n".join(lines)

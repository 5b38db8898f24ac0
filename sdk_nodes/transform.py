"""``TransformNode``: reshape data with a field mapping and/or a restricted expression.

The expression language is a checked subset of Python expressions. Before it
is compiled, every AST node is checked against a whitelist: literals,
operators, comparisons, conditionals, subscripts, comprehensions, f-strings,
attribute reads of public names, and calls of a few safe built-ins only. No
imports, no lambdas, no dunder or private names or attributes, no method
calls. It runs with empty ``__builtins__``. It guards against escaping to the
interpreter, not against expensive arithmetic (``9**9**9``): expressions are
written by the workflow's author, never taken from a request.
"""

from __future__ import annotations

import ast
from typing import Any, Literal

import msgspec

from nexus_core.workflows.node import Node

from ._common import MISSING, ConfigError, NamedConfigErrors, resolve_path, split_path

__all__ = [
    "SAFE_FUNCTIONS",
    "TransformConfig",
    "TransformInputs",
    "TransformNode",
    "TransformOutputs",
    "UnsafeExpression",
    "compile_expression",
    "evaluate",
]

#: The only names an expression may call.
SAFE_FUNCTIONS: dict[str, Any] = {
    fn.__name__: fn
    for fn in (
        abs,
        all,
        any,
        bool,
        dict,
        enumerate,
        float,
        int,
        len,
        list,
        max,
        min,
        range,
        reversed,
        round,
        set,
        sorted,
        str,
        sum,
        tuple,
        zip,
    )
}

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Store,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Dict,
    ast.Starred,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.Invert,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.comprehension,
    ast.JoinedStr,
    ast.FormattedValue,
)

# Public attributes that still lead to frames, code or globals.
_DENIED_ATTRIBUTES = frozenset(
    {
        "ag_await", "ag_code", "ag_frame", "cr_await", "cr_code", "cr_frame", "f_back",
        "f_builtins", "f_code", "f_globals", "f_locals", "format", "format_map", "gi_code",
        "gi_frame", "gi_yieldfrom", "mro", "tb_frame", "tb_next",
    }
)  # fmt: skip


class UnsafeExpression(ValueError):
    """An expression uses something outside the whitelist; says what and where."""


def _where(node: ast.AST) -> str:
    offset = getattr(node, "col_offset", None)
    return f" (column {offset + 1})" if offset is not None else ""


def _check(tree: ast.Expression) -> None:
    bound = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.comprehension)
        for target in ast.walk(node.target)
        if isinstance(target, ast.Name)
    }
    allowed_names = {"data"} | set(SAFE_FUNCTIONS) | bound
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise UnsafeExpression(f"{type(node).__name__} is not allowed{_where(node)}")
    for node in ast.walk(tree):
        where = _where(node)
        if isinstance(node, ast.Name):
            if node.id.startswith("_") and node.id != "_":
                raise UnsafeExpression(f"name {node.id!r} is not allowed{where}")
            if node.id not in allowed_names:
                raise UnsafeExpression(
                    f"unknown name {node.id!r}{where}; use 'data' or one of "
                    f"{', '.join(sorted(SAFE_FUNCTIONS))}"
                )
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr in _DENIED_ATTRIBUTES:
                raise UnsafeExpression(f"attribute {node.attr!r} is not allowed{where}")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in SAFE_FUNCTIONS:
                called = ast.unparse(node.func)
                raise UnsafeExpression(
                    f"calling {called!r} is not allowed{where}; only "
                    f"{', '.join(sorted(SAFE_FUNCTIONS))}"
                )
        elif isinstance(node, ast.comprehension) and node.is_async:
            raise UnsafeExpression(f"async comprehensions are not allowed{where}")


def compile_expression(source: str) -> Any:
    """Check ``source`` against the whitelist and compile it; the code object evaluates it.

    Raises :class:`SyntaxError` or :class:`UnsafeExpression`.
    """
    tree = ast.parse(source.strip(), "<TransformNode expression>", mode="eval")
    _check(tree)
    return compile(tree, "<TransformNode expression>", "eval")


def evaluate(code: Any, data: Any) -> Any:
    """Evaluate a compiled expression with ``data`` bound and only the safe built-ins."""
    return eval(code, {"__builtins__": {}, **SAFE_FUNCTIONS, "data": data})


class TransformConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`TransformNode`: a ``mapping``, an ``expression``, or both.

    ``on_missing`` says what a mapping path that does not exist gives: an error
    (the default), ``null``, or ``omit`` (the key is left out).
    """

    mapping: dict[str, str] | None = None
    expression: str | None = None
    on_missing: Literal["error", "null", "omit"] = "error"


class TransformInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inputs of :class:`TransformNode`."""

    data: Any


class TransformOutputs(msgspec.Struct, kw_only=True):
    """Outputs of :class:`TransformNode`."""

    result: Any


class TransformNode(NamedConfigErrors, Node):
    """Reshape ``data``: pick fields by dotted path, and/or evaluate a restricted expression.

    ``mapping`` is ``{output key: dotted path into data}`` (``{"name": "user.first"}``)
    and gives a dict. ``expression`` is a Python expression over ``data``
    (``"sum(i['price'] for i in data['items'])"``), checked against a
    whitelist and compiled when the workflow is built. With both, the
    expression sees the mapping's dict as ``data``.
    """

    Config = TransformConfig
    Inputs = TransformInputs
    Outputs = TransformOutputs
    blocking = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        config = self.config
        if config.mapping is None and config.expression is None:
            raise ConfigError("mapping", "give a 'mapping', an 'expression', or both")
        self._paths = {
            key: split_path(path, "mapping") for key, path in (config.mapping or {}).items()
        }
        self._code: Any = None
        if config.expression is not None:
            try:
                self._code = compile_expression(config.expression)
            except SyntaxError as exc:
                raise ConfigError(
                    "expression", f"syntax error at column {exc.offset}: {exc.msg}"
                ) from None
            except UnsafeExpression as exc:
                raise ConfigError("expression", str(exc)) from None

    def run(self, inputs: TransformInputs) -> TransformOutputs:
        """Apply the mapping, then the expression."""
        data = inputs.data
        if self.config.mapping is not None:
            data = self.apply_mapping(data)
        if self._code is not None:
            data = evaluate(self._code, data)
        return TransformOutputs(result=data)

    def apply_mapping(self, data: Any) -> dict[str, Any]:
        """``{output key: value at its path}``; a missing path per ``on_missing``."""
        result: dict[str, Any] = {}
        on_missing = self.config.on_missing
        for key, parts in self._paths.items():
            value = resolve_path(data, parts)
            if value is MISSING:
                if on_missing == "omit":
                    continue
                if on_missing == "error":
                    raise LookupError(f"mapping {key!r}: no value at path {'.'.join(parts)!r}")
                value = None
            result[key] = value
        return result

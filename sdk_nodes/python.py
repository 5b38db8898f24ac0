"""``PythonCodeNode``: a typed Python function, or a snippet of Python code, as a node."""

from __future__ import annotations

import builtins
from typing import Any

import msgspec

from nexus_core.workflows.function import FunctionNode
from nexus_core.workflows.node import Node, NodeContext

from ._common import ConfigError, NamedConfigErrors

__all__ = ["PythonCodeConfig", "PythonCodeNode", "PythonCodeOutputs"]


class PythonCodeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`PythonCodeNode`: exactly one of ``function`` and ``code``."""

    function: Any = None
    code: str | None = None


class PythonCodeOutputs(msgspec.Struct):
    """Outputs of a ``code`` node: whatever the code assigned to ``result``."""

    result: Any = None


class PythonCodeNode(NamedConfigErrors, FunctionNode):
    """Run Python: a typed function, or a code string that sets ``result`` (Kailash style).

    With ``function`` the node is a :class:`~nexus_core.workflows.function.FunctionNode`:
    its parameters are the typed inputs and its return value is ``result``.

    With ``code`` the string is compiled once, when the workflow is built (a
    syntax error names the node), and executed for each run with every input as
    a variable; it must assign ``result``. Inputs are untyped (any name may be
    connected). The code is trusted like any other code of the workflow's
    author: this is not a sandbox (use ``TransformNode`` for restricted
    expressions). It runs in a worker thread.
    """

    description = "Run a typed Python function, or a code string that sets 'result'."
    Config = PythonCodeConfig

    def __init__(self, config: Any = None) -> None:
        config = config if config is not None else PythonCodeConfig()
        has_function, has_code = config.function is not None, config.code is not None
        if has_function == has_code:
            raise ConfigError(
                "function" if has_function else "code",
                "set exactly one of 'function' (a callable) and 'code' (a string)",
            )
        self.code: str | None = config.code
        self._compiled: Any = None
        if config.code is None:
            if not callable(config.function):
                raise ConfigError(
                    "function", f"must be callable, got {type(config.function).__name__}"
                )
            super().__init__(config)
            return
        Node.__init__(self, config)
        try:
            self._compiled = compile(config.code, "<PythonCodeNode code>", "exec")
        except SyntaxError as exc:
            where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
            raise ConfigError("code", f"syntax error at {where}: {exc.msg}") from None
        self.function = None
        self.injected = {}
        self.return_type = Any
        self.Inputs = None
        self.Outputs = PythonCodeOutputs
        self.is_async = False

    def invoke(self, kwargs: dict[str, Any], context: NodeContext) -> Any:
        """Call the function, or execute the code with ``kwargs`` as its variables."""
        if self._compiled is None:
            return super().invoke(kwargs, context)
        namespace: dict[str, Any] = {"__builtins__": builtins, **kwargs}
        exec(self._compiled, namespace)  # the workflow author's own code: trusted
        if "result" not in namespace:
            raise NameError(f"node {context.node_id!r}: the code did not assign 'result'")
        return PythonCodeOutputs(result=namespace["result"])

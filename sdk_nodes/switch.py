"""``SwitchNode``: route a value to one of several outputs; the others feed nothing."""

from __future__ import annotations

import operator as _op
import re
from collections.abc import Callable
from typing import Any, Literal, Union

import msgspec

from nexus_core.workflows.node import Node

from ._common import MISSING, ConfigError, NamedConfigErrors, resolve_path, split_path

__all__ = ["SwitchConfig", "SwitchInputs", "SwitchNode", "case_field_name"]

Operator = Literal["==", "!=", ">", ">=", "<", "<=", "in", "truthy"]
CaseValue = Union[str, int, float, bool, None]  # noqa: UP007 - kept readable as a name

# The type of every switch output: UNSET (the default) marks a branch not taken.
_BRANCH = Union[Any, msgspec.UnsetType]  # noqa: UP007 - Any | X is not valid at run time

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": _op.eq,
    "!=": _op.ne,
    ">": _op.gt,
    ">=": _op.ge,
    "<": _op.lt,
    "<=": _op.le,
    "in": lambda actual, value: actual in value,
    "truthy": lambda actual, _value: bool(actual),
}


class SwitchConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`SwitchNode`.

    ``field`` is a dotted path into the input (None: the input itself). Either
    ``cases`` (values to match, one output each) or ``operator`` with ``value``
    (a boolean switch) decides the route.
    """

    field: str | None = None
    cases: list[CaseValue] = []
    operator: Operator | None = None
    value: Any = None


class SwitchInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inputs of :class:`SwitchNode`: the value to route."""

    input_data: Any


def case_field_name(value: CaseValue) -> str:
    """Name the output of a case value: ``case_<value>``, non-identifier chars as ``_``.

    >>> case_field_name("high-priority")
    'case_high_priority'
    """
    return "case_" + re.sub(r"[^0-9A-Za-z_]", "_", str(value))


def _same_case(actual: Any, case: Any) -> bool:
    # 1 == True in Python; a switch on a boolean must not take the case 1.
    return isinstance(actual, bool) == isinstance(case, bool) and actual == case


class SwitchNode(NamedConfigErrors, Node):
    """Route ``input_data`` to exactly one output; every other output feeds nothing.

    With ``cases`` the outputs are ``case_<value>`` (one per case, sanitised to
    an identifier) and ``default`` (no case matched). With ``operator`` (``==``,
    ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``in``, ``truthy``) the selected value is
    compared with ``value`` and the outputs are ``true_output`` and
    ``false_output`` (Kailash's names). The chosen output carries the whole
    input; nodes fed only by the other outputs are skipped. A dotted ``field``
    path that does not exist selects None.
    """

    Config = SwitchConfig
    Inputs = SwitchInputs
    blocking = False

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        config = self.config
        self._path = split_path(config.field, "field") if config.field is not None else ()
        self._cases: list[tuple[Any, str]] = []
        if config.operator is not None:
            if config.cases:
                raise ConfigError("cases", "set either 'cases' or 'operator', not both")
            if config.operator == "in" and not hasattr(config.value, "__contains__"):
                raise ConfigError("value", "operator 'in' needs a list, string or object value")
            self._compare = _OPERATORS[config.operator]
            names = ["true_output", "false_output"]
        else:
            if not config.cases:
                raise ConfigError("cases", "give at least one case, or an 'operator'")
            seen: dict[str, Any] = {}
            for case in config.cases:
                name = case_field_name(case)
                if name in seen:
                    raise ConfigError(
                        "cases",
                        f"cases {seen[name]!r} and {case!r} both make the output {name!r}",
                    )
                seen[name] = case
                self._cases.append((case, name))
            names = [name for _, name in self._cases] + ["default"]
        self.Outputs = msgspec.defstruct(
            "SwitchOutputs",
            [(name, _BRANCH, msgspec.UNSET) for name in names],
            kw_only=True,
        )

    def select(self, data: Any) -> str:
        """Return the name of the output that ``data`` is routed to."""
        actual = resolve_path(data, self._path) if self._path else data
        if actual is MISSING:
            actual = None
        config = self.config
        if config.operator is not None:
            try:
                taken = self._compare(actual, config.value)
            except TypeError as exc:
                where = f"field {config.field!r}" if config.field else "the input"
                raise TypeError(
                    f"cannot evaluate {where} ({actual!r}) {config.operator} {config.value!r}: "
                    f"{exc}"
                ) from None
            return "true_output" if taken else "false_output"
        for case, name in self._cases:
            if _same_case(actual, case):
                return name
        return "default"

    def run(self, inputs: SwitchInputs) -> Any:
        """Set only the selected output to the input value."""
        return self.Outputs(**{self.select(inputs.input_data): inputs.input_data})

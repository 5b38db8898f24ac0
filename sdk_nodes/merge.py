"""``MergeNode``: join branches (after a switch, or parallel work) into one value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Union

import msgspec

from nexus_core.workflows.node import Node

__all__ = ["MergeConfig", "MergeInputs", "MergeNode", "MergeOutputs"]

_Branch = Union[Any, msgspec.UnsetType]  # noqa: UP007 - Any | X is not valid at run time


class MergeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of :class:`MergeNode`: how arrived values are combined."""

    strategy: Literal["first", "list", "dict_merge"] = "first"


class MergeInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inputs of :class:`MergeNode`: up to five branches, each optional."""

    data1: _Branch = msgspec.UNSET
    data2: _Branch = msgspec.UNSET
    data3: _Branch = msgspec.UNSET
    data4: _Branch = msgspec.UNSET
    data5: _Branch = msgspec.UNSET


class MergeOutputs(msgspec.Struct, kw_only=True):
    """Outputs of :class:`MergeNode`."""

    merged: Any


class MergeNode(Node):
    """Combine the branches that arrived, in order ``data1`` .. ``data5``.

    A branch not taken (after a switch) or not connected simply does not
    arrive; the node runs when at least one did. ``strategy``: ``first`` (the
    first value that arrived, the usual join after a switch), ``list`` (all
    arrived values), ``dict_merge`` (arrived mappings merged, later keys win).
    """

    Config = MergeConfig
    Inputs = MergeInputs
    Outputs = MergeOutputs
    blocking = False

    def run(self, inputs: MergeInputs) -> MergeOutputs:
        """Merge the arrived values by the configured strategy."""
        arrived = [
            (name, value)
            for name in ("data1", "data2", "data3", "data4", "data5")
            if (value := getattr(inputs, name)) is not msgspec.UNSET
        ]
        strategy = self.config.strategy
        if strategy == "first":
            return MergeOutputs(merged=arrived[0][1] if arrived else None)
        if strategy == "list":
            return MergeOutputs(merged=[value for _, value in arrived])
        merged: dict[Any, Any] = {}
        for name, value in arrived:
            if isinstance(value, msgspec.Struct):
                value = msgspec.structs.asdict(value)
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"strategy 'dict_merge' needs mappings; {name} is {type(value).__name__}"
                )
            merged.update(value)
        return MergeOutputs(merged=merged)

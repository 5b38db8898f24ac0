"""The node type contract suite: a plugin contributing node types runs it on each.

::

    from nexus_core.testing.nodes import NodeTypeContract


    class TestShout(NodeTypeContract):
        node_type = "Shout"

        def plugins(self):
            return ["my_nodes"]  # the module (or object) implementing nexus_node_types

        def examples(self):
            # (config, inputs, expected outputs)
            return [({}, {"text": "hi"}, {"text": "HI!"})]

        def invalid_inputs(self):
            return [{"text": 3}]  # each must be refused naming a field

It checks that the plugin registers the type through ``nexus_node_types``,
that the factory is a :class:`~nexus_core.workflows.node.Node` subclass whose
``type_name`` is the registered name with JSON schemas for its inputs and
outputs, that each example gives its outputs inside a real workflow run by
the host, and that each invalid input is refused with a
:class:`~nexus_core.errors.ValidationError` naming a field, never another
exception.

Needs pytest and anyio's pytest plugin: ``pip install nexus-core[test]``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import pytest

from ..app import Nexus
from ..errors import ValidationError
from ..workflows import Node, WorkflowBuilder

__all__ = ["NodeTypeContract"]


class NodeTypeContract:
    """Mix into a ``Test*`` class; set :attr:`node_type` and override :meth:`plugins`."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    #: The name the node type registers (its ``NodeTypeSpec.name``).
    node_type: ClassVar[str] = ""

    def plugins(self) -> list[object | str]:
        """Override: the plugin objects or module names that register the node type."""
        return []

    def examples(self) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
        """Override: ``(config, inputs, expected outputs)`` triples."""
        return []

    def invalid_inputs(self) -> list[dict[str, Any]]:
        """Inputs the node must refuse, each naming a field."""
        return []

    @pytest.fixture
    def anyio_backend(self) -> str:
        """The async library the tests run on."""
        return "asyncio"

    @pytest.fixture
    def app(self) -> Nexus:
        """A host with the plugins (entry points not loaded)."""
        if not self.node_type:
            pytest.fail("set node_type on the contract class")
        return Nexus(
            "node-contract", storage="memory://", plugins=self.plugins(), autoload=False, env={}
        )

    def _workflow(self, app: Nexus, config: dict[str, Any], name: str) -> None:
        node_class = app.node_types()[self.node_type].load()
        builder = WorkflowBuilder(name)
        builder.add_node(self.node_type, "node", config)
        inputs = node_class.Inputs
        fields = msgspec.structs.fields(inputs) if _is_struct(inputs) else ()
        builder.add_workflow_inputs("node", {f.name: f.name for f in fields})
        outputs = node_class.Outputs
        out_fields = msgspec.structs.fields(outputs) if _is_struct(outputs) else ()
        builder.add_workflow_outputs("node", {f.name: f.name for f in out_fields})
        app.register(builder)

    def test_the_plugin_registers_a_node_class(self, app: Nexus) -> None:
        """A ``Node`` subclass under the registered name, with schemas for both sides."""
        spec = app.node_types().get(self.node_type)
        assert spec is not None, f"no node type {self.node_type!r} among {list(app.node_types())}"
        node_class = spec.load()
        assert isinstance(node_class, type)
        assert issubclass(node_class, Node)
        assert (node_class.type_name or node_class.__name__) == self.node_type
        for side in (node_class.Inputs, node_class.Outputs):
            if side is not None:
                msgspec.json.schema(side)  # raises for a type no channel could describe

    async def test_examples_give_their_outputs(self, app: Nexus) -> None:
        """Each example, run as a workflow by the host, gives the expected outputs."""
        if not self.examples():
            pytest.skip("override examples() to run the node")
        for index, (config, _, _) in enumerate(self.examples()):
            self._workflow(app, config, f"example_{index}")
        async with app:
            for index, (_, inputs, expected) in enumerate(self.examples()):
                result = await app.invoke(f"example_{index}", inputs)
                assert result.status == "completed", result.error
                assert msgspec.to_builtins(result.output) == expected

    async def test_invalid_inputs_are_refused_naming_a_field(self, app: Nexus) -> None:
        """Bad inputs are a ValidationError naming a field, never another exception."""
        if not self.invalid_inputs():
            pytest.skip("override invalid_inputs() to check refusals")
        config = self.examples()[0][0] if self.examples() else {}
        self._workflow(app, config, "refusals")
        async with app:
            for inputs in self.invalid_inputs():
                with pytest.raises(ValidationError) as err:
                    await app.invoke("refusals", inputs)
                assert err.value.detail().errors, f"{inputs!r}: the error names no field"


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)

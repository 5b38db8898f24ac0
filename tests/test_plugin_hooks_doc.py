"""Every hook, core or defined by one of this repository's plugins, is in the hook reference.

The hooks come from a real plugin host with whatever plugins are installed
(core alone in the ``core_alone`` session), so a hook a plugin adds through
``nexus_add_hookspecs`` is checked exactly as the host sees it: its heading,
its signature (parameter names, annotations, return) and its docstring.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from nexus_core.plugins import PluginHost

ROOT = Path(__file__).resolve().parent.parent
HOOKS_MD = ROOT / "docs" / "reference" / "hooks.md"


def _specs() -> dict[str, object]:
    """Every ``nexus_*`` hook specification the host knows, by name, from this repository."""
    host = PluginHost(env={"NEXUS_DISABLE_PLUGINS": ""})
    found = {}
    for name, caller in vars(host.pm.hook).items():
        if not name.startswith("nexus_") or caller.spec is None:
            continue
        function = caller.spec.function
        source = Path(inspect.getfile(function)).resolve()
        if ROOT in source.parents:
            found[name] = function
    return found


SPECS = _specs()


def _documented() -> dict[str, ast.FunctionDef]:
    """The signature shown under each ``### name`` heading of hooks.md, parsed."""
    text = HOOKS_MD.read_text(encoding="utf-8")
    out = {}
    for match in re.finditer(r"^### (\w+)\n\n```python\n(.*?)```", text, re.MULTILINE | re.DOTALL):
        code = "\n".join(line for line in match.group(2).splitlines() if not line.startswith("@"))
        (node,) = ast.parse(code).body
        assert isinstance(node, ast.FunctionDef)
        out[match.group(1)] = node
    return out


DOCUMENTED = _documented()


def test_the_host_sees_plugin_defined_hooks_where_their_plugins_are_installed() -> None:
    for module, hook in (
        ("nexus_plugin_api", "nexus_api_mounts"),
        ("nexus_plugin_cli", "nexus_cli_commands"),
    ):
        try:
            __import__(module)
        except ImportError:
            continue
        assert hook in SPECS, f"{module} is installed but {hook} has no spec in the host"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_hook_is_in_the_reference_with_its_signature(name: str) -> None:
    assert name in DOCUMENTED, f"{name} is missing from docs/reference/hooks.md"
    node = DOCUMENTED[name]
    signature = inspect.signature(SPECS[name])
    shown = [(a.arg, ast.unparse(a.annotation) if a.annotation else None) for a in node.args.args]
    real = [
        (p.name, None if p.annotation is inspect.Parameter.empty else str(p.annotation))
        for p in signature.parameters.values()
    ]
    assert shown == real, f"{name}: the reference shows {shown}, the hook takes {real}"
    returns = ast.unparse(node.returns) if node.returns else None
    real_returns = (
        None
        if signature.return_annotation is inspect.Signature.empty
        else str(signature.return_annotation)
    )
    assert returns == real_returns, f"{name}: reference returns {returns}, hook {real_returns}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_hook_docstring_reaches_the_reference(name: str) -> None:
    doc = inspect.getdoc(SPECS[name])
    assert doc, f"{name} has no docstring"
    assert "versionadded" in doc, f"{name} does not say when it was added"
    first_line = doc.splitlines()[0].replace("``", "`")
    assert first_line in HOOKS_MD.read_text(encoding="utf-8"), f"{name}: docstring not in hooks.md"

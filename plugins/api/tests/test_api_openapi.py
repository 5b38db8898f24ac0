"""OpenAPI 3.1: valid, one operation per workflow with the core's exact schemas; schemathesis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from api_apps import build
from api_support import serving, subprocess_server
from hypothesis import HealthCheck, settings
from nexus_core import Nexus
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nexus_plugin_api.openapi import build_openapi

#: Not api_apps.Item: another type with the same name.
OtherItem = msgspec.defstruct("Item", [("label", str)])


def _inline(node: Any, resolve: Any) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(resolve(node["$ref"]), resolve)
        return {k: _inline(v, resolve) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, resolve) for v in node]
    return node


def _core_inlined(schema: dict[str, Any]) -> Any:
    defs = schema.get("$defs", {})
    return _inline(schema, lambda ref: defs[ref.removeprefix("#/$defs/")])


def _doc_inlined(doc: dict[str, Any], schema: Any) -> Any:
    components = doc["components"]["schemas"]
    return _inline(schema, lambda ref: components[ref.removeprefix("#/components/schemas/")])


@pytest.mark.anyio
async def test_openapi_document_is_valid_and_has_one_operation_per_workflow(
    server: tuple[Nexus, str], client: httpx.AsyncClient
) -> None:
    app, _ = server
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    validate(doc)  # OpenAPI 3.1 (raises on an invalid document)
    assert doc["openapi"] == "3.1.0"
    assert "#/$defs/" not in response.text  # every nested type is a component
    for name, wf in app.workflows.items():
        operation = doc["paths"][f"/workflows/{name}/runs"]["post"]
        assert operation["operationId"] == f"run_{name}"
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert _doc_inlined(doc, body) == _core_inlined(wf.input_schema)
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        output = ok["allOf"][1]["properties"]["output"]
        # The output, or (over services.runs.inline_limit) a reference to it.
        plain, reference = output["anyOf"]
        assert reference == {"$ref": "#/components/schemas/BlobReference"}
        assert _doc_inlined(doc, plain) == _core_inlined(wf.output_schema)
        assert {"202", "404", "409", "413", "422", "429"} <= set(operation["responses"])
    ship_to = doc["paths"]["/workflows/order/runs"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["properties"]["ship_to"]
    assert ship_to == {"$ref": "#/components/schemas/Address"}
    assert doc["paths"]["/workflows/greet/runs"]["post"]["x-nexus-annotations"]["read_only"]


@pytest.mark.anyio
async def test_docs_page_and_switching_docs_off(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '"/openapi.json"' in page.text
    app = build(api={"docs": False})
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/openapi.json")).status_code == 404
        assert (await http.get("/docs")).status_code == 404


def test_same_type_name_in_two_workflows_gets_two_components() -> None:
    app = build()

    @app.workflow
    def tag(items: list[OtherItem]) -> int:
        return len(items)

    doc = build_openapi(app)
    validate(doc)
    components = doc["components"]["schemas"]
    assert components["Item"]["required"] == ["sku", "qty"]
    assert components["tag.Item"]["required"] == ["label"]
    tag_body = doc["paths"]["/workflows/tag/runs"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    assert tag_body["properties"]["items"]["items"] == {"$ref": "#/components/schemas/tag.Item"}


def test_workflows_registered_later_appear(tmp_path: Path) -> None:
    app = build()
    before = build_openapi(app)

    @app.workflow
    def late(x: int) -> int:
        return x

    after = build_openapi(app)
    assert "/workflows/late/runs" not in before["paths"]
    assert "/workflows/late/runs" in after["paths"]


# -- schemathesis against a server process --------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with subprocess_server(tmp_path_factory.mktemp("schemathesis")) as process:
        yield process.url


# The document the served app answers with, built in-process so that schemathesis can
# generate its tests at collection time (its lazy `from_fixture` loader does not work with
# pytest 9); test_served_openapi_matches_the_builder checks that the two agree.
schema = (
    schemathesis.openapi.from_dict(build_openapi(build()))
    # Event streams never end on their own; their errors are tested in test_api_realtime.
    .exclude(path_regex=r"events$")
    .exclude(path="/workflows/slow/runs")
)


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_schemathesis(served: str, case: Any) -> None:
    case.call_and_validate(
        base_url=served,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
        timeout=30,
    )


def test_served_openapi_matches_the_builder(served: str) -> None:
    doc = httpx.get(f"{served}/openapi.json").json()
    validate(doc)
    local = build_openapi(build())
    assert doc["paths"] == local["paths"]
    assert doc["components"] == local["components"]

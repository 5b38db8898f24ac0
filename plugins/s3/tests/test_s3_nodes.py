"""The S3 nodes and the injected S3Client against moto: workflows, typed functions, tenants."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nexus_core import Nexus, Principal, WorkflowBuilder
from s3_support import MotoServer

from nexus_plugin_s3.backend import S3BlobStore
from nexus_plugin_s3.nodes import S3Client, TenantKeyError, client_for

pytestmark = pytest.mark.anyio

ALICE = Principal(id="alice", tenant="acme")
BOB = Principal(id="bob", tenant="globex")


def make_app(url: str) -> Nexus:
    app = Nexus(
        "s3nodes",
        storage="memory://",
        config={"plugins": {"s3": {"url": url}}},
        env={"NEXUS_PLUGINS": "nexus-plugin-s3"},
    )

    app.register(_roundtrip(url))

    wd = WorkflowBuilder("remove")
    wd.add_node("S3Delete", "delete", {})
    wd.add_node("S3List", "list", {})
    wd.add_workflow_inputs("delete", {"key": "key"})
    wd.add_connection("delete", "key", "list", "prefix")
    wd.set_output("list", "keys")
    app.register(wd)

    @app.workflow
    async def archive(text: str, s3: S3Client) -> list[str]:
        """Store a note through the injected client and list the tenant's notes."""
        await s3.put("notes/today.txt", text.encode(), content_type="text/plain")
        return await s3.list("notes/")

    return app


def _roundtrip(url: str) -> WorkflowBuilder:
    wb = WorkflowBuilder("roundtrip")
    wb.add_node("S3Put", "put", {})
    wb.add_node("S3Get", "get", {})
    wb.add_node("S3PresignedUrl", "sign", {})
    wb.add_workflow_inputs("put", {"key": "key", "text": "text"})
    wb.add_connection("put", "key", "get", "key")
    wb.add_connection("put", "key", "sign", "key")
    wb.add_workflow_outputs("get", {"text": "text", "size": "size"})
    wb.add_workflow_outputs("sign", {"url": "url"})
    wb.add_workflow_outputs("put", {"sha256": "sha256"})
    return wb


@pytest.fixture
async def app(moto: MotoServer, bucket: str) -> AsyncIterator[Nexus]:
    host = make_app(moto.url(bucket, "data"))
    async with host:
        yield host


async def test_nodes_roundtrip_in_a_workflow(app: Nexus, moto: MotoServer, bucket: str) -> None:
    result = await app.invoke_as(ALICE, "roundtrip", {"key": "docs/a.txt", "text": "héllo"})
    assert result.status == "completed", result.error
    out: dict[str, Any] = result.output
    assert out["text"] == "héllo" and out["size"] == len("héllo".encode())
    assert len(out["sha256"]) == 64
    async with httpx.AsyncClient() as http:
        fetched = await http.get(out["url"])
    assert fetched.content == "héllo".encode()
    # Stored under the tenant's prefix.
    raw = S3BlobStore(moto.url(bucket))
    assert await raw.list_blobs() == ["data/tenants/acme/docs/a.txt"]
    # Bob (another tenant) does not see it, and deleting "docs/a.txt" deletes his own.
    gone = await app.invoke_as(BOB, "remove", {"key": "docs/a.txt"})
    assert gone.status == "completed" and gone.output == []
    assert await raw.list_blobs() == ["data/tenants/acme/docs/a.txt"]
    mine = await app.invoke_as(ALICE, "remove", {"key": "docs/a.txt"})
    assert mine.output == []
    assert await raw.list_blobs() == []


async def test_injected_client_in_a_typed_function(
    app: Nexus, moto: MotoServer, bucket: str
) -> None:
    result = await app.invoke_as(ALICE, "archive", {"text": "note"})
    assert result.status == "completed", result.error
    assert result.output == ["notes/today.txt"]
    info = await client_for(moto.url(bucket, "data"), "acme").info("notes/today.txt")
    assert info is not None and info.content_type == "text/plain" and info.size == 4
    # The injected client is not an input: the schema does not show it.
    assert "s3" not in app.workflows["archive"].input_schema.get("properties", {})


@pytest.mark.parametrize("key", ["../globex/x", "a/../../b", "/abs", "a//b", "", "x\x00"])
async def test_escaping_keys_fail_the_run_naming_node_and_key(app: Nexus, key: str) -> None:
    result = await app.invoke_as(ALICE, "roundtrip", {"key": key, "text": "x"})
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.node == "put"
    assert repr(key) in result.error.message


async def test_base64_put_and_binary_get(app: Nexus) -> None:
    wb = WorkflowBuilder("binary")
    wb.add_node("S3Put", "put", {})
    wb.add_node("S3Get", "get", {})
    wb.add_workflow_inputs("put", {"key": "key", "data_base64": "data_base64"})
    wb.add_connection("put", "key", "get", "key")
    wb.set_output("get", "data_base64")
    app.register(wb)
    payload = bytes(range(256))
    encoded = base64.b64encode(payload).decode()
    result = await app.invoke_as(ALICE, "binary", {"key": "bin", "data_base64": encoded})
    assert result.status == "completed", result.error
    assert base64.b64decode(result.output) == payload


_segment = st.one_of(
    st.sampled_from(["..", ".", "", "tenants", "globex", "acme", "%2e%2e", "\\", "é", "😀"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=6),
)
_keys = st.lists(_segment, min_size=1, max_size=5).map("/".join) | st.sampled_from(
    ["../globex/secret", "tenants/globex/secret", "../../data/tenants/globex/secret", "./x"]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=_keys)
def test_a_tenant_never_reaches_outside_its_prefix(
    moto: MotoServer, shared_bucket: str, key: str
) -> None:
    """Whatever the key: refused by name, or stored inside the tenant's own prefix only."""
    url = moto.url(shared_bucket, "data")

    async def check() -> None:
        acme, globex = client_for(url, "acme"), client_for(url, "globex")
        raw = S3BlobStore(moto.url(shared_bucket))
        await globex.put("secret", b"globex's")
        refused: TenantKeyError | None = None
        try:
            await acme.put(key, b"acme's")
        except TenantKeyError as exc:
            refused = exc
        if refused is not None:
            assert repr(key) in str(refused)
        else:
            assert await acme.get(key) == b"acme's"
            assert key in await acme.list()
            assert await globex.get(key) != b"acme's"
            await acme.delete(key)
        assert await globex.get("secret") == b"globex's"
        for stored in await raw.list_blobs():
            assert stored.startswith(("data/tenants/acme/", "data/tenants/globex/")), stored
        assert await raw.list_blobs("data/tenants/acme/") == []

    anyio.run(check)


@pytest.fixture(scope="module")
def shared_bucket(moto: MotoServer) -> str:
    from s3_support import new_bucket

    return new_bucket(moto)


def test_tenant_names_that_cannot_be_a_prefix_are_refused(moto: MotoServer) -> None:
    for tenant in ("a/b", "..", ""):
        with pytest.raises(TenantKeyError, match="tenant"):
            S3Client(moto.url("b"), tenant)

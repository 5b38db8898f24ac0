"""Faults: the S3 server stopped mid-upload or unreachable, transient errors, readiness."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from nexus_core import Nexus, Principal, WorkflowBuilder
from nexus_core.workflows import FunctionNode
from s3_support import MotoServer, new_bucket

from nexus_plugin_s3.backend import ObjectStoreError, S3BlobStore

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


@pytest.fixture
def own_moto() -> Any:
    """A moto server of this test alone (the test stops it)."""
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_server_stopped_mid_upload_fails_clearly(own_moto: MotoServer) -> None:
    bucket = new_bucket(own_moto)
    store = S3BlobStore(
        own_moto.url(bucket, "p") + "&multipart_threshold=5242880&part_size=5242880"
    )
    await store.open()
    sent: list[int] = []

    async def parts() -> AsyncIterator[bytes]:
        for n in range(6):
            if n == 2:
                # Two parts are on their way: the server goes away now.
                await anyio.to_thread.run_sync(own_moto.stop)
            sent.append(n)
            yield os.urandom(5 * MIB)

    with anyio.fail_after(60), pytest.raises(ObjectStoreError) as caught:
        await store.put_blob_stream("big/object", parts())
    message = str(caught.value)
    assert f"s3://{bucket}/p/big/object" in message
    assert message.startswith("object store: put")
    # The server back (empty, as a restarted moto is): nothing of the object is there.
    own_moto.start()
    own_moto.create_bucket(bucket)
    assert await store.get_blob("big/object") is None
    assert "<Upload>" not in own_moto.multipart_uploads(bucket)
    await store.close()


async def test_unreachable_store_fails_the_run_naming_node_and_bucket(
    own_moto: MotoServer,
) -> None:
    bucket = new_bucket(own_moto)
    url = own_moto.url(bucket, "data")
    app = Nexus(
        "faults",
        storage="memory://",
        config={"plugins": {"s3": {"url": url}}},
        env={"NEXUS_PLUGINS": "nexus-plugin-s3"},
    )
    wb = WorkflowBuilder("save")
    wb.add_node("S3Put", "store_report", {})
    wb.add_workflow_inputs("store_report", {"key": "key", "text": "text"})
    wb.set_output("store_report", "key")
    app.register(wb)
    async with app:
        ok = await app.invoke_as(Principal(id="a"), "save", {"key": "r.txt", "text": "x"})
        assert ok.status == "completed", ok.error
        own_moto.stop()
        with anyio.fail_after(60):
            failed = await app.invoke_as(Principal(id="a"), "save", {"key": "r.txt", "text": "y"})
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.node == "store_report"
    assert f"s3://{bucket}/data/tenants/default/r.txt" in failed.error.message
    assert "ObjectStoreError" in failed.error.type


class FlakyProxy:
    """A TCP proxy to moto that cuts the first ``drops`` connections before any answer."""

    def __init__(self, target_port: int, drops: int) -> None:
        self.target_port = target_port
        self.drops = drops
        self.accepted = 0
        self.port = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        async with client:
            if self.accepted <= self.drops:
                return  # closed without an answer: a dropped connection
            async with await anyio.connect_tcp("127.0.0.1", self.target_port) as upstream:

                async def pump(src: Any, dst: Any) -> None:
                    try:
                        async for chunk in src:
                            await dst.send(chunk)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                    finally:
                        tg.cancel_scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, client, upstream)
                    tg.start_soon(pump, upstream, client)


async def test_transient_errors_are_retried_with_backoff(moto: MotoServer, bucket: str) -> None:
    proxy = FlakyProxy(moto.port, drops=2)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        url = (
            f"s3://{bucket}/flaky?endpoint=http://127.0.0.1:{proxy.port}&region=us-east-1"
            "&access_key_id=test&secret_access_key=test&max_retries=4&timeout=10"
        )
        store = S3BlobStore(url)
        await store.open()
        with anyio.fail_after(30):
            await store.put_blob("k", b"value")
            assert await store.get_blob("k") == b"value"
        assert proxy.accepted > 2  # the dropped connections were retried
        tg.cancel_scope.cancel()


async def test_health_ready_reports_the_blob_store(own_moto: MotoServer, tmp_path: Any) -> None:
    pytest.importorskip("nexus_plugin_api")
    bucket = new_bucket(own_moto)
    app = Nexus(
        "ready",
        config={
            "storage": {"url": "memory://", "blobs": own_moto.url(bucket, "b")},
            "channels": {"api": {"port": 0}},
        },
        env={"NEXUS_PLUGINS": "nexus-plugin-s3,nexus-plugin-api"},
    )
    async with app.running(channels=["api"]):
        channel: Any = app.channels["api"]
        try:
            async with httpx.AsyncClient(base_url=channel.url, timeout=30) as http:
                ready = await http.get("/health/ready")
                assert ready.status_code == 200, ready.text
                checks = {c["name"]: c for c in ready.json()["checks"]}
                assert checks["storage:blobs"]["ok"] is True
                own_moto.stop()
                down = await http.get("/health/ready")
                assert down.status_code == 503
                checks = {c["name"]: c for c in down.json()["checks"]}
                assert checks["storage:blobs"]["ok"] is False
                assert checks["storage"]["ok"] is True
        finally:
            channel.stop()
            await channel.wait_stopped()


async def test_server_stopped_while_a_node_uploads(own_moto: MotoServer) -> None:
    """A run whose S3Put is cut off mid-upload fails naming the node and the bucket."""
    bucket = new_bucket(own_moto)
    url = own_moto.url(bucket, "data") + "&multipart_threshold=5242880&part_size=5242880"
    app = Nexus(
        "midway",
        storage="memory://",
        config={"plugins": {"s3": {"url": url}}, "services": {"runs": {"inline_limit": None}}},
        env={"NEXUS_PLUGINS": "nexus-plugin-s3"},
    )

    def archive(megabytes: int) -> str:
        return "z" * (megabytes * MIB)

    wb = WorkflowBuilder("save")
    wb.add_node(FunctionNode, "make", {"function": archive})
    wb.add_node("S3Put", "store_archive", {})
    wb.add_workflow_inputs("make", {"megabytes": "megabytes"})
    wb.add_workflow_inputs("store_archive", {"key": "key"})
    wb.add_connection("make", "result", "store_archive", "text")
    wb.set_output("store_archive", "key")
    app.register(wb)

    def stop_once_uploading() -> None:
        # The condition, not a delay: the multipart upload exists, then the server goes.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if "<Upload>" in own_moto.multipart_uploads(bucket):
                own_moto.stop()
                return
        raise AssertionError("the upload never started")

    async with app, anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, stop_once_uploading)
        with anyio.fail_after(90):
            result = await app.invoke_as(
                Principal(id="a"), "save", {"key": "archive.txt", "megabytes": 60}
            )
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.node == "store_archive"
    assert f"s3://{bucket}/data/tenants/default/archive.txt" in result.error.message

"""The channel contract suite: a channel plugin runs it on itself.

::

    from nexus_core.testing.channel import ChannelContract


    class TestLines(ChannelContract):
        channel_name = "lines"

        def plugins(self):
            return ["nexus_lines"]  # the module (or object) implementing nexus_channels

        def config(self):
            return {"channels": {"lines": {"port": 0}}}  # the nexus table

        async def call(self, channel, workflow, inputs):
            # Talk to the started channel as a client would; return the output.
            return await ask(channel.url, workflow, inputs)

The suite builds a host (``memory://`` storage, entry points not loaded, the
plugins given) with one workflow, ``echo(text: str) -> str``, and checks:

* the plugin registers a channel of that name through ``nexus_channels``;
* the host starts it (``app.running(channels=[name])``): ``run`` calls
  ``task_status.started()`` in time, the object meets the
  :class:`~nexus_core.channels.Channel` protocol, its ``name`` is the
  registered one, ``ready()`` is true and the host's readiness says so;
* cancellation stops it in time, and it can be started again in the same
  process (its port and other resources were released);
* with :meth:`ChannelContract.call`: a request runs the workflow through
  ``app.invoke``, recorded with the channel's name; the same request from
  many clients at once all succeed;
* a channel with ``stop()`` stops gracefully (``wait_stopped`` returns).

Needs pytest and anyio's pytest plugin: ``pip install nexus-core[test]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest

from ..app import Nexus
from ..channels import Channel, ChannelCapabilities
from ..serving import start_channel

__all__ = ["ChannelContract"]


class ChannelContract:
    """Mix into a ``Test*`` class; set :attr:`channel_name` and override :meth:`plugins`."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    #: The name the channel registers (its ``ChannelSpec.name``).
    channel_name: ClassVar[str] = ""
    #: Seconds the channel may take to start, and to stop.
    timeout: ClassVar[float] = 10.0
    #: Concurrent requests in :meth:`test_concurrent_requests`.
    concurrency: ClassVar[int] = 8

    def plugins(self) -> list[object | str]:
        """Override: the plugin objects or module names that register the channel."""
        return []

    def config(self) -> dict[str, Any]:
        """The ``nexus`` config table of the host (for example the channel's port 0)."""
        return {}

    async def call(self, channel: Any, workflow: str, inputs: dict[str, Any]) -> Any:
        """Override: run ``workflow`` with ``inputs`` through the started channel; its output.

        Talk to the channel as its clients do (a socket, HTTP...). Without an
        override, the request tests are skipped.
        """
        pytest.skip("override call() to send a request through the channel")

    @pytest.fixture
    def anyio_backend(self) -> str:
        """The async library the tests run on."""
        return "asyncio"

    @pytest.fixture
    def app(self) -> Nexus:
        """A host with the plugins and one workflow, ``echo``."""
        if not self.channel_name:
            pytest.fail("set channel_name on the contract class")
        app = Nexus(
            "channel-contract",
            config=self.config(),
            storage="memory://",
            plugins=self.plugins(),
            autoload=False,
            env={},
        )

        @app.workflow
        def echo(text: str) -> str:
            """Return the text."""
            return text

        return app

    @pytest.fixture
    async def channel(self, app: Nexus) -> AsyncIterator[Any]:
        """The channel, started by the host as ``nexus serve`` starts it; stopped after the test."""
        async with app.running(), anyio.create_task_group() as tg:
            with anyio.fail_after(self.timeout):
                started = await start_channel(app, self.channel_name, tg)
            yield started
            tg.cancel_scope.cancel()

    # -- registration --------------------------------------------------------

    def test_the_plugin_registers_the_channel(self, app: Nexus) -> None:
        """``nexus_channels`` returns a spec of that name with a loadable factory."""
        spec = app.host.channels().get(self.channel_name)
        assert spec is not None, (
            f"no channel {self.channel_name!r} among {list(app.host.channels())}"
        )
        assert callable(spec.load())

    # -- lifecycle -----------------------------------------------------------

    async def test_it_starts_and_is_ready(self, app: Nexus, channel: Any) -> None:
        """Started in time, a Channel by the protocol, named as registered, ready."""
        assert isinstance(channel, Channel)
        assert channel.name == self.channel_name
        assert isinstance(channel.capabilities, ChannelCapabilities)
        assert await channel.ready() is True
        report = await app.readiness()
        check = next(c for c in report.checks if c.name == f"channel:{self.channel_name}")
        assert check.ok, check

    async def test_it_stops_on_cancellation_and_starts_again(self, app: Nexus) -> None:
        """Cancelling stops it in time; a second start in the same process works."""
        for _ in range(2):
            with anyio.fail_after(2 * self.timeout):
                async with app.running(channels=[self.channel_name]):
                    assert await app.channels[self.channel_name].ready()

    async def test_a_graceful_stop_ends_run(self, app: Nexus) -> None:
        """A channel with ``stop()`` stops gracefully; ``wait_stopped`` then returns."""
        async with app.running(channels=[self.channel_name]):
            channel = app.channels[self.channel_name]
            if not callable(getattr(channel, "stop", None)):
                pytest.skip("the channel has no stop(): it is stopped by cancellation only")
            channel.stop()
            wait = getattr(channel, "wait_stopped", None)
            if wait is not None:
                with anyio.fail_after(self.timeout):
                    await wait()

    # -- requests ------------------------------------------------------------

    async def test_a_request_runs_the_workflow_through_invoke(
        self, app: Nexus, channel: Any
    ) -> None:
        """The output comes back, and the run is recorded with the channel's name."""
        with anyio.fail_after(self.timeout):
            output = await self.call(channel, "echo", {"text": "contract"})
        assert output == "contract"
        runs = await app.list_runs()
        assert any(run.channel == self.channel_name for run in runs), [r.channel for r in runs]

    async def test_concurrent_requests(self, app: Nexus, channel: Any) -> None:
        """Many clients at once each get their own answer."""
        if type(self).call is ChannelContract.call:
            pytest.skip("override call() to send a request through the channel")
        answers: dict[int, Any] = {}

        async def one(index: int) -> None:
            answers[index] = await self.call(channel, "echo", {"text": f"n{index}"})

        with anyio.fail_after(self.timeout):
            async with anyio.create_task_group() as tg:
                for index in range(self.concurrency):
                    tg.start_soon(one, index)
        assert answers == {i: f"n{i}" for i in range(self.concurrency)}

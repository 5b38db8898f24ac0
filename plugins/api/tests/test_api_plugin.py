"""The plugin as the host sees it: entry point, hooks, config, CLI command, operations routes."""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys

import httpx
import msgspec
import pytest
from api_apps import build
from api_support import serving
from nexus_core import CommandSpec, Nexus
from nexus_core.config import ConfigError

from nexus_plugin_api import hookspecs, plugin
from nexus_plugin_api.channel import ApiChannel
from nexus_plugin_api.config import ApiConfig


def test_entry_point_is_named_after_the_distribution() -> None:
    (ep,) = [
        ep
        for ep in importlib.metadata.entry_points(group="nexus.plugins")
        if ep.value == "nexus_plugin_api.plugin"
    ]
    assert ep.name == "nexus-plugin-api"
    assert ep.dist is not None and ep.dist.name == "nexus-plugin-api"


def test_every_hook_is_documented_with_its_version() -> None:
    for name in hookspecs.__all__:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        assert ".. versionadded::" in doc, name
    for name in plugin.__all__:
        assert inspect.getdoc(getattr(plugin, name)), name


def test_importing_the_plugin_does_not_import_the_web_stack() -> None:
    code = (
        "import sys, nexus_plugin_api, nexus_plugin_api.plugin, nexus_plugin_api.cli;"
        "heavy = [m for m in ('litestar', 'uvicorn') if m in sys.modules];"
        "sys.exit(f'imported {heavy}' if heavy else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_host_finds_the_channel_the_config_section_and_the_mount_hook() -> None:
    app = Nexus(storage="memory://", autoload=False, plugins=["nexus_plugin_api.plugin"], env={})
    assert "api" in app.host.channels()
    assert app.config.section("channels.api") == ApiConfig()
    assert app.host.hook("nexus_api_mounts").spec is not None
    (spec,) = app.host.hook("nexus_cli_commands").get_hookimpls()[0].function()
    assert isinstance(spec, CommandSpec) and spec.name == "serve"
    assert spec.load() is importlib.import_module("nexus_plugin_api.cli").serve_command


def test_config_from_environment_and_errors() -> None:
    env = {"NEXUS_CHANNELS__API__PORT": "9001", "NEXUS_CHANNELS__API__RATE_LIMIT": "100"}
    app = Nexus(storage="memory://", autoload=False, plugins=["nexus_plugin_api.plugin"], env=env)
    section = app.config.section("channels.api")
    assert (section.port, section.rate_limit) == (9001, 100)
    none = msgspec.convert({"rate_limit": None}, ApiConfig)
    assert none.rate_limit is None
    with pytest.raises(ConfigError, match="nexus.channels.api.prot"):
        Nexus(
            autoload=False,
            plugins=["nexus_plugin_api.plugin"],
            config={"channels": {"api": {"prot": 1}}},
            env={},
        )


def test_production_refuses_wildcard_origins() -> None:
    for key in ("cors_origins", "ws_origins"):
        app = Nexus(
            autoload=False,
            plugins=["nexus_plugin_api.plugin"],
            config={"environment": "production", "channels": {"api": {key: ["*"]}}},
            env={},
        )
        with pytest.raises(ConfigError, match=f"channels.api.{key}") as caught:
            ApiChannel(app, app.config.section("channels.api"))
        assert caught.value.key == f"nexus.channels.api.{key}"
    fine = Nexus(
        autoload=False,
        plugins=["nexus_plugin_api.plugin"],
        config={"environment": "development", "channels": {"api": {"cors_origins": ["*"]}}},
        env={},
    )
    ApiChannel(fine, fine.config.section("channels.api"))


def test_serve_command_signature_is_what_the_cli_registers() -> None:
    from nexus_plugin_api.cli import serve_command

    signature = inspect.signature(serve_command)
    params = signature.parameters
    assert list(params) == ["app", "host", "port", "workers", "reload", "log_format"]
    assert params["app"].kind is inspect.Parameter.POSITIONAL_ONLY
    assert params["app"].default is None
    named = ("host", "port", "workers", "reload", "log_format")
    assert {name: params[name].default for name in named} == {
        "host": "127.0.0.1",
        "port": 8000,
        "workers": 1,
        "reload": False,
        "log_format": None,  # the configured format, text unless set
    }
    assert signature.return_annotation in (int, "int")


def test_serve_command_reports_a_missing_app(capsys: pytest.CaptureFixture[str]) -> None:
    from nexus_plugin_api.cli import serve_command

    assert serve_command("no/such/app.py") == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.anyio
async def test_cors_from_config() -> None:
    app = build(api={"cors_origins": ["https://app.example"]})
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        allowed = await http.get("/workflows", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-nexus-session" in allowed.headers["access-control-expose-headers"].lower()
        preflight = await http.options(
            "/workflows/greet/runs",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-api-key",
            },
        )
        assert preflight.status_code in (200, 204)
        assert "POST" in preflight.headers["access-control-allow-methods"]
        other = await http.get("/workflows", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.anyio
async def test_operations_routes(server: tuple[Nexus, str], client: httpx.AsyncClient) -> None:
    app, _ = server
    await client.post("/workflows/greet/runs", json={"name": "x"})
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'nexus_requests_total{channel="api",outcome="completed",workflow="greet"}' in (
        metrics.text
    )
    live = (await client.get("/health/live")).json()
    assert live["status"] == "ok"
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert {c["name"] for c in ready.json()["checks"]} == {"storage", "channel:api"}
    plugins = (await client.get("/plugins")).json()
    names = {p["name"]: p for p in plugins["items"]}
    assert "nexus_channels" in names["nexus_plugin_api.plugin"]["hooks"]
    assert plugins["channels"] == [
        {
            "name": "api",
            "invoke": True,
            "stream_events": True,
            "sessions": True,
            "interactive": False,
        }
    ]
    channel = app.channels["api"]
    channel.state.closing = True  # as while shutting down: out of the load balancer
    try:
        not_ready = await client.get("/health/ready")
        assert not_ready.status_code == 503
        assert not_ready.json()["status"] == "fail"
    finally:
        channel.state.closing = False

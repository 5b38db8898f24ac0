"""URL settings, cluster hash tags, fail-open/closed per role, backoff, TLS and ACL users."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import anyio
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from nexus_core import Nexus
from nexus_core.errors import ServiceUnavailable
from nexus_core.plugin import ConfigError, SessionRecord
from redis.crc import key_slot
from redis_support import OwnRedis, own_redis, with_prefix

from nexus_plugin_redis.connection import RedisUnavailable, parse_url, redacted
from nexus_plugin_redis.storage import RedisBackend

pytestmark = pytest.mark.anyio


# -- URLs and config ---------------------------------------------------------------------


def test_url_settings_and_their_defaults() -> None:
    plain = parse_url("redis://127.0.0.1:6379/2")
    assert plain.prefix == "nexus"
    assert plain.rate_limit_errors == "closed"  # rate limits fail closed by default
    assert plain.cache_errors == "open"
    own = parse_url(
        "rediss://app:pw@cache:6380/1?prefix=shop&rate_limit_errors=open&cache_errors=closed"
        "&ssl_cert_reqs=required"
    )
    assert (own.prefix, own.rate_limit_errors, own.cache_errors) == ("shop", "open", "closed")
    # The plugin's own settings are not passed to redis-py; its own are.
    assert own.client_url == "rediss://app:pw@cache:6380/1?ssl_cert_reqs=required"
    assert own.shown == "rediss://app:***@cache:6380/1?ssl_cert_reqs=required"


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("redis://h/0?rate_limit_errors=maybe", "rate_limit_errors must be 'open' or 'closed'"),
        ("redis://h/0?cache_errors=", "cache_errors must be 'open' or 'closed'"),
        ("redis://h/zero", "the database (the URL's path) must be a number"),
        ("redis://h/0?prefix=", "prefix must be non-empty"),
        ("redis://h/0?prefix=a{b}", "without braces"),
        ("http://h/0", "not a redis:// or rediss:// URL"),
    ],
)
def test_a_bad_url_names_the_setting(url: str, names: str) -> None:
    with pytest.raises(ValueError, match=re.escape(names)):
        parse_url(url)


def test_messages_never_show_the_password() -> None:
    with pytest.raises(ValueError, match="must be a number") as caught:
        parse_url("redis://user:hunter2@h/zero")
    assert "hunter2" not in str(caught.value)
    assert redacted("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"


def test_the_bus_url_is_checked_with_the_config() -> None:
    with pytest.raises(ConfigError, match=r"nexus\.plugins\.redis: url: .*must be a number"):
        Nexus(config={"plugins": {"redis": {"url": "redis://h/abc"}}}, env={})


@pytest.mark.parametrize("age", [0, -5, "an hour"])
def test_a_bad_stream_max_age_names_the_setting(age: object) -> None:
    with pytest.raises(ConfigError, match=r"stream_max_age"):
        Nexus(config={"plugins": {"redis": {"stream_max_age": age}}}, env={})


def test_a_bad_storage_url_stops_the_start_naming_it(tmp_path: Path) -> None:
    app = Nexus(
        config={
            "storage": {"url": f"sqlite:///{tmp_path / 'n.db'}", "cache": "redis://h/0?prefix="}
        },
        env={},
    )

    async def start() -> None:
        async with app:
            pass

    with pytest.raises(Exception, match="prefix must be non-empty") as caught:
        anyio.run(start)
    assert "nexus-plugin-redis" in str(caught.value)


# -- cluster-ready keys -------------------------------------------------------------------


@given(keys=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_each_role_s_keys_share_one_cluster_slot(keys: list[str]) -> None:
    """Whatever the keys, a role's keys carry its hash tag: one slot per role."""
    backend = RedisBackend("redis://127.0.0.1:6379/0?prefix=app")
    cache = {key_slot((backend._value + k).encode()) for k in keys}
    cache |= {key_slot((backend._bucket + k).encode()) for k in keys}
    sessions = {key_slot((backend._session + k).encode()) for k in keys}
    sessions.add(key_slot(backend._expiry.encode()))
    assert cache == {key_slot(b"{app:cache}")}
    assert sessions == {key_slot(b"{app:sessions}")}


async def test_every_key_written_is_under_its_role_s_tag(redis_base: str, prefix: str) -> None:
    store = RedisBackend(with_prefix(redis_base, prefix))
    await store.open()
    try:
        await store.cache_set("k{weird}", b"v")
        await store.take_tokens('ratelimit:["x"]', capacity=2, refill_per_second=1)
        now = time.time()
        record = SessionRecord(
            id="s1", created_at=now, last_seen_at=now, expires_at=now + 60, ttl=60
        )
        await store.create_session(record)
    finally:
        await store.close()
    client = redis.Redis.from_url(redis_base)
    try:
        keys = [k.decode() for k in client.scan_iter(match=f"{{{prefix}:*", count=500)]
    finally:
        client.close()
    assert len(keys) == 4
    assert all(k.startswith((f"{{{prefix}:cache}}:", f"{{{prefix}:sessions}}:")) for k in keys)


# -- Redis down -----------------------------------------------------------------------------


async def _wait_until_up(store: RedisBackend) -> None:
    with anyio.fail_after(10):
        while True:
            try:
                await store.cache_delete("probe")
                return
            except RedisUnavailable:
                await anyio.sleep(0.02)


async def test_redis_down_each_role_fails_as_configured(tmp_path: Path) -> None:
    with own_redis(tmp_path) as server:
        closed = RedisBackend(server.url)
        lenient = RedisBackend(f"{server.url}?rate_limit_errors=open&cache_errors=closed")
        for store in (closed, lenient):
            await store.open()
        try:
            assert await closed.take_tokens("b", capacity=1, refill_per_second=1e-9) == 0.0
            server.stop()
            # Rate limits: closed by default (a clear 503), open when asked.
            with pytest.raises(RedisUnavailable, match=r"Redis at redis://127\.0\.0\.1:\d+/0"):
                await closed.take_tokens("b", capacity=1, refill_per_second=1e-9)
            assert await lenient.take_tokens("b", capacity=1, refill_per_second=1e-9) == 0.0
            # Cache values: a miss and a dropped write by default, an error when closed.
            assert await closed.cache_get("k") is None
            await closed.cache_set("k", b"v")
            with pytest.raises(RedisUnavailable):
                await lenient.cache_get("k")
            # Sessions: always an error (there is no safe answer), a ServiceUnavailable.
            with pytest.raises(ServiceUnavailable):
                await closed.get_session("s1")
            with pytest.raises(RedisUnavailable):
                await closed.ping()
            # Backing off: the next call fails at once, without a new connection.
            assert closed._breaker.down
            with pytest.raises(RedisUnavailable, match="unreachable"):
                await closed.count_sessions(time.time())

            server.start()  # a new, empty server on the same port: reconnects
            await _wait_until_up(closed)
            assert await closed.ping() is True
            assert not closed._breaker.down
            assert await closed.take_tokens("b", capacity=1, refill_per_second=1e-9) == 0.0
        finally:
            for store in (closed, lenient):
                await store.close()


# -- TLS and ACL ----------------------------------------------------------------------------


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", "/CN=test-ca",
        "-out", "ca.pem",
    )  # fmt: skip
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key")
    openssl("req", "-new", "-key", "server.key", "-subj", "/CN=127.0.0.1", "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
    )  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


async def test_tls_and_an_acl_user_from_the_url(tmp_path: Path) -> None:
    """rediss:// with the CA in the URL and an ACL user: works; a wrong password is a clear 503."""
    ca, cert, key = _certificates(tmp_path)
    server = OwnRedis(
        tmp_path,
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
        "--user", "default", "off",
        "--user", "gateway", "on", ">s3cret", "~{nexus:*", "+@all",
        tls=True,
    )  # fmt: skip
    server.start()
    try:
        base = server.url.replace("rediss://", "rediss://gateway:s3cret@")
        store = RedisBackend(f"{base}?ssl_ca_certs={ca}")
        wrong = RedisBackend(base.replace("s3cret", "nope") + f"?ssl_ca_certs={ca}")
        untrusted = RedisBackend(base)  # the system CAs do not know the test's CA
        for each in (store, wrong, untrusted):
            await each.open()
        try:
            assert await store.ping() is True
            assert await store.take_tokens("b", capacity=1, refill_per_second=1e-9) == 0.0
            assert await store.take_tokens("b", capacity=1, refill_per_second=1e-9) > 0
            with pytest.raises(RedisUnavailable) as refused:
                await wrong.ping()
            assert "nope" not in str(refused.value) and "s3cret" not in str(refused.value)
            assert "gateway:***@" in str(refused.value)
            with pytest.raises(RedisUnavailable, match="(?i)certificate"):
                await untrusted.ping()
        finally:
            for each in (store, wrong, untrusted):
                await each.close()
    finally:
        server.stop()


async def test_the_host_outlives_redis_down_during_its_housekeeping(tmp_path: Path) -> None:
    """Session expiry runs every second here; Redis down across several ticks kills nothing."""
    with own_redis(tmp_path) as server:
        app = Nexus(
            "house",
            autoload=False,
            plugins=["nexus_plugin_redis.plugin"],
            config={
                "storage": {
                    "url": f"sqlite:///{tmp_path / 'n.db'}",
                    "sessions": server.url,
                    "cache": server.url,
                },
                "plugins": {"redis": {"url": server.url}},
                "services": {"security": {"session_timeout": 10}},  # expiry every 1 s
            },
            env={},
        )

        @app.workflow
        def greet(name: str) -> str:
            return f"Hello, {name}."

        async with app:
            session = await app.create_session(channel="python")
            server.stop()
            deadline = time.monotonic() + 3.5  # three expiry ticks with Redis down
            while time.monotonic() < deadline:
                await anyio.sleep(0.1)
                report = await app.readiness()
                assert not report.ok
            server.start()
            with anyio.fail_after(10):
                while not (await app.readiness()).ok:  # noqa: ASYNC110 - polls the server
                    await anyio.sleep(0.05)
            # Still serving, on the new (empty) server: the old session went with the old one.
            assert session.id
            again = await app.create_session(channel="python")
            assert (await app.invoke("greet", {"name": "Ada"}, session=again.id)).output


async def test_a_refused_command_is_a_clear_503_not_a_crash(redis_base: str, prefix: str) -> None:
    """A key of another type (WRONGTYPE), like OOM or an ACL refusal, is ServiceUnavailable."""
    store = RedisBackend(with_prefix(redis_base, prefix))
    await store.open()
    try:
        client = redis.Redis.from_url(redis_base)
        client.set(f"{{{prefix}:cache}}:b:bucket", b"a string, not a bucket")
        client.close()
        with pytest.raises(RedisUnavailable, match="refused the command: WRONGTYPE"):
            await store.take_tokens("bucket", capacity=1, refill_per_second=1)
        assert not store._breaker.down  # the server is up: no backoff
        assert await store.take_tokens("other", capacity=1, refill_per_second=1) == 0.0
    finally:
        await store.close()

from __future__ import annotations

import json
import math
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_core import ConfigSectionSpec, NexusError, hookimpl
from nexus_core.config import (
    DEFAULT_STORAGE,
    RESERVED_ENV_VARS,
    Config,
    ConfigError,
    ConfigStruct,
    NexusConfig,
    SecurityConfig,
    StorageConfig,
    check_production,
    load_config,
)
from nexus_core.plugins import PluginHost

# -- sections as plugins would declare them ------------------------------------------


class ApiSection(ConfigStruct, kw_only=True):
    rate_limit: int = 60
    cors_origins: list[str] = []


class CliSection(ConfigStruct, kw_only=True):
    color: bool = True
    prompt: str = "nexus> "


class McpSection(ConfigStruct, kw_only=True):
    transport: str = "stdio"
    port: int | None = None


class RedisSection(ConfigStruct, kw_only=True):
    url: str = "redis://localhost:6379/0"
    pool_size: int = 10


class CacheService(ConfigStruct, kw_only=True):
    ttl: float = 30.0


SECTIONS: dict[str, type] = {
    "channels.api": ApiSection,
    "channels.cli": CliSection,
    "channels.mcp": McpSection,
    "plugins.redis": RedisSection,
    "services.cache": CacheService,
}


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(path: Path | None = None, **kwargs: Any) -> Config:
    kwargs.setdefault("env", {})
    kwargs.setdefault("sections", SECTIONS)
    return load_config(path, **kwargs)


# -- defaults ---------------------------------------------------------------------------


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    nexus = config.nexus
    assert config.path is None
    assert nexus.title == "Nexus"
    assert nexus.environment == "development"
    assert nexus.storage == DEFAULT_STORAGE == "sqlite:///.nexus/{app}.db"
    assert config.storage_url == "sqlite:///.nexus/nexus.db"  # no app named: the title's slug
    assert nexus.instance_id is None
    assert nexus.channels == {}
    assert nexus.plugins == {}
    security = nexus.services.security
    assert (security.strategy, security.session_timeout) == ("rbac", 3600.0)
    assert security.auth_enabled is None
    assert security.providers == []
    assert nexus.services.monitoring.metrics is True
    assert nexus.services.monitoring.log_level == "INFO"
    assert nexus.services.runs.on_restart == "resume"
    assert nexus.services.runs.default_timeout is None
    assert nexus.services.events.queue_size == 1000
    assert nexus.services.events.overflow == "drop_oldest"
    assert nexus == NexusConfig()
    assert set(config.sources().values()) == {"default"}


def test_every_struct_is_a_config_struct_with_defaults() -> None:
    for struct in (NexusConfig, SecurityConfig):
        assert issubclass(struct, ConfigStruct)
        assert struct.__struct_config__.forbid_unknown_fields
        struct()  # every field has a default


def test_auth_required_defaults_by_environment() -> None:
    assert NexusConfig().auth_required is False
    assert NexusConfig(environment="staging").auth_required is True
    assert NexusConfig(environment="production").auth_required is True
    off = msgspec.convert(
        {"environment": "production", "services": {"security": {"auth_enabled": False}}},
        NexusConfig,
    )
    assert off.auth_required is False
    on = msgspec.convert({"services": {"security": {"auth_enabled": True}}}, NexusConfig)
    assert on.auth_required is True


def test_registered_sections_get_defaults_without_a_table() -> None:
    config = load()
    assert config.section("channels.api") == ApiSection()
    assert config.section("plugins.redis") == RedisSection()
    assert config.section("services.cache") == CacheService()
    assert config.nexus.channels == {"api": ApiSection(), "cli": CliSection(), "mcp": McpSection()}
    assert config.nexus.plugins == {"redis": RedisSection()}


def test_section_reaches_core_sections_and_rejects_unknown_names() -> None:
    config = load()
    assert config.section("services.security") is config.nexus.services.security
    assert config.section("nexus.services.events") is config.nexus.services.events
    assert config.section("nexus.channels.api") is config.nexus.channels["api"]
    with pytest.raises(
        ConfigError, match=r"unknown config section 'channels\.apii'.*'channels\.api'"
    ):
        config.section("channels.apii")
    with pytest.raises(ConfigError, match="unknown config section"):
        config.section("services.security.strategy")  # a value, not a section


# -- files ------------------------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nexus.toml",
        """
        [nexus]
        title = "Orders"
        environment = "staging"
        storage = "postgresql://db/orders"
        instance_id = "node-1"

        [nexus.services.security]
        strategy = "abac"
        session_timeout = 600
        providers = ["api_key"]

        [nexus.services.runs]
        on_restart = "fail"
        default_timeout = 30.5

        [nexus.channels.api]
        rate_limit = 100
        """,
    )
    config = load(path)
    assert config.path == path
    nexus = config.nexus
    assert (nexus.title, nexus.environment, nexus.storage) == (
        "Orders",
        "staging",
        "postgresql://db/orders",
    )
    assert nexus.instance_id == "node-1"
    assert nexus.services.security.strategy == "abac"
    assert nexus.services.security.session_timeout == 600.0
    assert nexus.services.security.providers == ["api_key"]
    assert nexus.services.runs.on_restart == "fail"
    assert nexus.services.runs.default_timeout == 30.5
    assert nexus.channels["api"] == ApiSection(rate_limit=100)
    assert config.section("channels.api") is nexus.channels["api"]


def test_toml_without_nexus_table(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nexus.toml",
        """
        title = "Flat"
        [services.events]
        queue_size = 5
        overflow = "disconnect"
        """,
    )
    nexus = load(path).nexus
    assert nexus.title == "Flat"
    assert nexus.services.events.queue_size == 5
    assert nexus.services.events.overflow == "disconnect"


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file(tmp_path: Path, suffix: str) -> None:
    path = write(
        tmp_path / f"nexus{suffix}",
        """
        nexus:
          title: From YAML
          instance_id: ~
          services:
            monitoring:
              metrics: false
              log_level: DEBUG
        """,
    )
    nexus = load(path).nexus
    assert nexus.title == "From YAML"
    assert nexus.instance_id is None
    assert nexus.services.monitoring.metrics is False
    assert nexus.services.monitoring.log_level == "DEBUG"


def test_empty_files_load_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path / "a.yaml", "")).nexus == load().nexus
    assert load(write(tmp_path / "b.toml", "")).nexus == load().nexus
    assert load(write(tmp_path / "c.yaml", "nexus:\n")).nexus == load().nexus


def test_kailash_layout(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nexus.yaml",
        """
        nexus:
          title: "Enterprise Workflow Platform"
          environment: production
          channels:
            api:
              rate_limit: 1000
              cors_origins: ["https://app.example.com"]
            cli:
              color: false
            mcp:
              transport: sse
              port: 3001
          services:
            security:
              strategy: hybrid
              session_timeout: 7200
            monitoring:
              metrics: true
              log_level: WARNING
        """,
    )
    config = load(path)
    nexus = config.nexus
    assert nexus.title == "Enterprise Workflow Platform"
    assert nexus.environment == "production"
    assert config.section("channels.api") == ApiSection(
        rate_limit=1000, cors_origins=["https://app.example.com"]
    )
    assert config.section("channels.cli") == CliSection(color=False)
    assert config.section("channels.mcp") == McpSection(transport="sse", port=3001)
    assert nexus.services.security.strategy == "hybrid"
    assert nexus.services.security.session_timeout == 7200.0
    assert nexus.services.monitoring.log_level == "WARNING"
    assert nexus.auth_required is True


def test_discovery_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load().path is None
    write(tmp_path / "nexus.yml", "title: yml\n")
    assert load().nexus.title == "yml"
    write(tmp_path / "nexus.yaml", "title: yaml\n")
    assert load().nexus.title == "yaml"
    write(tmp_path / "nexus.toml", 'title = "toml"\n')
    config = load()
    assert config.nexus.title == "toml"
    assert config.path == Path("nexus.toml")
    assert config.sources()["nexus.title"] == "nexus.toml"


def test_nexus_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "nexus.toml", 'title = "cwd"\n')
    other = write(tmp_path / "other.yaml", "title: other\n")
    assert load(env={"NEXUS_CONFIG": str(other)}).nexus.title == "other"
    explicit = write(tmp_path / "explicit.toml", 'title = "explicit"\n')
    assert load(explicit, env={"NEXUS_CONFIG": str(other)}).nexus.title == "explicit"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="named by environment variable NEXUS_CONFIG"):
        load(env={"NEXUS_CONFIG": str(tmp_path / "gone.yaml")})


def test_unsupported_file_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nexus\.ini: unsupported config file type '\.ini'"):
        load(write(tmp_path / "nexus.ini", "[nexus]\n"))


def test_in_code_data_replaces_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "nexus.toml", 'title = "file"\nstorage = "memory://"\n')
    config = load(data={"nexus": {"title": "code", "channels": {"api": {"rate_limit": 7}}}})
    assert config.path is None
    assert config.nexus.title == "code"
    assert config.nexus.storage == DEFAULT_STORAGE  # the file was not read
    assert config.section("channels.api").rate_limit == 7
    assert config.sources()["nexus.title"] == "code"
    flat = load(data={"title": "flat", "channels": {"api": ApiSection(rate_limit=3)}})
    assert flat.nexus.title == "flat"
    assert flat.section("channels.api").rate_limit == 3
    with pytest.raises(TypeError):
        load(tmp_path / "nexus.toml", data={})


def test_to_dict_round_trips(tmp_path: Path) -> None:
    config = load(
        data={"title": "t", "services": {"cache": {"ttl": 1.5}}, "plugins": {"redis": {}}},
    )
    dumped = config.to_dict()
    assert dumped["nexus"]["services"]["cache"] == {"ttl": 1.5}
    assert dumped["nexus"]["channels"]["api"] == {"rate_limit": 60, "cors_origins": []}
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(dumped), encoding="utf-8")
    again = load(path)
    assert again.to_dict() == dumped
    assert load(data=dumped).to_dict() == dumped


# -- environment ------------------------------------------------------------------------


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nexus.toml",
        """
        [nexus]
        title = "file"
        environment = "staging"
        [nexus.services.security]
        strategy = "rbac"
        session_timeout = 10
        [nexus.channels.api]
        rate_limit = 5
        cors_origins = ["https://a"]
        """,
    )
    env = {
        "NEXUS_ENVIRONMENT": "production",
        "NEXUS_STORAGE": "postgresql://db/x",
        "NEXUS_SERVICES__SECURITY__STRATEGY": "abac",
        "NEXUS_CHANNELS__API__RATE_LIMIT": "100",
    }
    config = load(path, env=env)
    nexus = config.nexus
    assert nexus.title == "file"
    assert nexus.environment == "production"
    assert nexus.storage == "postgresql://db/x"
    assert nexus.services.security.strategy == "abac"
    assert nexus.services.security.session_timeout == 10.0  # untouched, from the file
    assert nexus.channels["api"] == ApiSection(rate_limit=100, cors_origins=["https://a"])


def test_env_values_are_json_else_string() -> None:
    env = {
        "NEXUS_TITLE": "2024",  # JSON int, but the title is a str: the text is kept
        "NEXUS_INSTANCE_ID": "null",
        "NEXUS_SERVICES__SECURITY__AUTH_ENABLED": "true",
        "NEXUS_SERVICES__SECURITY__PROVIDERS": '["api_key", "jwt"]',
        "NEXUS_SERVICES__SECURITY__SESSION_TIMEOUT": "90",
        "NEXUS_SERVICES__MONITORING__METRICS": "0",
        "NEXUS_SERVICES__RUNS__DEFAULT_TIMEOUT": "2.5",
        "NEXUS_CHANNELS__API__CORS_ORIGINS": '["https://x"]',
        "NEXUS_CHANNELS__MCP__PORT": "3001",
        "NEXUS_PLUGINS__REDIS__URL": "redis://cache:6379/1",
    }
    config = load(env=env)
    nexus = config.nexus
    assert nexus.title == "2024"
    assert nexus.instance_id is None
    assert nexus.services.security.auth_enabled is True
    assert nexus.services.security.providers == ["api_key", "jwt"]
    assert nexus.services.security.session_timeout == 90.0
    assert nexus.services.monitoring.metrics is False
    assert nexus.services.runs.default_timeout == 2.5
    assert config.section("channels.api").cors_origins == ["https://x"]
    assert config.section("channels.mcp").port == 3001
    assert config.section("plugins.redis").url == "redis://cache:6379/1"


def test_env_json_object_merges_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.toml", "[channels.api]\nrate_limit = 5\ncors_origins = ['a']\n")
    config = load(path, env={"NEXUS_CHANNELS__API": '{"rate_limit": "9"}'})
    assert config.section("channels.api") == ApiSection(rate_limit=9, cors_origins=["a"])
    sources = config.sources()
    assert sources["nexus.channels.api.rate_limit"] == "env NEXUS_CHANNELS__API"
    assert sources["nexus.channels.api.cors_origins"] == str(path)
    with pytest.raises(ConfigError, match=r"NEXUS_CHANNELS__API: nexus\.channels\.api\.rate_lim:"):
        load(env={"NEXUS_CHANNELS__API": '{"rate_lim": 1}'})


def test_reserved_env_vars_are_ignored() -> None:
    assert {
        "NEXUS_PLUGINS",
        "NEXUS_DISABLE_PLUGINS",
        "NEXUS_DISABLE_PLUGIN_AUTOLOAD",
        "NEXUS_STRICT_PLUGINS",
        "NEXUS_REQUIRE_SERVICES",
        "NEXUS_APP",
        "NEXUS_URL",
        "NEXUS_CONFIG",
    } <= RESERVED_ENV_VARS
    env = {name: "x" for name in RESERVED_ENV_VARS if name != "NEXUS_CONFIG"}
    env["OTHER_TITLE"] = "not ours"
    assert load(env=env).nexus == load().nexus


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEXUS_TITLE", "from os.environ")
    assert load_config().nexus.title == "from os.environ"


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"NEXUS_CHANNELS__API__RATE_LIMIT": "lots"})
    assert str(info.value) == (
        "environment variable NEXUS_CHANNELS__API__RATE_LIMIT: "
        "nexus.channels.api.rate_limit: expected int, got str 'lots'"
    )
    assert info.value.key == "nexus.channels.api.rate_limit"
    assert info.value.source == "environment variable NEXUS_CHANNELS__API__RATE_LIMIT"
    with pytest.raises(ConfigError, match=r"^environment variable NEXUS_ENVIRONMENT: .*'prod'"):
        load(env={"NEXUS_ENVIRONMENT": "prod"})
    with pytest.raises(
        ConfigError,
        match=r"^environment variable NEXUS_SERVICES__SECURITY__STRATEG: "
        r"nexus\.services\.security\.strateg: unknown key .*did you mean 'strategy'\?",
    ):
        load(env={"NEXUS_SERVICES__SECURITY__STRATEG": "abac"})
    # A variable outside every known top-level key is not a setting (NEXUS_REDIS_URL is a test's).
    assert load(env={"NEXUS_TITEL": "x", "NEXUS_REDIS_URL": "redis://"}).nexus.title == "Nexus"
    with pytest.raises(ConfigError, match=r"NEXUS_TITLE__X: nexus\.title\.x: .*not a table"):
        load(env={"NEXUS_TITLE__X": "x"})
    with pytest.raises(ConfigError, match="malformed"):
        load(env={"NEXUS_SERVICES____SECURITY": "x"})
    with pytest.raises(
        ConfigError,
        match=r"^environment variable NEXUS_CHANNELS__APII__RATE_LIMIT: "
        r"nexus\.channels\.apii: unknown section \(known: api, cli, mcp\)",
    ):
        load(env={"NEXUS_CHANNELS__APII__RATE_LIMIT": "1"})


# -- plugin sections ----------------------------------------------------------------------


def test_plugin_section_is_validated(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.toml", "[nexus.plugins.redis]\npool_size = 'many'\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: nexus.plugins.redis.pool_size: expected int, got str 'many'"
    )
    path = write(tmp_path / "nexus.toml", "[nexus.services.cache]\nttl = 2\n")
    assert load(path).section("services.cache") == CacheService(ttl=2.0)


def test_unknown_sections_are_errors_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.toml", "[nexus.channels.apii]\nrate_limit = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: nexus.channels.apii: unknown section (known: api, cli, mcp); did you mean 'api'?"
    )
    assert info.value.suggestion == "api"
    assert info.value.detail().suggestion == "api"
    path = write(tmp_path / "nexus.toml", "[nexus.plugins.kafka]\nbrokers = 1\n")
    with pytest.raises(
        ConfigError, match=r"nexus\.plugins\.kafka: unknown section \(known: redis\)"
    ):
        load(path)
    with pytest.raises(
        ConfigError, match=r"nexus\.channels\.api: unknown section \(none registered"
    ):
        load_config(data={"channels": {"api": {}}}, env={})
    with pytest.raises(
        ConfigError,
        match=r"nexus\.services\.cach: unknown section "
        r"\(known: cache, events, monitoring, runs, security\); did you mean 'cache'\?",
    ):
        load(data={"services": {"cach": {}}})


def test_section_factory_may_be_a_spec_with_an_import_string() -> None:
    spec = ConfigSectionSpec(name="channels.api", factory=f"{__name__}:ApiSection")
    config = load_config(
        data={"channels": {"api": {"rate_limit": 2}}}, env={}, sections={"channels.api": spec}
    )
    assert config.section("channels.api") == ApiSection(rate_limit=2)


def test_bad_section_registrations_are_reported() -> None:
    with pytest.raises(ConfigError, match="must be a msgspec Struct type"):
        load_config(env={}, sections={"channels.api": dict})
    with pytest.raises(ConfigError, match="clashes with the core setting"):
        load_config(env={}, sections={"services.security": ApiSection})
    with pytest.raises(ConfigError, match="cannot import"):
        load_config(
            env={},
            sections={"plugins.x": ConfigSectionSpec(name="plugins.x", factory="no_such_mod:X")},
        )
    with pytest.raises(ConfigError, match="not a table"):
        load_config(env={}, sections={"title.x": ApiSection})


def test_plugin_sections_through_the_plugin_host(tmp_path: Path) -> None:
    class ApiChannelPlugin:
        @hookimpl
        def nexus_config_sections(self) -> list[ConfigSectionSpec]:
            return [
                ConfigSectionSpec(name="channels.api", factory=ApiSection),
                ConfigSectionSpec(name="plugins.redis", factory=f"{__name__}:RedisSection"),
            ]

    host = PluginHost(plugins=[ApiChannelPlugin()], autoload=False, env={})
    specs = host.config_sections()
    assert set(specs) == {"channels.api", "plugins.redis"}
    path = write(
        tmp_path / "nexus.yaml",
        """
        nexus:
          channels:
            api: {rate_limit: 42}
          plugins:
            redis: {url: "redis://r/2"}
        """,
    )
    config = load_config(path, env={}, sections=specs)
    assert config.section("channels.api") == ApiSection(rate_limit=42)
    assert config.section("plugins.redis").url == "redis://r/2"
    write(path, "nexus:\n  channels:\n    cli: {}\n")
    with pytest.raises(ConfigError, match=r"nexus\.channels\.cli: unknown section \(known: api\)"):
        load_config(path, env={}, sections=specs)


def test_plain_struct_sections_without_forbid_keep_unknown_keys() -> None:
    class Loose(msgspec.Struct, kw_only=True):
        a: int = 1

    config = load_config(
        data={"plugins": {"loose": {"a": 2, "b": 3}}}, env={}, sections={"plugins.loose": Loose}
    )
    assert config.section("plugins.loose") == Loose(a=2)


# -- errors -----------------------------------------------------------------------------


def test_wrong_type_names_path_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.toml", '[nexus.services.security]\nstrategy = "abc"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: nexus.services.security.strategy: "
        "expected one of 'rbac', 'abac', 'hybrid', got 'abc'"
    )
    error = info.value
    assert isinstance(error, NexusError)
    assert error.code == "config_error"
    assert error.key == "nexus.services.security.strategy"
    assert error.source == str(path)
    detail = error.detail()
    assert detail.code == "config_error"
    assert detail.errors[0].path == "nexus.services.security.strategy"
    assert detail.errors[0].reason.startswith("expected one of")


def test_wrong_type_in_a_list_names_the_index(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.yaml", "channels:\n  api:\n    cors_origins: [a, 3]\n")
    with pytest.raises(
        ConfigError,
        match=rf"^{path}: nexus\.channels\.api\.cors_origins\[1\]: expected str, got int 3$",
    ):
        load(path)


def test_unknown_key_names_path_and_file(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.yaml", "nexus:\n  services:\n    security:\n      stratgy: x\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    known = ", ".join(sorted(field.name for field in msgspec.structs.fields(SecurityConfig)))
    assert "auth_enabled, " in known
    assert str(info.value) == (
        f"{path}: nexus.services.security.stratgy: unknown key "
        f"(known: {known}); did you mean 'strategy'?"
    )
    with pytest.raises(ConfigError, match=r"nexus\.titel: unknown key .*did you mean 'title'"):
        load(write(tmp_path / "nexus.toml", 'titel = "x"\n'))


def test_top_level_keys_beside_nexus_are_errors(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.toml", '[nexus]\ntitle = "x"\n[tool]\na = 1\n')
    with pytest.raises(ConfigError, match=r"nexus\.toml: tool: unknown top-level key"):
        load(path)
    with pytest.raises(ConfigError, match="expected a table of settings, got list"):
        load(write(tmp_path / "nexus.yaml", "- a\n- b\n"))


def test_in_code_errors_say_so() -> None:
    with pytest.raises(ConfigError, match=r"^config passed in code: nexus\.storage: expected str"):
        load(data={"storage": 5})


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("nexus.toml", 'title = "ok"\nstorage = = 1\n', 2),
        ("nexus.yaml", "title: ok\nchannels: [a, b\nstorage: x\n", 3),
    ],
)
def test_syntax_error_names_file_and_line(tmp_path: Path, name: str, text: str, line: int) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}: invalid ")
    assert info.value.source == str(path)


# -- provenance ---------------------------------------------------------------------------


def test_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(
        tmp_path / "nexus.toml",
        """
        [nexus]
        title = "file"
        environment = "staging"
        [nexus.channels.api]
        rate_limit = 5
        """,
    )
    config = load(env={"NEXUS_ENVIRONMENT": "production", "NEXUS_PLUGINS__REDIS__POOL_SIZE": "3"})
    sources = config.sources()
    assert sources["nexus.title"] == "nexus.toml"
    assert sources["nexus.environment"] == "env NEXUS_ENVIRONMENT"
    assert sources["nexus.channels.api.rate_limit"] == "nexus.toml"
    assert sources["nexus.channels.api.cors_origins"] == "default"
    assert sources["nexus.plugins.redis.pool_size"] == "env NEXUS_PLUGINS__REDIS__POOL_SIZE"
    assert sources["nexus.plugins.redis.url"] == "default"
    assert sources["nexus.storage"] == "default"
    assert sources["nexus.services.security.strategy"] == "default"
    assert sources["nexus.services.cache.ttl"] == "default"
    assert list(sources) == sorted(sources)
    # every leaf of to_dict() has a source
    assert set(sources) == set(_leaves(config.to_dict()))


# -- production checks ---------------------------------------------------------------------


def test_check_production() -> None:
    development = load()
    check_production(development, storage_persistent=False, auth_configured=False)
    production = load(env={"NEXUS_ENVIRONMENT": "production", "NEXUS_STORAGE": "memory://"})
    check_production(production, storage_persistent=True, auth_configured=True)
    check_production(production.nexus, storage_persistent=True, auth_configured=True)
    with pytest.raises(ConfigError, match=r"production.*storage 'memory://' does not persist"):
        check_production(production, storage_persistent=False, auth_configured=True)
    with pytest.raises(ConfigError, match="production.*no authentication is configured") as info:
        check_production(production, storage_persistent=True, auth_configured=False)
    assert "storage" not in str(info.value)
    with pytest.raises(ConfigError, match="does not persist.*and no authentication"):
        check_production(production.nexus, storage_persistent=False, auth_configured=False)


# -- properties -------------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ENVIRONMENTS = ("development", "staging", "production")
STRATEGIES = ("rbac", "abac", "hybrid")
ON_RESTART = ("resume", "fail")
OVERFLOW = ("drop_oldest", "disconnect")


def _section(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


ROLE_NAMES = ("runs", "events", "audit", "credentials", "sessions", "cache", "blobs")
STORAGE_TABLE = _section(url=TEXT, **dict.fromkeys(ROLE_NAMES, st.none() | TEXT))

VALID = _section(
    title=TEXT,
    environment=st.sampled_from(ENVIRONMENTS),
    storage=TEXT | STORAGE_TABLE,
    instance_id=st.none() | TEXT,
    channels=_section(
        api=_section(rate_limit=INTS, cors_origins=st.lists(TEXT, max_size=3)),
        cli=_section(color=st.booleans(), prompt=TEXT),
        mcp=_section(transport=TEXT, port=st.none() | INTS),
    ),
    services=_section(
        security=_section(
            strategy=st.sampled_from(STRATEGIES),
            session_timeout=FLOATS,
            auth_enabled=st.none() | st.booleans(),
            providers=st.lists(TEXT, max_size=3),
        ),
        monitoring=_section(metrics=st.booleans(), log_level=TEXT),
        runs=_section(on_restart=st.sampled_from(ON_RESTART), default_timeout=st.none() | FLOATS),
        events=_section(queue_size=INTS, overflow=st.sampled_from(OVERFLOW)),
        cache=_section(ttl=FLOATS),
    ),
    plugins=_section(redis=_section(url=TEXT, pool_size=INTS)),
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(value)


def to_toml(table: dict[str, Any], prefix: tuple[str, ...] = ("nexus",)) -> str:
    """Write nested dicts of scalars and lists as TOML (None has no TOML form: left out)."""
    lines = [f"[{'.'.join(prefix)}]"]
    lines += [f"{key} = {_toml_value(v)}" for key, v in _non_none(table) if not isinstance(v, dict)]
    text = "\n".join(lines) + "\n"
    for key, value in table.items():
        if isinstance(value, dict):
            text += to_toml(value, (*prefix, key))
    return text


def _non_none(table: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in table.items() if value is not None]


def _drop_none(table: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _drop_none(value) if isinstance(value, dict) else value
        for key, value in table.items()
        if value is not None
    }


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for key in value for leaf in _leaves(value[key], (*prefix, key))]
    return [".".join(prefix)]


def _assert_subset(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    for key, value in expected.items():
        if isinstance(value, dict):
            _assert_subset(value, actual[key])
        elif isinstance(value, float):
            assert math.isclose(actual[key], value, rel_tol=0, abs_tol=0) or actual[key] == value
        else:
            assert actual[key] == value, key


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(data=VALID, fmt=st.sampled_from(["toml", "yaml"]))
def test_random_valid_configs_load_back_equal(data: dict[str, Any], fmt: str) -> None:
    if fmt == "toml":
        data = _drop_none(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"nexus.{fmt}"
        text = to_toml(data) if fmt == "toml" else yaml.safe_dump({"nexus": data})
        path.write_text(text, encoding="utf-8")
        config = load(path)
    dumped = config.to_dict()["nexus"]
    _assert_subset(data, dumped)
    assert config.to_dict() == load(data=data).to_dict()
    sources = config.sources()
    for leaf in _leaves(data):
        if not leaf:
            continue
        origin = sources.get(f"nexus.{leaf}")
        if isinstance(_get(data, leaf), dict):
            # an empty table written in the file leaves its fields at their defaults
            assert origin is None or origin in (str(path), "default")
        else:
            assert origin == str(path), leaf


def _get(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value[part]
    return value


def _not_in(choices: tuple[str, ...]) -> st.SearchStrategy[str]:
    return TEXT.filter(lambda text: text not in choices)


NOT_A_NUMBER = TEXT | st.booleans() | st.lists(INTS, max_size=2)
BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "title": INTS | st.booleans() | st.lists(TEXT, max_size=2) | st.none(),
    "environment": _not_in(ENVIRONMENTS) | INTS,
    "storage": INTS | FLOATS | st.none() | st.booleans(),
    "storage.url": INTS | FLOATS | st.none() | st.lists(TEXT, max_size=2),
    "storage.runs": INTS | st.booleans() | st.lists(TEXT, max_size=2),
    "storage.cache": INTS | FLOATS | st.booleans() | st.lists(TEXT, max_size=2),
    "storage.blobs": INTS | st.booleans(),
    "instance_id": INTS | st.booleans() | st.lists(TEXT, max_size=2),
    "channels": TEXT | INTS,
    "services": TEXT | st.lists(INTS, max_size=2),
    "services.security": TEXT | INTS,
    "services.security.strategy": _not_in(STRATEGIES) | INTS,
    "services.security.session_timeout": NOT_A_NUMBER | st.none(),
    "services.security.auth_enabled": TEXT | INTS,
    "services.security.providers": TEXT | INTS | st.lists(INTS, min_size=1, max_size=2),
    "services.monitoring.metrics": TEXT | INTS | st.none(),
    "services.monitoring.log_level": INTS | st.booleans() | st.none(),
    "services.runs.on_restart": _not_in(ON_RESTART) | st.none(),
    "services.runs.default_timeout": NOT_A_NUMBER,
    "services.events.queue_size": NOT_A_NUMBER | FLOATS.filter(lambda f: not f.is_integer()),
    "services.events.overflow": _not_in(OVERFLOW) | INTS,
    "services.cache.ttl": NOT_A_NUMBER,
    "channels.api.rate_limit": NOT_A_NUMBER | st.none(),
    "channels.api.cors_origins": TEXT | st.lists(INTS, min_size=1, max_size=2),
    "channels.mcp.port": TEXT | st.booleans(),
    "plugins.redis": TEXT | INTS,
    "plugins.redis.pool_size": NOT_A_NUMBER,
}


def _put(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    table = out
    for part in dotted.split(".")[:-1]:
        if not isinstance(table.get(part), dict):
            table[part] = {}
        table = table[part]
    table[dotted.rsplit(".", 1)[-1]] = value
    return out


@PROPERTY
@given(base=VALID, st_data=st.data())
def test_random_bad_values_name_their_path(base: dict[str, Any], st_data: st.DataObject) -> None:
    key = st_data.draw(st.sampled_from(sorted(BAD_VALUES)), label="key")
    bad = st_data.draw(BAD_VALUES[key], label="bad")
    data = _put(base, key, bad)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nexus.yaml"
        path.write_text(yaml.safe_dump({"nexus": data}), encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: nexus.{key}")
    assert info.value.key is not None
    assert info.value.key.startswith(f"nexus.{key}")
    assert info.value.source == str(path)


STRUCT_PATHS = {
    "": NexusConfig,
    "services": None,
    "services.security": SecurityConfig,
    "storage": StorageConfig,
    "services.monitoring": None,
    "services.runs": None,
    "services.events": None,
    "channels.api": ApiSection,
    "plugins.redis": RedisSection,
}


@PROPERTY
@given(
    base=VALID,
    where=st.sampled_from(sorted(STRUCT_PATHS)),
    name=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
)
def test_random_unknown_keys_name_their_path(base: dict[str, Any], where: str, name: str) -> None:
    config = load()
    if where == "storage":  # a URL or a table: its keys are StorageConfig's
        known = msgspec.to_builtins(StorageConfig())
    else:
        known = msgspec.to_builtins(config.section(where)) if where else config.to_dict()["nexus"]
    if name in known:
        return
    dotted = f"{where}.{name}" if where else name
    data = _put(base, dotted, 1)
    with pytest.raises(ConfigError) as info:
        load(data=data)
    message = str(info.value)
    assert message.startswith(f"config passed in code: nexus.{dotted}: unknown ")
    assert info.value.key == f"nexus.{dotted}"


LITERALS = {
    "ENVIRONMENT": ENVIRONMENTS,
    "SERVICES__SECURITY__STRATEGY": STRATEGIES,
    "SERVICES__RUNS__ON_RESTART": ON_RESTART,
    "SERVICES__EVENTS__OVERFLOW": OVERFLOW,
}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@PROPERTY
@given(st_data=st.data())
def test_random_bad_env_values_name_the_variable(st_data: st.DataObject) -> None:
    suffix = st_data.draw(st.sampled_from(sorted(LITERALS)))
    choices = LITERALS[suffix]
    value = st_data.draw(
        st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
        ).filter(lambda text: text not in choices and _json_or_text(text) not in choices)
    )
    name = f"NEXUS_{suffix}"
    with pytest.raises(ConfigError) as info:
        load(env={name: value})
    key = "nexus." + suffix.lower().replace("__", ".")
    assert str(info.value).startswith(f"environment variable {name}: {key}: expected one of ")
    assert info.value.key == key


# -- where the file is found, and what relative storage paths mean ---------------------


def test_lookup_order_named_then_working_directory_then_beside_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus_core.config import app_directory

    here, app_dir, named = tmp_path / "here", tmp_path / "app", tmp_path / "etc"
    for folder in (here, app_dir, named):
        folder.mkdir()
    (app_dir / "app.py").write_text("")
    (app_dir / "nexus.yaml").write_text("title: beside\n")
    monkeypatch.chdir(here)

    with app_directory(app_dir / "app.py"):
        beside = load_config(env={})
    assert beside.nexus.title == "beside"
    assert beside.path == app_dir / "nexus.yaml"
    assert beside.directory == app_dir
    assert beside.app_name == "app"  # the app file's stem names the default database
    assert beside.storage_url == f"sqlite:///{app_dir / '.nexus' / 'app.db'}"

    (here / "nexus.toml").write_text('title = "here"\nstorage = "sqlite:///data/x.db"\n')
    with app_directory(app_dir):
        local = load_config(env={})
    assert local.nexus.title == "here"
    assert local.storage_url == f"sqlite:///{here / 'data' / 'x.db'}"

    (named / "prod.toml").write_text('title = "named"\n')
    with app_directory(app_dir):
        chosen = load_config(env={"NEXUS_CONFIG": str(named / "prod.toml")})
    assert chosen.nexus.title == "named"
    # A folder, not a file, was loaded: the app is named after its title.
    assert chosen.storage_url == f"sqlite:///{named / '.nexus' / 'named.db'}"

    # Outside a load (no app): the working directory's file, or nothing.
    (here / "nexus.toml").unlink()
    alone = load_config(env={})
    assert alone.path is None
    assert alone.directory is None
    assert alone.storage_url == "sqlite:///.nexus/nexus.db"
    with app_directory(app_dir):  # no file anywhere but beside the app: in-code data
        coded = load_config(data={"storage": "sqlite:///c.db"}, env={})
    assert coded.storage_url == f"sqlite:///{app_dir / 'c.db'}"


@given(
    rel=st.lists(st.sampled_from(["a", "b.db", "..", "x y", "é"]), min_size=1, max_size=4).map(
        "/".join
    )
)
def test_resolve_storage_url_only_touches_relative_sqlite_paths(rel: str) -> None:
    from nexus_core.config import resolve_storage_url

    base = Path("/srv/app")
    resolved = resolve_storage_url(f"sqlite:///{rel}", base)
    assert resolved.startswith("sqlite:////")
    assert Path(resolved[len("sqlite:///") :]) == (base / rel).resolve()
    for unchanged in (
        f"sqlite:////abs/{rel}",
        "sqlite:///:memory:",
        "memory://",
        "postgresql://h/db",
    ):
        assert resolve_storage_url(unchanged, base) == unchanged
    assert resolve_storage_url(f"sqlite:///{rel}", None) == f"sqlite:///{rel}"


# -- a storage URL per role -------------------------------------------------------------


URLS = st.sampled_from(
    ["memory://", "sqlite:///a.db", "sqlite:///data/b.db", "sqlite:////abs/c.db", "redis://h/0"]
)


def _resolved(url: str, folder: Path) -> str:
    return (
        f"sqlite:///{(folder / url[10:]).resolve()}"
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////")
        else url
    )


@PROPERTY
@given(
    url=st.none() | URLS,
    roles=st.dictionaries(st.sampled_from(ROLE_NAMES), URLS, max_size=7),
    env_url=st.none() | URLS,
    env_roles=st.dictionaries(st.sampled_from(ROLE_NAMES), URLS, max_size=3),
    as_string=st.booleans(),
)
def test_storage_urls_per_role_from_the_file_and_the_environment(
    url: str | None,
    roles: dict[str, str],
    env_url: str | None,
    env_roles: dict[str, str],
    as_string: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp).resolve()
        if as_string:  # storage = "..." (one URL), the roles only from the environment
            roles = {}
            text = f"[nexus]\nstorage = {json.dumps(url)}\n" if url else "[nexus]\n"
        else:
            table = {"url": url, **roles} if url else dict(roles)
            text = to_toml(table, ("nexus", "storage")) if table else "[nexus]\n"
        path = write(folder / "nexus.toml", text)
        env = {f"NEXUS_STORAGE__{role.upper()}": value for role, value in env_roles.items()}
        if env_url:
            env["NEXUS_STORAGE"] = env_url
        config = load(path, env=env)
    default = env_url or url or "sqlite:///.nexus/nexus.db"
    assert config.storage_url == _resolved(default, folder)
    expected = {
        role: _resolved({**roles, **env_roles}.get(role, default), folder) for role in ROLE_NAMES
    }
    assert config.storage_urls == expected
    sources = config.sources()
    for role in env_roles:
        assert sources[f"nexus.storage.{role}"] == f"env NEXUS_STORAGE__{role.upper()}"
    if env_url:
        key = "nexus.storage" if "nexus.storage" in sources else "nexus.storage.url"
        assert sources[key] == "env NEXUS_STORAGE"


def test_storage_table_in_yaml_and_in_code_resolves_every_role(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nexus.yaml",
        """
        nexus:
          storage:
            url: sqlite:///main.db
            events: sqlite:///events.db
            cache: memory://
        """,
    )
    config = load(path)
    assert isinstance(config.nexus.storage, StorageConfig)
    urls = config.storage_urls
    assert list(urls) == list(ROLE_NAMES)
    assert urls["events"] == f"sqlite:///{tmp_path / 'events.db'}"
    assert urls["cache"] == "memory://"
    for role in ("runs", "audit", "credentials", "sessions", "blobs"):
        assert urls[role] == config.storage_url == f"sqlite:///{tmp_path / 'main.db'}"
    coded = load(data={"storage": {"cache": "memory://"}})
    assert coded.storage_urls["cache"] == "memory://"
    assert coded.storage_url == "sqlite:///.nexus/nexus.db"  # url left out: the default


def test_storage_table_errors_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "nexus.toml", '[nexus.storage]\nurl = "memory://"\ncahce = "x"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == "nexus.storage.cahce"
    assert info.value.suggestion == "cache"
    assert "did you mean 'cache'?" in str(info.value)
    write(tmp_path / "nexus.toml", "[nexus.storage]\nevents = 3\n")
    with pytest.raises(ConfigError, match=r"nexus\.storage\.events: expected str") as info:
        load(path)
    assert info.value.key == "nexus.storage.events"
    with pytest.raises(ConfigError) as info:
        load(env={"NEXUS_STORAGE__BLOB": "memory://"})
    assert info.value.key == "nexus.storage.blob"
    assert str(info.value).startswith(
        "environment variable NEXUS_STORAGE__BLOB: nexus.storage.blob"
    )


def test_the_default_database_is_the_apps_own(tmp_path: Path) -> None:
    from nexus_core.config import app_directory, app_name

    (tmp_path / "hello.py").write_text("")
    (tmp_path / "shop.py").write_text("")
    with app_directory(tmp_path / "hello.py"):
        hello = load_config(env={})
    with app_directory(tmp_path / "shop.py"):
        shop = load_config(env={})
    assert hello.storage_url == f"sqlite:///{tmp_path / '.nexus' / 'hello.db'}"
    assert shop.storage_url == f"sqlite:///{tmp_path / '.nexus' / 'shop.db'}"
    assert set(hello.storage_urls.values()) == {hello.storage_url}
    # {app} works in any URL; an explicit nexus.db is used as it is.
    write(
        tmp_path / "nexus.toml",
        '[nexus.storage]\nurl = "sqlite:///nexus.db"\nblobs = "sqlite:///b/{app}.db"\n',
    )
    with app_directory(tmp_path / "shop.py"):
        named = load_config(env={})
    assert named.storage_url == f"sqlite:///{tmp_path / 'nexus.db'}"
    assert named.storage_urls["blobs"] == f"sqlite:///{tmp_path / 'b' / 'shop.db'}"
    # Names: the file's stem, a package's folder, else the title's slug.
    assert app_name("Coffee Shop!", tmp_path / "hello.py") == "hello"
    assert app_name(None, tmp_path / "pkg" / "__init__.py") == "pkg"
    assert app_name("Coffee Shop!") == "coffee-shop"
    assert app_name("☕") == app_name() == "nexus"


def test_bind_app_names_an_app_made_without_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "tools" / "report.py"
    script.parent.mkdir()
    script.write_text("")
    config = load_config(env={})
    config.bind_app("Daily report", script)  # python tools/report.py: beside the script
    assert config.app_name == "report"
    assert config.directory == script.parent
    assert config.storage_url == f"sqlite:///{script.parent / '.nexus' / 'report.db'}"
    config.bind_app("Other", tmp_path / "other.py")  # named once
    assert config.app_name == "report"
    interactive = load_config(env={})
    interactive.bind_app("Coffee Shop", "<stdin>")  # no file: the title's slug, working dir
    assert interactive.directory is None
    assert interactive.storage_url == "sqlite:///.nexus/coffee-shop.db"
    with_file = load_config(write(tmp_path / "nexus.toml", "[nexus]\n"), env={})
    with_file.bind_app("x", script)  # the config file's folder stays the base
    assert with_file.storage_url == f"sqlite:///{tmp_path / '.nexus' / 'report.db'}"


def test_a_legacy_nexus_db_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from nexus_core.config import app_directory

    (tmp_path / "hello.py").write_text("")
    (tmp_path / "nexus.db").write_bytes(b"")
    with app_directory(tmp_path / "hello.py"):
        config = load_config(env={})
    with caplog.at_level("WARNING", logger="nexus.config"):
        assert config.storage_urls == config.storage_urls  # read twice, reported once
    warnings = [r.getMessage() for r in caplog.records if r.name == "nexus.config"]
    assert len(warnings) == 1
    assert str(tmp_path / "nexus.db") in warnings[0]
    assert 'storage = "sqlite:///nexus.db"' in warnings[0]
    assert str(tmp_path / ".nexus" / "hello.db") in warnings[0]
    caplog.clear()
    explicit = load_config(data={"storage": "sqlite:///nexus.db"}, app_dir=tmp_path, env={})
    with caplog.at_level("WARNING", logger="nexus.config"):
        assert explicit.storage_urls["runs"] == f"sqlite:///{tmp_path / 'nexus.db'}"
    assert not [r for r in caplog.records if r.name == "nexus.config"]


# -- the seed document's hierarchical example ---------------------------------------------

SEED = """
[nexus]
title = "Enterprise Workflow Platform"
environment = "staging"

[nexus.channels.api]
rate_limit = 1000
cors_origins = ["https://app.example.com"]

[nexus.channels.cli]
idle_timeout = 1800
history_size = 1000

[nexus.channels.mcp]
capability_caching = true
capability_cache_ttl = 300

[[nexus.channels.mcp.service_discovery]]
name = "weather"
command = ["python", "-m", "weather_server"]

[[nexus.channels.mcp.service_discovery]]
name = "search"
url = "https://search.example.com/mcp"
token_env = "SEARCH_TOKEN"

[nexus.services.security]
strategy = "rbac"
session_timeout = 3600

[nexus.services.monitoring]
export_interval = 60
export_url = "http://127.0.0.1:9091"
retention_days = 30
"""


def test_the_seed_example_loads_with_every_key(tmp_path: Path) -> None:
    for module in ("nexus_plugin_api", "nexus_plugin_cli", "nexus_plugin_mcp"):
        pytest.importorskip(module, reason=f"the seed configures {module}'s channel")
    path = tmp_path / "nexus.toml"
    path.write_text(SEED)
    config = load_config(path, env={}, sections=PluginHost().config_sections())
    nexus = config.nexus
    assert nexus.title == "Enterprise Workflow Platform"
    assert nexus.environment == "staging"
    api = config.section("channels.api")
    assert api.rate_limit == 1000
    assert api.cors_origins == ["https://app.example.com"]
    cli = config.section("channels.cli")
    assert (cli.idle_timeout, cli.history_size) == (1800, 1000)
    mcp = config.section("channels.mcp")
    assert mcp.capability_caching is True
    assert mcp.capability_cache_ttl == 300
    assert [(s.name, s.command, s.url) for s in mcp.service_discovery] == [
        ("weather", ["python", "-m", "weather_server"], None),
        ("search", None, "https://search.example.com/mcp"),
    ]
    assert (nexus.services.security.strategy, nexus.services.security.session_timeout) == (
        "rbac",
        3600,
    )
    monitoring = nexus.services.monitoring
    assert monitoring.export_interval == 60
    assert monitoring.export_url == "http://127.0.0.1:9091"
    assert monitoring.retention_days == 30
    # And the documented copy is the same text.
    documented = (Path(__file__).parent.parent / "docs/how-to/configure.md").read_text()
    assert all(
        line.split("#")[0].strip() in documented
        for line in SEED.strip().splitlines()
        if line.split("#")[0].strip()
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"services": {"monitoring": {"retention_days": 0}}}, "retention_days"),
        ({"services": {"monitoring": {"export_interval": -1}}}, "export_interval"),
        ({"services": {"monitoring": {"retention_batch": 0}}}, "retention_batch"),
    ],
)
def test_monitoring_numbers_are_range_checked(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data=table, env={})
    assert info.value.key == f"nexus.services.monitoring.{key}"

"""The plugin as the host sees it: discovered, listed, chosen for s3:// blob URLs only."""

from __future__ import annotations

import pytest
from nexus_core.config import ConfigError
from nexus_core.plugin import PluginHost, StorageRouter
from nexus_core.storage.select import select_storage

from nexus_plugin_s3.backend import S3BlobStore

ROLES_BUT_BLOBS = ("runs", "events", "audit", "credentials", "sessions", "cache")


def host() -> PluginHost:
    return PluginHost(env={"NEXUS_PLUGINS": "nexus-plugin-s3"})


def test_listed_with_its_hooks() -> None:
    [info] = [i for i in host().infos() if i.name == "nexus-plugin-s3"]
    assert info.version == "0.1.0"
    assert {"nexus_storage_backends", "nexus_node_types", "nexus_config_sections"} <= set(
        info.hooks
    )
    assert "s3" in host().storage_backends()


def test_serves_the_blob_role_beside_another_backend() -> None:
    urls = dict.fromkeys(ROLES_BUT_BLOBS, "memory://")
    urls["blobs"] = "s3://bucket/prefix?endpoint=http://127.0.0.1:1"
    storage = select_storage(host(), urls)  # type: ignore[arg-type]
    assert isinstance(storage, StorageRouter)
    assert isinstance(storage.backends["blobs"], S3BlobStore)


def test_refuses_other_roles_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"nexus.storage.runs.*does not serve the 'runs' role"):
        select_storage(host(), {"runs": "s3://bucket"}, url="memory://")  # type: ignore[arg-type]


def test_a_bad_url_names_the_setting() -> None:
    urls = dict.fromkeys(ROLES_BUT_BLOBS, "memory://")
    urls["blobs"] = "s3://bucket?colour=red"
    with pytest.raises(Exception, match=r"nexus.storage.blobs: unknown parameter 'colour'"):
        select_storage(host(), urls)  # type: ignore[arg-type]

"""The hook implementations the host loads through the ``nexus.plugins`` entry point.

Import-light on purpose: nothing here imports the S3 client.
"""

from __future__ import annotations

from nexus_core.plugin import ConfigSectionSpec, NodeTypeSpec, StorageBackendSpec, hookimpl

__all__ = ["nexus_config_sections", "nexus_node_types", "nexus_storage_backends"]


@hookimpl
def nexus_storage_backends() -> list[StorageBackendSpec]:
    """``s3://bucket/prefix``: the blob role on S3 (:class:`~.backend.S3BlobStore`)."""
    return [
        StorageBackendSpec(
            name="s3",
            factory="nexus_plugin_s3.backend:S3BlobStore",
            schemes=("s3",),
            description="Blobs on S3 or an S3-compatible store (the blobs role only).",
        )
    ]


@hookimpl
def nexus_node_types() -> list[NodeTypeSpec]:
    """The S3 nodes: put, get, list, delete and presigned URLs, within the run's tenant."""
    return [
        NodeTypeSpec(name=name, factory=f"nexus_plugin_s3.nodes:{cls}", description=text)
        for name, cls, text in (
            ("S3Put", "S3Put", "Store bytes or text under a key of the tenant's prefix."),
            ("S3Get", "S3Get", "Read an object of the tenant's prefix."),
            ("S3List", "S3List", "List the keys of the tenant's prefix."),
            ("S3Delete", "S3Delete", "Delete an object of the tenant's prefix."),
            ("S3PresignedUrl", "S3PresignedUrl", "A time-limited URL to an object."),
        )
    ]


@hookimpl
def nexus_config_sections() -> list[ConfigSectionSpec]:
    """``[nexus.plugins.s3]``: the bucket of the S3 nodes (``url``)."""
    return [
        ConfigSectionSpec(
            name="plugins.s3",
            factory="nexus_plugin_s3.nodes:S3PluginConfig",
            description="Where the S3 nodes store (default: the s3:// blob store).",
        )
    ]

"""S3 nodes (put, get, list, delete, presigned URL) and :class:`S3Client`, confined to a tenant.

Every object a run touches lives under ``tenants/<tenant>/`` of the bucket
and prefix the nodes use: the run's tenant (its principal's) is part of the
client's own key prefix, so no key reaches outside it. A key is a relative
object name: ``..``, ``.`` and empty segments, a leading ``/`` and control
characters are refused with an error naming the key, and another tenant's
``tenants/other/...`` is simply a name inside this tenant's prefix.

Where the nodes store: the node's ``url`` config, else ``[nexus.plugins.s3]
url``, else the host's blob store when it is an ``s3://`` URL.

In a typed function, a parameter annotated :class:`S3Client` is injected::

    @app.workflow
    async def archive(text: str, s3: S3Client) -> str:
        info = await s3.put("notes/today.txt", text.encode(), content_type="text/plain")
        return info.key
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, Literal

import msgspec
from nexus_core import Nexus, Principal
from nexus_core.plugin import ConfigError, ConfigStruct, Injectable, Node, current_context

from .backend import BlobInfo, S3BlobStore, check_key, parse_s3_url

__all__ = [
    "S3Client",
    "S3Delete",
    "S3Get",
    "S3List",
    "S3NodeConfig",
    "S3PluginConfig",
    "S3PresignedUrl",
    "S3Put",
    "TenantKeyError",
    "client_for",
]

_TENANTS = "tenants"


class S3PluginConfig(ConfigStruct, kw_only=True):
    """``[nexus.plugins.s3]``: where the S3 nodes store (``url``; default: the blob store's)."""

    url: str | None = None


class TenantKeyError(ValueError):
    """A key that would leave the tenant's prefix, or is no object name: the message names it."""


def _tenant_segment(tenant: str) -> str:
    try:
        check_key(tenant)
    except ValueError:
        raise TenantKeyError(f"tenant {tenant!r} cannot name an object prefix") from None
    if "/" in tenant:
        raise TenantKeyError(f"tenant {tenant!r} cannot name an object prefix (it holds '/')")
    return tenant


def _check_tenant_key(key: str) -> str:
    try:
        check_key(key)
    except ValueError as exc:
        raise TenantKeyError(str(exc).replace("blob key", "key")) from None
    return key


class S3Client(Injectable):
    """Objects of one tenant: ``put``, ``get``, ``list``, ``delete``, ``presign``, ``info``.

    Keys are relative to the tenant's prefix (``<prefix>/tenants/<tenant>/``).
    Inject one into a workflow function by annotating a parameter with this
    type; elsewhere use :func:`client_for`.
    """

    def __init__(self, url: str, tenant: str) -> None:
        base = parse_s3_url(url, key="nexus.plugins.s3.url")
        self.tenant = _tenant_segment(tenant)
        prefix = "/".join(p for p in (base.prefix, _TENANTS, self.tenant) if p)
        #: The blob store of this tenant's objects (its key prefix is the tenant's).
        self.store = S3BlobStore(url, settings=msgspec.structs.replace(base, prefix=prefix))
        #: The bucket's name (errors name it).
        self.bucket = base.bucket
        #: The key prefix of this tenant's objects in the bucket.
        self.prefix = prefix

    @classmethod
    def inject(cls, context: Any) -> S3Client:
        """The client of the run's tenant (a workflow function's ``S3Client`` parameter)."""
        return _from_context(context)

    async def put(self, key: str, data: bytes, *, content_type: str | None = None) -> BlobInfo:
        """Store ``data`` under ``key`` (multipart above the threshold); its metadata."""
        return await self.store.put_blob_stream(
            _check_tenant_key(key), data, content_type=content_type
        )

    async def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None."""
        return await self.store.get_blob(_check_tenant_key(key))

    async def info(self, key: str) -> BlobInfo | None:
        """Size, content type, SHA-256 and ETag of ``key``, or None."""
        return await self.store.blob_info(_check_tenant_key(key))

    async def list(self, prefix: str = "") -> list[str]:
        """Keys of this tenant starting with ``prefix``, sorted."""
        if prefix:
            # Its full segments must be valid names; the last may be partial.
            head = prefix.rpartition("/")[0]
            if head:
                _check_tenant_key(head)
            if any(ord(c) < 0x20 for c in prefix) or prefix.startswith("/"):
                _check_tenant_key(prefix)
        return await self.store.list_blobs(prefix)

    async def delete(self, key: str) -> None:
        """Delete ``key`` (no error if absent)."""
        await self.store.delete_blob(_check_tenant_key(key))

    async def presign(
        self,
        key: str,
        *,
        method: Literal["GET", "PUT", "HEAD", "DELETE"] = "GET",
        expires: float = 900,
    ) -> str:
        """A URL allowing ``method`` on ``key`` for ``expires`` seconds."""
        return await self.store.presign(_check_tenant_key(key), method=method, expires=expires)


_CLIENTS: dict[tuple[str, str], S3Client] = {}


def client_for(url: str, tenant: str) -> S3Client:
    """The (cached) client of ``tenant``'s objects at ``url``."""
    found = _CLIENTS.get((url, tenant))
    if found is None:
        found = _CLIENTS[(url, tenant)] = S3Client(url, tenant)
    return found


def _nodes_url(app: Nexus | None, configured: str | None) -> str:
    if configured:
        return configured
    if app is not None:
        section = app.config.nexus.plugins.get("s3")
        if isinstance(section, S3PluginConfig) and section.url:
            return section.url
        blobs = app.config.storage_urls.get("blobs", "")
        if blobs.startswith("s3://"):
            return blobs
    raise ConfigError(
        "nexus.plugins.s3.url: no bucket for the S3 nodes: set [nexus.plugins.s3] url "
        "(s3://bucket/prefix), the node's url, or an s3:// blob store",
        key="nexus.plugins.s3.url",
    )


def _from_context(context: Any, configured: str | None = None) -> S3Client:
    state = getattr(context, "state", None) or {}
    principal = state.get(Principal)
    if principal is None:
        raise RuntimeError(
            "S3 nodes and S3Client run inside a Nexus host run (they need the run's tenant)"
        )
    return client_for(_nodes_url(state.get(Nexus), configured), principal.tenant)


# -- nodes ----------------------------------------------------------------------


class S3NodeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Config of every S3 node: ``url`` (``s3://bucket/prefix``; default: see the module)."""

    url: str | None = None


class _S3Node(Node):
    Config: ClassVar[type[msgspec.Struct]] = S3NodeConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        if self.config.url is not None:
            parse_s3_url(self.config.url, key="url")

    def client(self) -> S3Client:
        return _from_context(current_context(), self.config.url)


class S3PutInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Inputs of :class:`S3Put`: ``text`` (UTF-8) or ``data_base64``, one of them."""

    key: str
    text: str | None = None
    data_base64: str | None = None
    content_type: str | None = None


class S3ObjectInfo(msgspec.Struct, kw_only=True):
    """An object's key (within the tenant), size, content type, SHA-256 and ETag."""

    key: str
    size: int
    content_type: str | None = None
    sha256: str | None = None
    etag: str | None = None


def _info(info: BlobInfo) -> S3ObjectInfo:
    return S3ObjectInfo(
        key=info.key,
        size=info.size,
        content_type=info.content_type,
        sha256=info.sha256,
        etag=info.etag,
    )


class S3Put(_S3Node):
    """Store text or bytes (base64) under a key of the run's tenant."""

    Inputs = S3PutInputs
    Outputs = S3ObjectInfo

    async def run(self, inputs: S3PutInputs) -> S3ObjectInfo:
        """Upload the object; its metadata."""
        if (inputs.text is None) == (inputs.data_base64 is None):
            raise ValueError("S3Put: give exactly one of 'text' and 'data_base64'")
        if inputs.text is not None:
            data = inputs.text.encode()
            content_type = inputs.content_type or "text/plain; charset=utf-8"
        else:
            assert inputs.data_base64 is not None
            data = base64.b64decode(inputs.data_base64, validate=True)
            content_type = inputs.content_type or "application/octet-stream"
        return _info(await self.client().put(inputs.key, data, content_type=content_type))


class S3KeyInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A key of the run's tenant."""

    key: str


class S3GetOutputs(msgspec.Struct, kw_only=True):
    """An object read: ``text`` if UTF-8, else ``data_base64``; ``found`` false if absent."""

    key: str
    found: bool
    size: int = 0
    text: str | None = None
    data_base64: str | None = None


class S3Get(_S3Node):
    """Read an object of the run's tenant."""

    Inputs = S3KeyInputs
    Outputs = S3GetOutputs

    async def run(self, inputs: S3KeyInputs) -> S3GetOutputs:
        """Download the object (``found`` false when there is none)."""
        data = await self.client().get(inputs.key)
        if data is None:
            return S3GetOutputs(key=inputs.key, found=False)
        try:
            return S3GetOutputs(key=inputs.key, found=True, size=len(data), text=data.decode())
        except UnicodeDecodeError:
            encoded = base64.b64encode(data).decode()
            return S3GetOutputs(key=inputs.key, found=True, size=len(data), data_base64=encoded)


class S3ListInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A key prefix within the run's tenant (plain text)."""

    prefix: str = ""


class S3ListOutputs(msgspec.Struct, kw_only=True):
    """The keys found, sorted."""

    keys: list[str]


class S3List(_S3Node):
    """List the keys of the run's tenant under a prefix."""

    Inputs = S3ListInputs
    Outputs = S3ListOutputs

    async def run(self, inputs: S3ListInputs) -> S3ListOutputs:
        """List the keys."""
        return S3ListOutputs(keys=await self.client().list(inputs.prefix))


class S3DeleteOutputs(msgspec.Struct, kw_only=True):
    """The key deleted (no error when it was absent)."""

    key: str


class S3Delete(_S3Node):
    """Delete an object of the run's tenant."""

    Inputs = S3KeyInputs
    Outputs = S3DeleteOutputs

    async def run(self, inputs: S3KeyInputs) -> S3DeleteOutputs:
        """Delete the object."""
        await self.client().delete(inputs.key)
        return S3DeleteOutputs(key=inputs.key)


class S3PresignInputs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A key, the method the URL allows and its lifetime in seconds."""

    key: str
    method: Literal["GET", "PUT", "HEAD", "DELETE"] = "GET"
    expires: float = 900.0


class S3PresignOutputs(msgspec.Struct, kw_only=True):
    """The presigned URL."""

    url: str


class S3PresignedUrl(_S3Node):
    """A time-limited URL to an object of the run's tenant, usable without credentials."""

    Inputs = S3PresignInputs
    Outputs = S3PresignOutputs

    async def run(self, inputs: S3PresignInputs) -> S3PresignOutputs:
        """Sign the URL."""
        if not 0 < inputs.expires <= 7 * 24 * 3600:
            raise ValueError("S3PresignedUrl: 'expires' must be between 0 and 604800 seconds")
        url = await self.client().presign(inputs.key, method=inputs.method, expires=inputs.expires)
        return S3PresignOutputs(url=url)

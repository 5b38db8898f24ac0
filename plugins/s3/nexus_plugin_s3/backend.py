"""The ``"blobs"`` role on S3: :class:`S3BlobStore`, chosen by ``s3://bucket/prefix`` URLs.

The client is obstore (see the README for the measurement that chose it). A
URL names the bucket, an optional key prefix, and any settings as query
parameters::

    s3://my-bucket/nexus/blobs?endpoint=http://127.0.0.1:9000&region=eu-west-1

Settings not in the URL come from the standard AWS environment
(``AWS_ENDPOINT_URL``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) and
then the shared files of the named profile (``AWS_PROFILE``, ``~/.aws/credentials``
and ``~/.aws/config``). Transient errors (5xx, dropped connections, timeouts)
are retried with exponential backoff by the client.
"""

from __future__ import annotations

import configparser
import hashlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec
from nexus_core.plugin import BlobStore, ConfigError, Role

if TYPE_CHECKING:
    from obstore.store import S3Store

__all__ = [
    "BlobInfo",
    "ObjectStoreError",
    "S3BlobStore",
    "S3Settings",
    "check_key",
    "parse_s3_url",
]

#: URL query parameters an ``s3://`` URL may carry, and what they set.
_PARAMS = {
    "endpoint": "endpoint URL (http://host:port for a local server)",
    "region": "AWS region",
    "profile": "profile of the shared AWS files",
    "access_key_id": "access key id",
    "secret_access_key": "secret access key",
    "session_token": "session token",
    "multipart_threshold": "bytes above which uploads are multipart",
    "part_size": "bytes per part of a multipart upload",
    "max_retries": "retries of a transient error",
    "timeout": "seconds for one request",
    "allow_http": "true to allow a plain-HTTP endpoint (default: true when it is http://)",
}

_MIB = 1024 * 1024


class ObjectStoreError(RuntimeError):
    """An object-store operation failed: the message names the operation, the bucket and the key."""


class S3Settings(msgspec.Struct, kw_only=True, frozen=True):
    """Where and how to reach a bucket (from an ``s3://`` URL, then the AWS environment)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    #: Uploads larger than this are multipart (S3's minimum part is 5 MiB).
    multipart_threshold: int = 8 * _MIB
    part_size: int = 8 * _MIB
    max_retries: int = 4
    timeout: float = 30.0
    allow_http: bool | None = None


class BlobInfo(msgspec.Struct, kw_only=True, frozen=True):
    """An object's metadata: size in bytes, content type, SHA-256 (hex) and ETag."""

    key: str
    size: int
    content_type: str | None = None
    sha256: str | None = None
    etag: str | None = None


def parse_s3_url(url: str, *, key: str = "nexus.storage.blobs") -> S3Settings:
    """The settings of an ``s3://bucket/prefix?param=value`` URL; a bad one is a ``ConfigError``.

    ``key`` names the setting the URL came from in the error message.
    """
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ConfigError(f"{key}: {url!r} is not an s3:// URL", key=key)
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(f"{key}: {url!r} names no bucket (s3://BUCKET/prefix)", key=key)
    values: dict[str, Any] = {"bucket": bucket, "prefix": parts.path.strip("/")}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _PARAMS:
            raise ConfigError(
                f"{key}: unknown parameter {name!r} in the s3:// URL (known: "
                f"{', '.join(sorted(_PARAMS))})",
                key=key,
            )
        values[name] = value
    try:
        return msgspec.convert(values, S3Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{key}: bad s3:// URL parameter: {exc}", key=key) from exc


def _profile_values(profile: str | None) -> dict[str, str]:
    """Credentials and region of a profile of the shared AWS files (empty when none)."""
    name = profile or os.environ.get("AWS_PROFILE") or "default"
    found: dict[str, str] = {}
    creds = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser()
    conf = Path(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()
    for path, section in ((conf, name if name == "default" else f"profile {name}"), (creds, name)):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error):
            continue
        if parser.has_section(section):
            for option in (
                "aws_access_key_id",
                "aws_secret_access_key",
                "aws_session_token",
                "region",
                "endpoint_url",
            ):
                if parser.has_option(section, option):
                    found[option] = parser.get(section, option)
    return found


def check_key(key: str) -> None:
    """Raise ``ValueError`` naming ``key`` if it cannot be an object name here.

    Object names are ``/``-separated segments: none empty (no leading,
    trailing or double ``/``), none ``.`` or ``..``, no control characters.
    """
    reason = None
    if not key:
        reason = "it is empty"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        reason = "it holds a control character"
    else:
        for segment in key.split("/"):
            if segment in ("", ".", ".."):
                reason = (
                    f"it has a {segment or 'empty'!r} path segment"
                    if segment
                    else ("it has an empty path segment (a leading, trailing or double '/')")
                )
                break
    if reason is not None:
        raise ValueError(f"blob key {key!r} is not a valid object name: {reason}")


def _offset_below(prefix: str) -> str | None:
    """A key sorting before every key that starts with ``prefix`` (None: list from the start)."""
    head = prefix[:-1].rstrip("/")
    if not head:
        return None
    try:
        check_key(head)
    except ValueError:
        return None
    return head


class S3BlobStore(BlobStore):
    """Blobs as objects of one bucket under one key prefix (``s3://bucket/prefix``).

    Beyond the :class:`~nexus_core.plugin.BlobStore` contract:
    :meth:`put_blob_stream` uploads from an async iterable (multipart above
    ``multipart_threshold``, aborted on failure), :meth:`iter_blob` streams a
    download, :meth:`blob_info` returns size, content type and SHA-256, and
    :meth:`presign` makes a time-limited URL.
    """

    roles: ClassVar[frozenset[Role]] = frozenset({"blobs"})

    def __init__(self, url: str, *, settings: S3Settings | None = None) -> None:
        super().__init__(url)
        #: Where and how to reach the bucket (``settings`` given, else from ``url``).
        self.settings = settings if settings is not None else parse_s3_url(url)
        self._store: S3Store | None = None

    # -- lifecycle ------------------------------------------------------------

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return self.settings.bucket

    @property
    def store(self) -> S3Store:
        """The obstore client (built on first use)."""
        if self._store is None:
            self._store = self._make_store()
        return self._store

    def _make_store(self) -> S3Store:
        from obstore.store import S3Store

        s = self.settings
        profile = _profile_values(s.profile)
        env = os.environ
        endpoint = (
            s.endpoint
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or env.get("AWS_ENDPOINT")
            or profile.get("endpoint_url")
        )
        region = (
            s.region
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or profile.get("region")
            or "us-east-1"
        )
        config: dict[str, Any] = {"region": region, "virtual_hosted_style_request": False}
        if endpoint:
            config["endpoint"] = endpoint
        key_id = s.access_key_id or env.get("AWS_ACCESS_KEY_ID") or profile.get("aws_access_key_id")
        secret = (
            s.secret_access_key
            or env.get("AWS_SECRET_ACCESS_KEY")
            or profile.get("aws_secret_access_key")
        )
        token = s.session_token or env.get("AWS_SESSION_TOKEN") or profile.get("aws_session_token")
        if key_id and secret:
            config["access_key_id"] = key_id
            config["secret_access_key"] = secret
            if token:
                config["token"] = token
        allow_http = s.allow_http
        if allow_http is None:
            allow_http = bool(endpoint and endpoint.startswith("http://"))
        return S3Store(
            s.bucket,
            prefix=s.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options={
                "allow_http": allow_http,
                "timeout": timedelta(seconds=s.timeout),
                "connect_timeout": timedelta(seconds=min(s.timeout, 5.0)),
            },
            retry_config={
                "max_retries": s.max_retries,
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=5),
                    "base": 2,
                },
                "retry_timeout": timedelta(seconds=s.timeout * 2),
            },
        )

    async def open(self) -> None:
        """Build the client (no request: :meth:`ping` checks the bucket answers)."""
        _ = self.store

    async def close(self) -> None:
        """Drop the client."""
        self._store = None

    async def ping(self) -> bool:
        """Whether the bucket answers a one-key listing now."""
        import obstore

        try:
            stream = obstore.list(self.store, None, chunk_size=1)
            async for _batch in stream:
                break
        except Exception:
            return False
        return True

    def _error(self, op: str, key: str, exc: BaseException) -> ObjectStoreError:
        where = f"s3://{self.bucket}/{self._full(key)}"
        first = (str(exc).strip().splitlines() or [""])[0]
        if len(first) > 300:
            first = first[:300] + "..."
        return ObjectStoreError(f"object store: {op} {where} failed: {type(exc).__name__}: {first}")

    def _full(self, key: str) -> str:
        return f"{self.settings.prefix}/{key}" if self.settings.prefix else key

    # -- the BlobStore contract ---------------------------------------------------

    async def put_blob(self, key: str, data: bytes) -> None:
        """Store bytes under ``key`` (replacing); multipart above the threshold.

        No checksum is computed here: the blob role's callers keep their own
        (the core's references hold the SHA-256), and hashing would cost a
        tenth of the upload's time. :meth:`put_blob_stream` stores one.
        """
        await self.put_blob_stream(key, data, checksum=False)

    async def get_blob(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None."""
        import obstore
        from obstore.exceptions import NotFoundError

        check_key(key)
        try:
            result = await obstore.get_async(self.store, key)
            # The body's chunks as they came, joined once: one copy, as the client's own
            # bytes_async() makes (bytes() of that would be a second).
            chunks = [chunk async for chunk in result.stream(min_chunk_size=4 * _MIB)]
            return b"".join(chunks)
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as exc:
            raise self._error("get", key, exc) from exc

    async def delete_blob(self, key: str) -> None:
        """Remove a blob (no error if absent)."""
        import obstore
        from obstore.exceptions import NotFoundError

        check_key(key)
        try:
            await obstore.delete_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            pass
        except Exception as exc:
            raise self._error("delete", key, exc) from exc

    async def list_blobs(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (plain text), sorted by code point."""
        return [key async for key in self.iter_keys(prefix)]

    # -- beyond the contract ----------------------------------------------------

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Keys starting with ``prefix``, in code-point order, listed page by page.

        S3 lists in UTF-8 byte order (the same as code points), starting
        after an offset: the listing starts just below ``prefix`` and stops at
        the first key past it.
        """
        import obstore

        directory = prefix.rpartition("/")[0] if "/" in prefix else ""
        directory = directory.strip("/")
        offset = _offset_below(prefix)
        try:
            stream = obstore.list(self.store, directory or None, offset=offset, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    path = meta["path"]
                    if path.startswith(prefix):
                        yield path
                    elif path > prefix:
                        return
        except Exception as exc:
            raise self._error("list", prefix, exc) from exc

    async def put_blob_stream(
        self,
        key: str,
        data: bytes | AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        checksum: bool = True,
    ) -> BlobInfo:
        """Upload ``data`` (bytes or an async iterable of chunks) under ``key``.

        Multipart when larger than ``multipart_threshold`` (or streamed), the
        parts uploaded concurrently; a failure (of the source or the store)
        aborts the upload, so no partial object is left. With ``checksum``
        the SHA-256 of the bytes is returned, and for bytes also stored in the
        object's metadata (``sha256``; a stream's is known only at its end).
        Hashing runs in a worker thread.
        """
        import obstore

        check_key(key)
        digest = hashlib.sha256()
        size = 0
        source: Any
        if isinstance(data, bytes | bytearray | memoryview):
            if checksum:
                await _hash(digest, data)
            size = len(data)
            stored = digest.hexdigest() if checksum else None
            attributes = self._attributes(content_type, metadata, stored)
            source = data
            multipart = size > self.settings.multipart_threshold
        else:
            attributes = self._attributes(content_type, metadata, None)
            counted: list[int] = [0]

            async def hashed() -> AsyncIterator[bytes]:
                async for chunk in data:
                    if checksum:
                        await _hash(digest, chunk)
                    counted[0] += len(chunk)
                    yield chunk

            source = _rechunk(hashed(), self.settings.part_size)
            multipart = True
        try:
            result = await obstore.put_async(
                self.store,
                key,
                source,
                attributes=attributes,
                use_multipart=multipart,
                chunk_size=self.settings.part_size,
                max_concurrency=8,
            )
        except Exception as exc:
            raise self._error("put", key, exc) from exc
        if not isinstance(data, bytes | bytearray | memoryview):
            size = counted[0]
        return BlobInfo(
            key=key,
            size=size,
            content_type=content_type,
            sha256=digest.hexdigest() if checksum else None,
            etag=result.get("e_tag"),
        )

    def _attributes(
        self, content_type: str | None, metadata: Mapping[str, str] | None, sha256: str | None
    ) -> dict[str, str]:
        attributes: dict[str, str] = {}
        if content_type:
            attributes["Content-Type"] = content_type
        for name, value in (metadata or {}).items():
            attributes[name.lower()] = value
        if sha256 is not None:
            attributes["sha256"] = sha256
        return attributes

    async def iter_blob(self, key: str, chunk_size: int = _MIB) -> AsyncIterator[bytes]:
        """The bytes under ``key`` as a stream of chunks; ``KeyError`` when absent."""
        import obstore
        from obstore.exceptions import NotFoundError

        check_key(key)
        try:
            result = await obstore.get_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            raise KeyError(key) from None
        except Exception as exc:
            raise self._error("get", key, exc) from exc
        try:
            async for chunk in result.stream(min_chunk_size=chunk_size):
                yield bytes(chunk)
        except Exception as exc:
            raise self._error("get", key, exc) from exc

    async def blob_info(self, key: str) -> BlobInfo | None:
        """Size, content type, SHA-256 and ETag of ``key``, or None when absent."""
        import obstore
        from obstore.exceptions import NotFoundError

        check_key(key)
        try:
            # A zero-length range read returns the attributes without the body.
            result = await obstore.get_async(self.store, key, options={"head": True})
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as exc:
            raise self._error("head", key, exc) from exc
        meta = result.meta
        attributes: Mapping[str, str] = result.attributes
        return BlobInfo(
            key=key,
            size=meta["size"],
            content_type=attributes.get("Content-Type"),
            sha256=attributes.get("sha256"),
            etag=meta.get("e_tag"),
        )

    async def presign(
        self,
        key: str,
        *,
        method: Literal["GET", "PUT", "HEAD", "DELETE"] = "GET",
        expires: float = 900,
    ) -> str:
        """A URL that allows ``method`` on ``key`` for ``expires`` seconds, without credentials."""
        import obstore

        check_key(key)
        if method not in ("GET", "PUT", "HEAD", "DELETE"):
            raise ValueError(f"presign: method {method!r} is not GET, PUT, HEAD or DELETE")
        try:
            return await obstore.sign_async(
                self.store,
                method,
                key,
                timedelta(seconds=expires),
            )
        except Exception as exc:
            raise self._error("presign", key, exc) from exc


async def _hash(digest: Any, data: bytes | bytearray | memoryview) -> None:
    """Feed ``data`` to ``digest``; off the event loop when it is large."""
    if len(data) < 256 * 1024:
        digest.update(data)
    else:
        import anyio.to_thread

        await anyio.to_thread.run_sync(digest.update, data)


async def _rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Chunks of exactly ``size`` bytes (the last one shorter) from chunks of any size."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)

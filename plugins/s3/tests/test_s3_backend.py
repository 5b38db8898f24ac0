"""The blob role on S3 against a real moto server: the contract suite, streaming, metadata."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Callable

import pytest
from nexus_core.plugin import Backend, BlobStoreContract, ConfigError
from s3_support import MotoServer, new_bucket

from nexus_plugin_s3.backend import ObjectStoreError, S3BlobStore, check_key, parse_s3_url

pytestmark = pytest.mark.anyio


class TestS3BlobStoreContract(BlobStoreContract):
    """The core's blob contract suite, unchanged."""

    @pytest.fixture
    def storage_factory(self, moto: MotoServer) -> Callable[[], Backend]:
        bucket = new_bucket(moto)
        counter = itertools.count()
        return lambda: S3BlobStore(moto.url(bucket, f"prefix{next(counter)}/deep"))


@pytest.fixture
async def store(moto: MotoServer, bucket: str) -> AsyncIterator[S3BlobStore]:
    blobs = S3BlobStore(moto.url(bucket, "p") + "&multipart_threshold=5242880&part_size=5242880")
    await blobs.open()
    try:
        yield blobs
    finally:
        await blobs.close()


async def test_streamed_multipart_upload_and_download_with_metadata(store: S3BlobStore) -> None:
    data = os.urandom(12 * 1024 * 1024 + 17)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1_000_003):
            yield data[i : i + 1_000_003]

    info = await store.put_blob_stream("big/one", chunks(), content_type="application/x-test")
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    got = bytearray()
    async for chunk in store.iter_blob("big/one", chunk_size=1 << 20):
        got += chunk
    assert bytes(got) == data
    head = await store.blob_info("big/one")
    assert head is not None
    assert head.size == len(data)
    assert head.content_type == "application/x-test"
    assert await store.blob_info("big/none") is None


async def test_bytes_upload_keeps_checksum_and_type(store: S3BlobStore) -> None:
    data = os.urandom(6 * 1024 * 1024)  # above the 5 MiB threshold: multipart
    info = await store.put_blob_stream("m", data, content_type="text/plain")
    head = await store.blob_info("m")
    assert head is not None
    assert (head.size, head.content_type, head.sha256) == (
        len(data),
        "text/plain",
        hashlib.sha256(data).hexdigest(),
    )
    assert info.sha256 == head.sha256
    assert await store.get_blob("m") == data


async def test_failed_source_aborts_the_multipart_upload(
    store: S3BlobStore, moto: MotoServer, bucket: str
) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield os.urandom(6 * 1024 * 1024)
        yield os.urandom(6 * 1024 * 1024)
        raise OSError("source broke")

    with pytest.raises(ObjectStoreError, match=r"put s3://.*/p/partial.*source broke"):
        await store.put_blob_stream("partial", failing())
    assert await store.get_blob("partial") is None
    assert "<Upload>" not in moto.multipart_uploads(bucket)


async def test_missing_key_stream_is_key_error(store: S3BlobStore) -> None:
    with pytest.raises(KeyError):
        async for _ in store.iter_blob("absent"):
            pass


async def test_presigned_url_reads_without_credentials(store: S3BlobStore) -> None:
    import httpx

    await store.put_blob("doc.txt", b"hello")
    url = await store.presign("doc.txt", expires=60)
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == b"hello"


async def test_ping(store: S3BlobStore, moto: MotoServer) -> None:
    assert await store.ping()
    gone = S3BlobStore(moto.url("no-such-bucket-here"))
    await gone.open()
    assert not await gone.ping()


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "a/../b", "..", "./a", "a\x00b", "a\nb"])
async def test_invalid_keys_are_refused_by_name(store: S3BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="blob key"):
        await store.put_blob(key, b"x")
    with pytest.raises(ValueError, match="blob key"):
        check_key(key)


def test_url_settings() -> None:
    s = parse_s3_url("s3://b/x/y/?endpoint=http://h:1&region=eu-west-1&multipart_threshold=9")
    assert (s.bucket, s.prefix, s.endpoint, s.region, s.multipart_threshold) == (
        "b",
        "x/y",
        "http://h:1",
        "eu-west-1",
        9,
    )
    with pytest.raises(ConfigError, match=r"nexus.storage.blobs.*unknown parameter 'colour'"):
        parse_s3_url("s3://b?colour=red")
    with pytest.raises(ConfigError, match="names no bucket"):
        parse_s3_url("s3:///x")
    with pytest.raises(ConfigError, match="multipart_threshold"):
        parse_s3_url("s3://b?multipart_threshold=lots")


def test_profile_chain(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from nexus_plugin_s3.backend import _profile_values

    home = Path(str(tmp_path))
    (home / "credentials").write_text("[dev]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
    (home / "config").write_text("[profile dev]\nregion = eu-north-1\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "config"))
    monkeypatch.setenv("AWS_PROFILE", "dev")
    assert _profile_values(None) == {
        "aws_access_key_id": "AK",
        "aws_secret_access_key": "SK",
        "region": "eu-north-1",
    }
    assert _profile_values("other") == {}

"""Blob throughput: nexus-plugin-s3's S3BlobStore against obstore (its client) alone.

Starts ``moto_server`` on 127.0.0.1 (an ephemeral port), then, for 1 MB and
100 MB of random bytes, times uploads and downloads through

* ``obstore``: ``obstore.put_async`` / ``get_async`` with the same store
  settings (8 MiB parts, concurrent), nothing else;
* ``plugin``: ``S3BlobStore.put_blob`` / ``get_blob`` / ``iter_blob`` (key
  checks, error wrapping, ``bytes`` as the blob contract returns).

Rows: ``up`` (put); ``down`` (get into Python ``bytes``, what ``get_blob``
returns, against obstore's ``bytes(bytes_async())``); ``down*`` (the same
``get_blob`` against obstore's own ``Bytes`` buffer, no copy: the price of
the contract's ``bytes``); ``stream`` (``iter_blob`` against obstore's
``stream()``: how ``GET /runs/{id}/result`` reads).

alternating the two, and prints median MB/s and the ratio plugin / obstore
(target: within 10%, a ratio of at least 0.90). Run: ``python bench/blobs.py``
(needs nexus-plugin-s3 and moto[server]); ``--json`` for machine output.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and mcp.py: keep this folder off sys.path so they never
# shadow the stdlib's http or the mcp package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable

MB = 1024 * 1024


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    exe = Path(sys.executable).with_name("moto_server")
    found = str(exe) if exe.exists() else shutil.which("moto_server")
    if found is None:
        sys.exit("bench/blobs.py needs moto_server: pip install 'moto[server]'")
    port = _port()
    proc = subprocess.Popen(
        [found, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    sys.exit("moto_server did not start")


def _create_bucket(endpoint: str, name: str) -> None:
    request = urllib.request.Request(f"{endpoint}/{name}", method="PUT")
    urllib.request.urlopen(request, timeout=10).close()


async def _time(action: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def main(sizes: list[int], repeat: int) -> list[dict[str, object]]:
    import obstore
    from nexus_plugin_s3.backend import S3BlobStore

    proc, endpoint = _moto()
    try:
        _create_bucket(endpoint, "bench")
        url = (
            f"s3://bench/plugin?endpoint={endpoint}&region=us-east-1"
            "&access_key_id=k&secret_access_key=s"
        )
        plugin = S3BlobStore(url)
        await plugin.open()
        alone = plugin._make_store()  # the same settings, used directly
        part = plugin.settings.part_size
        rows: list[dict[str, object]] = []
        for size in sizes:
            data = os.urandom(size * MB)
            keys = ("oup", "odown", "obytes", "ostream", "pup", "pdown", "pstream")
            times: dict[str, list[float]] = {k: [] for k in keys}

            async def obstore_up(data: bytes = data) -> None:
                await obstore.put_async(
                    alone, "alone/k", data, chunk_size=part, use_multipart=len(data) > part
                )

            async def obstore_down() -> None:
                result = await obstore.get_async(alone, "alone/k")
                await result.bytes_async()  # obstore's Bytes: no copy into Python bytes

            async def obstore_bytes() -> None:
                result = await obstore.get_async(alone, "alone/k")
                bytes(await result.bytes_async())  # what get_blob must return: bytes

            async def obstore_stream() -> None:
                result = await obstore.get_async(alone, "alone/k")
                async for _chunk in result.stream(min_chunk_size=MB):
                    pass

            async def plugin_stream() -> None:
                async for _chunk in plugin.iter_blob("k", MB):
                    pass

            rounds = max(repeat, min(50, 100 // size))  # small objects: more rounds, less noise
            for _ in range(rounds):
                times["oup"].append(await _time(obstore_up))
                times["pup"].append(await _time(lambda d=data: plugin.put_blob("k", d)))
                times["odown"].append(await _time(obstore_down))
                times["obytes"].append(await _time(obstore_bytes))
                times["pdown"].append(await _time(lambda: plugin.get_blob("k")))
                times["ostream"].append(await _time(obstore_stream))
                times["pstream"].append(await _time(plugin_stream))
            assert await plugin.get_blob("k") == data
            med = {k: statistics.median(v) for k, v in times.items()}
            for direction, o, p in (
                ("up", "oup", "pup"),
                ("down", "obytes", "pdown"),
                ("down*", "odown", "pdown"),
                ("stream", "ostream", "pstream"),
            ):
                rows.append(
                    {
                        "size_mb": size,
                        "direction": direction,
                        "obstore_mb_s": round(size / med[o], 1),
                        "plugin_mb_s": round(size / med[p], 1),
                        "ratio": round(med[o] / med[p], 3),
                        "rounds": rounds,
                    }
                )
        await plugin.close()
        return rows
    finally:
        proc.terminate()
        proc.wait()


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,100", help="object sizes in MB (default 1,100)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per size at least (1 MB: 50)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = asyncio.run(main(sizes, args.repeat))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("S3 blobs against moto_server: median MB/s; ratio plugin/obstore (target >= 0.90)")
    print(f"{'size':>6} {'dir':>5} {'rounds':>6} {'obstore':>9} {'plugin':>9} {'ratio':>7}")
    for row in rows:
        print(
            f"{row['size_mb']:>4}MB {row['direction']:>5} {row['rounds']:>6} "
            f"{row['obstore_mb_s']:>9} {row['plugin_mb_s']:>9} {row['ratio']:>7.2f}"
        )


if __name__ == "__main__":
    _cli()

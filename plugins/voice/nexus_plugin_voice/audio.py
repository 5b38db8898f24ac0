"""Request audio in, 16 kHz mono PCM out: format sniffing, limits, sox conversion.

A WAV already at 16 kHz, mono, 16 bits is read directly; anything else sox
reads (other WAVs, FLAC, Ogg, AIFF, AU, raw with ``Content-Type:
audio/L16``...) is converted by a ``sox`` subprocess (bounded: the body is capped by
``max_bytes`` before); then the length is checked against ``max_seconds``.
Problems are :class:`AudioError` with the HTTP status to answer.
"""

from __future__ import annotations

import shutil
import struct

import anyio

from .engines import SAMPLE_RATE

__all__ = ["AudioError", "pcm_seconds", "sniff", "to_pcm", "wav_bytes"]


class AudioError(Exception):
    """Audio the channel cannot take: ``status`` (4xx/503) and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"RIFF", "wav"),
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
    (b"FORM", "aiff"),
    (b".snd", "au"),
)
_CONTENT_TYPES = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "audio/aiff": "aiff",
    "audio/basic": "au",
}


#: Data sizes a WAV writer puts in the header when it streams and cannot know the length.
_STREAMED = frozenset({0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})


def sniff(data: bytes, content_type: str | None = None) -> str | None:
    """The sox type of ``data`` from its first bytes (or its content type), or None."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if content_type:
        return _CONTENT_TYPES.get(content_type.split(";")[0].strip().lower())
    return None


def pcm_seconds(pcm: bytes) -> float:
    """How long 16 kHz mono 16-bit PCM lasts."""
    return len(pcm) / (2 * SAMPLE_RATE)


def _wav_chunks(data: bytes) -> tuple[tuple[int, int, int] | None, int, int]:
    """(channels, rate, bits) of the fmt chunk, and the data chunk's (offset, declared size)."""
    if len(data) < 12 or data[8:12] != b"WAVE":
        raise AudioError(400, "bad-audio", "not a WAV file: the RIFF header has no WAVE type")
    fmt: tuple[int, int, int] | None = None
    at = 12
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        body = at + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(data):
            tag, channels, rate = struct.unpack("<HHI", data[body : body + 8])
            bits = struct.unpack("<H", data[body + 14 : body + 16])[0]
            fmt = (channels, rate, bits) if tag in (1, 0xFFFE) else (channels, rate, -tag)
        elif chunk == b"data":
            return fmt, body, size
        at = body + size + (size & 1)
    raise AudioError(400, "truncated-audio", "the WAV file is truncated: it has no data chunk")


def wav_bytes(pcm: bytes, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit mono PCM wrapped in a WAV header."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        rate,
        rate * 2,
        2,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm


async def to_pcm(
    data: bytes, *, content_type: str | None = None, max_seconds: float = 60.0
) -> bytes:
    """The audio in ``data`` as 16 kHz mono 16-bit PCM, or :class:`AudioError`.

    Empty, truncated or unreadable audio is a 400/415; audio longer than
    ``max_seconds`` a 413.
    """
    if not data:
        raise AudioError(400, "empty-audio", "the request has no audio: the body is empty")
    raw = content_type is not None and content_type.split(";")[0].strip().lower() in (
        "audio/l16",
        "audio/pcm",
    )
    kind = None if raw else sniff(data, content_type)
    if raw:
        pcm = data[: len(data) - len(data) % 2]
        _check_length(pcm, max_seconds)
        return pcm
    if kind is None:
        raise AudioError(
            415,
            "unsupported-audio",
            "the body is not audio the voice channel reads (WAV, FLAC, Ogg, AIFF, AU, "
            "or raw 16 kHz PCM as audio/L16)",
        )
    if kind == "wav":
        fmt, offset, size = _wav_chunks(data)
        streamed = size in _STREAMED
        if not streamed and offset + size > len(data):
            raise AudioError(
                400,
                "truncated-audio",
                f"the WAV file is truncated: its data chunk declares {size} bytes, "
                f"{len(data) - offset} are present",
            )
        if fmt is None:
            raise AudioError(400, "bad-audio", "the WAV file has no fmt chunk before its data")
        if fmt == (1, SAMPLE_RATE, 16):
            end = len(data) if streamed else offset + size
            pcm = data[offset:end]
            pcm = pcm[: len(pcm) - len(pcm) % 2]
            _check_length(pcm, max_seconds)
            return pcm
    return await _sox(data, kind, max_seconds)


def _check_length(pcm: bytes, max_seconds: float) -> None:
    if not pcm:
        raise AudioError(400, "empty-audio", "the audio has no samples")
    seconds = pcm_seconds(pcm)
    if seconds > max_seconds:
        raise AudioError(
            413,
            "audio-too-long",
            f"the audio is longer than the limit of {max_seconds:g} s (channels.voice.max_seconds)",
        )


async def _sox(data: bytes, kind: str, max_seconds: float) -> bytes:
    program = shutil.which("sox")
    if program is None:
        raise AudioError(503, "no-sox", "sox is not installed, so only 16 kHz mono WAV is read")
    command = [program, "-q", "-t", kind, "-", "-t", "raw", "-r", str(SAMPLE_RATE)]
    command += ["-c", "1", "-b", "16", "-e", "signed-integer", "-"]
    # No "trim": sox would close its input early and break the pipe; the body
    # is already capped by max_bytes, so converting all of it is bounded work.
    result = await anyio.run_process(command, input=data, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"sox exited with {result.returncode}"
        raise AudioError(415, "unreadable-audio", f"the {kind} audio cannot be read: {reason}")
    pcm = bytes(result.stdout)
    _check_length(pcm, max_seconds)
    return pcm

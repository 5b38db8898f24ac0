"""Shared helpers of the voice tests: the example apps, their voice config, real audio."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"

#: How the shop's and hello's inputs are said (what a deployment writes in nexus.toml).
VOICE_SECTION: dict[str, Any] = {
    "vocabulary": ["Ada", "Grace", "Alan", "Linus", "lamp", "mug", "pen", "tent", "notebook"],
    "max_free_words": 2,
    # The SKUs by the names the catalog gives them, singular and plural. Names
    # that sound alike ("pen", "pan") are confused by any recognizer: say more.
    "values": {
        "sku": {
            "mug": "MUG-001",
            "mugs": "MUG-001",
            "cast iron pan": "PAN-010",
            "cast iron pans": "PAN-010",
            "fountain pen": "PEN-100",
            "fountain pens": "PEN-100",
            "tent": "TNT-500",
            "tents": "TNT-500",
            "desk lamp": "LMP-220",
            "desk lamps": "LMP-220",
        },
    },
    # How espeak-ng (and many speakers) say it, besides the dictionary's "L AY N AH S".
    "pronunciations": {"ada": "AE D AH", "linus": "L IH N AH S"},
    "workflows": {
        "shipping": {"aliases": ["ship"]},
        "greet": {"aliases": ["say hello to"], "reply": "{output}"},
        "view_cart": {"aliases": ["what is in my cart"]},
    },
}


def load_examples() -> list[Any]:
    """The workflows of examples/hello.py and examples/shop.py."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import hello
        import shop
    finally:
        sys.path.remove(str(EXAMPLES))
    return [*shop.app.workflows.values(), *hello.app.workflows.values()]


def require_audio_tools() -> None:
    """Skip (or fail with NEXUS_REQUIRE_SERVICES=1) when espeak-ng or sox is missing."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (apt-get install espeak-ng sox)"
    if os.environ.get("NEXUS_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def speak(text: str, voice: str = "en-us", speed: int = 160, rate: int = 16000) -> bytes:
    """``text`` spoken by espeak-ng, converted by sox to a ``rate`` Hz mono 16-bit WAV."""
    raw = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    return sox(raw, "-t", "wav", "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer")


def sox(data: bytes, *output: str, effects: tuple[str, ...] = ()) -> bytes:
    """Run sox on ``data`` (any format sox detects) and return its output."""
    return subprocess.run(
        ["sox", "-", *output, "-", *effects], input=data, check=True, capture_output=True
    ).stdout

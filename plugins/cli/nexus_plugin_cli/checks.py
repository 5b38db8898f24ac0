"""Range checks for number options: a bad value is a usage error naming the option and range.

Used as cyclopts validators (``Parameter(validator=between(1, 10_000))``), so
``nexus runs --limit 0`` exits 2 with ``error: Invalid value "0" for
"--limit". Must be between 1 and 10000.`` before anything runs.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Between", "between"]


class Between:
    """A cyclopts validator: the value is a finite number in ``[low, high]`` (``None``: open)."""

    __slots__ = ("high", "low")

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low = low
        self.high = high

    def describe(self) -> str:
        """The range in words: ``between 1 and 10``, ``at least 0``, ``at most 5``."""
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"at least {self.low:g}"
        if self.high is not None:
            return f"at most {self.high:g}"
        return "a finite number"

    def __call__(self, type_: Any, value: Any) -> None:
        """Raise ``ValueError`` (cyclopts names the option) for a value outside the range."""
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        if (
            not math.isfinite(value)
            or (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
        ):
            raise ValueError(f"Must be {self.describe()}.")


def between(low: float | None = None, high: float | None = None) -> Between:
    """A :class:`Between` validator."""
    return Between(low, high)

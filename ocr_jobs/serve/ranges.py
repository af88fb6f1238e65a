"""HTTP byte ranges (RFC 9110 §14), as PMTiles readers ask for them: one range per request."""

from __future__ import annotations

import re
from dataclasses import dataclass


class RangeNotSatisfiable(ValueError):
    """A byte range that starts past the end of the file (answered with 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


# RFC 9110's DIGIT is ASCII: str.isdigit() also takes "²" (which int() refuses) and "٣"
_DIGITS = re.compile(r"[0-9]+")


def _capped(digits: str, cap: int) -> int:
    """The number ``digits`` spells, or ``cap`` if it is larger: a position of thousands of
    digits is valid HTTP and means "past the end", but Python refuses to parse more than
    4300 digits (ValueError), so the length decides before ``int`` is asked."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(cap)):
        return cap
    return min(int(digits), cap)


def _less(a: str, b: str) -> bool:
    """``int(a) < int(b)`` for digit strings of any length."""
    a, b = a.lstrip("0"), b.lstrip("0")
    return (len(a), a) < (len(b), b)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range a ``Range`` header asks for, or None for the whole file.

    RFC 9110 §14.2 lets a server ignore a Range it does not serve partially: another unit,
    several ranges, or bad syntax get the whole file (200). A range that starts at or past
    the end, or an empty suffix, is unsatisfiable (416); an end past the file is clipped.
    Positions may have any number of digits (compared as text, never parsed whole).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.strip().partition("-"))
    if not dash or not (first or last):
        return None
    if any(part and not _DIGITS.fullmatch(part) for part in (first, last)):
        return None
    if not first:  # suffix: the last N bytes
        suffix = _capped(last, size)
        if suffix == 0:
            raise RangeNotSatisfiable(f"a suffix range that selects no byte of a {size}-byte file")
        return ByteRange(size - suffix, size)
    if last and _less(last, first):
        return None  # invalid range: ignored, per the RFC
    start = _capped(first, size)
    if start >= size:
        raise RangeNotSatisfiable(f"a range starting past the end of a {size}-byte file")
    stop = _capped(last, size - 1) + 1 if last else size
    return ByteRange(start, stop)

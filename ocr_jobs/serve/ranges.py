"""HTTP byte ranges (RFC 9110 §14), as PMTiles readers ask for them: one range per request."""

from __future__ import annotations

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


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range a ``Range`` header asks for, or None for the whole file.

    RFC 9110 §14.2 lets a server ignore a Range it does not serve partially: another unit,
    several ranges, or bad syntax get the whole file (200). A range that starts at or past
    the end, or an empty suffix, is unsatisfiable (416); an end past the file is clipped.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not (first.isdigit() or (not first and last.isdigit())):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"bytes=-{suffix} of a {size}-byte file")
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    stop = min(size, int(last) + 1) if last else size
    if last and int(last) < start:
        return None  # invalid range: ignored, per the RFC
    if start >= size:
        raise RangeNotSatisfiable(f"bytes={start}- of a {size}-byte file")
    return ByteRange(start, stop)

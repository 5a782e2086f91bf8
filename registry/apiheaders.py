"""The API's own request headers, parsed: pure functions raising ApiError.

X-Aar-Manifest (a JSON object, bounded in size and depth), Range (one range,
clamped to the package as RFC 9110 says, offsets no longer than an int64)
and If-None-Match (a list of ETags).
"""
import json
import re

from registry.errors import ApiError

__all__ = ["manifest", "byte_range", "etags"]

_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)\Z")
_MAX_MANIFEST = 32 * 1024


def manifest(raw):
    if not raw:
        return {}
    if len(raw) > _MAX_MANIFEST:
        raise ApiError.of("bad_request", "X-Aar-Manifest too large")
    try:
        manifest = json.loads(raw)
    except RecursionError:
        raise ApiError.of("bad_request", "X-Aar-Manifest is nested too deeply") from None
    except ValueError as exc:
        raise ApiError.of("bad_request", f"X-Aar-Manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ApiError.of("bad_request", "X-Aar-Manifest must be a JSON object")
    return manifest


def byte_range(value, size):
    """(start, end) of the bytes to send; the whole package without a Range."""
    if not value:
        return 0, size
    m = _RANGE_RE.match(value.strip())
    if not m or m.group(1) == m.group(2) == "":
        raise ApiError.of("range_not_satisfiable", f"unsupported Range {value[:60]!r}; "
                          "use one range such as 'bytes=1024-'")
    first, last = _offset(m.group(1)), _offset(m.group(2))
    if first is None:                     # suffix: the last N bytes
        start, end = max(0, size - last), size
    else:
        # An end past the size is clamped to it (RFC 9110 14.1.2).
        start = first
        end = min(size, last + 1) if last is not None else size
    if start >= size or start >= end:
        raise ApiError.of("range_not_satisfiable",
                          f"Range {value[:60]!r} outside the package's {size} bytes")
    return start, end


def _offset(digits):
    """A Range offset as an int, None when empty. An offset longer than an
    int64 is refused rather than handed to int(), which raises past 4,300
    digits."""
    if not digits:
        return None
    if len(digits) > 18:
        raise ApiError.of("bad_request", f"Range offset of {len(digits)} digits")
    return int(digits)


def etags(header):
    if not header:
        return ()
    return [t.strip() for t in header.split(",")]

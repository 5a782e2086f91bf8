"""The registry's one exception type and the one table of API errors.

Every failure the HTTP API can report is a row of ERRORS: a short snake-case
code, the HTTP status and a default message. Storage and handlers raise
``ApiError.of(code, message)``; only the server turns it into a response,
through ``envelope_error``. Keeping the table in one place means a status code
can never drift between two handlers that report the same condition.
A full disk, however it shows (OSError or sqlite), becomes 507 here too.
"""

import contextlib
import errno
import sqlite3

__all__ = ["ERRORS", "ApiError", "StartRefused", "envelope_error", "envelope_sync",
           "full_is_507", "is_full"]

# code -> (HTTP status, default message). Two codes may share a status (422):
# the code tells the uploader which check failed, the status tells HTTP.
ERRORS = {
    "bad_request": (400, "bad request"),
    "forbidden": (403, "forbidden"),
    "not_found": (404, "not found"),
    "method_not_allowed": (405, "method not allowed"),
    "conflict": (409, "a different package is already published here"),
    "length_required": (411, "Content-Length is required"),
    "too_large": (413, "request body too large"),
    "range_not_satisfiable": (416, "requested range not satisfiable"),
    "digest_mismatch": (422, "sha256 of the body does not match"),
    "size_mismatch": (422, "body size does not match Content-Length"),
    "too_many_requests": (429, "too many requests"),
    "internal": (500, "internal server error"),
    "unavailable": (503, "the registry's storage is unavailable; try again later"),
    "insufficient_storage": (507, "insufficient storage on the registry"),
}


class ApiError(Exception):
    """An error the API reports to its caller: ``status``, ``code``, ``message``."""

    def __init__(self, code: str, message: str | None = None):
        try:
            status, default = ERRORS[code]
        except KeyError:
            # A typo in a code is our bug; failing loudly here beats sending a
            # made-up status to a client.
            raise ValueError(f"unknown API error code {code!r}") from None
        self.code = code
        self.status = status
        self.message = message if message else default
        super().__init__(self.message)

    @classmethod
    def of(cls, code: str, message: str | None = None) -> "ApiError":
        """Build the error for ``code`` with a specific (or the default) message."""
        return cls(code, message)

    def __repr__(self):
        return f"ApiError({self.code!r}, {self.message!r})"


class StartRefused(ApiError):
    """The data directory is not fit to serve from, and repairing it would
    lose data: the message says what is wrong and how to recover. Raised
    before anything was changed; never reaches a client."""

    def __init__(self, message: str):
        super().__init__("internal", message)


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13


def is_full(exc) -> bool:
    """True for "no space left": ENOSPC, EDQUOT, or sqlite's SQLITE_FULL."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        # sqlite_errorcode exists from Python 3.11; the message is the fallback.
        return (getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
                or "disk is full" in str(exc))
    return False


@contextlib.contextmanager
def full_is_507(log, what):
    """Turn a full disk inside the block into insufficient_storage (507)."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        if is_full(exc):
            log.error("no space left %s: %s", what, exc)
            raise ApiError.of("insufficient_storage") from exc
        raise


def envelope_error(err: ApiError) -> dict:
    """The LXD/AMS error envelope for ``err``."""
    return {"type": "error", "error": err.message, "error_code": err.status}


def envelope_sync(metadata, status: int = 200) -> dict:
    """The LXD/AMS synchronous-response envelope around ``metadata``."""
    return {"type": "sync", "status": "Success", "status_code": status,
            "metadata": metadata}

"""The registry's one exception type and the one table of API errors.

Every failure the HTTP API can report is a row of ERRORS: a short snake-case
code, the HTTP status and a default message. Storage and handlers raise
``ApiError.of(code, message)``; only the server turns it into a response,
through ``envelope_error``. Keeping the table in one place means a status code
can never drift between two handlers that report the same condition.
"""

__all__ = ["ERRORS", "ApiError", "StartRefused", "envelope_error", "envelope_sync"]

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


def envelope_error(err: ApiError) -> dict:
    """The LXD/AMS error envelope for ``err``."""
    return {"type": "error", "error": err.message, "error_code": err.status}


def envelope_sync(metadata, status: int = 200) -> dict:
    """The LXD/AMS synchronous-response envelope around ``metadata``."""
    return {"type": "sync", "status": "Success", "status_code": status,
            "metadata": metadata}

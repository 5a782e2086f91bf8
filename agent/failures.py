"""What a failed exchange with the registry means, said for the operator.

RegistryClient (client.py) moves bytes; this module turns what went wrong
into the AgentError that names the cause and the fix: a transport error
(refused, timed out, cut, not TLS at all, a certificate the registry would
not take) and an error answer (401/403, 404, 409, 5xx). The subclasses tell
the sync engine what a failure means: a listing that failed in any way
deletes nothing, a 409 is a version changed under its number, and only
RegistryUnavailable is worth retrying.
"""
import http.client
import re
import socket
import ssl

from .errors import (Forbidden, NotTrusted, PinError, RegistryConflict, RegistryError,
                     RegistryNotFound, RegistryUnavailable)

__all__ = [
    "pin_mismatch", "unavailable", "refusal",
    "PIN_MISMATCH", "READ_ONLY", "NOT_TRUSTED", "UNAVAILABLE", "NOT_TLS",
    "SERVER_ERROR", "BAD_RESPONSE", "REFUSED", "CONFLICT",
]

PIN_MISMATCH = ("registry certificate does not match registry.fingerprint "
                "(expected {expected}, got {actual}): nothing was sent")
READ_ONLY = ("this node's certificate is trusted as a client (read-only); "
             "push needs `aar trust add --publisher`")
NOT_TRUSTED = ("the registry {url} refused this node's certificate {cert}: "
               "{reason}; ask its operator to trust it (`aar trust add`). A revoked "
               "certificate is never trusted again: delete {cert} and its key, and "
               "the next ams-sync command makes a new one")
UNAVAILABLE = "registry {url} unavailable: {reason}"
SERVER_ERROR = "registry {url} unavailable: {method} {path} answered {status}: {error}"
BAD_RESPONSE = "registry {url} sent a malformed answer to {method} {path}: {reason}"
REFUSED = "registry {url} refused {method} {path}: {status} {error}"
CONFLICT = ("the registry already holds {what} with other bytes: publish a new "
            "version instead of changing this one")
NOT_TLS = ("it does not speak TLS there: the registry speaks HTTPS only; check "
           "the port in registry.url")
# OpenSSL's reasons when the other end answered in plain text (an HTTP
# server) or in no protocol at all.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE")
# The alerts a registry sends when it will not take our certificate.
_CERT_ALERTS = ("CERTIFICATE", "UNKNOWN_CA", "HANDSHAKE_FAILURE", "ACCESS_DENIED")
_GOT_RE = re.compile(r"got ([0-9a-f]{64})")


def pin_mismatch(expected, error):
    """The PinError for trust.errors.PinMismatch error: both fingerprints."""
    match = _GOT_RE.search(str(error))
    return PinError(PIN_MISMATCH.format(
        expected=expected, actual=match.group(1) if match else "no certificate"))


def unavailable(url, host, certfile, read_timeout, error):
    """The AgentError for a transport error talking to the registry at url."""
    if isinstance(error, ssl.SSLError) and any(
            alert in (error.reason or "") for alert in _CERT_ALERTS):
        return NotTrusted(NOT_TRUSTED.format(url=url, cert=certfile,
                                             reason=f"TLS alert {error.reason}"))
    if isinstance(error, TimeoutError):
        reason = f"no answer within {read_timeout:g}s"
    elif isinstance(error, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(error, (http.client.RemoteDisconnected, ssl.SSLEOFError,
                            ConnectionResetError, BrokenPipeError)):
        reason = "the connection was closed before an answer"
    elif isinstance(error, ssl.SSLError) and error.reason in _NOT_TLS:
        # What a plain-HTTP server's answer looks like to a TLS client.
        reason = NOT_TLS
    elif isinstance(error, ssl.SSLError):
        reason = f"TLS error {error.reason or error}"
    elif isinstance(error, socket.gaierror):
        reason = f"cannot resolve {host}: {error.strerror}"
    else:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return RegistryUnavailable(UNAVAILABLE.format(url=url, reason=reason))


def refusal(url, certfile, method, path, status, error, what=None):
    """The RegistryError for a non-2xx answer; error is the envelope's text."""
    write = method in ("PUT", "DELETE")
    if status == 403 and write and "read-only" in error:
        return Forbidden(READ_ONLY, status)
    if status in (401, 403):
        return NotTrusted(NOT_TRUSTED.format(url=url, cert=certfile, reason=error), status)
    if status >= 500:
        return RegistryUnavailable(SERVER_ERROR.format(
            url=url, method=method, path=path, status=status, error=error), status)
    if status == 404:
        return RegistryNotFound(REFUSED.format(url=url, method=method, path=path,
                                               status=status, error=error), status)
    if status == 409:
        return RegistryConflict(CONFLICT.format(what=what or path), status)
    return RegistryError(REFUSED.format(url=url, method=method, path=path,
                                        status=status, error=error), status)

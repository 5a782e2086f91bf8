"""The trust package's one exception family.

Callers catch TrustError; the subclasses let a CLI or server pick an exit code
or HTTP status without parsing messages. Every message is one line, ready to
show to an operator as is.
"""

__all__ = [
    "TrustError", "CertificateError", "PinMismatch", "StoreError",
    "Damaged", "NotFound", "Ambiguous", "AlreadyExists", "Revoked", "TokenError",
]


class TrustError(Exception):
    """Base of every error the trust package raises on purpose."""


class CertificateError(TrustError):
    """The input is not exactly one well-formed X.509 certificate."""


class PinMismatch(TrustError):
    """The server presented a certificate other than the pinned one."""


class StoreError(TrustError):
    """The trust store cannot do what was asked, or its file is unusable."""


class Damaged(StoreError):
    """The trust store's file is not a sound sqlite database."""


class NotFound(StoreError):
    """No record matches the fingerprint or prefix."""


class Ambiguous(StoreError):
    """A fingerprint prefix matches more than one record."""


class AlreadyExists(StoreError):
    """The certificate is already trusted."""


class Revoked(StoreError):
    """The certificate was revoked; revoked records stay forever."""


class TokenError(TrustError):
    """A join token that is not one, or a token command that cannot be done."""

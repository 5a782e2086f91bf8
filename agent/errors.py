"""The agent's one exception family.

Library code raises these with a one-line message ready for an operator;
only ``ams_sync.main`` turns them into output and an exit code. Subclasses
exist where a caller (the CLI, the sync engine) acts differently on them,
never merely to name a message.
"""

__all__ = [
    "AgentError", "ConfigError", "PackageError", "ManifestError",
    "StoreError", "NotFound", "Immutable", "Conflict", "IntegrityError",
    "RegistryError", "PinError", "NotTrusted", "Forbidden", "RegistryUnavailable",
    "BadResponse", "RegistryNotFound", "RegistryConflict", "TransferError",
    "TransferTimeout", "Cancelled",
]


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A setting is unknown or its value is invalid, or config.json is unusable."""


class PackageError(AgentError):
    """A package (directory, .zip or .tar.bz2) is unsafe or malformed."""


class ManifestError(PackageError):
    """manifest.yaml is malformed; ``line`` is its 1-based line number or None."""

    def __init__(self, message, line=None):
        self.message = message
        self.line = line
        super().__init__(f"manifest.yaml line {line}: {message}" if line
                         else f"manifest.yaml: {message}")


class StoreError(AgentError):
    """The application store cannot do what was asked."""


class NotFound(StoreError):
    """No such application or version."""


class Immutable(StoreError):
    """The application was pulled from the registry; changing it needs force."""


class Conflict(StoreError):
    """The version exists with other bytes, or a name is taken by another origin."""


class IntegrityError(StoreError):
    """Downloaded bytes do not match the expected sha256."""


# -- talking to the registry (client.py, transfer.py, sync.py) -----------------
# The sync engine acts on the class: any RegistryError during a listing means
# the cycle deletes nothing; a failed transfer is retried next cycle.

class RegistryError(AgentError):
    """Talking to the registry failed; ``status`` is the HTTP status or None."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class PinError(RegistryError):
    """The server is not the pinned registry; nothing was sent."""


class NotTrusted(RegistryError):
    """The registry refused this node's certificate (handshake or 403)."""


class Forbidden(RegistryError):
    """A write with a client (read-only) certificate."""


class RegistryUnavailable(RegistryError):
    """Connection refused or dropped, a timeout, or a 5xx answer."""


class BadResponse(RegistryError):
    """The answer was not what the API promises (status, JSON, fields)."""


class RegistryNotFound(RegistryError):
    """404: no such application or package."""


class RegistryConflict(RegistryError):
    """409: the registry holds other bytes under the same version."""


class TransferError(RegistryError):
    """A package transfer failed (size, broken connections)."""


class TransferTimeout(TransferError):
    """A transfer did not finish before its deadline."""


class Cancelled(AgentError):
    """The stop event was set during a transfer."""

"""The agent's one exception family.

Library code raises these with a one-line message ready for an operator;
only ``ams_sync.main`` turns them into output and an exit code. Subclasses
exist where a caller (the CLI, the sync engine) acts differently on them,
never merely to name a message.
"""

__all__ = [
    "AgentError", "ConfigError", "PackageError", "ManifestError",
    "StoreError", "NotFound", "Immutable", "Conflict", "IntegrityError",
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

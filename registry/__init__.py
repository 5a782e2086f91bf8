"""The aar registry: data directory, package storage and the HTTPS API.

Submodules are imported by their users (``from registry.storage import
PackageStore``); importing the package itself loads nothing, so the CLI's
``trust`` commands do not pay for the server.
"""

__all__ = []

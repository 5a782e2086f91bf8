"""GET /healthz of `aar serve --metrics-listen`: can this registry serve now?

"" when it can, else the first reason it cannot, for a 503:
* the server is shutting down;
* the trust store cannot be read (so no caller could be authorised);
* the package store cannot be read, or its disk is full or read-only.
Each check is a query or a stat: cheap enough for a load balancer's probe
every few seconds.
"""
import os

__all__ = ["check"]


def check(server, data) -> str:
    if server.stopping():
        return "shutting down"
    try:
        server.trust.refresh()
    except Exception as error:
        return f"trust store unusable: {error}"
    try:
        server.packages.generation()
    except Exception as error:
        return f"package store unusable: {error}"
    try:
        space = os.statvfs(data.root)
    except OSError as error:
        return f"data directory unusable: {error.strerror or error}"
    if space.f_flag & os.ST_RDONLY:
        return f"data directory {data.root} is read-only"
    if space.f_bavail == 0:
        return f"no space left in {data.root}"
    if not os.access(data.staging_dir, os.W_OK):
        return f"cannot write to {data.staging_dir}"
    return ""

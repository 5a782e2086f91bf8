"""state.json: the data directory's proof that a registry has served from it.

`aar serve` writes it once the server is listening, and again whenever the
server's identity changes:

    {"format": 1, "first_served_at": "2026-11-22T07:49:05Z",
     "server_fingerprint": "<64 hex>"}

Its presence is what separates "a fresh data directory" (create whatever is
missing) from "a data directory that lost something" (refuse, and say how to
restore): a missing packages.db, trust store or server key is ordinary on the
first start and a loss on any later one. Nothing else reads it at run time.
"""

import json
import os
import tempfile
import time

import cas

__all__ = ["has_served", "read_state", "record_serving"]

_FORMAT = 1


def has_served(datadir) -> bool:
    """True once a registry has listened on this data directory."""
    return datadir.state_file.exists()


def read_state(datadir) -> dict:
    """The recorded state; {} if there is none or it is unreadable."""
    try:
        state = json.loads(datadir.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def record_serving(datadir, fingerprint):
    """Note that the registry serves with this certificate (atomic, durable)."""
    old = read_state(datadir)
    if has_served(datadir) and old.get("server_fingerprint") == fingerprint:
        return
    state = {"format": _FORMAT,
             "first_served_at": old.get("first_served_at")
             or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "server_fingerprint": fingerprint}
    fd, tmp = tempfile.mkstemp(prefix=".state.", dir=datadir.root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, datadir.state_file)
    except BaseException:
        cas.unlink_quiet(tmp)
        raise
    cas.fsync_dir(datadir.root)

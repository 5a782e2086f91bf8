"""The agent's data directory: where every file lives.

    <data-dir>/                       mode 0700
    |-- config.json                   registry.* settings (config.py), mode 0600
    |-- sync-state.json               the last registry listing and its ETag, so
    |                                 `sync` from cron costs one 304 (sync.py)
    |-- trust.db                      registry certificates the operator trusts
    |                                 (trust.store.TrustStore; role "client")
    |-- registry/
    |   |-- client.crt                this node's registry client certificate,
    |   `-- client.key                made on first use (CN "ams-<hostname>"), key 0600
    |-- apps.db                       the node's applications (appstore.py, sqlite3 WAL)
    |-- apps.lock                     writers hold it shared, blob cleanup exclusive
    |-- blobs/
    |   `-- sha256/
    |       `-- <2 hex>/
    |           `-- <64 hex>          one package's bytes, named by their sha256
    `-- staging/
        `-- *.part                    packages being written; cleared on open

A package is written under staging/ (same filesystem as blobs/, so the move
into place is an atomic rename) and renamed into blobs/ only when complete and
checked; only then is its version inserted into apps.db.

The data directory is ``--data-dir``, else ``$AMS_SYNC_DATA_DIR``, else
``$SNAP_COMMON`` (so the client certificate is
/var/snap/ams/common/registry/client.crt in the snap), else
``$XDG_DATA_HOME/ams-sync``, else ``~/.local/share/ams-sync``.
"""
import os
import pathlib
import re
import socket

__all__ = ["DataDir", "default_data_dir", "is_sha256", "CLIENT_CN_PREFIX"]

CLIENT_CN_PREFIX = "ams-"
_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")


def is_sha256(value) -> bool:
    """True for 64 lowercase hex digits, the only names allowed under blobs/."""
    return isinstance(value, str) and _SHA256_RE.match(value) is not None


def default_data_dir(env=None) -> pathlib.Path:
    """The data directory when ``--data-dir`` is not given."""
    env = os.environ if env is None else env
    # An empty variable counts as unset, so `AMS_SYNC_DATA_DIR= …` never
    # puts the node's key in the current directory.
    for name in ("AMS_SYNC_DATA_DIR", "SNAP_COMMON"):
        if env.get(name):
            return pathlib.Path(env[name])
    if env.get("XDG_DATA_HOME"):
        return pathlib.Path(env["XDG_DATA_HOME"]) / "ams-sync"
    home = env.get("HOME") or str(pathlib.Path.home())
    return pathlib.Path(home) / ".local" / "share" / "ams-sync"


class DataDir:
    """The paths of one data directory (see the picture at the top)."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        self.config = self.root / "config.json"
        self.sync_state = self.root / "sync-state.json"
        self.trust_db = self.root / "trust.db"
        self.registry_dir = self.root / "registry"
        self.client_cert = self.registry_dir / "client.crt"
        self.client_key = self.registry_dir / "client.key"
        self.apps_db = self.root / "apps.db"
        self.apps_lock = self.root / "apps.lock"
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.staging_dir = self.root / "staging"

    def __repr__(self):
        return f"DataDir({str(self.root)!r})"

    def blob_path(self, sha256) -> pathlib.Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        # The digest becomes a path: anything but 64 hex could climb out of
        # blobs/ ("../"), so it is refused here, where paths are made.
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    def ensure(self) -> "DataDir":
        """Create the directories that do not exist yet (mode 0700)."""
        # The root's parents are ordinary directories (~/.local/share, say);
        # only what the agent owns is made private.
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.root, self.registry_dir, self.root / "blobs",
                     self.blobs_dir, self.staging_dir):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                if not path.is_dir():
                    raise
        return self

    def client_certificate(self, hostname=None):
        """(cert path, key path) of the registry client certificate, made with
        openssl on first use: EC P-256, CN "ams-<hostname>".
        """
        if not (self.client_cert.exists() and self.client_key.exists()):
            # Imported here: only the first use needs openssl, and every
            # other command keeps working on a machine without it.
            from trust import openssl
            self.ensure()
            name = CLIENT_CN_PREFIX + (hostname or socket.gethostname() or "node")
            # X.509 caps a common name at 64 characters.
            name = name[:64]
            openssl.create_key_and_cert(self.client_cert, self.client_key, name)
        return self.client_cert, self.client_key

"""The agent's data directory: where every file lives.

    <data-dir>/                       mode 0700
    |-- config.json                   registry.* settings (config.py), mode 0600
    |-- sync-state.json               the last registry listing and its ETag, so
    |                                 `sync` from cron costs one 304 (sync.py)
    |-- trust.db                      registry certificates the operator trusts
    |                                 (trust.store.TrustStore; role "client")
    |-- registry/
    |   |-- client.crt                this node's registry client certificate,
    |   |-- client.key                made on first use (CN "ams-<hostname>"), key 0600
    |   `-- client.{crt,key}.<UTC>.old  pairs replaced by `config client-cert renew`
    |-- apps.db                       the node's applications (appsdb.py, sqlite3 WAL)
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
``/var/lib/ams-sync`` for root (sudo drops the variable), else
``$XDG_DATA_HOME/ams-sync``, else ``~/.local/share/ams-sync``.
"""
import os
import pathlib
import socket
import time

import cas
from cas import is_sha256

__all__ = ["DataDir", "default_data_dir", "is_sha256", "CLIENT_CN_PREFIX"]

CLIENT_CN_PREFIX = "ams-"


def default_data_dir(env=None, euid=None) -> pathlib.Path:
    """The data directory when ``--data-dir`` is not given (/var/lib/ams-sync for root)."""
    return cas.default_data_dir(os.environ if env is None else env,
                                "AMS_SYNC_DATA_DIR", "ams-sync", euid)


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
        """Where the blob with this digest lives (ValueError for a bad digest)."""
        return cas.blob_path(self.blobs_dir, sha256)

    def ensure(self) -> "DataDir":
        """Create the directories that do not exist yet (mode 0700)."""
        cas.make_private_dirs(self.root, self.registry_dir, self.root / "blobs",
                              self.blobs_dir, self.staging_dir)
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

    def renew_client_certificate(self, hostname=None) -> pathlib.Path:
        """Replace the client key and certificate with a new pair; return
        where the old certificate was kept (its key beside it, same suffix).

        The new pair is made first, so a failure leaves the old one in use.
        """
        from trust import openssl
        self.client_certificate(hostname)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        new_cert = self.registry_dir / "client.crt.new"
        new_key = self.registry_dir / "client.key.new"
        name = (CLIENT_CN_PREFIX + (hostname or socket.gethostname() or "node"))[:64]
        openssl.create_key_and_cert(new_cert, new_key, name)
        old_cert = self.registry_dir / f"client.crt.{stamp}.old"
        os.replace(self.client_cert, old_cert)
        os.replace(self.client_key, self.registry_dir / f"client.key.{stamp}.old")
        os.replace(new_key, self.client_key)
        os.replace(new_cert, self.client_cert)
        cas.fsync_dir(self.registry_dir)
        return old_cert

"""The registry's data directory: where every file lives.

    <data-dir>/                       mode 0700
    |-- certs/
    |   |-- server.crt                the registry's TLS certificate (made on first start)
    |   `-- server.key                its private key, mode 0600
    |-- state.json                    written once the registry has served: from
    |                                 then on a lost file is refused, not recreated
    |                                 (registry/served.py)
    |-- trust.db                      the trust store (shelve over sqlite3), and the
    |                                 join tokens' table (hashes of their secrets)
    |-- logs/
    |   `-- audit.log                 one JSON line per trust change, write, refusal
    |-- packages.db                   package metadata (sqlite3, WAL)
    |-- blobs/
    |   `-- sha256/
    |       `-- <2 hex>/
    |           `-- <64 hex>          one package's bytes, named by their sha256
    |-- staging/
    |   `-- upload-*                  uploads in flight; emptied at every start
    `-- quarantine/
        `-- <UTC timestamp>/          what a start-up recovery set aside instead of
            |-- blobs/<64 hex>        deleting it: blobs no row names, and blobs
            |-- rows.json             and rows that disagree; the operator decides
            `-- packages.db, trust.db files replaced by `aar serve --recover`

An upload is written under staging/ (the same filesystem as blobs/, so the
final move is an atomic rename and never a copy) and only renamed into blobs/
once its size and digest are checked. Blobs are content-addressed, so one file
may back several packages; the two-hex fan-out keeps directories small.
Start-up recovery (registry/recovery.py) deletes only what it can prove is its
own garbage; anything else goes to quarantine/ or stops the start.

The data directory is ``--data-dir``, else ``$AAR_DATA_DIR``, else
``$SNAP_COMMON`` (the snap's writable area), else ``/var/lib/aar`` for root
(sudo drops ``$AAR_DATA_DIR``), else the user's XDG data home.
"""

import os
import pathlib

import cas
from cas import is_sha256

__all__ = ["DataDir", "default_data_dir", "is_sha256"]


def default_data_dir(env=os.environ, euid=None) -> pathlib.Path:
    """The data directory when ``--data-dir`` is not given (/var/lib/aar for root)."""
    return cas.default_data_dir(env, "AAR_DATA_DIR", "aar", euid)


class DataDir:
    """The paths of one data directory (see the picture at the top)."""

    def __init__(self, root):
        self.root = pathlib.Path(root)

    def __repr__(self):
        return f"DataDir({str(self.root)!r})"

    @property
    def certs_dir(self) -> pathlib.Path:
        return self.root / "certs"

    @property
    def server_cert(self) -> pathlib.Path:
        return self.certs_dir / "server.crt"

    @property
    def server_key(self) -> pathlib.Path:
        return self.certs_dir / "server.key"

    @property
    def state_file(self) -> pathlib.Path:
        return self.root / "state.json"

    @property
    def quarantine_dir(self) -> pathlib.Path:
        return self.root / "quarantine"

    @property
    def trust_db(self) -> pathlib.Path:
        return self.root / "trust.db"

    @property
    def audit_log(self) -> pathlib.Path:
        return self.root / "logs" / "audit.log"

    @property
    def packages_db(self) -> pathlib.Path:
        return self.root / "packages.db"

    @property
    def blobs_dir(self) -> pathlib.Path:
        """``blobs/sha256``: the parent of the two-hex fan-out directories."""
        return self.root / "blobs" / "sha256"

    @property
    def staging_dir(self) -> pathlib.Path:
        return self.root / "staging"

    def blob_path(self, sha256: str) -> pathlib.Path:
        """Where the blob with this digest lives (ValueError for a bad digest)."""
        return cas.blob_path(self.blobs_dir, sha256)

    def ensure(self) -> "DataDir":
        """Create the directories (mode 0700) that do not exist yet."""
        cas.make_private_dirs(self.root, self.certs_dir, self.root / "blobs",
                              self.blobs_dir, self.staging_dir)
        return self

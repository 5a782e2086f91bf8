"""The registry's data directory: where every file lives.

    <data-dir>/                       mode 0700
    |-- certs/
    |   |-- server.crt                the registry's TLS certificate (made on first start)
    |   `-- server.key                its private key, mode 0600
    |-- trust.db                      the trust store (shelve over sqlite3)
    |-- packages.db                   package metadata (sqlite3, WAL)
    |-- blobs/
    |   `-- sha256/
    |       `-- <2 hex>/
    |           `-- <64 hex>          one package's bytes, named by their sha256
    `-- staging/
        `-- upload-*                  uploads in flight; emptied at every start

An upload is written under staging/ (the same filesystem as blobs/, so the
final move is an atomic rename and never a copy) and only renamed into blobs/
once its size and digest are checked. Blobs are content-addressed, so one file
may back several packages; the two-hex fan-out keeps directories small.

The data directory is ``--data-dir``, else ``$AAR_DATA_DIR``, else
``$SNAP_COMMON`` (the snap's writable area), else the user's XDG data home.
"""

import os
import pathlib
import re

__all__ = ["DataDir", "default_data_dir", "is_sha256"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")


def is_sha256(value) -> bool:
    """True for 64 lowercase hex digits, the only names allowed under blobs/."""
    return isinstance(value, str) and _SHA256_RE.match(value) is not None


def default_data_dir(env=os.environ) -> pathlib.Path:
    """The data directory when ``--data-dir`` is not given."""
    # An empty variable counts as unset: `AAR_DATA_DIR= aar serve` should not
    # put the registry's keys in the current directory.
    for name in ("AAR_DATA_DIR", "SNAP_COMMON"):
        if env.get(name):
            return pathlib.Path(env[name])
    if env.get("XDG_DATA_HOME"):
        return pathlib.Path(env["XDG_DATA_HOME"]) / "aar"
    home = env.get("HOME") or str(pathlib.Path.home())
    return pathlib.Path(home) / ".local" / "share" / "aar"


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
    def trust_db(self) -> pathlib.Path:
        return self.root / "trust.db"

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
        """Where the blob with this digest lives (whether or not it exists)."""
        # The digest becomes a path: anything but 64 hex could climb out of
        # blobs/ ("../"), so it is refused here, at the one place paths are made.
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.blobs_dir / sha256[:2] / sha256

    def ensure(self) -> "DataDir":
        """Create the directories (mode 0700) that do not exist yet."""
        # Parents of the root are ordinary directories (the user's
        # ~/.local/share, say); only what the registry owns is made private.
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.root, self.certs_dir, self.root / "blobs",
                     self.blobs_dir, self.staging_dir):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                if not path.is_dir():
                    raise
        return self

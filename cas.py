"""Content-addressed package files, laid out alike by the registry and the agent.

    <data-dir>/
    |-- blobs/sha256/<2 hex>/<64 hex>   a package's bytes, named by their sha256
    `-- staging/                        files being written, on the same filesystem

A blob only ever appears complete: its bytes are written and fsynced under
staging/, then `commit()` renames the file into place (atomic, since both
directories are on one filesystem) and fsyncs the directory that gained it.
Which blobs a data directory still needs is its owner's business (the
registry's packages.db, the agent's apps.db); this module only makes paths,
directories and durable moves.
"""
import os
import pathlib
import re

__all__ = ["is_sha256", "blob_path", "commit", "default_data_dir", "fsync_dir",
           "make_private_dirs", "unlink_quiet"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")


def is_sha256(value) -> bool:
    """True for 64 lowercase hex digits, the only names allowed under blobs/."""
    return isinstance(value, str) and _SHA256_RE.match(value) is not None


def blob_path(blobs_dir, sha256) -> pathlib.Path:
    """Where the blob with this digest lives (whether or not it exists)."""
    # The digest becomes a path: anything but 64 hex could climb out of
    # blobs/ ("../"), so it is refused here, at the one place paths are made.
    if not is_sha256(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return pathlib.Path(blobs_dir) / sha256[:2] / sha256


def default_data_dir(env, variable, name, euid=None) -> pathlib.Path:
    """$variable, else $SNAP_COMMON, else /var/lib/name for root, else
    $XDG_DATA_HOME/name, else ~/.local/share/name. An empty variable counts
    as unset, so that `AAR_DATA_DIR= aar serve` never puts keys in the
    current directory. Root gets the system path because `sudo aar …` drops
    the caller's variables: a store under /root would be one no service reads."""
    for key in (variable, "SNAP_COMMON"):
        if env.get(key):
            return pathlib.Path(env[key])
    if (os.geteuid() if euid is None else euid) == 0:
        return pathlib.Path("/var/lib") / name
    if env.get("XDG_DATA_HOME"):
        return pathlib.Path(env["XDG_DATA_HOME"]) / name
    home = env.get("HOME") or str(pathlib.Path.home())
    return pathlib.Path(home) / ".local" / "share" / name


def make_private_dirs(root, *paths):
    """Create root and paths (mode 0700) where missing; root's parents are
    ordinary directories (~/.local/share, say) and are made as usual."""
    root = pathlib.Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    for path in (root, *paths):
        try:
            pathlib.Path(path).mkdir(mode=0o700)
        except FileExistsError:
            if not pathlib.Path(path).is_dir():
                raise


def fsync_dir(path):
    """Make a rename into, or a new entry of, directory path durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quiet(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def commit(staged, blob) -> bool:
    """Move a complete, fsynced staging file to its blob path, durably.

    False when the blob was already there: same digest, same bytes, so the
    stored file serves both and the staged copy is dropped.
    """
    blob = pathlib.Path(blob)
    if blob.exists():
        unlink_quiet(staged)
        return False
    fan_out = blob.parent
    if not fan_out.is_dir():
        fan_out.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(fan_out.parent)
    os.replace(staged, blob)
    fsync_dir(fan_out)
    return True

"""Packages: what may be inside one, and reading its manifest.

A package is what AMS imports: a directory, a .zip or a .tar.bz2 holding
manifest.yaml at its root (not inside a top-level folder: AMS packages are
made that way, and one place to look keeps the rule simple). AMS unpacks it,
so everything that could write outside the unpack directory is refused:

  * names that are absolute, contain '..' or a backslash, or are not UTF-8;
  * symbolic links whose target is absolute or leads out of the package, and
    any path (member name or link target) that goes through another link,
    since a link can make '..' land somewhere a plain reading does not show;
  * hard links (tar) to anything but a regular file in the package;
  * devices, fifos and sockets; a name given twice (except directories).

manifest.yaml must be a regular file of at most manifest.MAX_SIZE bytes.

stage() puts the package's bytes in a staging file (a directory is packed
into a deterministic .tar.bz2: sorted names, zero times and owners, modes
0644/0755), and inspect() checks that file. Checking the staged copy, never
the source, means what is checked is exactly what gets stored.
"""
import hashlib
import os
import stat
import tarfile
import tempfile
import zipfile
import zlib

from . import manifest as manifest_mod
from .errors import ManifestError, PackageError

__all__ = [
    "stage", "inspect", "MAX_MEMBERS", "NOT_A_PACKAGE", "UNREADABLE",
    "BAD_ARCHIVE", "UNSAFE_PATH", "UNSAFE_LINK", "THROUGH_LINK",
    "SPECIAL_FILE", "DUPLICATE", "NO_MANIFEST", "NESTED_MANIFEST", "MANIFEST_NOT_FILE",
    "TOO_MANY", "ENCRYPTED",
]

MAX_MEMBERS = 100_000
_MAX_LINK = 4096
_CHUNK = 1024 * 1024

NOT_A_PACKAGE = ("{path} is not a package: expected a directory, a .zip or a "
                 ".tar.bz2 file with manifest.yaml at its root")
UNREADABLE = "cannot read {path}: {reason}"
BAD_ARCHIVE = "the package is not a valid .zip or .tar.bz2 archive: {reason}"
UNSAFE_PATH = ("unsafe name {name} in the package: names must be relative, "
               "UTF-8, without '..' or '\\'")
UNSAFE_LINK = "link {name} -> {target} points outside the package"
THROUGH_LINK = "{name} goes through the link {link}: paths through links are not allowed"
SPECIAL_FILE = "{name} is a device, fifo or socket: packages hold files, directories and links"
DUPLICATE = "{name} appears twice in the package"
NO_MANIFEST = "the package has no manifest.yaml at its root"
NESTED_MANIFEST = ("the package has no manifest.yaml at its root; it has {found}: "
                   "archive the contents of {folder}/, not the folder itself")
MANIFEST_NOT_FILE = "manifest.yaml must be a regular file, not a link or directory"
TOO_MANY = f"the package has more than {MAX_MEMBERS} entries"
ENCRYPTED = "{name} is encrypted: packages cannot hold encrypted entries"


class _Member:
    __slots__ = ("parts", "kind", "target", "source")

    def __init__(self, parts, kind, target=None, source=None):
        self.parts, self.kind, self.target, self.source = parts, kind, target, source

    @property
    def name(self):
        return "/".join(self.parts)


def _parts(name) -> tuple:
    """The components of a relative archive name; PackageError if unsafe."""
    bad = PackageError(UNSAFE_PATH.format(name=repr(name)))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise bad from None
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise bad
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise bad
    return parts


def _through_link(name, parts, links):
    for end in range(1, len(parts)):
        if parts[:end] in links:
            raise PackageError(THROUGH_LINK.format(name=repr(name),
                                                   link=repr("/".join(parts[:end]))))


def _check_link(member, links):
    bad = PackageError(UNSAFE_LINK.format(name=repr(member.name), target=repr(member.target)))
    if not member.target or member.target.startswith("/") or "\0" in member.target:
        raise bad
    where = list(member.parts[:-1])
    steps = [step for step in member.target.split("/") if step not in ("", ".")]
    for index, step in enumerate(steps):
        if step == "..":
            if not where:
                raise bad
            where.pop()
            continue
        where.append(step)
        if index < len(steps) - 1 and tuple(where) in links:
            raise PackageError(THROUGH_LINK.format(name=repr(member.name),
                                                   link=repr("/".join(where))))


def _check(members):
    """Apply the rules of the module docstring to a whole list of members."""
    links = {m.parts for m in members if m.kind == "symlink"}
    files = {m.parts for m in members if m.kind == "file"}
    seen = {}
    for member in members:
        if member.parts in seen and not (member.kind == seen[member.parts] == "dir"):
            raise PackageError(DUPLICATE.format(name=repr(member.name)))
        seen[member.parts] = member.kind
        _through_link(member.name, member.parts, links)
        if member.kind == "symlink":
            _check_link(member, links)
        elif member.kind == "hardlink":
            # A hard link names another member; it may only be a file.
            try:
                target = _parts(member.target or "")
            except PackageError:
                target = None
            if target not in files:
                raise PackageError(UNSAFE_LINK.format(name=repr(member.name),
                                                      target=repr(member.target)))
            _through_link(member.target, target, links)


def _manifest_of(members, read):
    for member in members:
        if member.parts == ("manifest.yaml",):
            if member.kind != "file":
                raise PackageError(MANIFEST_NOT_FILE)
            return manifest_mod.parse_manifest(read(member))
    nested = sorted((m for m in members if m.parts[-1] == "manifest.yaml"),
                    key=lambda m: len(m.parts))
    if nested:
        # The usual slip: the folder was archived instead of its contents.
        folder = "/".join(nested[0].parts[:-1])
        raise PackageError(NESTED_MANIFEST.format(found=nested[0].name, folder=folder))
    raise PackageError(NO_MANIFEST)


class _Counting:
    """A binary file that reports how far it has been read: progress(done, total)."""

    def __init__(self, file, report):
        self._file, self._report = file, report
        self._total = os.fstat(file.fileno()).st_size

    def read(self, size=-1):
        data = self._file.read(size)
        self._report(self._file.tell(), self._total)
        return data

    def __getattr__(self, name):     # seek, tell, … as the file has them
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def _opened(path, progress, phase):
    """path opened for reading; counted when there is a progress to tell."""
    file = open(path, "rb")
    if progress is None:
        return file
    return _Counting(file, lambda done, total: progress(phase, done, total))


def _tar_members(path, progress=None):
    members, manifest_bytes = [], {}
    # Stream mode: one pass through the bz2 data, no seeking back.
    with _opened(path, progress, "verifying") as raw, \
            tarfile.open(fileobj=raw, mode="r|bz2") as tar:
        for info in tar:
            if len(members) >= MAX_MEMBERS:
                raise PackageError(TOO_MANY)
            parts = _parts(info.name)
            if info.isdir():
                kind = "dir"
            elif info.isreg():
                kind = "file"
            elif info.issym():
                kind = "symlink"
            elif info.islnk():
                kind = "hardlink"
            else:
                raise PackageError(SPECIAL_FILE.format(name=repr(info.name)))
            if not parts:
                if kind != "dir":
                    raise PackageError(UNSAFE_PATH.format(name=repr(info.name)))
                continue
            members.append(_Member(parts, kind, info.linkname or None))
            if parts == ("manifest.yaml",) and kind == "file":
                if info.size > manifest_mod.MAX_SIZE:
                    raise ManifestError(manifest_mod.TOO_LARGE)
                manifest_bytes[parts] = tar.extractfile(info).read()
    return members, lambda member: manifest_bytes[member.parts]


def _zip_members(path, progress=None):
    members = []
    with _opened(path, progress, "verifying") as raw, zipfile.ZipFile(raw) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise PackageError(TOO_MANY)
        for info in infos:
            if info.flag_bits & 0x1:
                raise PackageError(ENCRYPTED.format(name=repr(info.filename)))
            parts = _parts(info.filename)
            mode = info.external_attr >> 16
            target = None
            if info.is_dir():
                kind = "dir"
            elif stat.S_ISLNK(mode):
                kind = "symlink"
                if info.file_size > _MAX_LINK:
                    raise PackageError(UNSAFE_LINK.format(name=repr(info.filename),
                                                          target="…"))
                target = archive.read(info).decode("utf-8", "surrogateescape")
            # Many archivers (zipfile.writestr among them) store permission
            # bits without a file type, or no Unix mode at all: a plain file.
            elif stat.S_IFMT(mode) in (0, stat.S_IFREG):
                kind = "file"
            else:
                raise PackageError(SPECIAL_FILE.format(name=repr(info.filename)))
            if not parts:
                if kind != "dir":
                    raise PackageError(UNSAFE_PATH.format(name=repr(info.filename)))
                continue
            members.append(_Member(parts, kind, target, info))
        # Every entry's CRC, so a damaged package is refused now, not in AMS.
        damaged = archive.testzip()
        if damaged is not None:
            raise PackageError(BAD_ARCHIVE.format(reason=f"{damaged!r} is damaged"))
        for member in members:
            if member.parts == ("manifest.yaml",) and member.kind == "file":
                if member.source.file_size > manifest_mod.MAX_SIZE:
                    raise ManifestError(manifest_mod.TOO_LARGE)
                data = archive.read(member.source)
                return members, lambda _member: data
    return members, None


def inspect(path, progress=None) -> dict:
    """Check a staged package file (.zip or .tar.bz2, told apart by their
    first bytes); return its manifest. PackageError if it breaks a rule.
    progress("verifying", done, total) is told how far the check has read.
    """
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
        if magic.startswith(b"BZh"):
            members, read = _tar_members(path, progress)
        elif magic in (b"PK\x03\x04", b"PK\x05\x06"):
            members, read = _zip_members(path, progress)
        else:
            raise PackageError(BAD_ARCHIVE.format(reason="unknown format"))
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError,
            NotImplementedError, RuntimeError) as error:
        raise PackageError(BAD_ARCHIVE.format(reason=error)) from None
    except OSError as error:
        # bz2 reports damaged data as OSError("Invalid data stream").
        raise PackageError(BAD_ARCHIVE.format(reason=error.strerror or error)) from None
    _check(members)
    return _manifest_of(members, read or (lambda member: b""))


def _walk(root):
    """The members of a directory package, sorted, links not followed."""
    members, pending = [], [((), root)]
    while pending:
        parts, directory = pending.pop()
        with os.scandir(directory) as entries:
            found = sorted(entries, key=lambda entry: entry.name)
        for entry in found:
            pending_parts = parts + (entry.name,)
            name = "/".join(pending_parts)
            _parts(name)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                members.append(_Member(pending_parts, "dir", source=entry.path))
                pending.append((pending_parts, entry.path))
            elif stat.S_ISREG(mode):
                members.append(_Member(pending_parts, "file", source=entry.path))
            elif stat.S_ISLNK(mode):
                members.append(_Member(pending_parts, "symlink", os.readlink(entry.path)))
            else:
                raise PackageError(SPECIAL_FILE.format(name=repr(name)))
            if len(members) > MAX_MEMBERS:
                raise PackageError(TOO_MANY)
    return sorted(members, key=lambda member: member.parts)


def _pack(root, out, progress=None):
    """Write the directory root as a deterministic .tar.bz2 into file out."""
    members = _walk(root)
    _check(members)
    total, done = 0, 0
    if progress is not None:
        for member in members:
            if member.kind == "file":
                total += os.lstat(member.source).st_size
    with tarfile.open(fileobj=out, mode="w:bz2", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if member.kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif member.kind == "symlink":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, member.target
                tar.addfile(info)
            else:
                # O_NOFOLLOW and the fstat check: a file swapped for a link or
                # a fifo since the walk is refused instead of followed.
                fd = os.open(member.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                with os.fdopen(fd, "rb") as file:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise PackageError(SPECIAL_FILE.format(name=repr(member.name)))
                    info.size = st.st_size
                    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    if progress is not None:
                        file = _Counting(file, lambda at, _size, base=done:
                                         progress("compressing", base + at, total))
                    tar.addfile(info, file)
                    done += info.size


def _copy(source, out, progress=None):
    with _opened(source, progress, "copying") as file:
        while True:
            chunk = file.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)


def _digest(file, progress=None):
    file.seek(0)
    total = os.fstat(file.fileno()).st_size
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: file.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
        if progress is not None:
            progress("hashing", size, total)
    return digest.hexdigest(), size


def stage(path, staging_dir, archive_only=False, known_sha256=None, progress=None):
    """Write the package at path into a new file in staging_dir; return
    (staged path, sha256 hex, size). A directory is packed (unless
    archive_only); a file must be named .zip or .tar.bz2 (unless archive_only)
    and is copied as it is, except that a file already in staging_dir (a
    download) is used in place. The staged file is fsynced; the caller
    removes it.

    known_sha256 is the digest the caller computed itself while it wrote a
    file in staging_dir (a download checks its bytes as they arrive): that
    file is not read a second time. A file from anywhere else is always
    hashed here, whatever known_sha256 says.

    progress(phase, done, total), if given, hears each phase: compressing or
    copying, then hashing, with byte counts.
    """
    path = os.fspath(path)
    is_dir = os.path.isdir(path)
    if is_dir and archive_only or not is_dir and not archive_only and (
            not path.lower().endswith((".zip", ".tar.bz2")) or not os.path.isfile(path)):
        raise PackageError(NOT_A_PACKAGE.format(path=path))
    if archive_only and os.path.dirname(os.path.realpath(path)) == os.path.realpath(staging_dir):
        # Copying a download of gigabytes only to rename the copy would
        # double the disk traffic for nothing.
        try:
            with open(path, "rb") as file:
                os.fsync(file.fileno())
                if known_sha256 is not None:
                    return path, known_sha256, os.fstat(file.fileno()).st_size
                return (path, *_digest(file, progress))
        except OSError as error:
            raise PackageError(UNREADABLE.format(path=path, reason=error.strerror)) from None
    fd, staged = tempfile.mkstemp(dir=staging_dir, suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as out:
            try:
                (_pack if is_dir else _copy)(path, out, progress)
            except OSError as error:
                raise PackageError(UNREADABLE.format(
                    path=error.filename or path, reason=error.strerror or error)) from None
            out.flush()
            os.fsync(out.fileno())
            sha256, size = _digest(out, progress)
    except BaseException:
        os.unlink(staged)
        raise
    return staged, sha256, size

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

inspect() checks a staged package file: staging.stage() made it (packing a
directory with the same rules, check_members(), applied before a byte is
written). Checking the staged copy, never the source, means what is checked
is exactly what gets stored.
"""
import os
import stat
import tarfile
import zipfile
import zlib

from . import manifest as manifest_mod
from .errors import ManifestError, PackageError

__all__ = [
    "inspect", "check_members", "safe_parts", "Member", "counted_open", "MAX_MEMBERS",
    "BAD_ARCHIVE", "UNSAFE_PATH", "UNSAFE_LINK", "THROUGH_LINK",
    "SPECIAL_FILE", "DUPLICATE", "NO_MANIFEST", "NESTED_MANIFEST", "MANIFEST_NOT_FILE",
    "TOO_MANY", "ENCRYPTED",
]

MAX_MEMBERS = 100_000
_MAX_LINK = 4096

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


class Member:
    __slots__ = ("parts", "kind", "target", "source")

    def __init__(self, parts, kind, target=None, source=None):
        self.parts, self.kind, self.target, self.source = parts, kind, target, source

    @property
    def name(self):
        return "/".join(self.parts)


def safe_parts(name) -> tuple:
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


def check_members(members):
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
                target = safe_parts(member.target or "")
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


class Counting:
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


def counted_open(path, progress, phase):
    """path opened for reading; counted when there is a progress to tell."""
    file = open(path, "rb")
    if progress is None:
        return file
    return Counting(file, lambda done, total: progress(phase, done, total))


def _tar_members(path, progress=None):
    members, manifest_bytes = [], {}
    # Stream mode: one pass through the bz2 data, no seeking back.
    with counted_open(path, progress, "verifying") as raw, \
            tarfile.open(fileobj=raw, mode="r|bz2") as tar:
        for info in tar:
            if len(members) >= MAX_MEMBERS:
                raise PackageError(TOO_MANY)
            parts = safe_parts(info.name)
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
            members.append(Member(parts, kind, info.linkname or None))
            if parts == ("manifest.yaml",) and kind == "file":
                if info.size > manifest_mod.MAX_SIZE:
                    raise ManifestError(manifest_mod.TOO_LARGE)
                manifest_bytes[parts] = tar.extractfile(info).read()
    return members, lambda member: manifest_bytes[member.parts]


def _zip_members(path, progress=None):
    members = []
    with counted_open(path, progress, "verifying") as raw, zipfile.ZipFile(raw) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise PackageError(TOO_MANY)
        for info in infos:
            if info.flag_bits & 0x1:
                raise PackageError(ENCRYPTED.format(name=repr(info.filename)))
            parts = safe_parts(info.filename)
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
            members.append(Member(parts, kind, target, info))
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
    check_members(members)
    return _manifest_of(members, read or (lambda member: b""))

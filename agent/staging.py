"""Staging: a package's bytes into a new file under staging/, with its sha256.

Every package that reaches the store passes through here (stage()), so the
store checks and keeps exactly one file: package.inspect() reads the staged
copy, never the source, which may change under us. A directory is packed
into a deterministic .tar.bz2 (sorted names, zero times and owners, modes
0644/0755), after its members passed package.check_members(), so the same
tree always gives the same sha256; an archive is copied as it is; a download
already in staging/ is used in place.
"""
import hashlib
import os
import stat
import tarfile
import tempfile

from .errors import PackageError
from .package import (MAX_MEMBERS, SPECIAL_FILE, TOO_MANY, Counting, Member,
                      check_members, counted_open, safe_parts)

__all__ = ["stage", "NOT_A_PACKAGE", "UNREADABLE"]

_CHUNK = 1024 * 1024

NOT_A_PACKAGE = ("{path} is not a package: expected a directory, a .zip or a "
                 ".tar.bz2 file with manifest.yaml at its root")
UNREADABLE = "cannot read {path}: {reason}"


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
            safe_parts(name)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                members.append(Member(pending_parts, "dir", source=entry.path))
                pending.append((pending_parts, entry.path))
            elif stat.S_ISREG(mode):
                members.append(Member(pending_parts, "file", source=entry.path))
            elif stat.S_ISLNK(mode):
                members.append(Member(pending_parts, "symlink", os.readlink(entry.path)))
            else:
                raise PackageError(SPECIAL_FILE.format(name=repr(name)))
            if len(members) > MAX_MEMBERS:
                raise PackageError(TOO_MANY)
    return sorted(members, key=lambda member: member.parts)


def _pack(root, out, progress=None):
    """Write the directory root as a deterministic .tar.bz2 into file out."""
    members = _walk(root)
    check_members(members)
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
                        file = Counting(file, lambda at, _size, base=done:
                                         progress("compressing", base + at, total))
                    tar.addfile(info, file)
                    done += info.size


def _copy(source, out, progress=None):
    with counted_open(source, progress, "copying") as file:
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

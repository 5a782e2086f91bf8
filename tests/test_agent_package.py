"""agent.package and agent.staging: what a package may hold, checked on the staged copy.

The helpers at the top build packages the way operators (and attackers) do,
with zipfile and tarfile; test_agent_appstore.py uses them too.
"""
import io
import os
import stat
import tarfile
import warnings
import zipfile

import pytest

from agent import manifest, package, staging
from agent.errors import ManifestError, PackageError

MANIFEST = b"name: game\ntags: [arcade]\n"


def make_dir(root, files=None, name="game"):
    """A directory package: {relative path: bytes}; manifest.yaml by default."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"manifest.yaml": f"name: {name}\ntags: [arcade]\n".encode(),
             "app.apk": b"APK" * 100} if files is None else files
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_zip(path, entries=None):
    """entries: [(name, bytes)] or [(ZipInfo, bytes)]."""
    entries = [("manifest.yaml", MANIFEST), ("app.apk", b"APK")] if entries is None else entries
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def zip_mode(name, mode, data=b""):
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info, data


def zip_link(name, target):
    return zip_mode(name, stat.S_IFLNK | 0o777, target.encode())


def tar_file(name, data=b""):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_entry(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def make_tar(path, entries=None):
    """entries: [(TarInfo, bytes or None)]; the default is a good package."""
    entries = [tar_file("manifest.yaml", MANIFEST), tar_file("app.apk", b"APK")] \
        if entries is None else entries
    with tarfile.open(path, "w:bz2") as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def check(path, tmp_path):
    """stage + inspect, as the store does; the staging file is removed."""
    staging_dir = tmp_path / "staging"
    staging_dir.mkdir(exist_ok=True)
    staged, sha256, size = staging.stage(path, staging_dir)
    try:
        return package.inspect(staged), sha256, size
    finally:
        os.unlink(staged)


# -- good packages -----------------------------------------------------------------------

def test_directory(tmp_path):
    make_dir(tmp_path / "pkg", {"manifest.yaml": MANIFEST, "app.apk": b"x",
                                "sub/deep/file": b"y"})
    os.symlink("../app.apk", tmp_path / "pkg" / "sub" / "link")
    found, sha256, size = check(tmp_path / "pkg", tmp_path)
    assert found == {"name": "game", "tags": ["arcade"]}
    assert len(sha256) == 64 and size > 0


def test_directory_packing_is_deterministic(tmp_path):
    make_dir(tmp_path / "a", {"manifest.yaml": MANIFEST, "z": b"1", "b/c": b"2"})
    make_dir(tmp_path / "b", {"b/c": b"2", "z": b"1", "manifest.yaml": MANIFEST})
    os.utime(tmp_path / "b" / "z", (1, 1))
    os.chmod(tmp_path / "b" / "z", 0o600)
    assert check(tmp_path / "a", tmp_path)[1] == check(tmp_path / "b", tmp_path)[1]


def test_packed_directory_contents(tmp_path):
    make_dir(tmp_path / "pkg", {"manifest.yaml": MANIFEST, "bin/run": b"#!/bin/sh\n"})
    os.chmod(tmp_path / "pkg" / "bin" / "run", 0o700)
    staged, _, _ = staging.stage(tmp_path / "pkg", tmp_path)
    with tarfile.open(staged) as archive:
        infos = {info.name: info for info in archive.getmembers()}
    assert sorted(infos) == ["bin", "bin/run", "manifest.yaml"]
    assert infos["bin/run"].mode == 0o755 and infos["manifest.yaml"].mode == 0o644
    assert {(i.mtime, i.uid, i.gid, i.uname) for i in infos.values()} == {(0, 0, 0, "")}


def test_zip_is_stored_as_given(tmp_path):
    path = make_zip(tmp_path / "game.zip", [("./manifest.yaml", MANIFEST), ("a/", b""),
                                            ("a/b", b"x"), zip_link("a/l", "b")])
    staging_dir = tmp_path / "staging"
    staging_dir.mkdir()
    staged, _, size = staging.stage(path, staging_dir)
    assert open(staged, "rb").read() == path.read_bytes() and size == path.stat().st_size
    assert package.inspect(staged)["name"] == "game"


def test_tar_bz2(tmp_path):
    path = make_tar(tmp_path / "game.tar.bz2", [
        tar_entry("./", tarfile.DIRTYPE), tar_file("./manifest.yaml", MANIFEST),
        tar_entry("d", tarfile.DIRTYPE), tar_file("d/f", b"x"),
        tar_entry("d/hard", tarfile.LNKTYPE, "d/f"),
        tar_entry("d/up", tarfile.SYMTYPE, "../manifest.yaml")])
    assert check(path, tmp_path)[0]["name"] == "game"


def test_suffix_is_case_insensitive(tmp_path):
    path = make_zip(tmp_path / "GAME.ZIP")
    assert check(path, tmp_path)[0]["name"] == "game"


# -- refused packages --------------------------------------------------------------------

def _refused(path, tmp_path, message):
    with pytest.raises(PackageError) as info:
        check(path, tmp_path)
    assert str(info.value) == message
    assert os.listdir(tmp_path / "staging") == []  # the staging file is gone


ZIP_CASES = [
    ("../evil", package.UNSAFE_PATH.format(name="'../evil'")),
    ("a/../../evil", package.UNSAFE_PATH.format(name="'a/../../evil'")),
    ("/etc/evil", package.UNSAFE_PATH.format(name="'/etc/evil'")),
    ("a\\..\\evil", package.UNSAFE_PATH.format(name="'a\\\\..\\\\evil'")),
]


@pytest.mark.parametrize("name, message", ZIP_CASES)
def test_zip_unsafe_names(tmp_path, name, message):
    path = make_zip(tmp_path / "p.zip", [("manifest.yaml", MANIFEST), (name, b"x")])
    _refused(path, tmp_path, message)


@pytest.mark.parametrize("entries, message", [
    ([zip_link("l", "/etc/passwd")], package.UNSAFE_LINK.format(name="'l'", target="'/etc/passwd'")),
    ([zip_link("l", "../x")], package.UNSAFE_LINK.format(name="'l'", target="'../x'")),
    ([zip_link("a/l", "../../x")], package.UNSAFE_LINK.format(name="'a/l'", target="'../../x'")),
    ([zip_link("d", "."), ("d/x", b"")], package.THROUGH_LINK.format(name="'d/x'", link="'d'")),
    ([zip_mode("dev", stat.S_IFCHR | 0o600)], package.SPECIAL_FILE.format(name="'dev'")),
    ([zip_mode("fifo", stat.S_IFIFO | 0o600)], package.SPECIAL_FILE.format(name="'fifo'")),
    ([("x", b"1"), ("x", b"2")], package.DUPLICATE.format(name="'x'")),
])
def test_zip_refusals(tmp_path, entries, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        path = make_zip(tmp_path / "p.zip", [("manifest.yaml", MANIFEST)] + entries)
    _refused(path, tmp_path, message)


TAR_CASES = [
    ([tar_file("../evil", b"x")], package.UNSAFE_PATH.format(name="'../evil'")),
    ([tar_file("/abs", b"x")], package.UNSAFE_PATH.format(name="'/abs'")),
    ([tar_entry("l", tarfile.SYMTYPE, "/etc/passwd")],
     package.UNSAFE_LINK.format(name="'l'", target="'/etc/passwd'")),
    ([tar_entry("a/l", tarfile.SYMTYPE, "../..")],
     package.UNSAFE_LINK.format(name="'a/l'", target="'../..'")),
    # Each link alone stays inside; followed one after the other they do not.
    ([tar_entry("a/up", tarfile.SYMTYPE, ".."), tar_entry("s", tarfile.SYMTYPE, "a/up/../..")],
     package.THROUGH_LINK.format(name="'s'", link="'a/up'")),
    ([tar_entry("d", tarfile.SYMTYPE, "/tmp"), tar_file("d/evil", b"x")],
     package.UNSAFE_LINK.format(name="'d'", target="'/tmp'")),
    ([tar_entry("d", tarfile.SYMTYPE, "sub"), tar_file("d/x", b"x")],
     package.THROUGH_LINK.format(name="'d/x'", link="'d'")),
    ([tar_entry("h", tarfile.LNKTYPE, "../../etc/passwd")],
     package.UNSAFE_LINK.format(name="'h'", target="'../../etc/passwd'")),
    ([tar_entry("h", tarfile.LNKTYPE, "/etc/passwd")],
     package.UNSAFE_LINK.format(name="'h'", target="'/etc/passwd'")),
    ([tar_entry("h", tarfile.LNKTYPE, "missing")],
     package.UNSAFE_LINK.format(name="'h'", target="'missing'")),
    ([tar_entry("dev", tarfile.CHRTYPE)], package.SPECIAL_FILE.format(name="'dev'")),
    ([tar_entry("blk", tarfile.BLKTYPE)], package.SPECIAL_FILE.format(name="'blk'")),
    ([tar_entry("fifo", tarfile.FIFOTYPE)], package.SPECIAL_FILE.format(name="'fifo'")),
    ([tar_file("x", b"1"), tar_file("./x", b"2")], package.DUPLICATE.format(name="'x'")),
]


@pytest.mark.parametrize("entries, message", TAR_CASES)
def test_tar_refusals(tmp_path, entries, message):
    path = make_tar(tmp_path / "p.tar.bz2", [tar_file("manifest.yaml", MANIFEST)] + entries)
    _refused(path, tmp_path, message)


def test_directory_link_out(tmp_path):
    make_dir(tmp_path / "pkg")
    os.symlink("/etc/passwd", tmp_path / "pkg" / "passwd")
    _refused(tmp_path / "pkg", tmp_path,
             package.UNSAFE_LINK.format(name="'passwd'", target="'/etc/passwd'"))


def test_directory_relative_link_out(tmp_path):
    make_dir(tmp_path / "pkg")
    os.symlink("../../secret", tmp_path / "pkg" / "s")
    _refused(tmp_path / "pkg", tmp_path,
             package.UNSAFE_LINK.format(name="'s'", target="'../../secret'"))


def test_directory_fifo(tmp_path):
    make_dir(tmp_path / "pkg")
    os.mkfifo(tmp_path / "pkg" / "pipe")
    _refused(tmp_path / "pkg", tmp_path, package.SPECIAL_FILE.format(name="'pipe'"))


@pytest.mark.parametrize("kind", ["dir", "zip", "tar"])
def test_missing_manifest(tmp_path, kind):
    files = {"app.apk": b"x", "game/manifest.yaml": MANIFEST}  # only in a subfolder
    if kind == "dir":
        path = make_dir(tmp_path / "pkg", files)
    elif kind == "zip":
        path = make_zip(tmp_path / "p.zip", list(files.items()))
    else:
        path = make_tar(tmp_path / "p.tar.bz2", [tar_file(n, d) for n, d in files.items()])
    # The message names where the manifest was found.
    _refused(path, tmp_path, package.NESTED_MANIFEST.format(found="game/manifest.yaml",
                                                            folder="game"))


def test_no_manifest_anywhere(tmp_path):
    path = make_zip(tmp_path / "p.zip", [("app.apk", b"x")])
    _refused(path, tmp_path, package.NO_MANIFEST)


def test_manifest_must_be_a_file(tmp_path):
    path = make_tar(tmp_path / "p.tar.bz2", [tar_file("real", MANIFEST),
                                             tar_entry("manifest.yaml", tarfile.SYMTYPE, "real")])
    _refused(path, tmp_path, package.MANIFEST_NOT_FILE)


@pytest.mark.parametrize("kind", ["dir", "zip", "tar"])
def test_oversized_manifest(tmp_path, kind):
    data = MANIFEST + b"# " + b"x" * manifest.MAX_SIZE + b"\n"
    if kind == "dir":
        path = make_dir(tmp_path / "pkg", {"manifest.yaml": data})
    elif kind == "zip":
        path = make_zip(tmp_path / "p.zip", [("manifest.yaml", data)])
    else:
        path = make_tar(tmp_path / "p.tar.bz2", [tar_file("manifest.yaml", data)])
    with pytest.raises(ManifestError) as info:
        check(path, tmp_path)
    assert info.value.message == manifest.TOO_LARGE


def test_bad_name_in_manifest(tmp_path):
    path = make_zip(tmp_path / "p.zip", [("manifest.yaml", b"# x\nname: ../evil\n")])
    with pytest.raises(ManifestError) as info:
        check(path, tmp_path)
    assert info.value.line == 2


@pytest.mark.parametrize("name, data, message", [
    ("p.zip", b"PK\x03\x04garbage", package.BAD_ARCHIVE.format(reason="")),
    ("p.tar.bz2", b"BZh9garbage", package.BAD_ARCHIVE.format(reason="")),
    ("p.zip", b"plain text", package.BAD_ARCHIVE.format(reason="unknown format")),
])
def test_damaged_archives(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(PackageError) as info:
        check(tmp_path / name, tmp_path)
    assert str(info.value).startswith(message)


def test_zip_with_bad_crc(tmp_path):
    path = make_zip(tmp_path / "p.zip", [("manifest.yaml", MANIFEST),
                                         ("app.apk", b"A" * 1000)])
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("app.apk")
    data[info.header_offset + 30 + len("app.apk") + 2] ^= 0xFF  # inside the deflate data
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError) as info:
        check(path, tmp_path)
    assert str(info.value).startswith(package.BAD_ARCHIVE.format(reason=""))


def test_encrypted_zip_entry(tmp_path):
    path = make_zip(tmp_path / "p.zip", [("manifest.yaml", MANIFEST), ("secret", b"x")])
    # zipfile cannot write encrypted entries: set the flag in the central
    # directory, where readers look for it.
    data = bytearray(path.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the last entry: "secret"
    data[entry + 8] |= 0x1
    path.write_bytes(bytes(data))
    _refused(path, tmp_path, package.ENCRYPTED.format(name="'secret'"))


@pytest.mark.parametrize("name", ["game.txt", "game.tar.gz", "missing.zip"])
def test_not_a_package(tmp_path, name):
    path = tmp_path / name
    if name != "missing.zip":
        path.write_bytes(b"x")
    (tmp_path / "staging").mkdir()
    with pytest.raises(PackageError) as info:
        staging.stage(path, tmp_path / "staging")
    assert str(info.value) == staging.NOT_A_PACKAGE.format(path=path)
    assert os.listdir(tmp_path / "staging") == []


def test_archive_only_refuses_directories(tmp_path):
    make_dir(tmp_path / "pkg")
    with pytest.raises(PackageError):
        staging.stage(tmp_path / "pkg", tmp_path, archive_only=True)

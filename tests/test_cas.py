"""cas: the content-addressed layout both data directories share."""
import hashlib
import os

import pytest

import cas


@pytest.mark.parametrize("bad", ["../" + "a" * 61, "A" * 64, "a" * 63, "", None, "a" * 65])
def test_blob_path_refuses_anything_but_a_digest(tmp_path, bad):
    with pytest.raises(ValueError):
        cas.blob_path(tmp_path, bad)


def test_commit_is_a_move_and_a_second_copy_is_dropped(tmp_path):
    cas.make_private_dirs(tmp_path / "d", tmp_path / "d" / "staging", tmp_path / "d" / "blobs")
    digest = hashlib.sha256(b"x").hexdigest()
    blob = cas.blob_path(tmp_path / "d" / "blobs", digest)
    for expected in (True, False):
        staged = tmp_path / "d" / "staging" / "part"
        staged.write_bytes(b"x")
        assert cas.commit(staged, blob) is expected
        assert not staged.exists() and blob.read_bytes() == b"x"
    assert oct(os.stat(tmp_path / "d").st_mode & 0o777) == "0o700"


def test_default_data_dir_order(tmp_path):
    env = {"HOME": str(tmp_path)}
    assert cas.default_data_dir(env, "X_DIR", "x", 1000) == tmp_path / ".local/share/x"
    env["XDG_DATA_HOME"] = "/xdg"
    assert str(cas.default_data_dir(env, "X_DIR", "x", 1000)) == "/xdg/x"
    env["SNAP_COMMON"] = "/var/snap/x/common"
    assert str(cas.default_data_dir(env, "X_DIR", "x", 1000)) == "/var/snap/x/common"
    env["X_DIR"] = ""                      # empty counts as unset
    assert str(cas.default_data_dir(env, "X_DIR", "x", 1000)) == "/var/snap/x/common"
    env["X_DIR"] = "/data"
    assert str(cas.default_data_dir(env, "X_DIR", "x", 1000)) == "/data"

"""agent.paths: where the data directory is, and the client certificate."""
import os
import pathlib
import socket

import pytest

from agent.paths import DataDir, default_data_dir
from trust import certs


@pytest.mark.parametrize("env, expected", [
    ({"AMS_SYNC_DATA_DIR": "/a", "SNAP_COMMON": "/b", "HOME": "/h"}, "/a"),
    ({"AMS_SYNC_DATA_DIR": "", "SNAP_COMMON": "/var/snap/ams/common"}, "/var/snap/ams/common"),
    ({"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/ams-sync"),
    ({"HOME": "/h"}, "/h/.local/share/ams-sync"),
])
def test_default_data_dir(env, expected):
    assert default_data_dir(env, euid=1000) == pathlib.Path(expected)


def test_root_defaults_to_a_system_path():
    # sudo drops the caller's variables: root's default is where a service looks.
    assert default_data_dir({"HOME": "/root"}, euid=0) == pathlib.Path("/var/lib/ams-sync")
    assert default_data_dir({"SNAP_COMMON": "/s", "HOME": "/root"}, euid=0) == pathlib.Path("/s")


def test_layout(tmp_path):
    dirs = DataDir(tmp_path / "d").ensure()
    assert dirs.config == tmp_path / "d" / "config.json"
    assert dirs.client_cert == tmp_path / "d" / "registry" / "client.crt"
    assert dirs.blob_path("ab" * 32) == tmp_path / "d" / "blobs" / "sha256" / "ab" / ("ab" * 32)
    for path in (dirs.root, dirs.registry_dir, dirs.blobs_dir, dirs.staging_dir):
        assert oct(path.stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("digest", ["../../etc/passwd", "AB" * 32, "ab" * 31, None])
def test_blob_path_takes_only_sha256(tmp_path, digest):
    with pytest.raises(ValueError):
        DataDir(tmp_path).blob_path(digest)


def test_client_certificate_made_once(tmp_path):
    dirs = DataDir(tmp_path / "d")
    cert_path, key_path = dirs.client_certificate()
    cert = certs.load_certificate(cert_path)
    assert cert.common_name == ("ams-" + socket.gethostname())[:64]
    assert oct(os.stat(key_path).st_mode & 0o777) == "0o600"
    before = cert_path.read_bytes()
    assert dirs.client_certificate() == (cert_path, key_path)
    assert cert_path.read_bytes() == before


def test_client_certificate_long_hostname(tmp_path):
    cert_path, _ = DataDir(tmp_path).client_certificate(hostname="h" * 100)
    assert certs.load_certificate(cert_path).common_name == "ams-" + "h" * 60

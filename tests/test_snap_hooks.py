"""The aar snap's configure hook, run as snapd would, with a stand-in snapctl."""
import os
import subprocess
import sys

import pytest

from test_zipapp import ROOT, clean_env, zipapp  # noqa: F401  (zipapp: fixture)

HOOK = ROOT / "snap" / "aar" / "hooks" / "configure"
SNAPCTL = """#!/bin/sh
# snapctl as the hook sees it: values from the environment, restarts logged.
case "$1" in
    get) key=$(echo "$2" | tr '.-' '__'); eval "echo \\"\\${SNAP_SET_$key:-}\\"" ;;
    services) printf 'Service     Startup  Current  Notes\\naar.daemon  enabled  active   -\\n' ;;
    restart) echo "$2" >> "$RESTARTS" ;;
esac
"""


@pytest.fixture
def snap(tmp_path, zipapp):  # noqa: F811
    root = tmp_path / "snap"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "python3").symlink_to(sys.executable)
    (root / "aar.pyz").symlink_to(zipapp)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "snapctl").write_text(SNAPCTL)
    (bin_dir / "snapctl").chmod(0o755)
    common = tmp_path / "common"
    common.mkdir()

    def configure(**values):
        env = clean_env(tmp_path, SNAP=str(root), SNAP_COMMON=str(common),
                        RESTARTS=str(tmp_path / "restarts"),
                        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        **{f"SNAP_SET_{k}": v for k, v in values.items()})
        # snap's dotted keys (storage.s3.bucket) as storage_s3_bucket=…
        return subprocess.run(["sh", str(HOOK)], env=env, capture_output=True, text=True,
                              timeout=120)
    configure.conf = common / "conf" / "main.yaml"
    configure.restarts = tmp_path / "restarts"
    return configure


def test_hook_is_executable():
    assert HOOK.stat().st_mode & 0o111


def test_snap_set_writes_main_yaml_and_restarts_the_daemon(snap):
    snap.conf.parent.mkdir()
    snap.conf.write_text("# mine\nstorage:\n  s3:\n    bucket: aar\n")
    done = snap(listen="127.0.0.1:3006", metrics="127.0.0.1:9300")
    assert done.returncode == 0, done.stderr
    text = snap.conf.read_text()
    assert 'listen: "127.0.0.1:3006"' in text and 'metrics: "127.0.0.1:9300"' in text
    assert text.endswith("# mine\nstorage:\n  s3:\n    bucket: aar\n")   # kept as it was
    assert snap.restarts.read_text() == "aar.daemon\n"
    # The same values again: nothing to restart.
    assert snap(listen="127.0.0.1:3006", metrics="127.0.0.1:9300").returncode == 0
    assert snap.restarts.read_text() == "aar.daemon\n"


def test_a_bad_value_fails_snap_set_and_changes_nothing(snap):
    assert snap(listen="0.0.0.0:3000").returncode == 0
    before = snap.conf.read_text()
    done = snap(listen="http://0.0.0.0:3000")
    assert done.returncode != 0 and "without a scheme" in done.stderr
    assert snap.conf.read_text() == before


def test_nothing_set_leaves_the_file_alone(snap):
    done = snap()
    assert done.returncode == 0 and not snap.conf.exists()


def test_snap_set_storage_s3_writes_the_section(snap):
    done = snap(storage_s3_bucket="aar", storage_s3_access_key="AK",
                storage_s3_secret_access_key="SK", storage_s3_redirect="false")
    assert done.returncode == 0, done.stderr
    assert snap.conf.read_text() == ('storage:\n  s3:\n    bucket: "aar"\n    access-key: "AK"\n'
                                     '    secret-access-key: "SK"\n    redirect: false\n')
    assert snap.restarts.read_text() == "aar.daemon\n"
    # Changed: restarted again; the other keys of the section stay.
    assert snap(storage_s3_bucket="other").returncode == 0
    assert 'bucket: "other"' in snap.conf.read_text() and 'access-key: "AK"' in snap.conf.read_text()
    assert snap.restarts.read_text() == "aar.daemon\naar.daemon\n"


def test_a_bucket_without_credentials_fails_snap_set(snap):
    done = snap(storage_s3_bucket="aar")
    assert done.returncode != 0 and "needs access-key and secret-access-key" in done.stderr
    assert not snap.conf.exists() and not snap.restarts.exists()


def test_snap_set_processes(snap):
    done = snap(processes="auto")
    assert done.returncode == 0, done.stderr
    assert snap.conf.read_text() == 'processes: "auto"\n'
    assert snap.restarts.read_text() == "aar.daemon\n"
    done = snap(processes="1025")                       # refused: the file stays
    assert done.returncode != 0 and "invalid process count '1025'" in done.stderr
    assert snap.conf.read_text() == 'processes: "auto"\n'
    assert snap(processes="2").returncode == 0
    assert snap.conf.read_text() == 'processes: "2"\n'


def test_processes_above_one_with_a_bucket_fails_snap_set(snap):
    done = snap(processes="2", storage_s3_bucket="aar", storage_s3_access_key="AK",
                storage_s3_secret_access_key="SK")
    assert done.returncode != 0
    assert "processes above 1 needs the data directory's own storage" in done.stderr
    assert not snap.conf.exists() and not snap.restarts.exists()

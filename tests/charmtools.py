"""What the charm tests share: the real programs on PATH, the charms loaded
for ops.testing, and the install seam pointed at a temporary directory.

`aar` and `ams-sync` are the built zipapp (built once per session) through
two links on PATH: the charms run them exactly as on a machine. Only what
cannot run here is replaced: `systemctl` and `snap` are a recorder that
writes its arguments to a log, which the tests read.
"""
import importlib.util
import os
import pathlib
import shutil
import socket
import sys
import time

import pytest

from regserver import stop_process
from test_zipapp import Run, build_zipapp, free_port

ops_testing = pytest.importorskip("ops.testing")

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHARMS = ROOT / "charms"

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CHARM_TEST_LOG"
"""


def load_charm(name, class_name):
    """The charm class from charms/<name>/src/charm.py, its modules importable
    the way the charm's own dispatch makes them (src/ on sys.path)."""
    src = CHARMS / name / "src"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    module_name = f"charm_{name.replace('-', '_')}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, src / "charm.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return getattr(sys.modules[module_name], class_name)


@pytest.fixture(scope="session")
def programs(tmp_path_factory):
    """A bin directory with `aar` and `ams-sync`: links to the built zipapp."""
    zipapp = build_zipapp(tmp_path_factory)
    bin_dir = tmp_path_factory.mktemp("charm-bin")
    (bin_dir / "aar").symlink_to(zipapp)
    (bin_dir / "ams-sync").symlink_to(zipapp)
    return bin_dir


@pytest.fixture(scope="session")
def registry_certs(programs, tmp_path_factory):
    """certs/ of a registry data directory, made by a real first `aar serve`."""
    base = tmp_path_factory.mktemp("registry-seed")
    data = base / "data"
    server = Run(sys.executable, programs / "aar", base)
    process = server.start("serve", "--data-dir", data, "--listen", f"127.0.0.1:{free_port()}")
    try:
        deadline = time.monotonic() + 60
        while not (data / "certs" / "server.crt").exists():
            assert process.poll() is None, "aar serve exited before making its certificate"
            assert time.monotonic() < deadline, "aar serve made no certificate"
            time.sleep(0.1)
    finally:
        stop_process(process, timeout=15)
        process.log.close()
    return data / "certs"


class Machine:
    """One unit's machine: data directories, the install prefix, the recorder."""

    def __init__(self, tmp_path, programs, monkeypatch):
        self.root = tmp_path
        self.aar_data = tmp_path / "aar-data"
        self.ams_data = tmp_path / "ams-data"
        self.prefix = tmp_path / "prefix"
        self.log = tmp_path / "service.log"
        tools = tmp_path / "tools"
        tools.mkdir()
        for name in ("systemctl", "snap"):
            (tools / name).write_text(RECORDER)
            (tools / name).chmod(0o755)
        for key in list(os.environ):
            if key.startswith(("SNAP", "AAR_", "AMS_SYNC_")):
                monkeypatch.delenv(key)
        monkeypatch.setenv("PATH", f"{programs}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("SHIV_ROOT", str(programs.parent / "shiv"))
        monkeypatch.setenv("AAR_DATA_DIR", str(self.aar_data))
        monkeypatch.setenv("AMS_SYNC_DATA_DIR", str(self.ams_data))
        monkeypatch.setenv("AAR_CHARM_PREFIX", str(self.prefix))
        monkeypatch.setenv("AAR_CHARM_SYSTEMCTL", str(tools / "systemctl"))
        monkeypatch.setenv("AAR_CHARM_SNAP", str(tools / "snap"))
        monkeypatch.setenv("CHARM_TEST_LOG", str(self.log))

    def calls(self):
        """The systemctl and snap commands the charm ran, in order."""
        return self.log.read_text().splitlines() if self.log.exists() else []

    def give_registry_certs(self, certs):
        shutil.copytree(certs, self.aar_data / "certs")


@pytest.fixture
def machine(tmp_path, programs, monkeypatch):
    return Machine(tmp_path, programs, monkeypatch)


@pytest.fixture
def ready(machine, registry_certs):
    """A unit whose registry has started once (it has its certificate)."""
    machine.give_registry_certs(registry_certs)
    return machine


def wait_for_port(port, process, deadline=60):
    end = time.monotonic() + deadline
    while True:
        assert process.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < end, "the server did not start listening"
            time.sleep(0.1)

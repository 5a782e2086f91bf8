"""ams_sync: the agent's command line, called through main([...])."""
import hashlib
import io
import json
import os
import subprocess
import sys

import pytest

import ams_sync
from agent import appstore, config as config_mod
from agent.appstore import AppStore
from ams_sync import main
from test_agent_package import make_dir, make_zip
from trust import certs as certs_mod
from version import VERSION

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def data(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def run(data):
    def run(*argv, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        code = main(["--data-dir", str(data), *argv], stdin=io.StringIO(stdin),
                    stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())
    return run


def fingerprint(pair):
    return certs_mod.load_certificate(pair.cert).fingerprint


# -- help, version, usage ----------------------------------------------------------------

def test_help(run):
    result = run()
    assert result.code == 0
    assert "Available Commands:" in result.out
    assert "config" in result.out and "application" in result.out
    for words in (["config"], ["config", "trust"], ["application"]):
        result = run(*words)
        assert result.code == 0 and "Available Commands:" in result.out
    result = run("config", "set", "--help")
    assert result.code == 0 and "registry.update_interval" in result.out


def test_version():
    out = io.StringIO()
    assert main(["--version"], stdout=out) == 0
    assert out.getvalue() == f"ams-sync {VERSION}\n"


@pytest.mark.parametrize("argv", [
    ["nope"], ["config", "set", "registry.url"], ["config", "set", "registry.nope", "x"],
    ["application", "show", "bad name"], ["application", "publish", "game", "-1"],
    ["application", "publish", "game", "x"], ["application", "create", "p", "--architecture", "A B"],
    ["config", "trust", "remove", "abc"], ["config", "show", "--format", "xml"],
])
def test_usage_errors(run, argv):
    result = run(*argv)
    assert result.code == 2
    assert result.err.startswith("Error: ")


# -- config trust ------------------------------------------------------------------------

def test_trust_add_list_remove(run, certs, data):
    fp = fingerprint(certs.server)
    result = run("config", "trust", "add", str(certs.server.cert))
    assert (result.code, result.out) == (0, ams_sync.TRUST_ADDED.format(fingerprint=fp) + "\n")
    # Again, and from standard input: still one record, still success.
    assert run("config", "trust", "add", "-", stdin=certs.server.pem).out == fp + "\n"
    assert run("config", "trust", "add", stdin=certs.server.pem).code == 0
    table = run("config", "trust", "list")
    assert table.code == 0
    assert "FINGERPRINT" in table.out and "ISSUE DATE" in table.out and "EXPIRY DATE" in table.out
    # A table shows the 12-digit prefix (as `aar trust list` does); json/yaml the full one.
    assert fp[:12] in table.out and fp not in table.out and "server" in table.out
    rows = json.loads(run("config", "trust", "list", "--format", "json").out)
    cert = certs_mod.load_certificate(certs.server.cert)
    assert rows == [{"fingerprint": fp, "common_name": "server",
                     "issue_date": cert.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "expiry_date": cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "added_at": rows[0]["added_at"]}]
    assert f'fingerprint: "{fp}"' in run("config", "trust", "ls", "--format", "yaml").out
    result = run("config", "trust", "remove", fp[:12].upper())
    assert result.out == ams_sync.TRUST_REMOVED.format(fingerprint=fp, name="server") + "\n"
    assert json.loads(run("config", "trust", "list", "--format", "json").out) == []
    result = run("config", "trust", "remove", fp)
    assert result.code == 1 and result.err.startswith("Error: no certificate")


def test_trust_add_refusals(run, certs, tmp_path):
    result = run("config", "trust", "add", str(certs.server.key))
    assert (result.code, result.err) == (1, f"Error: {certs_mod.PRIVATE_KEY}\n")
    result = run("config", "trust", "add", "-", stdin="")
    assert (result.code, result.err) == (1, f"Error: {certs_mod.EMPTY}\n")
    result = run("config", "trust", "add", str(tmp_path / "missing.crt"))
    assert result.code == 1 and result.err.startswith("Error: ")
    assert json.loads(run("config", "trust", "list", "--format", "json").out) == []


def test_trust_add_expired_warns(run, certs):
    result = run("config", "trust", "add", str(certs.expired.cert))
    assert result.code == 0
    assert result.err.startswith(ams_sync.TRUST_EXPIRED.split("{")[0])


def test_config_commands_make_the_client_certificate(run, certs, data):
    assert not (data / "registry" / "client.crt").exists()
    run("config", "trust", "add", str(certs.server.cert))
    cert = certs_mod.load_certificate(data / "registry" / "client.crt")
    assert cert.common_name.startswith("ams-")
    run("config", "show")
    assert certs_mod.load_certificate(data / "registry" / "client.crt") == cert


# -- config set / show -------------------------------------------------------------------

def test_config_set_and_show(run, certs, data):
    fp = fingerprint(certs.server)
    run("config", "trust", "add", str(certs.server.cert))
    for key, value in (("registry.url", "https://192.168.178.45:3000"),
                       ("registry.fingerprint", fp[:16]),  # a prefix of a trusted one
                       ("registry.update_interval", "5m"), ("registry.mode", "push"),
                       ("registry.filter", "arcade, demo")):
        result = run("config", "set", key, value)
        assert (result.code, result.out, result.err) == (0, "", "")
    expected = {"registry.url": "https://192.168.178.45:3000", "registry.fingerprint": fp,
                "registry.mode": "push", "registry.update_interval": "5m",
                "registry.filter": "arcade,demo"}
    assert json.loads(run("config", "show", "--format", "json").out) == expected
    yaml = run("config", "show").out
    assert yaml.splitlines()[0] == 'registry.url: "https://192.168.178.45:3000"'
    table = run("config", "show", "--format", "table").out
    assert "| registry.mode " in table and "| push " in table
    assert config_mod.Config.load(data / "config.json").as_dict() == expected
    # An empty value restores the default.
    run("config", "set", "registry.mode", "")
    assert json.loads(run("config", "show", "--format", "json").out)["registry.mode"] == "pull"


def test_config_set_bad_values(run):
    result = run("config", "set", "registry.mode", "sideways")
    assert result.code == 2
    assert result.err == ams_sync.USAGE_ERROR.format(
        message=config_mod.BAD_MODE.format(value="'sideways'"),
        prog="ams-sync config set") + "\n"
    result = run("config", "set", "registry.update_interval", "0.5s")
    assert result.code == 2
    assert config_mod.SHORT_INTERVAL.format(value="'0.5s'") in result.err
    result = run("config", "set", "registry.nope", "x")
    assert result.code == 2 and config_mod.UNKNOWN_KEY.format(key="'registry.nope'") in result.err
    result = run("config", "set", "registry.fingerprint", "xyz")
    assert result.code == 2 and "invalid registry.fingerprint" in result.err
    # A prefix that no trusted certificate has is a failure, not a usage error.
    result = run("config", "set", "registry.fingerprint", "ab" * 8)
    assert result.code == 1 and result.err.startswith("Error: no certificate")
    assert json.loads(run("config", "show", "--format", "json").out) == config_mod.DEFAULTS


def test_data_dir_after_the_command_and_from_the_environment(tmp_path, monkeypatch):
    out = io.StringIO()
    assert main(["config", "set", "registry.mode", "manual", "--data-dir",
                 str(tmp_path / "a")], stdout=out, stderr=io.StringIO()) == 0
    assert config_mod.Config.load(tmp_path / "a" / "config.json").mode == "manual"
    monkeypatch.setenv("AMS_SYNC_DATA_DIR", str(tmp_path / "b"))
    assert main(["config", "set", "registry.mode", "push"], stdout=out,
                stderr=io.StringIO()) == 0
    assert config_mod.Config.load(tmp_path / "b" / "config.json").mode == "push"


# -- application -------------------------------------------------------------------------

def test_application_lifecycle(run, tmp_path):
    pkg = make_dir(tmp_path / "game")
    result = run("application", "create", str(pkg))
    assert result.out == ams_sync.APP_CREATED.format(
        name="game", version=0, architecture=AppStore(tmp_path / "data").get(
            "game", 0)["architecture"]) + "\n"
    result = run("application", "create", str(make_zip(tmp_path / "g.zip")),
                 "--architecture", "arm64")
    assert result.out == ams_sync.APP_CREATED.format(name="game", version=1,
                                                     architecture="arm64") + "\n"
    assert run("application", "publish", "game", "1").out == \
        ams_sync.APP_PUBLISHED.format(name="game", version=1) + "\n"
    table = run("application", "list").out
    assert "| NAME " in table and "| game " in table and "| 0,1 " in table
    apps = json.loads(run("application", "list", "--format", "json").out)
    assert [(v["version"], v["published"]) for v in apps[0]["versions"]] == \
        [(0, False), (1, True)]
    shown = run("application", "show", "game").out
    assert 'name: "game"' in shown and "versions:" in shown
    assert json.loads(run("application", "show", "game", "--format", "json").out)["name"] == "game"
    assert "| VERSION " in run("application", "show", "game", "--format", "table").out
    assert run("application", "revoke", "game", "1").out == \
        ams_sync.APP_REVOKED.format(name="game", version=1) + "\n"
    assert run("application", "delete", "game", "0").out == \
        ams_sync.VERSION_DELETED.format(name="game", version=0) + "\n"
    assert run("application", "delete", "game").out == \
        ams_sync.APP_DELETED.format(name="game") + "\n"
    assert json.loads(run("application", "list", "--format", "json").out) == []


def test_application_errors(run, tmp_path):
    result = run("application", "show", "game")
    assert (result.code, result.err) == (
        1, ams_sync.ERROR.format(message=appstore.APP_NOT_FOUND.format(name="game")) + "\n")
    evil = make_zip(tmp_path / "evil.zip", [("manifest.yaml", b"name: game\n"), ("../x", b"")])
    result = run("application", "create", str(evil))
    assert result.code == 1 and result.err.startswith("Error: unsafe name '../x'")
    result = run("application", "create", str(tmp_path / "nothing"))
    assert result.code == 1 and "is not a package" in result.err
    assert json.loads(run("application", "list", "--format", "json").out) == []


def test_pulled_applications_need_force(run, data, tmp_path):
    path = make_zip(tmp_path / "dl.zip")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with AppStore(data) as store:
        store.import_package("game", 0, "amd64", path, digest)
    for argv, action in ((["publish", "game", "0"], "publish"),
                         (["revoke", "game", "0"], "revoke"), (["delete", "game"], "delete")):
        result = run("application", *argv)
        assert (result.code, result.err) == (1, ams_sync.ERROR.format(
            message=appstore.IMMUTABLE.format(name="game", action=action)) + "\n")
    assert run("application", "revoke", "game", "0", "--force").code == 0
    assert run("application", "delete", "game", "--force").code == 0


# -- a real process ----------------------------------------------------------------------

def test_python_m_ams_sync(tmp_path, certs):
    def cli(*argv, stdin=None):
        return subprocess.run([sys.executable, "-m", "ams_sync", "--data-dir",
                               str(tmp_path / "d"), *argv], cwd=ROOT, input=stdin,
                              capture_output=True, text=True)
    added = cli("config", "trust", "add", "-", stdin=certs.server.pem)
    assert added.returncode == 0 and added.stdout == fingerprint(certs.server) + "\n"
    assert cli("config", "set", "registry.url", "https://127.0.0.1:3000").returncode == 0
    bad = cli("config", "set", "registry.mode", "sideways")
    assert bad.returncode == 2 and "expected push, pull or manual" in bad.stderr
    shown = json.loads(cli("config", "show", "--format", "json").stdout)
    assert shown["registry.url"] == "https://127.0.0.1:3000"
    assert (tmp_path / "d" / "registry" / "client.crt").exists()


def test_snap_confinement_hint(run, certs, tmp_path, monkeypatch):
    locked = tmp_path / "server.crt"
    locked.write_bytes(certs.server.cert.read_bytes())
    monkeypatch.setenv("SNAP", "/snap/ams/1")
    real_open = open

    def deny(path, *a, **k):               # what AppArmor does outside the plugs
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    result = run("config", "trust", "add", str(locked))
    assert result.code == 1 and ams_sync.SNAP_HOME_HINT in result.err
    monkeypatch.delenv("SNAP")
    result = run("config", "trust", "add", str(locked))
    assert result.code == 1 and ams_sync.SNAP_HOME_HINT not in result.err

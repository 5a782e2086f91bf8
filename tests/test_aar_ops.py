"""`aar` in an operator's daily use: argument checks, the sudo trap, confirmations,
roles, the registry's applications seen from its host, help and completion."""
import io
import json
import subprocess
import time

import pytest

import aar
from aarcli import apps, common, trust
from aarcli.serve import PROCESSES_WITH_S3
from regserver import ProcessServer, Pipe, aar as run_aar
from test_aar_cli import Tty, fp_of, run


# -- aar serve's arguments and data directory -------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--workers", "0"], "worker count"),
    (["--workers", "-3"], "worker count"),
    (["--workers", "many"], "worker count"),
    (["--handshake-threads", "-1"], "handshake thread count"),
    (["--handshake-threads", "two"], "handshake thread count"),
    (["--listen", "https://127.0.0.1:3000"], "without a scheme"),
    (["--listen", "::1:3000"], "brackets"),
    (["--listen", "127.0.0.1:70000"], "listen address"),
    (["--listen", "127.0.0.1:３０"], "listen address"),
])
def test_serve_refuses_bad_arguments_before_starting(tmp_path, argv, needle):
    code, out, err = run(["serve", "--data-dir", str(tmp_path / "d"), *argv])
    assert code == 2 and needle in err
    assert not (tmp_path / "d").exists()          # nothing was started or created


def test_serve_on_a_file_as_data_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_aar("serve", "--listen", "127.0.0.1:0", data_dir=blocker / "data")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: cannot use data directory ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_serve_logs_absolute_paths_ipv6_in_brackets_and_every_interface(tmp_path):
    server = ProcessServer(tmp_path / "data")
    try:
        # The port accepts a moment before the start-up line is written: wait for it.
        deadline = time.monotonic() + 30
        while "serving https://" not in (out := server.output()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"from {tmp_path / 'data'}" in out
        assert "every interface" not in out           # 127.0.0.1 is one address
    finally:
        server.stop()
    assert aar.serve.show_address("::1", 3000) == "[::1]:3000"
    assert aar.serve.listen_address("[::1]:3006") == ("::1", 3006)
    assert aar.serve.listen_address(":3006") == ("0.0.0.0", 3006)


# -- the sudo trap -------------------------------------------------------------------------

def test_trust_commands_refuse_a_data_dir_where_no_registry_ran(tmp_path, certs):
    fresh = tmp_path / "root-default"
    for argv in (["trust", "add", str(certs.client.cert)], ["trust", "list"],
                 ["trust", "remove", "ab" * 32, "-y"]):
        code, _, err = run([*argv, "--data-dir", str(fresh)])
        assert code == 1 and "no registry has run on data directory" in err, argv
        assert "--init" in err
    assert not fresh.exists()                      # nothing written where nobody reads
    code, _, err = run(["trust", "add", "--init", str(certs.client.cert),
                        "--data-dir", str(fresh)])
    assert code == 0, err
    # Once set up, the directory is known: no flag needed any more.
    assert run(["trust", "list", "--data-dir", str(fresh)])[0] == 0


def test_a_served_data_dir_needs_no_flag(tmp_path, certs):
    server = ProcessServer(tmp_path / "data")
    server.stop()
    proc = run_aar("trust", "add", data_dir=tmp_path / "data",
                   input=certs.client.cert.read_text())
    assert proc.returncode == 0, proc.stderr


# -- remove, names and roles -----------------------------------------------------------------

def test_remove_asks_on_a_terminal_and_needs_yes_elsewhere(tmp_path, certs):
    d = str(tmp_path / "d")
    run(["trust", "add", "--init", str(certs.client.cert), "--data-dir", d])
    fp = fp_of(certs.client)
    code, _, err = run(["trust", "remove", fp[:12], "--data-dir", d], stdin=Pipe())
    assert code == 2 and "pass -y/--yes" in err
    code, out, err = run(["trust", "remove", fp[:12], "--data-dir", d], stdin=Tty("n\n"))
    assert code == 1 and "remove cancelled" in err
    assert fp in out                               # the question names the full fingerprint
    assert fp in run(["trust", "list", "--format", "json", "--data-dir", d])[1]
    code, out, err = run(["trust", "remove", fp[:12], "--data-dir", d], stdin=Tty("y\n"))
    assert code == 0 and trust.REMOVED.format(fp=fp, name="client") in out
    assert json.loads(run(["trust", "list", "--format", "json", "--data-dir", d])[1]) == []


def test_name_and_role_change_keep_the_history(tmp_path, certs):
    d = str(tmp_path / "d")
    code, out, err = run(["trust", "add", "--init", "--name", "builder-1",
                          str(certs.client.cert), "--data-dir", d])
    assert code == 0 and "(builder-1)" in out, err
    before = json.loads(run(["trust", "list", "--format", "json", "--data-dir", d])[1])[0]
    code, out, err = run(["trust", "set-role", fp_of(certs.client)[:12], "publisher",
                          "--data-dir", d])
    assert code == 0 and trust.ROLE_SET.format(fp=fp_of(certs.client), name="builder-1",
                                               role="publisher") + "\n" == out
    after = json.loads(run(["trust", "list", "--format", "json", "--data-dir", d])[1])[0]
    assert after == dict(before, role="publisher")   # same name, same added_at
    assert run(["trust", "set-role", fp_of(certs.client), "owner", "--data-dir", d])[0] == 2


def test_data_dir_before_or_after_the_command(tmp_path, certs):
    d = str(tmp_path / "d")
    assert run(["--data-dir", d, "trust", "add", "--init", str(certs.client.cert)])[0] == 0
    listed = run(["--data-dir", d, "trust", "list", "--format", "json"])[1]
    assert listed == run(["trust", "list", "--format", "json", "--data-dir", d])[1]
    assert fp_of(certs.client) in listed


def test_no_certificate_on_a_terminal_is_a_usage_error(tmp_path):
    code, _, err = run(["trust", "add", "--init", "--data-dir", str(tmp_path)], stdin=Tty())
    assert code == 2 and trust.NO_INPUT in err


# -- aar application ----------------------------------------------------------------------

def test_application_list_show_delete_from_the_registry_host(tmp_path, certs):
    data = tmp_path / "data"
    run(["trust", "add", "--init", "-p", str(certs.publisher.cert), "--data-dir", str(data)])
    server = ProcessServer(data)
    try:
        client = server.client(certs.publisher)
        for version in (0, 1):
            status, _, _ = client.upload("game", version, "amd64", b"x" * 2_500_000,
                                         manifest={"name": "game", "tags": ["casual"]})
            assert status == 201
        # Read beside the running server.
        code, out, err = run(["application", "list", "--format", "json",
                              "--data-dir", str(data)])
        assert code == 0, err
        rows = json.loads(out)
        assert [(r["name"], r["version"]) for r in rows] == [("game", 0), ("game", 1)]
        assert len(rows[0]["sha256"]) == 64 and rows[0]["manifest"]["name"] == "game"
        code, table, _ = run(["application", "ls", "--data-dir", str(data)])
        assert "2.5 MB" in table and rows[0]["sha256"][:12] in table
        assert rows[0]["sha256"] not in table
        code, out, _ = run(["application", "show", "game", "--format", "yaml",
                            "--data-dir", str(data)])
        assert code == 0 and 'name: "game"' in out
        # Deleting needs the directory to itself.
        code, _, err = run(["application", "delete", "game", "-y", "--data-dir", str(data)])
        assert code == 1 and "server is running" in err
        client.close()
    finally:
        server.stop()
    code, _, err = run(["application", "delete", "game", "1", "--data-dir", str(data)])
    assert code == 2 and "pass -y/--yes" in err
    code, out, err = run(["application", "delete", "game", "1", "amd64", "-y",
                          "--data-dir", str(data)])
    assert code == 0 and apps.DELETED.format(what="game 1 amd64", count=1) in out, err
    code, out, _ = run(["application", "list", "--format", "json", "--data-dir", str(data)])
    assert [r["version"] for r in json.loads(out)] == [0]
    code, _, err = run(["application", "show", "nothing", "--data-dir", str(data)])
    assert code == 1 and apps.NOT_FOUND.format(name="nothing") in err


# -- cobra habits ---------------------------------------------------------------------------

def test_help_command_and_did_you_mean():
    assert run(["help", "trust"])[1] == run(["trust", "--help"])[1]
    assert run(["help", "trust", "add"])[1] == run(["trust", "add", "--help"])[1]
    code, _, err = run(["trsut", "list"])
    assert code == 2 and "Did you mean 'trust'?" in err
    code, _, err = run(["trust", "revok"])
    assert code == 2 and "Did you mean 'revoke'?" in err
    assert "Examples:" in run(["trust", "add", "--help"])[1]


def test_bash_completion_completes_commands_and_flags():
    script = run(["completion", "bash"])[1]

    def complete(*words):
        line = " ".join(words)
        probe = (script + f'\nCOMP_WORDS=(aar {line}); COMP_CWORD={len(words)}; _aar; '
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                              check=True).stdout.split()
    assert complete("tr") == ["trust"]
    assert complete("trust", "re") == ["remove", "revoke"]
    assert "--format" in complete("trust", "list", "--f")
    for shell in ("zsh", "fish"):
        code, out, _ = run(["completion", shell])
        assert code == 0 and "trust" in out and "set-role" not in out.split("revoke")[0]
    assert run(["completion", "tcsh"])[0] == 2


def test_an_upload_is_logged_once(tmp_path, certs):
    data = tmp_path / "data"
    run(["trust", "add", "--init", "-p", str(certs.publisher.cert), "--data-dir", str(data)])
    server = ProcessServer(data)
    try:
        client = server.client(certs.publisher)
        assert client.upload("game", 0, "amd64", b"apk")[0] == 201
        client.close()
        log = server.output()
    finally:
        server.stop()
    assert log.count("stored game/0/amd64") == 1 and "stored game 0 amd64" not in log


def test_config_set_get_keeps_the_rest_of_main_yaml(tmp_path):
    d = str(tmp_path / "d")
    conf = tmp_path / "d" / "conf" / "main.yaml"
    assert run(["config", "set", "listen=:3006", "--data-dir", d])[0] == 0
    conf.write_text(conf.read_text() + "storage:\n  s3:\n    listen: not-mine\n")
    code, out, _ = run(["config", "set", "metrics=[::1]:9300", "--data-dir", d])
    assert code == 0 and out == 'metrics: [::1]:9300\n'
    assert run(["config", "get", "listen", "--data-dir", d])[1] == "0.0.0.0:3006\n"
    assert run(["config", "get", "metrics", "--data-dir", d])[1] == "[::1]:9300\n"
    assert run(["config", "set", "listen=", "--data-dir", d])[0] == 0
    assert conf.read_text() == 'metrics: "[::1]:9300"\nstorage:\n  s3:\n    listen: not-mine\n'
    assert conf.stat().st_mode & 0o777 == 0o600
    code, _, err = run(["config", "set", "listen=::1:3000", "--data-dir", d])
    assert code == 2 and "brackets" in err


def test_config_set_storage_s3_edits_its_section_only(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    d = str(tmp_path / "d")
    conf = tmp_path / "d" / "conf" / "main.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_text("# mine\nlisten: 0.0.0.0:3000\nstorage:\n  s3:\n    bucket: old  # by hand\n"
                    "    region: eu-west-1\n# the end\n")
    # Alone, a bucket without credentials is refused, and nothing is written.
    before = conf.read_text()
    code, out, err = run(["config", "set", "storage.s3.bucket=aar", "--data-dir", d])
    assert code == 1 and out == "" and "needs access-key and secret-access-key" in err
    assert conf.read_text() == before
    code, out, _ = run(["config", "set", "storage.s3.bucket=aar", "storage.s3.access-key=AK",
                        'storage.s3.secret-access-key=s"e\\c', "storage.s3.redirect=False",
                        "storage.s3.endpoint=https://s3.example.net:8443", "--data-dir", d])
    assert code == 0 and "s\"e" not in out and "(hidden)" in out
    assert conf.read_text() == (
        '# mine\nlisten: 0.0.0.0:3000\nstorage:\n  s3:\n    bucket: "aar"\n'
        '    region: eu-west-1\n    access-key: "AK"\n    secret-access-key: "s\\"e\\\\c"\n'
        '    redirect: false\n    endpoint: "https://s3.example.net:8443"\n# the end\n')
    # What the server reads is what was given.
    from registry.config import load
    s3 = load(tmp_path / "d").s3
    assert (s3.bucket, s3.region, s3.secret_key, s3.redirect, s3.endpoint) == \
        ("aar", "eu-west-1", 's"e\\c', False, "https://s3.example.net:8443")
    assert run(["config", "get", "storage.s3.redirect", "--data-dir", d])[1] == "false\n"
    for bad in ("storage.s3.redirect=maybe", "storage.s3.endpoint=s3.example.net",
                "storage.s3.colour=red", "storage.s3.bucket=a\nb"):
        assert run(["config", "set", bad, "--data-dir", d])[0] == 2, bad
    # Every key removed: the section goes, the rest stays.
    keys = ("bucket", "region", "access-key", "secret-access-key", "redirect", "endpoint")
    assert run(["config", "set", *[f"storage.s3.{k}=" for k in keys], "--data-dir", d])[0] == 0
    assert conf.read_text() == "# mine\nlisten: 0.0.0.0:3000\n# the end\n"
    # And made from nothing, at the end of the file.
    assert run(["config", "set", "storage.s3.bucket=b", "storage.s3.access-key=A",
                "storage.s3.secret-access-key=S", "--data-dir", d])[0] == 0
    assert conf.read_text().endswith(
        '# the end\nstorage:\n  s3:\n    bucket: "b"\n    access-key: "A"\n'
        '    secret-access-key: "S"\n')


def test_config_set_refuses_processes_above_one_on_s3(tmp_path):
    d = str(tmp_path / "d")
    conf = tmp_path / "d" / "conf" / "main.yaml"
    assert run(["config", "set", "storage.s3.bucket=b", "storage.s3.access-key=A",
                "storage.s3.secret-access-key=S", "--data-dir", d])[0] == 0
    before = conf.read_text()
    code, out, err = run(["config", "set", "processes=2", "--data-dir", d])
    assert code == 1 and out == "" and conf.read_text() == before
    assert err.strip() == "Error: " + PROCESSES_WITH_S3.format(what="processes")
    assert run(["config", "set", "processes=1", "--data-dir", d])[0] == 0
    assert run(["config", "get", "processes", "--data-dir", d])[1] == "1\n"
    # Without the bucket, more than one is fine.
    assert run(["config", "set", "storage.s3.bucket=", "storage.s3.access-key=",
                "storage.s3.secret-access-key=", "processes=auto", "--data-dir", d])[0] == 0
    assert conf.read_text() == 'processes: "auto"\n'


def test_config_set_reads_secrets_from_stdin(tmp_path):
    d = str(tmp_path / "d")
    lines = b"storage.s3.bucket=aar\n\nstorage.s3.access-key=AK\nstorage.s3.secret-access-key=SK\n"
    code, out, _ = run(["config", "set", "--stdin", "metrics=127.0.0.1:9300", "--data-dir", d],
                       stdin=Pipe(lines))
    assert code == 0 and "SK" not in out
    from registry.config import load
    conf = load(tmp_path / "d")
    assert (conf.s3.bucket, conf.s3.secret_key, conf.get("metrics")) == ("aar", "SK", "127.0.0.1:9300")
    before = (tmp_path / "d" / "conf" / "main.yaml").read_bytes()
    code, _, err = run(["config", "set", "--stdin", "--data-dir", d],
                       stdin=Pipe(b"storage.s3.region=eu\nstorage.s3.colour=red\n"))
    assert code == 2 and "standard input line 2:" in err
    assert (tmp_path / "d" / "conf" / "main.yaml").read_bytes() == before
    code, _, err = run(["config", "set", "--data-dir", d])
    assert code == 2 and "nothing to set" in err


def test_serve_listens_where_config_set_says(tmp_path):
    from regserver import free_port, stop_process
    import socket
    import sys
    import time
    from regserver import ROOT
    data = tmp_path / "data"
    port = free_port()
    assert run(["config", "set", f"listen=127.0.0.1:{port}", "--data-dir", str(data)])[0] == 0
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "aar.py"), "serve", "--data-dir",
                             str(data)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60          # a hang guard, not a measurement
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        stop_process(proc, timeout=10)
        log.close()
    assert f"serving https://127.0.0.1:{port}" in (tmp_path / "serve.log").read_text()

"""`aar` as operators run it: main([...]) in-process, and real subprocesses."""
import hashlib
import io
import json
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import time

import pytest

import aar
from certs import make_cert
from regserver import ROOT, Client, Pipe, ProcessServer, aar as run_aar

SEED_TRUST_HELP = """\
Manage trusted clients

Usage:
  aar trust [command]

Available Commands:
  add         Register a client certificate
  list        List currently trusted clients
  remove      Remove a trusted certificate
  revoke      Revoke a certificate

Flags:
  -h, --help   help for trust

Use "aar trust [command] --help" for more information about a command.
"""


class Tty(io.StringIO):
    def isatty(self):
        return True


def run(argv, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    code = aar.main(argv, stdin=stdin or Pipe(), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def fp_of(pair):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pair.pem)).hexdigest()


def store_bytes(data_dir):
    """What the trust store holds, to compare before and after a failed command."""
    code, out, _ = run(["trust", "list", "--format", "json", "--data-dir", str(data_dir)])
    code2, out2, _ = run(["trust", "list", "--revoked", "--format", "json",
                          "--data-dir", str(data_dir)])
    return out + out2


def test_trust_help_matches_the_seed():
    code, out, _ = run(["trust", "--help"])
    assert code == 0
    assert out == SEED_TRUST_HELP
    assert run(["trust"])[1] == SEED_TRUST_HELP


def test_version():
    from version import VERSION
    code, out, _ = run(["--version"])
    assert code == 0
    proc = run_aar("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"aar {VERSION}"


def test_add_from_stdin_and_file_list_remove(tmp_path, certs):
    d = str(tmp_path / "data")
    code, out, err = run(["trust", "add", "--init", "--data-dir", d],
                         stdin=Pipe(certs.client.cert.read_bytes()))
    assert code == 0, err
    assert fp_of(certs.client) in out and "client" in out
    code, out, err = run(["trust", "add", "-p", str(certs.publisher.cert), "--data-dir", d])
    assert code == 0, err
    code, out, _ = run(["trust", "list", "--format", "json", "--data-dir", d])
    rows = {r["fingerprint"]: r for r in json.loads(out)}
    assert rows[fp_of(certs.client)]["role"] == "client"
    assert rows[fp_of(certs.publisher)]["role"] == "publisher"
    assert rows[fp_of(certs.publisher)]["name"] == "publisher"
    code, table, _ = run(["trust", "ls", "--data-dir", d])
    assert fp_of(certs.client)[:12] in table and fp_of(certs.client) not in table
    code, csv_out, _ = run(["trust", "list", "--format", "csv", "--data-dir", d])
    assert csv_out.splitlines()[0] == "FINGERPRINT,NAME,ROLE,ADDED,EXPIRES"
    code, yaml_out, _ = run(["trust", "list", "--format", "yaml", "--data-dir", d])
    assert f'fingerprint: "{fp_of(certs.client)}"' in yaml_out
    # Again in the same role: nothing changes, and that is success (as in ams-sync).
    code, out, err = run(["trust", "add", str(certs.client.cert), "--data-dir", d])
    assert code == 0 and "already trusted as client" in out, err
    # In another role: refused, and the message says how to change the role.
    code, _, err = run(["trust", "add", "-p", str(certs.client.cert), "--data-dir", d])
    assert code == 1 and f"aar trust set-role {fp_of(certs.client)[:12]} publisher" in err
    code, out, err = run(["trust", "remove", fp_of(certs.client)[:12].upper(), "-y",
                          "--data-dir", d])
    assert code == 0, err
    assert fp_of(certs.client) in out         # the full fingerprint the prefix matched
    assert fp_of(certs.client) not in run(["trust", "list", "--format", "json", "--data-dir", d])[1]


def test_revoke_is_final_and_needs_confirmation(tmp_path, certs):
    d = str(tmp_path / "data")
    run(["trust", "add", "--init", str(certs.client.cert), "--data-dir", d])
    fp = fp_of(certs.client)
    code, _, err = run(["trust", "revoke", fp, "--data-dir", d], stdin=Pipe())
    assert code == 2 and aar.NEED_YES in err
    code, _, err = run(["trust", "revoke", fp, "--data-dir", d], stdin=Tty("n\n"))
    assert code == 1 and aar.NOT_CONFIRMED in err
    code, out, err = run(["trust", "revoke", fp, "--data-dir", d], stdin=Tty("y\n"))
    assert code == 0 and "Revoked" in out
    run(["trust", "add", str(certs.stranger.cert), "--data-dir", d])
    code, out, _ = run(["trust", "list", "--revoked", "--format", "json", "--data-dir", d])
    assert [r["fingerprint"] for r in json.loads(out)] == [fp]      # only the revoked
    assert json.loads(out)[0]["revoked_at"]
    code, out, _ = run(["trust", "list", "--format", "json", "--data-dir", d])
    assert [r["fingerprint"] for r in json.loads(out)] == [fp_of(certs.stranger)]
    code, _, err = run(["trust", "add", str(certs.client.cert), "--data-dir", d])
    assert code == 1 and "revoked" in err
    code, _, err = run(["trust", "remove", fp, "--data-dir", d])
    assert code == 1


BAD_PEMS = {
    "empty": b"",
    "garbage": b"hello world\n",
    "private key": b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n",
    "truncated": None,
    "two certificates": None,
}


@pytest.mark.parametrize("kind", sorted(BAD_PEMS))
def test_malformed_certificates_change_nothing(tmp_path, certs, kind):
    d = str(tmp_path / "data")
    run(["trust", "add", "--init", str(certs.publisher.cert), "-p", "--data-dir", d])
    before = store_bytes(d)
    data = BAD_PEMS[kind]
    if kind == "truncated":
        data = certs.client.cert.read_bytes()[:200]
    elif kind == "two certificates":
        data = certs.client.cert.read_bytes() + certs.stranger.cert.read_bytes()
    code, out, err = run(["trust", "add", "--data-dir", d], stdin=Pipe(data))
    assert code == 1
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1
    assert store_bytes(d) == before


@pytest.mark.parametrize("argv,code,needle", [
    (["trust", "remove", "abc"], 2, "12"),                 # prefix too short
    (["trust", "remove", "zz" * 32], 2, "hex"),
    (["trust", "remove", "ab" * 32], 1, "no"),             # unknown
    (["trust", "revoke", "ab" * 32, "-y"], 1, "no"),
    (["trust", "list", "--format", "xml"], 2, "invalid choice"),
    (["trust", "add", "/no/such/file.crt"], 1, "cannot read"),
    (["serve", "--listen", "nowhere:port"], 2, "listen address"),
    (["bogus"], 2, "invalid choice"),
])
def test_bad_command_lines(tmp_path, certs, argv, code, needle):
    d = str(tmp_path / "data")
    run(["trust", "add", "--init", str(certs.publisher.cert), "-p", "--data-dir", d])
    before = store_bytes(d)
    got, out, err = run(argv + (["--data-dir", d] if argv[0] != "bogus" else []))
    assert got == code, err
    assert needle.lower() in err.lower()
    assert store_bytes(d) == before


def test_ambiguous_prefix(tmp_path):
    # Two certificates whose fingerprints share 12 digits are rare enough that
    # the test reaches into the store to forge the situation.
    from trust.errors import Ambiguous
    from trust.store import TrustStore
    store = TrustStore(tmp_path / "t.db")
    try:
        with pytest.raises(Ambiguous):
            store._shelf["a" * 64] = {"pem": "", "role": "client", "name": "", "added_at": "",
                                      "not_after": "", "revoked_at": None}
            store._shelf["a" * 63 + "b"] = {"pem": "", "role": "client", "name": "",
                                            "added_at": "", "not_after": "",
                                            "revoked_at": None}
            store.resolve("a" * 12)
    except AttributeError:
        pytest.skip("store internals differ")
    finally:
        store.close()


def test_expired_certificate_is_refused_at_add(tmp_path, certs):
    code, _, err = run(["trust", "add", str(certs.expired.cert), "--data-dir", str(tmp_path)])
    assert code == 1 and "expired" in err


def test_snap_confinement_hint(tmp_path, certs, monkeypatch):
    locked = tmp_path / "locked.crt"
    locked.write_bytes(certs.client.cert.read_bytes())
    monkeypatch.setenv("SNAP", "/snap/aar/1")
    real_open = open

    def deny(path, *a, **k):               # what AppArmor does to a snap outside /root
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    code, _, err = run(["trust", "add", str(locked), "--data-dir", str(tmp_path / "d")])
    assert code == 1 and "/root" in err and "cat client.crt" in err


# -- real processes -------------------------------------------------------------

def test_twenty_concurrent_adds_while_serving(tmp_path, certdir):
    data = tmp_path / "data"
    server = ProcessServer(data)
    try:
        pairs = [make_cert(tmp_path / "many", f"node{i}") for i in range(20)]
        procs = [subprocess.Popen([sys.executable, str(ROOT / "aar.py"), "trust", "add",
                                   "--data-dir", str(data)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
                 for _ in pairs]
        for p, pair in zip(procs, pairs):
            p.stdin.write(pair.cert.read_bytes())
            p.stdin.close()
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()
        listed = json.loads(run_aar("trust", "list", "--format", "json", data_dir=data).stdout)
        assert {r["fingerprint"] for r in listed} == {fp_of(p) for p in pairs}
        # The running server trusts every one of them, without a restart.
        for pair in pairs[:3] + pairs[-3:]:
            assert Client(server.port, pair).json("GET", "/1.0/status")[0] == 200
    finally:
        server.stop()


def test_serve_first_start_prints_fingerprint_and_next_step(tmp_path):
    server = ProcessServer(tmp_path / "data")
    try:
        time.sleep(0.2)
        out = server.output()
        assert server.fingerprint in out
        assert "ams-sync config trust add" in out
        assert (tmp_path / "data" / "certs" / "server.key").stat().st_mode & 0o077 == 0
    finally:
        server.stop()


def test_sigkill_mid_upload_leaves_nothing(tmp_path, certs):
    data = tmp_path / "data"
    run(["trust", "add", "--init", "-p", str(certs.publisher.cert), "--data-dir", str(data)])
    server = ProcessServer(data)
    size = 8 << 20
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(str(certs.publisher.cert), str(certs.publisher.key))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = ctx.wrap_socket(raw)
    tls.sendall(b"PUT /1.0/applications/big/0/amd64/package HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\nX-Aar-Sha256: %s\r\n\r\n" % (size, b"1" * 64))
    tls.sendall(b"\0" * (size // 2))
    deadline = time.monotonic() + 10
    staging = data / "staging"
    while time.monotonic() < deadline and not any(staging.iterdir()):
        time.sleep(0.05)
    assert any(staging.iterdir()), "the upload never reached staging"
    server.kill()
    tls.close()
    server = ProcessServer(data)
    try:
        assert list(staging.iterdir()) == []
        c = Client(server.port, certs.publisher)
        assert c.json("GET", "/1.0/applications")[1]["metadata"] == []
        assert c.json("GET", "/1.0/applications/big/0/amd64")[0] == 404
    finally:
        server.stop()


def test_serve_refuses_a_busy_data_dir_and_a_busy_port(tmp_path):
    server = ProcessServer(tmp_path / "data")
    try:
        again = run_aar("serve", "--listen", "127.0.0.1:0", data_dir=tmp_path / "data")
        assert again.returncode == 1
        assert "in use" in again.stderr and "Traceback" not in again.stderr
        other = run_aar("serve", "--listen", f"127.0.0.1:{server.port}",
                        data_dir=tmp_path / "other")
        assert other.returncode == 1
        assert f"cannot listen on 127.0.0.1:{server.port}: Address already in use" in other.stderr
        assert "Traceback" not in other.stderr
    finally:
        server.stop()

"""The audit log: one JSON line per trust change, token use, write, delete and
refusal; safe for logrotate; shown by `aar audit`."""
import hashlib
import io
import json
import logging
import os
import ssl
import threading

import pytest

import aar
from agentnodes import Node, aar_cli
from regserver import Pipe, ThreadServer
from registry.audit import EVENTS, AuditLog, parse_since, read


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the file ---------------------------------------------------------------------------------

def test_a_logrotate_rename_mid_run_loses_no_line(tmp_path):
    path = tmp_path / "logs" / "audit.log"
    log = AuditLog(path)
    total = 3000
    halfway, renamed = threading.Event(), threading.Event()

    def write():
        for n in range(total):
            log.record("refusal", seq=n)
            if n == total // 3:
                halfway.set()
                renamed.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    assert halfway.wait(30)
    os.rename(path, tmp_path / "logs" / "audit.log.1")      # what logrotate does
    renamed.set()
    writer.join(30)
    os.rename(path, tmp_path / "logs" / "audit.log.2")      # and once more, later
    log.record("refusal", seq=total)
    log.close()
    seen = []
    for name in ("audit.log.1", "audit.log.2", "audit.log"):
        seen += [r["seq"] for r in _records(tmp_path / "logs" / name)]
    assert sorted(seen) == list(range(total + 1))
    assert len(_records(path)) == 1                          # the new file got the last
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_two_writers_on_one_file_never_mix_lines(tmp_path):
    path = tmp_path / "audit.log"
    logs = [AuditLog(path), AuditLog(path)]

    def write(log, who):
        for n in range(500):
            log.record("package.write", who=who, n=n, filler="x" * 300)
    threads = [threading.Thread(target=write, args=(log, i)) for i, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    records = _records(path)                 # every line parses
    assert sorted((r["who"], r["n"]) for r in records) == \
        sorted((w, n) for w in (0, 1) for n in range(500))


def test_read_since_and_damaged_lines(tmp_path):
    path = tmp_path / "audit.log"
    path.write_text('{"time": "2026-01-01T00:00:00Z", "event": "trust.add"}\n'
                    'not json\n'
                    '{"time": "2026-06-01T00:00:00Z", "event": "trust.remove"}\n')
    assert [r["event"] for r in read(path)] == ["trust.add", "unreadable", "trust.remove"]
    later = read(path, parse_since("2026-03-01"))
    assert [r["event"] for r in later] == ["unreadable", "trust.remove"]
    assert read(tmp_path / "missing.log") == []
    with pytest.raises(ValueError, match="1h, 30m, 2d"):
        parse_since("yesterday")


# -- every kind of record, exactly once ---------------------------------------------------------

def _fp(pair):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pair.pem)).hexdigest()


def test_each_kind_of_record_appears_once_with_its_fields(tmp_path, certs, caplog):
    registry = ThreadServer(tmp_path / "aar")
    try:
        _one_of_each(registry, tmp_path, certs, caplog)
    finally:
        registry.stop()


def _one_of_each(registry, tmp_path, certs, caplog):
    audit_log = registry.data.audit_log
    ok = lambda result: result.code == 0 or pytest.fail(str(result))  # noqa: E731
    ok(aar_cli(registry, "trust", "add", "--publisher", str(certs.publisher.cert)))
    token = aar_cli(registry, "trust", "token", "add", "--name", "edge", "--address",
                    f"127.0.0.1:{registry.port}").out.strip()
    node = Node(tmp_path / "node")
    node.ok("registry", "join", token)
    token_id = json.loads(aar_cli(registry, "trust", "token", "list", "--format",
                                  "json").out)[0]["id"]
    ok(aar_cli(registry, "trust", "token", "remove", token_id))

    publisher = registry.client(certs.publisher)
    payload = os.urandom(10_000)
    status, _, _ = publisher.upload("game", 3, "arm64", payload)
    assert status == 201
    # Written before the answer left: it is in the file as the answer arrives.
    assert _records(audit_log)[-1]["event"] == "package.write"
    with caplog.at_level(logging.INFO, logger="aar.events"):
        resp, data = publisher.request("GET", "/1.0/applications/game/3/arm64/package")
    assert resp.status == 200 and data == payload
    assert any("download game/3/arm64" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)
    assert publisher.json("DELETE", "/1.0/applications/game/3/arm64")[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        registry.client(certs.stranger).request("GET", "/1.0/status")

    ok(aar_cli(registry, "trust", "set-role", node.fingerprint, "publisher"))
    ok(aar_cli(registry, "trust", "revoke", node.fingerprint, "-y"))
    ok(aar_cli(registry, "trust", "remove", _fp(certs.publisher), "-y"))

    records = _records(audit_log)
    by_event = {}
    for record in records:
        by_event.setdefault(record["event"], []).append(record)
    assert sorted(by_event) == sorted(EVENTS)
    assert all(len(v) == 1 for v in by_event.values()), by_event
    one = {event: found[0] for event, found in by_event.items()}
    for event in ("trust.add", "token.add", "token.remove", "trust.set-role",
                  "trust.revoke", "trust.remove"):
        assert one[event]["uid"] == os.getuid() and one[event]["user"], event
        assert one[event]["command"].startswith("aar trust "), event
    assert "--publisher" in one["trust.add"]["command"]
    assert (one["trust.add"]["fingerprint"], one["trust.add"]["role"],
            one["trust.add"]["name"]) == (_fp(certs.publisher), "publisher", "publisher")
    assert (one["token.add"]["token"], one["token.add"]["role"],
            one["token.add"]["name"]) == (token_id, "client", "edge")
    assert (one["token.use"]["token"], one["token.use"]["fingerprint"],
            one["token.use"]["role"], one["token.use"]["name"]) == (
        token_id, node.fingerprint, "client", "edge")
    assert one["token.use"]["address"].startswith("127.0.0.1:")
    assert one["token.remove"]["token"] == token_id
    assert (one["trust.set-role"]["role"], one["trust.set-role"]["previous_role"]) == (
        "publisher", "client")
    assert one["trust.revoke"]["fingerprint"] == node.fingerprint
    assert one["trust.remove"]["fingerprint"] == _fp(certs.publisher)
    sha = hashlib.sha256(payload).hexdigest()
    for event in ("package.write", "package.delete"):
        r = one[event]
        assert (r["fingerprint"], r["name"], r["application"], r["version"],
                r["architecture"], r["sha256"], r["size"]) == (
            _fp(certs.publisher), "publisher", "game", 3, "arm64", sha, len(payload)), event
    refusal = one["refusal"]
    assert refusal["address"].startswith("127.0.0.1:") and refusal["code"] == "untrusted"
    assert "not trusted" in refusal["reason"]
    assert all(r["time"].endswith("Z") for r in records)

    # `aar audit` shows the same records.
    shown = json.loads(aar_cli(registry, "audit", "--format", "json").out)
    assert shown == records
    table = aar_cli(registry, "audit").out
    assert "package.write" in table and "game/3/arm64" in table
    delete_row = next(line for line in table.splitlines() if "package.delete" in line)
    assert _fp(certs.publisher)[:12] in delete_row and "10000 bytes" in delete_row
    assert aar_cli(registry, "audit", "--since", "2999-01-01", "--format", "csv").out \
        == "TIME,EVENT,WHO,SUBJECT,DETAIL\n"


def test_refusals_name_revoked_and_expired_certificates(tmp_path, certs):
    registry = ThreadServer(tmp_path / "aar")
    try:
        registry.trust_cert(certs.expired, "client")
        status, body, _ = registry.client(certs.expired).json("GET", "/1.0/status")
        assert status == 403
        refusal = _records(registry.data.audit_log)[-1]
        assert (refusal["code"], refusal["fingerprint"], refusal["name"]) == (
            "expired", _fp(certs.expired), "expired")
    finally:
        registry.stop()


def test_a_change_that_cannot_be_audited_says_so(tmp_path, certs):
    data = tmp_path / "aar"
    out, err = io.StringIO(), io.StringIO()
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "audit.log").mkdir()          # a directory where the file goes
    code = aar.main(["trust", "add", "--init", str(certs.client.cert), "--data-dir",
                     str(data)], stdin=Pipe(), stdout=out, stderr=err)
    assert code == 1
    assert "trust.add done, but cannot write the audit log" in err.getvalue()


def test_a_delete_on_the_registry_host_is_audited(tmp_path, certs):
    registry = ThreadServer(tmp_path / "aar")
    try:
        registry.trust_cert(certs.publisher, "publisher")
        payload = os.urandom(2000)
        assert registry.client(certs.publisher).upload("demo", 1, "amd64", payload)[0] == 201
    finally:
        registry.stop()
    out, err = io.StringIO(), io.StringIO()
    code = aar.main(["application", "delete", "demo", "1", "amd64", "-y", "--data-dir",
                     str(registry.data.root)], stdin=Pipe(), stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    record = _records(registry.data.audit_log)[-1]
    assert (record["event"], record["application"], record["version"],
            record["architecture"], record["size"], record["sha256"]) == (
        "package.delete", "demo", 1, "amd64", 2000, hashlib.sha256(payload).hexdigest())
    assert record["command"].startswith("aar application delete demo 1 amd64")
    assert record["uid"] == os.getuid()

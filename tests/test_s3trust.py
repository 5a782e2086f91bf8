"""The trust store in S3 under stress: a bucket that goes away or hangs (the
replicas fail closed), trust changes racing from several hosts, and join
tokens used across replicas. Real processes, real Swift (whose conditional
PUT is not atomic, so nothing here may lean on it)."""
import json
import os
import subprocess
import sys

import pytest

from agentnodes import Node, race_to_join
from regserver import ROOT, aar
from tcpfwd import Forwarder
from test_replicas import Replicas, eventually
from trust.tokens import Token


@pytest.fixture
def replicas(tmp_path, swift, bucket):
    r = Replicas(tmp_path, swift, bucket)
    yield r
    r.stop()


def answer(server, pair):
    """(status, error text) of GET /1.0 on server with pair."""
    client = server.client(pair)
    try:
        status, env, _ = client.json("GET", "/1.0")
    finally:
        client.close()
    return status, (env or {}).get("error", "")


def test_a_replica_cut_off_from_the_bucket_fails_closed_and_recovers(replicas, swift, certs):
    fwd = Forwarder(int(swift.endpoint.rsplit(":", 1)[1]))

    class Via:
        endpoint = f"http://127.0.0.1:{fwd.port}"
        region, access_key, secret_key = swift.region, swift.access_key, swift.secret_key
    replicas.swift = Via
    try:
        server = replicas.start("cut")
        done = aar("trust", "add", str(certs.client.cert), data_dir=replicas.first)
        assert done.returncode == 0, done.stderr
        eventually(lambda: answer(server, certs.client)[0] == 200)

        def refused():
            status, error = answer(server, certs.client)
            assert status in (200, 503), (status, error)
            return status == 503 and error
        for outage in (fwd.stop, fwd.hang):           # refused, then a hanging bucket
            outage()
            error = eventually(refused, bound=60)
            assert error.startswith("trust store unreachable"), error
            if outage == fwd.hang:
                fwd.stop()
            fwd.start()                               # the bucket answers again
            eventually(lambda: answer(server, certs.client)[0] == 200, bound=60)
        log = server.output()
        assert log.count("requests that need trust are refused") == 2, log
        assert log.count("trust store answers again") == 2, log
    finally:
        fwd.stop()


def _parallel(*commands):
    """Run `aar …` commands at once; their CompletedProcess-like results."""
    env = {k: v for k, v in os.environ.items() if k != "SNAP"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "aar.py"), *map(str, argv)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=env) for argv in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        results.append((proc.returncode, out, err))
    return results


def _listed(host, *flags):
    done = aar("trust", "list", "--format", "json", *flags, data_dir=host)
    assert done.returncode == 0, done.stderr
    return {r["fingerprint"]: r for r in json.loads(done.stdout)}


def test_trust_changes_racing_from_several_hosts(replicas, swift, bucket, certs):
    hosts = [replicas.data(f"h{i}") for i in range(6)]
    pem = str(certs.client.cert)
    # Six hosts add one certificate at once, half of them as publisher: one add wins.
    results = _parallel(*(["trust", "add", pem, *(["--publisher"] if i % 2 else []),
                           "--data-dir", h] for i, h in enumerate(hosts)))
    added = [r for r in results if r[1].startswith("Added")]
    assert len(added) == 1, results
    role = "publisher" if added[0][1].startswith("Added publisher") else "client"
    for code, out, err in results:
        if out.startswith("Added"):
            continue
        if f"trusted as {role}" in out:               # same role: nothing to do
            assert code == 0 and "nothing changed" in out, (code, out, err)
        else:                                          # the other role: told how
            assert code == 1 and "aar trust set-role" in err, (code, out, err)
    fp = next(iter(_listed(hosts[0])))
    records = [o for o in swift.client().list_objects_v2(
        Bucket=bucket, Prefix=f"registry/trust/certs/{fp}/").get("Contents", [])
        if o["Key"].endswith("/record.json")]
    assert len(records) == 1
    assert _listed(hosts[1])[fp]["role"] == role

    # A remove racing two role changes: the removal is never undone.
    results = _parallel(["trust", "remove", "-y", fp[:12], "--data-dir", hosts[0]],
                        ["trust", "set-role", fp[:12], "publisher", "--data-dir", hosts[1]],
                        ["trust", "set-role", fp[:12], "client", "--data-dir", hosts[2]])
    assert results[0][0] == 0, results
    assert fp not in _listed(hosts[3])

    # A revocation racing a role change, a remove and an add: never lost.
    assert aar("trust", "add", pem, data_dir=hosts[0]).returncode == 0
    results = _parallel(["trust", "revoke", "-y", fp[:12], "--data-dir", hosts[1]],
                        ["trust", "set-role", fp[:12], "publisher", "--data-dir", hosts[2]],
                        ["trust", "remove", "-y", fp[:12], "--data-dir", hosts[3]],
                        ["trust", "add", pem, "--data-dir", hosts[4]])
    if results[0][0] == 0:
        assert fp in _listed(hosts[5], "--revoked") and fp not in _listed(hosts[5])
        again = aar("trust", "add", pem, data_dir=hosts[5])
        assert again.returncode == 1 and "revoked" in again.stderr, again
    else:           # the remove went first: nothing was left to revoke
        assert results[2][0] == 0 and "no certificate" in results[0][2], results


def test_a_join_token_made_on_one_replica_is_used_once_through_either(replicas, tmp_path):
    a = replicas.start("a")
    b = replicas.start("b")
    made = aar("trust", "token", "add", "--role", "publisher", "--name", "racer",
               "--address", f"127.0.0.1:{b.port}", data_dir=replicas.first)
    assert made.returncode == 0, made.stderr
    via_b = made.stdout.strip()
    token = Token.decode(via_b)
    via_a = Token(urls=(f"https://127.0.0.1:{a.port}",), fingerprint=token.fingerprint,
                  id=token.id, secret=token.secret).encode()
    nodes, results = race_to_join([tmp_path / f"n{i}" for i in range(4)],
                                  lambda i: via_b if i % 2 else via_a)
    assert sorted(r.code for r in results) == [0, 1, 1, 1], results
    winner = nodes[[r.code for r in results].index(0)]
    trusted = _listed(replicas.first)
    assert list(trusted) == [winner.fingerprint] and trusted[winner.fingerprint]["role"] \
        == "publisher" and trusted[winner.fingerprint]["name"] == "racer"
    # The winner is served by both replicas, with no other step.
    assert "0 pushed" in winner.ok("sync").out
    winner.ok("config", "set", "registry.url", f"https://127.0.0.1:{a.port}")
    assert "0 pushed" in winner.ok("sync").out
    # Replayed, the token is refused; the list says it was used, by whom.
    again = Node(tmp_path / "late")("registry", "join", via_a)
    assert again.code == 1 and "refused the join" in again.err
    listed = aar("trust", "token", "list", "--format", "json", data_dir=b.datadir)
    rows = json.loads(listed.stdout)
    assert [(r["state"], r["used_by"]) for r in rows] == [("used", winner.fingerprint)]
    assert aar("trust", "token", "remove", token.id, data_dir=b.datadir).returncode == 0
    assert json.loads(aar("trust", "token", "list", "--format", "json",
                          data_dir=replicas.first).stdout) == []


def test_records_of_the_first_layout_are_still_read_and_changed(swift, bucket, certs):
    from registry.s3trust import S3TrustStore
    from s3env import client_for
    from trust.certs import load_certificate
    cert = load_certificate(certs.client.cert)
    old = {"pem": cert.pem, "role": "client", "name": "old", "added_at": "2026-11-30T10:00:00Z",
           "not_after": "2027-11-30T10:00:00Z", "revoked_at": None}
    client = client_for(swift, bucket)
    client.put(f"registry/trust/{cert.fingerprint}.json", json.dumps(old).encode())
    with S3TrustStore(client, "registry/") as store:
        assert store.get(cert.fingerprint).name == "old"
        assert store.set_role(cert.fingerprint, "publisher").role == "publisher"
        assert store.get(cert.fingerprint).role == "publisher"
        store.remove(cert.fingerprint)
        assert store.get(cert.fingerprint) is None
        assert client.list("registry/trust/")[0] == []


def test_refused_joins_leave_the_token_and_the_store_as_they_were(swift, bucket, certs):
    import time
    from registry.s3trust import S3TrustStore
    from s3env import client_for
    from trust.certs import load_certificate
    from trust.errors import AlreadyExists
    from trust.tokens import TokenRefused
    client = client_for(swift, bucket)
    with S3TrustStore(client, "registry/") as store:
        tokens = store.join_tokens()
        row, secret = tokens.create("publisher", 3600, "node")
        short, short_secret = tokens.create("client", 1)
        for token_id, guess, reason in ((row["id"], "wrong", "wrong_secret"),
                                        ("feedfacecafe", secret, "unknown"),
                                        ("../x", secret, "unknown")):
            with pytest.raises(TokenRefused) as refused:
                tokens.redeem(token_id, guess, load_certificate(certs.client.cert))
            assert refused.value.reason == reason
        time.sleep(2)                 # past the short one's expiry (whole seconds)
        with pytest.raises(TokenRefused) as refused:
            tokens.redeem(short["id"], short_secret, load_certificate(certs.client.cert))
        assert refused.value.reason == "expired"
        # A node whose certificate is trusted already: refused, the token stays usable.
        store.add(load_certificate(certs.client.cert), "client")
        with pytest.raises(AlreadyExists):
            tokens.redeem(row["id"], secret, load_certificate(certs.client.cert))
        states = {t["id"]: t["state"] for t in tokens.list()}
        assert states == {row["id"]: "valid", short["id"]: "expired"}
        assert [r.fingerprint for r in store.records()] == \
            [load_certificate(certs.client.cert).fingerprint]
        assert client.list(f"registry/tokens/{row['id']}/claims/")[0] == []

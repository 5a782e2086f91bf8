"""Stateless replicas: several `aar serve` processes on one bucket are one registry.

Real processes, real Swift, real mutual TLS. Cross-replica visibility is
waited for by polling with a generous bound (never a timing assertion).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from regserver import ROOT, ProcessServer, aar, free_port
from s3env import client_for


def write_conf(data, swift, bucket, redirect=True, secret=None, extra=""):
    conf = data / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "main.yaml").write_text(f"""\
storage:
  s3:
    endpoint: {swift.endpoint}
    region: {swift.region}
    bucket: {bucket}
    prefix: registry/
    access-key: "{swift.access_key}"
    secret-access-key: "{secret or swift.secret_key}"
    redirect: {'true' if redirect else 'false'}
{extra}""")


class Replicas:
    """Data directories sharing one bucket and one server certificate."""

    def __init__(self, tmp_path, swift, bucket):
        self.tmp, self.swift, self.bucket = tmp_path, swift, bucket
        self.running = []
        self.first = None

    def data(self, name, redirect=True, same_cert=True, **kw):
        data = self.tmp / name
        write_conf(data, self.swift, self.bucket, redirect, **kw)
        if same_cert and self.first is not None:
            shutil.copytree(self.first / "certs", data / "certs")
        return data

    def start(self, name, redirect=True, **kw):
        data = self.data(name, redirect, **kw)
        server = ProcessServer(data)
        self.first = self.first or data
        self.running.append(server)
        return server

    def stop(self):
        for server in self.running:
            if server.proc.poll() is None:
                server.stop()


@pytest.fixture
def replicas(tmp_path, swift, bucket):
    r = Replicas(tmp_path, swift, bucket)
    yield r
    r.stop()


def eventually(check, bound=20.0):
    """Poll check() until it returns something truthy; fail after bound seconds."""
    end = time.monotonic() + bound
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"still not true after {bound}s: {check.__doc__ or check}")
        time.sleep(0.2)


def status_of(server, pair, path="/1.0"):
    client = server.client(pair)
    try:
        return client.request("GET", path)[0].status
    except OSError:
        return None          # a refused handshake
    finally:
        client.close()


def test_trust_push_pull_and_revoke_across_replicas(replicas, certs):
    a = replicas.start("a")
    b = replicas.start("b")
    c = replicas.start("c", redirect=False)
    assert a.fingerprint == b.fingerprint == c.fingerprint
    # trust add on a's host; b and c serve it.
    for pair, flag in ((certs.publisher, ["--publisher"]), (certs.client, [])):
        done = aar("trust", "add", str(pair.cert), *flag, data_dir=replicas.first)
        assert done.returncode == 0, done.stderr
    eventually(lambda: status_of(a, certs.publisher) == 200 and
               status_of(b, certs.publisher) == 200 and
               status_of(c, certs.client) == 200)
    # push through a; pull through b by redirect and through c by proxy.
    payload = os.urandom(300_000)
    digest = hashlib.sha256(payload).hexdigest()
    pub = a.client(certs.publisher)
    status, body, _ = pub.upload("game", 1, "amd64", payload, {"tags": ["x"]})
    assert status == 201, body
    pub.close()

    def listed_on(server):
        client = server.client(certs.client)
        try:
            status, body, _ = client.json("GET", "/1.0/applications")
        finally:
            client.close()
        return status == 200 and [p["sha256"] for app in body["metadata"]
                                  for p in app["versions"]] == [digest]
    eventually(lambda: listed_on(b) and listed_on(c))
    client = b.client(certs.client)
    resp, _ = client.request("GET", "/1.0/applications/game/1/amd64/package")
    assert resp.status == 307
    location = resp.getheader("Location")
    assert "X-Amz-Signature=" in location and location.startswith(replicas.swift.endpoint)
    with urllib.request.urlopen(location) as got:         # no client certificate
        assert hashlib.sha256(got.read()).hexdigest() == digest
    client.close()
    client = c.client(certs.client)
    resp, data = client.request("GET", "/1.0/applications/game/1/amd64/package")
    assert resp.status == 200 and data == payload
    resp, data = client.request("GET", "/1.0/applications/game/1/amd64/package",
                                headers={"Range": "bytes=1000-1999"})
    assert resp.status == 206 and data == payload[1000:2000]
    client.close()
    # the agent's download follows the redirect and checks the sha256.
    from agent.client import RegistryClient
    agent = RegistryClient(f"https://127.0.0.1:{b.port}", b.fingerprint,
                           certs.client.cert, certs.client.key)
    dest = replicas.tmp / "pulled"
    agent.download("game", 1, "amd64", dest, digest, len(payload))
    assert dest.read_bytes() == payload
    from agent.errors import IntegrityError
    with pytest.raises(IntegrityError):
        agent.download("game", 1, "amd64", replicas.tmp / "bad", "0" * 64, len(payload))
    assert not (replicas.tmp / "bad").exists()
    agent.close()
    # revoke on b's host; a refuses it.
    fp = json.loads(aar("trust", "list", "--format", "json",
                        data_dir=replicas.tmp / "b").stdout)
    client_fp = [r["fingerprint"] for r in fp if r["role"] == "client"][0]
    done = aar("trust", "revoke", client_fp, "-y", data_dir=replicas.tmp / "b")
    assert done.returncode == 0, done.stderr
    eventually(lambda: status_of(a, certs.client) != 200, bound=10)
    assert status_of(a, certs.publisher) == 200


def test_a_replica_with_another_server_certificate_refuses_to_start(replicas):
    replicas.start("a")
    data = replicas.data("other", same_cert=False)
    done = subprocess.run([sys.executable, str(ROOT / "aar.py"), "serve", "--data-dir",
                           str(data), "--listen", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "differs from the one the bucket records" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("problem", ["wrong key", "missing bucket", "unreachable"])
def test_storage_trouble_at_start_is_one_clear_line(tmp_path, swift, bucket, problem):
    data = tmp_path / "d"
    if problem == "wrong key":
        write_conf(data, swift, bucket, secret="not-the-key")
    elif problem == "missing bucket":
        write_conf(data, swift, "no-such-bucket-at-all")
    else:
        class Dead:
            endpoint = f"http://127.0.0.1:{free_port()}"
            region, access_key, secret_key = swift.region, "a", "b"
        write_conf(data, Dead, bucket)
    done = subprocess.run([sys.executable, str(ROOT / "aar.py"), "serve", "--data-dir",
                           str(data), "--listen", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    expected = {"wrong key": "403", "missing bucket": "404",
                "unreachable": "unreachable"}[problem]
    assert "S3 storage unusable" in lines[0] and expected in lines[0]


def test_concurrent_pushes_of_different_bytes_one_wins_everywhere(replicas, certs):
    a = replicas.start("a")
    b = replicas.start("b")
    assert aar("trust", "add", str(certs.publisher.cert), "--publisher",
               data_dir=replicas.first).returncode == 0
    eventually(lambda: status_of(a, certs.publisher) == 200 and
               status_of(b, certs.publisher) == 200)
    bodies = {a: os.urandom(50_000), b: os.urandom(50_000)}
    results = {}

    def push(server):
        client = server.client(certs.publisher, timeout=60)
        try:
            results[server] = client.upload("race", 7, "amd64", bodies[server])[:2]
        except Exception as exc:          # shown by the assertion below
            results[server] = repr(exc)
        finally:
            client.close()
    threads = [threading.Thread(target=push, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[0] for r in results.values()) == [201, 409], results
    winner = next(s for s, r in results.items() if r[0] == 201)
    digest = hashlib.sha256(bodies[winner]).hexdigest()

    def both_list_the_winner():
        seen = []
        for server in (a, b):
            client = server.client(certs.publisher)
            status, body, _ = client.json("GET", "/1.0/applications/race/7/amd64")
            client.close()
            seen.append(status == 200 and body["metadata"]["sha256"] == digest)
        return all(seen)
    eventually(both_list_the_winner)

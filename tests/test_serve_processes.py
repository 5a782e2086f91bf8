"""`aar serve --processes 2`: two worker processes on one port, supervised.

One real server (a subprocess, real TLS) for the module; the tests run in
file order and the last one stops it. Which worker serves a connection is
read from the access log (-v), whose lines carry the worker's PID and the
client's port.
"""
import concurrent.futures
import http.client
import json
import os
import re
import signal
import time
import urllib.request

import pytest

from certs import make_cert
from regserver import Client, ProcessServer, aar, free_port
from registry.join import INVALID
from trust.tokens import Token

ACCESS = re.compile(r"aar\.access\[(\d+)\]: 127\.0\.0\.1:(\d+) ")
STARTED = re.compile(r"worker process (\d) started \(pid (\d+)\)")


class Served:
    """The server and what the tests learn of it."""

    def __init__(self, tmp, certs):
        self.data = tmp / "registry"
        self.metrics_port = free_port()
        for pair, role in ((certs.publisher, "-p"), (certs.client, None)):
            args = ["trust", "add", "--init", str(pair.cert)] + ([role] if role else [])
            assert aar(*args, data_dir=self.data).returncode == 0
        # The count from conf/main.yaml, as the snap or a charm would set it.
        assert aar("config", "set", "processes=2", data_dir=self.data).returncode == 0
        # No poll within any test's time: only a sibling's nudge can wake a
        # listing held on one worker after a change through the other.
        self.server = ProcessServer(self.data, extra=[
            "-v", "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--change-poll", "3600"])
        self.requests = 0
        for _ in range(600):      # it listens before it forks: wait for both
            if len(self.workers()) == 2:
                break
            time.sleep(0.05)

    def workers(self):
        """{slot: pid} of the workers running now, from the parent's log."""
        return {int(s): int(p) for s, p in STARTED.findall(self.server.output())}

    def pid_of(self, client, since=0):
        """The worker that answered on `client`'s connection, from the log
        after offset `since` (an earlier connection may have had its port)."""
        port = str(client.conn.sock.getsockname()[1])
        for _ in range(100):                  # the log line is written first,
            for pid, peer in ACCESS.findall(self.server.output()[since:]):  # but buffered
                if peer == port:
                    return int(pid)
            time.sleep(0.05)
        raise AssertionError(f"no access log line for port {port}")

    def status(self, client):
        status = client.json("GET", "/1.0/status")[0]
        self.requests += 1
        return status

    def one_on_each(self, pair, count=2):
        """Open connections, 16 at once, until `count` workers hold one
        each: {pid: Client}. Others are closed."""
        held = {}
        for _ in range(20):
            since = len(self.server.output())
            clients = [Client(self.server.port, pair) for _ in range(16)]
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                assert set(pool.map(self.status, clients)) == {200}
            for client in clients:
                pid = self.pid_of(client, since)
                if pid not in held:
                    held[pid] = client
                else:
                    client.close()
            if len(held) >= count:
                return held
        raise AssertionError(f"only workers {sorted(held)} answered")

    def scrape(self, path="/metrics"):
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.read().decode()


def _trusted(served):
    return json.loads(aar("trust", "list", "--format", "json", data_dir=served.data).stdout)


def _total(text, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@pytest.mark.parametrize("value", ["0", "two", "1025"])
def test_a_bad_process_count_is_a_usage_error(tmp_path, value):
    result = aar("serve", "--processes", value, data_dir=tmp_path / "d")
    assert result.returncode == 2
    assert f"invalid process count {value!r}" in result.stderr
    assert not (tmp_path / "d").exists()
    result = aar("config", "set", f"processes={value}", data_dir=tmp_path / "d")
    assert result.returncode == 2 and f"invalid process count {value!r}" in result.stderr


@pytest.mark.parametrize("value", ["0", "soon", "3601", "nan"])
def test_a_bad_change_poll_is_a_usage_error(tmp_path, value):
    result = aar("serve", "--change-poll", value, data_dir=tmp_path / "d")
    assert result.returncode == 2
    assert f"invalid change poll {value!r}" in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.fixture(scope="module")
def served(tmp_path_factory, certs):
    served = Served(tmp_path_factory.mktemp("procs"), certs)
    yield served
    served.server.stop()


def test_both_workers_answer_and_the_metrics_are_their_sum(served, certs):
    workers = served.workers()
    assert sorted(workers) == [1, 2] and len(set(workers.values())) == 2
    held = served.one_on_each(certs.client)
    assert set(held) == set(workers.values())
    for client in held.values():
        assert served.status(client) == 200
        client.close()
    text = served.scrape()
    assert _total(text, "aar_requests_total") == served.requests
    assert _total(text, "aar_packages") == 0          # one store, not two
    assert served.scrape("/healthz") == "ok\n"


def test_a_revocation_refuses_the_next_request_in_every_worker(served, certs, tmp_path):
    gone = make_cert(tmp_path, "gone")
    assert aar("trust", "add", str(gone.cert), data_dir=served.data).returncode == 0
    held = served.one_on_each(gone)
    fingerprint = json.loads(aar("trust", "list", "--format", "json",
                                 data_dir=served.data).stdout)
    fingerprint = [c["fingerprint"] for c in fingerprint if c["name"] == "gone"][0]
    result = aar("trust", "revoke", fingerprint, "-y", data_dir=served.data)
    assert result.returncode == 0, result.stderr
    for client in held.values():
        status, body, _ = client.json("GET", "/1.0/status")
        assert status == 403 and "revoked" in body["error"]


def _hold(served, pid, client, etag):
    """Send a wait= listing on `client` (served by worker `pid`) and return
    once that worker has logged that it holds it."""
    port = client.conn.sock.getsockname()[1]
    held = re.compile(rf"aar\.api\[{pid}\]: 127\.0\.0\.1:{port} .*: listing held")
    before = len(held.findall(served.server.output()))
    client.conn.request("GET", "/1.0/applications?wait=20",
                        headers={"If-None-Match": etag})
    # Unwoken, the answer is a 304 after 20 s: give it time to come.
    client.conn.sock.settimeout(60)
    for _ in range(600):
        if len(held.findall(served.server.output())) > before:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} did not hold the listing of port {port}")


def _answer(client, etag):
    resp = client.conn.getresponse()
    body = resp.read()
    assert resp.status == 200, (resp.status, body)
    assert resp.getheader("ETag") != etag
    return resp.getheader("ETag"), [a["name"] for a in json.loads(body)["metadata"]]


def _each_wakes_the_other(served, certs):
    """For each worker in turn: a listing held on it is answered after a
    publish, then a delete, through the other worker."""
    held = served.one_on_each(certs.publisher)
    for (waiter_pid, waiter), (_, publisher) in (sorted(held.items()),
                                                 sorted(held.items(), reverse=True)):
        status, _, resp = waiter.json("GET", "/1.0/applications")
        etag = resp.getheader("ETag")
        assert status == 200 and etag
        _hold(served, waiter_pid, waiter, etag)
        assert publisher.upload("held", 0, "amd64", b"procs" * 100)[0] == 201
        etag, names = _answer(waiter, etag)      # answered by the waiter's worker
        assert names == ["held"]
        _hold(served, waiter_pid, waiter, etag)  # a delete nudges too
        assert publisher.json("DELETE", "/1.0/applications/held")[0] == 200
        assert _answer(waiter, etag)[1] == []
    for client in held.values():
        client.close()


def test_a_change_through_one_worker_wakes_a_listing_held_by_the_other(served, certs):
    """The server polls for changes once an hour (--change-poll 3600) and the
    listing is held for 20 s: a 200 with the new listing can only come from
    the publishing worker's nudge (registry/nudges.py). Without it: 304."""
    _each_wakes_the_other(served, certs)


def test_a_join_token_is_used_once_across_workers(served, certs, tmp_path):
    """The same token sent to both workers at once: one node joins, the other
    is refused (the token is redeemed in one trust.db transaction)."""
    made = aar("trust", "token", "add", "--address", f"127.0.0.1:{served.server.port}",
               data_dir=served.data)
    assert made.returncode == 0, made.stderr
    token = Token.decode(made.stdout.strip())
    before = {c["fingerprint"] for c in _trusted(served)}
    held = served.one_on_each(certs.client)
    nodes = [make_cert(tmp_path, f"joiner-{pid}") for pid in held]
    for client, node in zip(held.values(), nodes):    # both sent, then both read
        body = json.dumps({"token": token.id, "secret": token.secret,
                           "certificate": node.cert.read_text()})
        client.conn.request("POST", "/1.0/join", body=body,
                            headers={"Content-Type": "application/json"})
    answers = []
    for client in held.values():
        resp = client.conn.getresponse()
        answers.append((resp.status, json.loads(resp.read())))
        client.close()
    assert sorted(status for status, _ in answers) == [200, 403]
    joined = [body["metadata"]["fingerprint"] for status, body in answers if status == 200]
    refused = [body["error"] for status, body in answers if status == 403]
    assert refused == [INVALID]
    audit = [json.loads(line) for line in
             (served.data / "logs" / "audit.log").read_text().splitlines()]
    reasons = [r.get("reason", "") for r in audit
               if r["event"] == "refusal" and r.get("token") == token.id]
    assert reasons == [f"join with token {token.id} refused: token already used"]
    after = {c["fingerprint"] for c in _trusted(served)}
    assert after - before == set(joined) and before <= after
    tokens = json.loads(aar("trust", "token", "list", "--format", "json",
                            data_dir=served.data).stdout)
    assert [t["state"] for t in tokens] == ["used"]


def test_a_killed_worker_is_replaced_and_counts_do_not_go_back(served, certs):
    before = served.workers()
    counted = _total(served.scrape(), "aar_requests_total")
    os.kill(before[1], signal.SIGKILL)
    for _ in range(200):
        if served.workers()[1] != before[1]:
            break
        time.sleep(0.05)
    log = served.server.output()
    assert f"worker process 1 (pid {before[1]}) was killed by signal 9 (SIGKILL)" in log
    after = served.workers()
    assert after[1] != before[1] and after[2] == before[2]
    held = served.one_on_each(certs.client)
    assert set(held) == set(after.values())
    for client in held.values():
        client.close()
    assert _total(served.scrape(), "aar_requests_total") >= counted + 2
    # The new worker watches its slot's descriptor, and nudges its sibling.
    _each_wakes_the_other(served, certs)


def test_sigterm_stops_the_parent_and_every_worker(served):
    pids = list(served.workers().values())
    proc = served.server.proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(OSError):                   # nobody listens any more
        http.client.HTTPConnection("127.0.0.1", served.server.port,
                                   timeout=5).connect()


def _running(pid):
    """Alive and not a zombie (an orphan's reaper may be slow or absent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_stop_when_the_parent_is_killed(tmp_path):
    data = tmp_path / "registry"
    assert aar("config", "set", "processes=2", data_dir=data).returncode == 0
    server = ProcessServer(data)
    try:
        for _ in range(600):
            workers = {int(s): int(p) for s, p in STARTED.findall(server.output())}
            if len(workers) == 2:
                break
            time.sleep(0.05)
        assert sorted(workers) == [1, 2] and all(map(_running, workers.values()))
        server.proc.kill()                      # SIGKILL: no word to the workers
        assert server.proc.wait(timeout=10) == -signal.SIGKILL
        for _ in range(600):                    # each sees its control socket close
            if not any(map(_running, workers.values())):
                break
            time.sleep(0.05)
        assert not any(map(_running, workers.values()))
        assert server.output().count("the parent process is gone: stopping") == 2
        with pytest.raises(OSError):            # the listening socket went with them
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=5).connect()
    finally:
        for pid in workers.values():            # never leave one behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()

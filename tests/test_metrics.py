"""Metrics and health: the exposition format, a real registry scraped before and
after a known sequence of requests, /healthz, and `ams-sync run --metrics-listen`.

Every scrape is parsed by prometheus_client's own text parser, so a line it
would reject fails the test.
"""
import http.client
import json
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentnodes import Node, aar_cli
from metrics.core import Metrics, tally
from metrics.listener import MetricsServer, parse_listen
from regserver import ROOT, ProcessServer, ThreadServer, aar, free_port, stop_process


def _get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), resp.getheader("Content-Type")
    finally:
        conn.close()


def _holds(predicate):
    # The metrics listener starts just after the registry's port: until then
    # a probe meets a refused connection, which means "not yet".
    try:
        return predicate()
    except ConnectionRefusedError:
        return False


def scrape(port):
    """{(sample name, ((label, value), …)): value} and the families' types."""
    status, text, ctype = _get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _counters(samples, types):
    counters = {n for n, t in types.items() if t in ("counter", "histogram")}
    return {k: v for k, v in samples.items()
            if any(k[0] == c or k[0].startswith(c + "_") for c in counters)}


# -- the format -------------------------------------------------------------------------

def test_exposition_parses_and_says_what_was_counted():
    m = Metrics()
    hits = m.counter("demo_hits_total", "Hits", ("route", "code"))
    hits.labels("/a", "200").inc()
    hits.labels("/a", "200").inc(2)
    hits.labels('we"ird\\path\n', "500").inc()
    m.gauge("demo_open", "Open").set(7)
    m.gauge("demo_roles", "Roles", ("role",), collect=lambda: {("x",): 2, ("y",): 0})
    h = m.histogram("demo_seconds", "Durations", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    text = m.render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["demo_hits"].type == "counter"
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in families.values() for s in f.samples}
    assert got[("demo_hits_total", (("code", "200"), ("route", "/a")))] == 3
    assert got[("demo_hits_total", (("code", "500"), ("route", 'we"ird\\path\n')))] == 1
    assert got[("demo_open", ())] == 7
    assert got[("demo_roles", (("role", "x"),))] == 2
    assert got[("demo_seconds_bucket", (("le", "0.1"),))] == 2     # le is inclusive
    assert got[("demo_seconds_bucket", (("le", "1.0"),))] == 3
    assert got[("demo_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("demo_seconds_count", ())] == 4
    assert math.isclose(got[("demo_seconds_sum", ())], 3.65)


def test_a_tally_counts_what_its_three_calls_would():
    """tally() (the kept answers' metrics, registry/events.py) renders the
    same text as inc(), observe() and inc(amount) on the same children."""
    rendered = []
    for one_call in (False, True):
        m = Metrics()
        hits = m.counter("demo_hits_total", "Hits", ("route",)).labels("/a")
        seconds = m.histogram("demo_seconds", "Durations", ("route",),
                              buckets=(0.1, 1.0)).labels("/a")
        sent = m.counter("demo_sent_bytes_total", "Sent")
        record = tally(hits, seconds, sent.labels())
        for value, amount in ((0.05, 10), (0.1, 0), (0.5, 7), (3.0, 1)):
            if one_call:
                record(value, amount)
            else:
                hits.inc()
                seconds.observe(value)
                sent.inc(amount)
        rendered.append(m.render())
    assert rendered[0] == rendered[1]
    assert b'demo_seconds_bucket{route="/a",le="0.1"} 2' in rendered[1]
    assert b"demo_sent_bytes_total 18" in rendered[1]


def test_worker_snapshots_sum_and_a_retired_worker_still_counts():
    from metrics.combined import combine, retire, to_metrics

    def worker(requests, open_now):
        m = Metrics()
        m.counter("x_requests_total", "Requests", ("code",)).labels(200).inc(requests)
        m.histogram("x_seconds", "Durations").observe(0.003 * requests)
        m.gauge("x_open", "Open now").set(open_now)
        m.gauge("x_packages", "Stored", collect=lambda: {(): 7})
        return m.snapshot()

    def values(snapshot):
        text = to_metrics(snapshot).render().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    one, two = worker(3, 1), worker(5, 2)
    both = values(combine([one, two]))
    assert both[("x_requests_total", (("code", "200"),))] == 8
    assert both[("x_seconds_count", ())] == 2
    assert both[("x_open", ())] == 3
    assert both[("x_packages", ())] == 7           # one store, counted once
    # Worker one exits; its replacement starts from nothing: the sum keeps
    # what the old one had counted, and drops its open connections.
    later = values(combine([worker(0, 0), two], retire(None, one)))
    assert later[("x_requests_total", (("code", "200"),))] == 8
    assert later[("x_seconds_count", ())] == 3
    assert later[("x_open", ())] == 2


def test_a_name_is_defined_once_and_labels_must_match():
    m = Metrics()
    c = m.counter("x_total", "X", ("a",))
    with pytest.raises(ValueError):
        m.counter("x_total", "again")
    with pytest.raises(ValueError):
        c.labels("1", "2")


@pytest.mark.parametrize("text", ["9300", "host:", ":9300", "h:99999", "h:port"])
def test_bad_metrics_addresses(text):
    with pytest.raises(ValueError, match="ADDR:PORT"):
        parse_listen(text)


def test_metrics_listener_health_and_unknown_paths():
    problem = [""]
    server = MetricsServer(("127.0.0.1", 0), Metrics(), lambda: problem[0]).start()
    try:
        port = server.server_address[1]
        assert _get(port, "/healthz")[:2] == (200, "ok\n")
        problem[0] = "disk full"
        status, body, _ = _get(port, "/healthz")
        assert status == 503 and "disk full" in body
        assert _get(port, "/other")[0] == 404
    finally:
        server.stop()


# -- a real registry, scraped ---------------------------------------------------------------

@pytest.fixture
def served(tmp_path, certs):
    data = tmp_path / "aar"
    mport = free_port()
    # Trust first (--init: before the first start), then serve.
    for pair, flags in ((certs.publisher, ["--publisher"]), (certs.client, [])):
        added = aar("trust", "add", "--init", str(pair.cert), *flags, data_dir=data)
        assert added.returncode == 0, added
    server = ProcessServer(data, extra=["--metrics-listen", f"127.0.0.1:{mport}"])
    server.metrics_port = mport
    yield server
    server.stop()


def _wait_for(predicate, what, timeout=20):
    end = time.monotonic() + timeout
    while not _holds(predicate):
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def test_scrape_deltas_after_a_known_sequence(served, certs):
    port = served.metrics_port
    _wait_for(lambda: _get(port, "/healthz")[0] == 200, "healthy")
    before, types = scrape(port)
    payload = os.urandom(30_000)
    sent = 0

    reader = served.client(certs.client)
    for _ in range(3):
        resp, body = reader.request("GET", "/1.0/status")
        assert resp.status == 200
        sent += len(body)
    reader.close()

    writer = served.client(certs.publisher)
    status, body, _ = writer.upload("game", 0, "amd64", payload)
    assert status == 201
    sent += len(json.dumps(body, separators=(",", ":")).encode())
    resp, data = writer.request("GET", "/1.0/applications/game/0/amd64/package")
    assert resp.status == 200 and data == payload
    sent += len(data)
    writer.close()

    refused = served.client(certs.client)
    resp, body = refused.request("DELETE", "/1.0/applications/game")
    assert resp.status == 403
    sent += len(body)
    refused.close()

    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        stranger = served.client(certs.stranger)
        stranger.request("GET", "/1.0/status")

    _wait_for(lambda: value(scrape(port)[0], "aar_open_connections") == 0,
              "all connections closed")
    after, types = scrape(port)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    status_route = dict(route="/1.0/status", method="GET", code="200")
    package = "/1.0/applications/{app}/{version}/{arch}/package"
    assert delta("aar_requests_total", **status_route) == 3
    assert delta("aar_requests_total", route=package, method="PUT", code="201") == 1
    assert delta("aar_requests_total", route=package, method="GET", code="200") == 1
    assert delta("aar_requests_total", route="/1.0/applications/{app}", method="DELETE",
                 code="403") == 1
    assert delta("aar_request_duration_seconds_count", route="/1.0/status") == 3
    assert delta("aar_received_bytes_total") == len(payload)
    assert delta("aar_sent_bytes_total") == sent
    assert delta("aar_refusals_total", reason="read_only") == 1
    assert delta("aar_refusals_total", reason="untrusted") == 1
    assert delta("aar_tls_handshake_duration_seconds_count") == 3   # the stranger's failed
    assert delta("aar_uploads_in_progress") == 0
    assert value(after, "aar_trusted_certificates", role="client") == 1
    assert value(after, "aar_trusted_certificates", role="publisher") == 1
    assert value(after, "aar_packages") == 1
    assert value(after, "aar_stored_bytes") == len(payload)
    assert types["aar_request_duration_seconds"] == "histogram"
    # Counters never go down, whatever else happened in between.
    for key, old in _counters(before, types).items():
        assert after.get(key, 0) >= old, key


def test_route_label_is_a_template_not_the_url(served, certs):
    c = served.client(certs.client)
    for app in ("one", "two", "three"):
        assert c.request("GET", f"/1.0/applications/{app}")[0].status == 404
    samples, _ = scrape(served.metrics_port)
    routes = {dict(labels).get("route") for (name, labels) in samples
              if name == "aar_requests_total"}
    assert "/1.0/applications/{app}" in routes
    assert not routes & {"/1.0/applications/one", "/1.0/applications/two"}


def test_healthz_is_503_when_the_trust_store_is_unusable(tmp_path):
    from registry import health
    srv = ThreadServer(tmp_path / "aar")
    listener = MetricsServer(("127.0.0.1", 0), srv.server.events.metrics,
                             lambda: health.check(srv.server, srv.data)).start()
    try:
        port = listener.server_address[1]
        assert _get(port, "/healthz")[0] == 200
        srv.trust.close()
        status, body, _ = _get(port, "/healthz")
        assert status == 503 and "trust store unusable" in body
    finally:
        listener.stop()
        srv.server.shutdown()
        srv.thread.join(10)
        srv.packages.close()
        srv.server.server_close()


def test_serve_refuses_a_taken_metrics_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = aar("serve", "--listen", f"127.0.0.1:{free_port()}", "--metrics-listen",
                     f"127.0.0.1:{port}", data_dir=tmp_path / "aar")
    assert result.returncode == 1
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in result.stderr


# -- ams-sync run --metrics-listen ----------------------------------------------------------

def _agent(data, mport):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "ams_sync.py"), "--data-dir", str(data), "run",
         "--metrics-listen", f"127.0.0.1:{mport}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def _scrape_when(mport, proc, name, **labels):
    end = time.monotonic() + 60
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            samples, _ = scrape(mport)
            if value(samples, name, **labels) >= 1:
                return samples
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} {labels} never counted")


def test_agent_metrics_after_a_push_cycle(tmp_path):
    registry = ThreadServer(tmp_path / "aar")
    try:
        token = aar_cli(registry, "trust", "token", "add", "--role", "publisher",
                        "--address", f"127.0.0.1:{registry.port}").out.strip()
        node = Node(tmp_path / "pub")
        node.ok("registry", "join", token)
        node.add_app(tmp_path, "game", size=12_345)
        size = next(v["size"] for v in node.apps()["game"]["versions"])
        mport = free_port()
        proc = _agent(node.root, mport)
        try:
            samples = _scrape_when(mport, proc, "ams_sync_cycles_total", outcome="ok")
            assert value(samples, "ams_sync_versions_total", action="pushed") == 1
            assert value(samples, "ams_sync_versions_total", action="pulled") == 0
            assert value(samples, "ams_sync_transferred_bytes_total", direction="sent") == size
            assert value(samples, "ams_sync_consecutive_failures") == 0
            assert value(samples, "ams_sync_last_cycle_success") == 1
            assert value(samples, "ams_sync_last_cycle_timestamp_seconds") > 0
            assert value(samples, "ams_sync_cycle_duration_seconds_count") == 1
            assert _get(mport, "/healthz")[0] == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            proc.stderr.close()
        assert proc.returncode == 0
    finally:
        registry.stop()


def test_agent_health_is_503_while_cycles_fail(tmp_path):
    node = Node(tmp_path / "node")
    dead = free_port()                        # nothing listens there
    node.ok("config", "set", "registry.url", f"https://127.0.0.1:{dead}")
    node.ok("config", "set", "registry.fingerprint", "ab" * 32)
    mport = free_port()
    proc = _agent(node.root, mport)
    try:
        samples = _scrape_when(mport, proc, "ams_sync_cycles_total", outcome="failed")
        assert value(samples, "ams_sync_consecutive_failures") >= 1
        assert value(samples, "ams_sync_last_cycle_success") == 0
        status, body, _ = _get(mport, "/healthz")
        assert status == 503 and f"127.0.0.1:{dead}" in body
    finally:
        stop_process(proc, 20)
        proc.stderr.close()


def test_metric_names_follow_the_conventions():
    # Counters end in _total, durations in _seconds, sizes in _bytes.
    from registry.events import Events
    from agent.cyclemetrics import CycleMetrics
    for metrics in (Events().metrics, CycleMetrics().metrics):
        text = metrics.render().decode()
        for line in text.splitlines():
            if line.startswith("# TYPE"):
                _, _, name, kind = line.split()
                assert name.startswith(("aar_", "ams_sync_")), name
                if kind == "counter":
                    assert name.endswith("_total"), name
                if "duration" in name:
                    assert name.endswith("_seconds"), name
                if "byte" in name:
                    assert "_bytes" in name, name


def test_metrics_address_from_the_configuration_file(tmp_path):
    data = tmp_path / "aar"
    mport = free_port()
    (data / "conf").mkdir(parents=True)
    (data / "conf" / "main.yaml").write_text(f"metrics: 127.0.0.1:{mport}\n")
    server = ProcessServer(data)
    try:
        _wait_for(lambda: _listening(mport), "the metrics listener")
        assert _get(mport, "/healthz")[:2] == (200, "ok\n")
        samples, _ = scrape(mport)
        assert ("aar_open_connections", ()) in samples
    finally:
        server.stop()


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False

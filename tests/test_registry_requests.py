"""Every request gets an answer: malformed, hostile and odd requests over real TLS.

Each request is written raw onto a mutual-TLS connection and what comes back
is parsed strictly: zero or more complete HTTP/1.1 responses, then either the
connection is still open or it was closed cleanly. Nothing may hang, send half
a response, answer twice for one request, log a traceback or touch storage.
"""
import hashlib
import json
import logging
import re
import socket
import ssl

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from regserver import client_context, registry  # noqa: F401

_STATUS = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\Z")
PAYLOAD = b"0123456789" * 100


def exchange(port, pair, data, half_close=True, timeout=20):
    """Send `data` on a new TLS connection; return every byte the server sent
    until it closed (or, without half_close, until one response is complete).

    TLS runs in memory (SSLObject) over a plain socket so that the client can
    send FIN after its bytes without a close_notify: the server sees the end
    of the stream, and we go on reading what it answers.
    """
    ctx = client_context(pair)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        def pump():
            out = outgoing.read()
            if out:
                sock.sendall(out)

        def feed():
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                incoming.write(chunk)
            else:
                incoming.write_eof()
            return bool(chunk)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
                feed()
        pump()
        tls.write(data)
        pump()
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while True:
            try:
                received += tls.read(65536)
                if not half_close and complete(bytes(received)):
                    return bytes(received)
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                # A clean close, or (after our FIN without close_notify)
                # OpenSSL's alert about that unexpected end.
                return bytes(received)
            if not feed():
                try:
                    received += tls.read(65536)
                except (ssl.SSLError, ssl.SSLWantReadError):
                    pass
                return bytes(received)


def parse(data):
    """[(status, headers, body), ...] from a response stream; AssertionError
    if it is not a sequence of complete, well-formed responses."""
    out = []
    while data:
        end = data.find(b"\r\n\r\n")
        assert end >= 0, f"incomplete response head: {data[:200]!r}"
        lines = data[:end].split(b"\r\n")
        m = _STATUS.match(lines[0])
        assert m, f"bad status line {lines[0][:100]!r}"
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep and name and name == name.strip(), f"bad header {line!r}"
            headers[name.decode().lower()] = value.strip().decode("latin-1")
        status = int(m.group(1))
        data = data[end + 4:]
        if status == 100:
            continue
        length = 0 if status == 304 else int(headers["content-length"])
        assert len(data) >= length, f"body cut short: {len(data)} of {length}"
        out.append((status, headers, data[:length]))
        data = data[length:]
    return out


def complete(data):
    try:
        return bool(parse(data))
    except AssertionError:
        return False


def one(port, pair, data, **kw):
    answers = parse(exchange(port, pair, data, **kw))
    assert len(answers) == 1, answers
    return answers[0]


def head(method, path, *headers, body=b""):
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: x"]
    lines += [h if isinstance(h, bytes) else h.encode() for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def put(app="app", manifest=None, length=None, sha=None, body=PAYLOAD, extra=()):
    hdrs = [b"Content-Length: " + (length if length is not None
                                   else str(len(body)).encode()),
            "X-Aar-Sha256: " + (sha or hashlib.sha256(body).hexdigest())]
    if manifest is not None:
        hdrs.append(b"X-Aar-Manifest: " + manifest)
    return head("PUT", f"/1.0/applications/{app}/0/amd64/package", *hdrs, *extra,
                body=body)


def stored(registry):
    """Everything a request could change: the listing, blobs and staging."""
    blobs = sorted(p.name for p in registry.data.root.joinpath("blobs").rglob("*")
                   if p.is_file())
    staging = sorted(p.name for p in registry.data.staging_dir.iterdir())
    return json.dumps(registry.packages.list()), blobs, staging


@pytest.fixture
def filled(registry, certs):
    assert registry.client(certs.publisher).upload(
        "game", 0, "amd64", PAYLOAD, manifest={"tags": ["fun"]})[0] == 201
    return registry


# -- the list ------------------------------------------------------------

@pytest.mark.parametrize("value", ["²".encode(), "²".encode("latin-1"), b"-1",
                                   b"1e3", b"12, 13", b"0x10", b" ", b"9" * 40])
def test_bad_content_length_is_400(filled, certs, value):
    before = stored(filled)
    status, _, body = one(filled.port, certs.publisher, put(length=value))
    assert status == 400, body
    assert b"Content-Length" in body
    assert stored(filled) == before


def test_deeply_nested_manifest_is_400(filled, certs, caplog):
    before = stored(filled)
    status, _, body = one(filled.port, certs.publisher, put(manifest=b"[" * 30000))
    assert status == 400
    assert "X-Aar-Manifest" in json.loads(body)["error"]
    assert stored(filled) == before
    assert not [r for r in caplog.records if r.exc_info]


def test_range_of_thousands_of_digits_is_400(filled, certs):
    status, _, body = one(filled.port, certs.client, head(
        "GET", "/1.0/applications/game/0/amd64/package", "Range: bytes=0-" + "9" * 4400))
    assert status == 400
    assert "Range" in json.loads(body)["error"]


def test_range_past_the_end_is_clamped(filled, certs):
    status, headers, body = one(filled.port, certs.client, head(
        "GET", "/1.0/applications/game/0/amd64/package", "Range: bytes=0-99999999"))
    assert status == 206
    assert body == PAYLOAD
    assert headers["content-range"] == f"bytes 0-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/1.0/status", 200),
    ("DELETE", "/1.0/applications/nothere", 404),
    ("POST", "/1.0/applications", 405),
])
def test_a_body_is_never_taken_for_the_next_request(filled, certs, method, path, status):
    inner = head("DELETE", "/1.0/applications/game")
    before = stored(filled)
    data = head(method, path, f"Content-Length: {len(inner)}", body=inner)
    answers = parse(exchange(filled.port, certs.publisher, data))
    assert [a[0] for a in answers] == [status]
    assert stored(filled) == before
    # The connection carries the next request after a dropped body.
    answers = parse(exchange(filled.port, certs.publisher,
                             data + head("GET", "/1.0/status")))
    assert [a[0] for a in answers] == [status, 200]


@pytest.mark.parametrize("framing", [b"Content-Length: 200000",
                                     b"Transfer-Encoding: chunked"])
def test_a_body_too_large_to_drop_is_refused_and_closed(filled, certs, framing):
    data = head("GET", "/1.0/status", framing) + b"x" * 1000
    answers = parse(exchange(filled.port, certs.client, data, half_close=False))
    assert [a[0] for a in answers] == [400]
    assert answers[0][1]["connection"] == "close"


def test_bare_lf_is_400_at_once(filled, certs):
    # Without the half-close: the server must answer without waiting for more.
    status, headers, _ = one(filled.port, certs.client,
                             b"GET /1.0/status HTTP/1.1\nHost: x\n\n", half_close=False)
    assert status == 400
    assert headers["connection"] == "close"


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x01b", b"a\x7fb", b"a\rb",
                                   b"a\x1bb", b"a\nb"])
def test_control_characters_in_a_header_are_400(filled, certs, value):
    status, _, _ = one(filled.port, certs.client,
                       head("GET", "/1.0/status", b"X-Thing: " + value), half_close=False)
    assert status == 400


def test_a_tab_in_a_header_value_is_fine(filled, certs):
    assert one(filled.port, certs.client,
               head("GET", "/1.0/status", b"X-Thing: a\tb"))[0] == 200


def test_a_head_past_the_limit_gets_431(filled, certs):
    data = b"GET /1.0/status HTTP/1.1\r\nX-Big: " + b"y" * (80 * 1024)
    status, headers, _ = one(filled.port, certs.client, data, half_close=False)
    assert status == 431
    assert headers["connection"] == "close"


# -- property: whatever arrives, a well-formed answer or a clean close ----------

_METHODS = ["GET", "DELETE", "PUT", "POST", "OPTIONS", "get", ""]
_PATHS = ["/1.0", "/1.0/status", "/1.0/applications", "/1.0/applications?tags=a,b",
          "/1.0/applications?architecture=amd64&tags=", "/1.0/applications/nothere",
          "/1.0/applications/game", "/1.0/applications/game/0/amd64",
          "/1.0/applications/game/0/amd64/package", "/1.0/applications/new/1/arm64/package",
          "/1.0/applications/%2e%2e/0/amd64", "*", "http://x/1.0", "/"]
_NAMES = ["Content-Length", "Transfer-Encoding", "Range", "If-None-Match",
          "X-Aar-Sha256", "X-Aar-Manifest", "Expect", "Connection", "Host", "X"]
_VALUES = st.one_of(
    st.sampled_from(["0", "5", "100", "-1", "chunked", "bytes=0-4", "bytes=-3",
                     "bytes=5-", "bytes=9-2", "close", "keep-alive", "100-continue",
                     "0" * 64, '{"tags": ["a"]}', "[[[", "\"x\""]),
    st.text(max_size=20),
    st.integers(min_value=-10, max_value=10**30).map(str))
_HEADER = st.tuples(st.sampled_from(_NAMES), _VALUES).map(
    lambda nv: f"{nv[0]}: {nv[1]}".encode("utf-8"))
_REQUEST = st.builds(
    lambda method, path, version, headers, body: (
        f"{method} {path} {version}".encode() + b"\r\n"
        + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body),
    st.sampled_from(_METHODS), st.sampled_from(_PATHS),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1"]),
    st.lists(_HEADER, max_size=6), st.binary(max_size=200))
_MUTATION = st.tuples(st.integers(min_value=0), st.sampled_from("ird"),
                      st.binary(min_size=1, max_size=3))


def _mutate(data, mutations):
    data = bytearray(data)
    for pos, op, chunk in mutations:
        pos = pos % (len(data) + 1)
        if op == "i":
            data[pos:pos] = chunk
        elif op == "r":
            data[pos:pos + len(chunk)] = chunk
        else:
            del data[pos:pos + len(chunk)]
    return bytes(data)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(request=_REQUEST, mutations=st.lists(_MUTATION, max_size=4))
def test_any_request_gets_a_wellformed_answer(filled, certs, caplog, request, mutations):
    # Uploads never carry their body's real digest here, so no request can
    # store anything, and a DELETE of the one stored package is left out.
    data = _mutate(request, mutations)
    assume(not data.startswith(b"DELETE /1.0/applications/game"))
    before = stored(filled)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        answers = parse(exchange(filled.port, certs.publisher, data))
    assert all(status < 500 for status, _, _ in answers), answers
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert stored(filled) == before


def test_an_answer_of_several_records_is_whole_and_uncorks(registry, certs):
    """A listing longer than one TLS record is written with the socket corked
    (one segment instead of one per record): the answers pipelined behind it
    come whole and in order, and the cork is off once it is written (else
    every later answer on the connection would wait for the kernel's timer)."""
    manifest = {"tags": [f"tag{i:03d}-" + "x" * 200 for i in range(100)]}
    assert registry.client(certs.publisher).upload(
        "big", 0, "amd64", PAYLOAD, manifest=manifest)[0] == 201
    listing = head("GET", "/1.0/applications")
    answers = parse(exchange(registry.port, certs.client,
                             listing + head("GET", "/1.0/status") + listing))
    assert [a[0] for a in answers] == [200, 200, 200]
    assert len(answers[0][2]) > 16 * 1024
    assert answers[2][2] == answers[0][2]
    assert json.loads(answers[1][2])["metadata"] == {"status": "ok"}
    client = registry.client(certs.client)
    resp, data = client.request("GET", "/1.0/applications")
    assert resp.status == 200 and data == answers[0][2]
    corks = [c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
             for c in list(registry.server.connections)]
    assert corks == [0]
    client.close()

"""trust/tls.py over real sockets: a server thread with server_context, clients
with client_context, and PinnedHTTPSConnection against a server it must not
talk to. Certificates are real openssl ones."""
import hashlib
import http.client
import os
import socket
import ssl
import stat
import threading

import pytest

from trust import openssl, tls
from trust.certs import load_certificate
from trust.errors import PinMismatch, TrustError

# Only a guard against a test hanging forever; nothing here measures time.
HANG_GUARD = 30


class OneShotServer:
    """Accepts one connection, does the TLS handshake, reads until EOF.

    Records whether the handshake succeeded, the client's fingerprint, and
    every byte the client sent after the handshake.
    """

    def __init__(self, context, reply=None):
        self.context = context
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(HANG_GUARD)
        self.port = self.listener.getsockname()[1]
        self.handshake_ok = None
        self.handshake_error = None
        self.peer = None
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            raw, _ = self.listener.accept()
        except OSError as error:
            self.handshake_error = error
            return
        raw.settimeout(HANG_GUARD)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as error:
            self.handshake_ok, self.handshake_error = False, error
            raw.close()
            return
        self.handshake_ok = True
        self.peer = tls.peer_fingerprint(conn)
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                self.received += chunk
                if self.reply and self.received.endswith(b"\r\n\r\n"):
                    conn.sendall(self.reply)
        except (ssl.SSLError, OSError):
            pass  # the client hung up without close_notify: fine for us
        finally:
            conn.close()

    def finish(self):
        self.thread.join(HANG_GUARD)
        assert not self.thread.is_alive()
        self.listener.close()


def _server_ctx(certs, *trusted):
    return tls.server_context(str(certs.server.cert), str(certs.server.key),
                              [pair.pem for pair in trusted])


def _client_ctx(pair=None):
    if pair is None:
        return tls.client_context()
    return tls.client_context(str(pair.cert), str(pair.key))


def _try_client(port, context):
    """Handshake and exchange one message (the server must reply "!");
    return the server fingerprint or
    the exception the client saw (TLS 1.3 reports a refused client
    certificate only on the first read after the handshake)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD)
    try:
        conn = context.wrap_socket(raw)
    except (ssl.SSLError, OSError) as error:
        raw.close()
        return error
    try:
        conn.sendall(b"ping\r\n\r\n")
        if conn.recv(1) != b"!":
            return ConnectionError("the server hung up")
        return tls.peer_fingerprint(conn)
    except (ssl.SSLError, OSError) as error:
        return error
    finally:
        conn.close()


def _connect(certs, server_trusts, client_pair):
    server = OneShotServer(_server_ctx(certs, *server_trusts), reply=b"!")
    outcome = _try_client(server.port, _client_ctx(client_pair))
    server.finish()
    return server, outcome


def test_trusted_client_handshake(certs):
    server = OneShotServer(_server_ctx(certs, certs.client, certs.publisher),
                           reply=None)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD)
    conn = _client_ctx(certs.client).wrap_socket(raw)
    assert tls.peer_fingerprint(conn) == load_certificate(certs.server.cert).fingerprint
    assert conn.version() in ("TLSv1.2", "TLSv1.3")
    assert conn.cipher()[0] and ("GCM" in conn.cipher()[0] or "CHACHA20" in conn.cipher()[0])
    conn.sendall(b"hello")
    conn.close()
    server.finish()
    assert server.handshake_ok and server.received == b"hello"
    assert server.peer == load_certificate(certs.client.cert).fingerprint


@pytest.mark.parametrize("who", ["stranger", "expired", "nobody"])
def test_refused_clients_fail_the_handshake(certs, who):
    # The expired certificate is in the trusted set: expiry alone refuses it.
    pair = None if who == "nobody" else getattr(certs, who)
    server, outcome = _connect(certs, [certs.client, certs.expired], pair)
    assert server.handshake_ok is False, server.handshake_error
    assert isinstance(server.handshake_error, ssl.SSLError)
    assert isinstance(outcome, OSError), outcome
    assert server.received == b""


def test_same_trust_set_admits_the_trusted_client(certs):
    # The positive control for the refusals above: same server, same helper.
    server, outcome = _connect(certs, [certs.client, certs.expired], certs.client)
    assert server.handshake_ok is True
    assert outcome == load_certificate(certs.server.cert).fingerprint
    assert server.peer == load_certificate(certs.client.cert).fingerprint


def test_empty_trust_refuses_everyone(certs):
    server, outcome = _connect(certs, [], certs.client)
    assert server.handshake_ok is False and isinstance(outcome, OSError)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_old_protocols_are_refused(certs):
    context = _client_ctx(certs.client)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    server = OneShotServer(_server_ctx(certs, certs.client))
    outcome = _try_client(server.port, context)
    server.finish()
    assert server.handshake_ok is False and isinstance(outcome, OSError)
    assert "UNSUPPORTED_PROTOCOL" in str(server.handshake_error)


def test_tls12_without_aead_is_refused(certs):
    context = _client_ctx(certs.client)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    server = OneShotServer(_server_ctx(certs, certs.client))
    outcome = _try_client(server.port, context)
    server.finish()
    assert server.handshake_ok is False and isinstance(outcome, OSError)
    assert "NO_SHARED_CIPHER" in str(server.handshake_error)


def test_tls12_with_aead_works(certs):
    context = _client_ctx(certs.client)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    server = OneShotServer(_server_ctx(certs, certs.client), reply=b"!")
    outcome = _try_client(server.port, context)
    server.finish()
    assert server.handshake_ok is True
    assert outcome == load_certificate(certs.server.cert).fingerprint


def test_server_context_settings(certs):
    context = _server_ctx(certs, certs.client)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    for cipher in context.get_ciphers():
        if cipher["protocol"] == "TLSv1.2":
            assert cipher["aead"] and cipher["kea"] == "kx-ecdhe", cipher["name"]


def test_client_context_settings(certs):
    context = _client_ctx(certs.client)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_bad_files_are_trust_errors(certs, tmp_path):
    with pytest.raises(TrustError, match="server certificate"):
        tls.server_context(str(tmp_path / "none.crt"), str(tmp_path / "none.key"), [])
    with pytest.raises(TrustError, match="client certificate"):
        tls.client_context(str(certs.client.cert), str(certs.stranger.key))
    with pytest.raises(TrustError, match="trusted certificates"):
        _server_ctx_raw(certs, ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])


def _server_ctx_raw(certs, pems):
    return tls.server_context(str(certs.server.cert), str(certs.server.key), pems)


def test_peer_fingerprint_without_certificate(certs):
    server = OneShotServer(_server_ctx(certs, certs.client))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD)
    conn = _client_ctx(certs.client).wrap_socket(raw)
    # The client side always sees the server's certificate...
    assert tls.peer_fingerprint(conn) == hashlib.sha256(
        conn.getpeercert(binary_form=True)).hexdigest()
    conn.close()
    server.finish()

    class NoCert:
        def getpeercert(self, binary_form=False):
            return None
    with pytest.raises(TrustError, match="no certificate"):
        tls.peer_fingerprint(NoCert())


# Pinning --------------------------------------------------------------------

REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def test_pinned_connection_with_the_right_pin(certs):
    server = OneShotServer(_server_ctx(certs, certs.client), reply=REPLY)
    pin = load_certificate(certs.server.cert).fingerprint
    conn = tls.PinnedHTTPSConnection("127.0.0.1", server.port, pin.upper(),
                                     _client_ctx(certs.client), HANG_GUARD)
    conn.request("GET", "/1.0")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"ok")
    conn.close()
    server.finish()
    assert server.received.startswith(b"GET /1.0 HTTP/1.1\r\n")


def test_pinned_connection_with_a_wrong_pin_sends_nothing(certs):
    server = OneShotServer(_server_ctx(certs, certs.client), reply=REPLY)
    actual = load_certificate(certs.server.cert).fingerprint
    wrong = load_certificate(certs.stranger.cert).fingerprint
    conn = tls.PinnedHTTPSConnection("127.0.0.1", server.port, wrong,
                                     _client_ctx(certs.client), HANG_GUARD)
    with pytest.raises(PinMismatch) as info:
        conn.request("PUT", "/1.0/applications/game/0/amd64/package", body=b"secret bytes",
                     headers={"Content-Length": "12"})
    message = str(info.value)
    assert wrong in message and actual in message and "\n" not in message
    assert conn.sock is None
    server.finish()
    # The handshake happened, then the client hung up without a byte.
    assert server.handshake_ok is True
    assert server.received == b""


def test_pinned_connection_rejects_a_malformed_pin():
    with pytest.raises(TrustError):
        tls.PinnedHTTPSConnection("127.0.0.1", 1, "abc", tls.client_context())
    with pytest.raises(TypeError):
        tls.PinnedHTTPSConnection("127.0.0.1", 1)


def test_pin_mismatch_is_a_trust_error():
    assert issubclass(PinMismatch, TrustError)
    assert issubclass(tls.PinnedHTTPSConnection, http.client.HTTPSConnection)


# openssl.py -------------------------------------------------------------------

def test_create_key_and_cert_makes_a_working_pair(tmp_path, certs):
    cert_path, key_path = tmp_path / "certs" / "server.crt", tmp_path / "certs" / "server.key"
    made = openssl.create_key_and_cert(cert_path, key_path, "aar@host",
                                       sans=["DNS:localhost", "IP:127.0.0.1"], days=30)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert load_certificate(cert_path) == made and made.common_name == "aar@host"
    assert 29 <= (made.not_after - made.not_before).days <= 30
    assert sorted(os.listdir(cert_path.parent)) == ["server.crt", "server.key"]
    # The new pair serves TLS, and the pin is its fingerprint.
    context = tls.server_context(str(cert_path), str(key_path), [certs.client.pem])
    server = OneShotServer(context, reply=REPLY)
    conn = tls.PinnedHTTPSConnection("127.0.0.1", server.port, made.fingerprint,
                                     _client_ctx(certs.client), HANG_GUARD)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"ok"
    conn.close()
    server.finish()


def test_create_key_and_cert_replaces_atomically(tmp_path):
    cert_path, key_path = tmp_path / "a.crt", tmp_path / "a.key"
    first = openssl.create_key_and_cert(cert_path, key_path, "one")
    second = openssl.create_key_and_cert(cert_path, key_path, "two/with+odd\\chars")
    assert first.fingerprint != second.fingerprint
    assert load_certificate(cert_path).common_name == "two/with+odd\\chars"
    assert sorted(os.listdir(tmp_path)) == ["a.crt", "a.key"]


@pytest.mark.parametrize("kwargs,match", [
    ({"common_name": ""}, "common name"),
    ({"common_name": "a\nb"}, "common name"),
    ({"common_name": "x", "sans": ["localhost"]}, "subjectAltName"),
    ({"common_name": "x", "sans": ["DNS:a,IP:1.2.3.4"]}, "subjectAltName"),
    ({"common_name": "x", "days": 0}, "days"),
    ({"common_name": "x", "sans": ["IP:999.0.0.1"]}, "openssl could not"),
])
def test_create_key_and_cert_failures(tmp_path, kwargs, match):
    with pytest.raises(TrustError, match=match):
        openssl.create_key_and_cert(tmp_path / "a.crt", tmp_path / "a.key", **kwargs)
    assert os.listdir(tmp_path) == []


def test_create_key_and_cert_without_openssl(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(TrustError, match=r"'openssl' command was not found"):
        openssl.create_key_and_cert(tmp_path / "a.crt", tmp_path / "a.key", "x")
    assert os.listdir(tmp_path) == []

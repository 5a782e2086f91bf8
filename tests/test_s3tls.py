"""HTTPS to the object store: Swift behind a TLS front whose certificate comes
from a test CA (tests/tlsfront.py). A replica with `ca-file` works over it, a
wrong CA stops `aar serve` with one line, and a node follows the redirect over
HTTPS, verifying the store against the CA and presenting no client
certificate there. Real processes, real openssl certificates, real Swift."""
import hashlib
import io
import os
import socket
import ssl
import subprocess
import sys
import zipfile

import pytest

from certs import make_ca, make_signed
from regserver import ROOT, aar, free_port
from test_replicas import Replicas, write_conf
from tlsfront import TLSFront


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    where = tmp_path_factory.mktemp("s3ca")

    class CAs:
        good = make_ca(where, "s3-ca")
        other = make_ca(where, "other-ca")
        front = make_signed(where, "s3-front", good, ["IP:127.0.0.1", "DNS:localhost"])
    return CAs


@pytest.fixture
def node(tmp_path):
    from agent.paths import DataDir
    root = tmp_path / "node"
    root.mkdir()
    DataDir(root).client_certificate()
    return root


@pytest.fixture
def front(swift, cas, node):
    # The node's own certificate is the one it could wrongly present: let the
    # front verify it, so that presenting it would be recorded, not refused.
    tls = TLSFront(int(swift.endpoint.rsplit(":", 1)[1]), cas.front,
                   client_ca=node / "registry" / "client.crt")
    yield tls
    tls.stop()


def _over(front, swift):
    class Via:
        endpoint = f"https://127.0.0.1:{front.port}"
        region, access_key, secret_key = swift.region, swift.access_key, swift.secret_key
    return Via


def _sync(node, *argv, env=None):
    return subprocess.run([sys.executable, str(ROOT / "ams_sync.py"), "--data-dir",
                           str(node), *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_replica_and_node_over_https_with_a_private_ca(tmp_path, swift, bucket, cas, front,
                                                       node, certs):
    replicas = Replicas(tmp_path, swift, bucket)
    replicas.swift = _over(front, swift)
    try:
        server = replicas.start("tls", extra=f"    ca-file: {cas.good.cert}\n")
        for argv in (["--publisher", str(certs.publisher.cert)],
                     [str(node / "registry" / "client.crt")]):
            done = aar("trust", "add", *argv, data_dir=replicas.first)
            assert done.returncode == 0, done.stderr
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr("manifest.yaml", "name: game\n")
            archive.writestr("app.apk", os.urandom(200_000))
        payload = buf.getvalue()
        pub = server.client(certs.publisher)
        status, body, _ = pub.upload("game", 1, "amd64", payload)
        assert status == 201, body
        pub.close()

        for argv in (["config", "trust", "add", str(replicas.first / "certs" / "server.crt")],
                     ["config", "set", "registry.url", f"https://127.0.0.1:{server.port}"],
                     ["config", "set", "registry.fingerprint", server.fingerprint],
                     ["config", "set", "registry.mode", "pull"]):
            assert _sync(node, *argv).returncode == 0
        # Without the CA the node cannot verify the store: the pull fails, loudly.
        refused = _sync(node, "sync", env={"SSL_CERT_FILE": str(cas.other.cert)})
        assert refused.returncode == 1 and "certificate" in refused.stdout + refused.stderr
        done = _sync(node, "sync", env={"SSL_CERT_FILE": str(cas.good.cert)})
        assert done.returncode == 0 and "1 pulled" in done.stdout, done
        digest = hashlib.sha256(payload).hexdigest()
        fetched = [r for r in front.requests if f"blobs/sha256/{digest}" in r]
        assert fetched and all("X-Amz-Signature=" in r for r in fetched), front.requests
        assert front.offered == [] and front.handshakes > 0
        # (a certificate the front could not verify would fail its handshake)
        assert not [f for f in front.failed if "CERTIFICATE_VERIFY_FAILED" in f]
        # The front does record a client certificate when one is presented.
        context = ssl.create_default_context(cafile=str(cas.good.cert))
        context.load_cert_chain(node / "registry" / "client.crt",
                                node / "registry" / "client.key")
        with context.wrap_socket(socket.create_connection(("127.0.0.1", front.port)),
                                 server_hostname="127.0.0.1") as probe:
            probe.sendall(b"GET /healthcheck HTTP/1.0\r\n\r\n")
            probe.recv(100)
        assert len(front.offered) == 1
    finally:
        replicas.stop()


def test_a_wrong_ca_file_is_one_line_at_start(tmp_path, swift, bucket, cas, front):
    data = tmp_path / "wrong"
    write_conf(data, _over(front, swift), bucket, extra=f"    ca-file: {cas.other.cert}\n")
    done = subprocess.run([sys.executable, str(ROOT / "aar.py"), "serve", "--data-dir",
                           str(data), "--listen", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "not trusted" in lines[0] and str(cas.other.cert) in lines[0], lines


def test_a_proxying_replica_reads_the_store_over_https(tmp_path, swift, bucket, cas, front,
                                                       certs):
    """Proxied downloads read the store's body chunks ahead, waking per chunk
    (SO_RCVLOWAT on the TLS connection, whose bytes on the wire outnumber
    the body's): whole, and a range off any chunk boundary, with no wait."""
    replicas = Replicas(tmp_path, swift, bucket)
    replicas.swift = _over(front, swift)
    try:
        server = replicas.start("tlsproxy", redirect=False,
                                extra=f"    ca-file: {cas.good.cert}\n")
        done = aar("trust", "add", "--publisher", str(certs.publisher.cert),
                   data_dir=replicas.first)
        assert done.returncode == 0, done.stderr
        payload = os.urandom((5 << 20) + 4321)
        client = server.client(certs.publisher, timeout=60)
        assert client.upload("proxied", 1, "amd64", payload)[0] == 201
        path = "/1.0/applications/proxied/1/amd64/package"
        resp, data = client.request("GET", path)
        assert resp.status == 200 and data == payload
        resp, data = client.request("GET", path, headers={"Range": "bytes=3-4194310"})
        assert resp.status == 206 and data == payload[3:4194311]
        client.close()
    finally:
        replicas.stop()

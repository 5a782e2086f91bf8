"""A real registry for the tests: in a thread of this process, or as a subprocess.

Both listen on 127.0.0.1 with a real server certificate made by openssl, and the
clients below speak real mutual TLS with certificates from tests/certs.py.

Fixtures (a test module imports the ones it uses): `registry`, a ThreadServer
that trusts the session's publisher and client certificates, and `access`, the
lines of the registry's access log.
"""
import contextlib
import hashlib
import http.client
import io
import json
import logging
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

__all__ = ["ThreadServer", "ProcessServer", "Client", "client_context", "free_port",
           "stop_process", "Pipe", "AccessLog", "registry", "access", "reaping"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_context(pair):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if pair is not None:
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


class Client:
    """One keep-alive HTTPS connection, with JSON helpers."""

    def __init__(self, port, pair, context=None, timeout=10):
        self.port = port
        self.context = context or client_context(pair)
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.context,
                                                timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp, data

    def json(self, method, path, body=None, headers=None):
        resp, data = self.request(method, path, body, headers)
        return resp.status, (json.loads(data) if data else None), resp

    def upload(self, app, version, arch, payload, manifest=None, sha=None):
        headers = {"X-Aar-Sha256": sha or hashlib.sha256(payload).hexdigest(),
                   "Content-Length": str(len(payload))}
        if manifest is not None:
            headers["X-Aar-Manifest"] = json.dumps(manifest)
        return self.json("PUT", f"/1.0/applications/{app}/{version}/{arch}/package",
                         payload, headers)

    def close(self):
        self.conn.close()


class ThreadServer:
    """RegistryServer on a free port in a background thread of this process."""

    def __init__(self, datadir, settings=None):
        from registry.audit import AuditLog
        from registry.events import Events
        from registry.handlers import ApiHandler
        from registry.paths import DataDir
        from registry.server import RegistryServer, Settings
        from registry.storage import PackageStore
        from trust import certs, openssl
        from trust.store import TrustStore

        self.data = DataDir(datadir).ensure()
        if not self.data.server_cert.exists():
            openssl.create_key_and_cert(self.data.server_cert, self.data.server_key,
                                        common_name="test-registry",
                                        sans=["IP:127.0.0.1"], server=True)
        self.fingerprint = certs.load_certificate(self.data.server_cert).fingerprint
        self.trust = TrustStore(self.data.trust_db)
        self.packages = PackageStore(self.data)
        self.audit = AuditLog(self.data.audit_log)
        self.server = RegistryServer(
            ("127.0.0.1", 0), ApiHandler, trust_store=self.trust, packages=self.packages,
            certfile=str(self.data.server_cert), keyfile=str(self.data.server_key),
            server_fingerprint=self.fingerprint, settings=settings or Settings(workers=8),
            events=Events(self.audit))
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def trust_cert(self, pair, role="client"):
        from trust import certs
        return self.trust.add(certs.load_certificate(pair.cert), role)

    def client(self, pair, **kw):
        return Client(self.port, pair, **kw)

    def stop(self):
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.packages.close()
        self.trust.close()
        self.server.server_close()        # after the stores (registry/gate.py)
        self.audit.close()


@pytest.fixture
def registry(tmp_path, certs):
    srv = ThreadServer(tmp_path / "registry")
    srv.trust_cert(certs.publisher, "publisher")
    srv.trust_cert(certs.client, "client")
    yield srv
    srv.stop()


class AccessLog(logging.Handler):
    """The registry's access log lines: one per request it answered."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def access():
    handler = AccessLog()
    logger = logging.getLogger("aar.access")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old)


class Pipe(io.StringIO):
    """Standard input as a pipe for aar.main: text plus the .buffer the CLI
    reads bytes from (`aar trust add` reads a certificate there)."""

    def __init__(self, data=b""):
        super().__init__()
        self.buffer = io.BytesIO(data)

    def isatty(self):
        return False


def aar(*args, input=None, env=None, data_dir=None, check=False, timeout=60):
    """Run `python aar.py …` as a real subprocess."""
    cmd = [sys.executable, str(ROOT / "aar.py"), *args]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    full_env = dict(os.environ)
    full_env.pop("SNAP", None)
    full_env.update(env or {})
    return subprocess.run(cmd, input=input, capture_output=True, env=full_env,
                          check=check, timeout=timeout, cwd=ROOT,
                          text=isinstance(input, str) or input is None)


class ProcessServer:
    """`aar serve` as a subprocess, for kill -9 and whole-program tests."""

    def __init__(self, datadir, port=None, extra=()):
        self.datadir = pathlib.Path(datadir)
        self.port = port or free_port()
        self.log = open(self.datadir.parent / f"serve-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "aar.py"), "serve", "--data-dir", str(datadir),
             "--listen", f"127.0.0.1:{self.port}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_listening()
        from trust import certs
        self.fingerprint = certs.load_certificate(self.datadir / "certs" / "server.crt").fingerprint

    def _wait_listening(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"aar serve exited with {self.proc.returncode}: "
                                   + self.output())
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            time.sleep(0.05)
        raise RuntimeError("aar serve did not start listening: " + self.output())

    def output(self):
        self.log.flush()
        return (self.datadir.parent / f"serve-{self.port}.log").read_text(errors="replace")

    def client(self, pair, **kw):
        return Client(self.port, pair, **kw)

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self):
        stop_process(self.proc, timeout=10)
        self.log.close()


def stop_process(proc, timeout):
    """SIGTERM, and SIGKILL if it has not ended within timeout seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def reaping(child):
    """Leave the block with the child process gone and its pipes closed, even
    when an assertion fails before the test kills it."""
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()

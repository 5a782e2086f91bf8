"""Shared pieces of the benchmark: certificates, ports, child processes, a small
mutual-TLS HTTP client used only for setup (never for a measured figure), and
package building.

Standard library only; the one outside tool here is `openssl`.
"""
import atexit
import hashlib
import http.client
import io
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import zipfile

REPO = pathlib.Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB


class Unavailable(Exception):
    """A prerequisite of one benchmark row is missing; the row prints n/a."""


# --------------------------------------------------------------------------
# child processes: every process the bench starts is registered here and
# stopped at exit (normal exit, exception, SIGINT or SIGTERM).

_children = []


def spawn(args, *, log=None, env=None, cwd=None):
    """Start a long-running child in its own process group; stopped at exit."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)
    if log:
        out.close()
    _children.append(proc)
    return proc


def stop(proc, timeout=10):
    """Stop one child (and its process group) politely, then firmly."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    if proc in _children:
        _children.remove(proc)


def stop_all():
    for proc in list(reversed(_children)):
        try:
            stop(proc)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _on_signal(signum, frame):
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)


def run(args, *, timeout=600, check=True, env=None, cwd=None, input=None):
    """Run a short command; returns CompletedProcess with text output."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                         env=env, cwd=cwd, input=input)
    if check and res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise Unavailable(f"{pathlib.Path(args[0]).name} {args[1] if len(args) > 1 else ''}"
                          f" exited {res.returncode}: {msg[-1] if msg else ''}".strip())
    return res


def which(name):
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]:
        p = pathlib.Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_kib(pid):
    """Peak resident set size (VmHWM) of a live process, in KiB, or None."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def child_pids(pid):
    """Direct children of pid (for nginx workers)."""
    out = []
    for st in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = st.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(st.parent.name))
    return out


# --------------------------------------------------------------------------
# certificates

class Cert:
    def __init__(self, cert, key):
        self.cert = pathlib.Path(cert)
        self.key = pathlib.Path(key)

    @property
    def fingerprint(self):
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        return hashlib.sha256(der).hexdigest()


def make_cert(directory, name, sans=()):
    """EC P-256 self-signed certificate + key (what aar itself creates)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    ext = ["-addext", "subjectAltName=" + ",".join(sans)] if sans else []
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-subj", f"/CN={name}", "-days", "30", *ext])
    os.chmod(key, 0o600)
    return Cert(cert, key)


def tls_probe(port, client):
    """Protocol and cipher a server negotiates with our client certificate."""
    ctx = client_context(client)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return f"{s.version()} {s.cipher()[0]}"
    except (OSError, ssl.SSLError) as e:
        return f"handshake failed: {e}"


# --------------------------------------------------------------------------
# setup-only HTTP client (Python); measured figures use the curl drivers

def client_context(client):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


class Http:
    """Keep-alive HTTPS client with a client certificate, for setup steps."""

    def __init__(self, port, client, timeout=120):
        self.port, self.ctx, self.timeout = port, client_context(client), timeout
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPSConnection("127.0.0.1", self.port,
                                                context=self.ctx, timeout=self.timeout)

    def request(self, method, path, body=None, headers=None):
        """Returns (status, headers dict lower-cased, body bytes)."""
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    self.close()
                return resp.status, hdrs, data
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError, ssl.SSLEOFError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_https(port, client, path, proc=None, timeout=30, ok=(200,)):
    """Poll until GET path answers with a status in ok; raises Unavailable."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"exited with status {proc.returncode} while starting")
        h = Http(port, client, timeout=3)
        try:
            status, _, body = h.request("GET", path)
            if status in ok:
                return body
            last = f"HTTP {status}"
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            last = str(e) or type(e).__name__
        finally:
            h.close()
        time.sleep(0.1)
    raise Unavailable(f"not ready after {timeout}s ({last})")


# --------------------------------------------------------------------------
# test data

def random_file(path, size, seed=b""):
    """Write size pseudo-random (incompressible) bytes; returns sha256 hex.

    Uses a SHAKE-256 stream: reproducible, fast, and without the cost of
    os.urandom for GiB-sized files.
    """
    h = hashlib.sha256()
    chunk = 4 * MiB
    base = hashlib.shake_256(b"aar-bench" + seed).digest(chunk)
    n = 0
    with open(path, "wb") as f:
        while n < size:
            # vary each chunk cheaply so no two chunks are equal
            piece = hashlib.sha256(n.to_bytes(8, "big") + seed).digest() + base[32:]
            piece = piece[: min(chunk, size - n)]
            f.write(piece)
            h.update(piece)
            n += len(piece)
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def manifest(name, version, tags=()):
    return {"name": name, "version": version, "tags": list(tags),
            "instance-type": "a2.3", "boot-package": f"com.example.{name.replace('-', '')}"}


def manifest_yaml(m):
    lines = [f"name: {m['name']}", f"version: {m['version']}",
             f"instance-type: {m['instance-type']}",
             f"boot-package: {m['boot-package']}"]
    if m["tags"]:
        lines.append("tags:")
        lines += [f"  - {t}" for t in m["tags"]]
    return "\n".join(lines) + "\n"


def _entry(name):
    info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
    info.external_attr = 0o100644 << 16   # a regular file, rw-r--r--
    return info


def small_package(name, version=0, tags=()):
    """A tiny valid package: a zip holding manifest.yaml and a stub apk."""
    m = manifest(name, version, tags)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(_entry("manifest.yaml"), manifest_yaml(m))
        z.writestr(_entry("app.apk"), f"apk of {name}\n")
    return buf.getvalue(), m


def big_package(path, name, size, version=0, tags=()):
    """A package of about size bytes: manifest.yaml + an incompressible app.apk,
    stored uncompressed. Returns (sha256 hex, manifest dict)."""
    m = manifest(name, version, tags)
    payload = pathlib.Path(str(path) + ".apk")
    random_file(payload, max(size - 512, 1), seed=name.encode())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(_entry("manifest.yaml"), manifest_yaml(m))
        z.write(payload, "app.apk")
    payload.unlink()
    return sha256_file(path), m


def host_arch():
    import platform
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm", "armv8l": "arm", "i686": "386", "i386": "386"}.get(m, m)


def tempdir(prefix="aar-bench-"):
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix))


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))

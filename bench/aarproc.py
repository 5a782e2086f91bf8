"""The aar registry under test: `python3 aar.py serve` from the repository root,
with its own data directory, the bench's server certificate placed where aar
looks for it (so aar, nginx and docker-registry present the same certificate),
and the bench client trusted as a publisher with `aar.py trust add -p`.
"""
import json
import os
import pathlib
import shutil
import sys

import benchlib as bl


class Aar:
    name = "aar"

    def __init__(self, workdir, server, client, label="aar", repo=None, extra=()):
        self.dir = pathlib.Path(workdir) / label
        self.data = self.dir / "data"
        self.server, self.client = server, client
        self.port = None
        self.proc = None
        self.repo = repo or bl.REPO       # another checkout: bench/baseline.py
        self.script = self.repo / "aar.py"
        self.extra = list(extra)          # more `aar serve` arguments
        self.env = dict(os.environ, AAR_DATA_DIR=str(self.data))
        self.env.pop("SNAP_COMMON", None)

    def cli(self, *args, check=True, input=None):
        return bl.run([sys.executable, str(self.script), *args, "--data-dir", str(self.data)],
                      env=self.env, cwd=str(self.repo), check=check, input=input, timeout=60)

    def start(self):
        if not self.script.exists():
            raise bl.Unavailable("aar.py not in the repository yet")
        certs = self.data / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data, 0o700)
        shutil.copyfile(self.server.cert, certs / "server.crt")
        shutil.copyfile(self.server.key, certs / "server.key")
        os.chmod(certs / "server.key", 0o600)
        self.cli("trust", "add", "-p", str(self.client.cert))
        self.port = bl.free_port()
        self.proc = bl.spawn([sys.executable, str(self.script), "serve", "--data-dir",
                              str(self.data), "--listen", f"127.0.0.1:{self.port}",
                              *self.extra],
                             log=self.dir / "serve.log", env=self.env, cwd=str(self.repo))
        try:
            bl.wait_https(self.port, self.client, "/1.0/status", self.proc)
        except bl.Unavailable as e:
            raise bl.Unavailable(f"aar serve {e}: {self.log_tail()}") from None
        used = bl.Cert(certs / "server.crt", certs / "server.key").fingerprint
        self.same_cert = used == self.server.fingerprint
        return self

    def log_tail(self):
        try:
            return (self.dir / "serve.log").read_text().strip().splitlines()[-1][:200]
        except (OSError, IndexError):
            return ""

    def trust(self, cert_path, publisher=False):
        self.cli("trust", "add", *(["-p"] if publisher else []), str(cert_path))

    @property
    def server_cert_path(self):
        return self.data / "certs" / "server.crt"

    def url(self, path):
        return f"https://127.0.0.1:{self.port}{path}"

    @staticmethod
    def package_path(app, version, arch):
        return f"/1.0/applications/{app}/{version}/{arch}/package"

    def put(self, http, app, version, arch, body, sha256, manifest):
        """Upload one package (body: bytes or an open binary file) with the setup
        client; returns the HTTP status. Raises Unavailable on a failure."""
        length = len(body) if isinstance(body, (bytes, bytearray)) else os.fstat(body.fileno()).st_size
        status, _, data = http.request("PUT", self.package_path(app, version, arch), body=body,
                                       headers={"Content-Length": str(length),
                                                "X-Aar-Sha256": sha256,
                                                "X-Aar-Manifest": bl.dumps(manifest),
                                                "Content-Type": "application/octet-stream"})
        if status not in (200, 201):
            try:
                msg = json.loads(data).get("error", "")
            except ValueError:
                msg = data[:100]
            raise bl.Unavailable(f"PUT {app}/{version}/{arch} answered {status} {msg}")
        return status

    def pids(self):
        return [self.proc.pid] + bl.child_pids(self.proc.pid) if self.proc else []

    def peak_rss_kib(self):
        return bl.vm_hwm_kib(self.proc.pid) if self.proc else None

    def stop(self):
        bl.stop(self.proc)
        self.proc = None

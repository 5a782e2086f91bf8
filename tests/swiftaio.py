"""OpenStack Swift as an all-in-one S3 endpoint on 127.0.0.1, for the tests.

One proxy (s3api + tempauth, with the `cache` middleware over a memcached of
our own), one account, one container and one object server, one device that is
a plain directory (mount_check off; the filesystem must keep user xattrs),
rings of one replica. The servers run with workers = 0, so each is exactly one
process: Swift's servers call setsid(), which puts them out of our process
group, so they are stopped by PID, one by one.

Swift itself lives in its own venv (`.venv-swift`, made by test.sh from
requirements-swift.txt) so that its dependencies never meet the pins of the
test venv. `SWIFT_VENV` names another one.

The S3 credentials are tempauth's user `test:tester`, key `testing`.
"""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
REGION = "us-east-1"


def swift_venv() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SWIFT_VENV", ROOT / ".venv-swift"))


def available() -> str:
    """'' when Swift and memcached can run here, else why not."""
    if not (swift_venv() / "bin" / "swift-proxy-server").exists():
        return f"no Swift in {swift_venv()} (test.sh installs it)"
    if not shutil.which("memcached"):
        return "no memcached (test.sh installs it: apt-get install memcached)"
    return ""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_COMMON = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {user}
swift_dir = {swift_dir}
devices = {devices}
mount_check = false
log_name = {name}
log_level = WARNING
log_address = /nonexistent
"""

_PROXY = """\
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached}

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {secret} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""

_STORAGE = """\
[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
"""

_SWIFT_CONF = """\
[swift-hash]
swift_hash_path_suffix = aar-tests

[storage-policy:0]
name = gold
default = yes
"""


class SwiftAIO:
    """Start with start(), stop with stop(); endpoint is the S3 URL."""

    def __init__(self, workdir):
        self.dir = pathlib.Path(workdir)
        self.procs = {}
        self.memcached = None
        self.ports = {}
        self.endpoint = None
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION

    def _bin(self, name):
        return str(swift_venv() / "bin" / name)

    def start(self, timeout=60.0):
        swift_dir = self.dir / "etc"
        devices = self.dir / "srv"
        logs = self.dir / "log"
        for d in (swift_dir, devices / "d1", logs):
            d.mkdir(parents=True, exist_ok=True)
        self.ports = {kind: _free_port() for kind in
                      ("proxy", "account", "container", "object", "memcached")}
        (swift_dir / "swift.conf").write_text(_SWIFT_CONF)
        user = __import__("pwd").getpwuid(os.getuid()).pw_name
        for kind in ("account", "container", "object"):
            builder = str(swift_dir / f"{kind}.builder")
            for args in (["create", "2", "1", "1"],
                         ["add", f"r1z1-127.0.0.1:{self.ports[kind]}/d1", "1"],
                         ["rebalance"]):
                done = subprocess.run([self._bin("swift-ring-builder"), builder, *args],
                                      capture_output=True, text=True)
                # rebalance exits 1 for "balanced with warnings"
                if done.returncode not in (0, 1):
                    raise RuntimeError(f"swift-ring-builder {args[0]}: {done.stdout}"
                                       f"{done.stderr}")
        fill = dict(user=user, swift_dir=swift_dir, devices=devices,
                    memcached=self.ports["memcached"], region=self.region,
                    secret=self.secret_key)
        mc_args = ["memcached", "-l", "127.0.0.1", "-p", str(self.ports["memcached"]),
                   "-U", "0", "-m", "32"]
        if os.getuid() == 0:
            mc_args += ["-u", user]
        self.memcached = subprocess.Popen(mc_args, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        for kind in ("account", "container", "object", "proxy"):
            conf = swift_dir / f"{kind}-server.conf"
            body = _PROXY if kind == "proxy" else _STORAGE
            conf.write_text(_COMMON.format(port=self.ports[kind], name=kind, **fill)
                            + "\n" + body.format(kind=kind, **fill))
            log = open(logs / f"{kind}.log", "ab")
            self.procs[kind] = subprocess.Popen(
                [self._bin(f"swift-{kind}-server"), str(conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        self.endpoint = f"http://127.0.0.1:{self.ports['proxy']}"
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            for kind, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"swift {kind} server exited: "
                                       f"{self.log(kind)[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + "/healthcheck", timeout=2) as r:
                    if r.status == 200 and self._s3_ready():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("swift did not become ready in time")
            time.sleep(0.2)

    def _s3_ready(self):
        # The proxy answers healthcheck before the storage servers listen:
        # an authenticated listing of buckets goes all the way through.
        import botocore.session  # noqa: F401  (test dependency)
        try:
            self.client().list_buckets()
            return True
        except Exception:
            return False

    def client(self):
        """A boto3 S3 client for this store (the tests' reference client)."""
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    def log(self, kind):
        try:
            return (self.dir / "log" / f"{kind}.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop_server(self, kind):
        """Stop one server by PID (SIGTERM, then SIGKILL)."""
        proc = self.procs.get(kind)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self):
        for kind in list(self.procs):
            self.stop_server(kind)
        if self.memcached is not None and self.memcached.poll() is None:
            self.memcached.terminate()
            self.memcached.wait()

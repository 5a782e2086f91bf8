"""The zipapp end to end: built with build.sh, run as a subprocess.

Two builds: one of the real program (the session's `zipapp`), and one of a
stand-in tree whose aar and ams_sync only report how they were called, which
tests build.sh and the launcher on their own. Each runs under the default
Python and under 3.10 and 3.13 where those are installed.
"""
import glob
import hashlib
import http.client
import io
import json
import os
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import tokenize
import zipfile

import pytest

from certs import make_cert
from regserver import stop_process

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROGRAM = ("aar.py", "ams_sync.py", "launcher.py", "names.py", "version.py", "cas.py",
           "cli", "trust", "registry", "agent")
PYTHONS = ("default", "3.10", "3.13")


# -- interpreters and environment ---------------------------------------------

def find_python(version):
    """An interpreter of `version` ("3.10"), or None: pyenv's, else on PATH."""
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    candidates = sorted(glob.glob(str(pyenv / "versions" / f"{version}.*" / "bin" / "python3")))
    candidates.append(shutil.which(f"python{version}"))
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


@pytest.fixture(scope="session", params=PYTHONS)
def python(request):
    if request.param == "default":
        return sys.executable
    found = find_python(request.param)
    if found is None:
        pytest.skip(f"no Python {request.param} here")
    return found


def clean_env(tmp_path, **extra):
    """The environment of a run: nothing of the caller's data directories, and
    a HOME and SHIV_ROOT of the test's own, so no run touches the user's."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SNAP", "SHIV_", "AAR_", "AMS_SYNC_", "PYTHON"))}
    env["HOME"] = str(tmp_path / "home")
    env["SHIV_ROOT"] = str(tmp_path / "shiv")
    env.update(extra)
    return env


def build(root, output):
    """Run root/build.sh -o output with the test's own Python (it has shiv)."""
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(root / "build.sh"), "-o", str(output)], env=env,
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _built(path, result):
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{path} ({path.stat().st_size} bytes)" in result.stdout
    return path


# -- build.sh and the launcher, on a stand-in program -------------------------

STUB = '''import json, sys
def main(argv=None):
    print(json.dumps({{"program": "{name}", "argv": argv, "python": "%d.%d" % sys.version_info[:2]}}))
    return {code}
'''


def make_stub_tree(tree):
    """A tree with the program's layout, stand-in programs, and things that must
    stay out of the zipapp."""
    tree.mkdir(parents=True)
    for name in ("build.sh", "launcher.py", "version.py", "requirements-dev.txt"):
        shutil.copy2(ROOT / name, tree / name)
    (tree / "aar.py").write_text(STUB.format(name="aar", code=3))
    (tree / "ams_sync.py").write_text(STUB.format(name="ams_sync", code=0))
    (tree / "names.py").write_text("")
    (tree / "cas.py").write_text("")
    for package in ("cli", "trust", "registry", "agent"):
        (tree / package).mkdir()
        (tree / package / "__init__.py").write_text("")
        (tree / package / "__pycache__").mkdir()
        (tree / package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"x")
    (tree / "agent" / ".notes.swp").write_text("x")
    (tree / "extra").mkdir()  # a package added later ships too
    (tree / "extra" / "__init__.py").write_text("")
    for outside in ("tests", "bench"):
        (tree / outside).mkdir()
        (tree / outside / "__init__.py").write_text("")
        (tree / outside / "test_x.py").write_text("")
    (tree / "scratch.py").write_text("")  # only the named modules ship
    return tree


@pytest.fixture(scope="session")
def stub_zipapp(tmp_path_factory):
    tree = make_stub_tree(tmp_path_factory.mktemp("stub") / "tree")
    output = tree / "out" / "aar.pyz"
    return _built(output, build(tree, output))


def run_stub(python, path, *args, tmp_path):
    result = subprocess.run([python, str(path), *args], env=clean_env(tmp_path),
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def test_launcher_picks_the_program(stub_zipapp, python, tmp_path):
    code, said = run_stub(python, stub_zipapp, "serve", "-x", tmp_path=tmp_path)
    assert (code, said["program"], said["argv"]) == (3, "aar", ["serve", "-x"])
    assert said["python"] == _version_of(python)
    links = tmp_path / "bin"
    links.mkdir()
    for name in ("ams-sync", "ams_sync", "ams-sync.pyz", "ams_sync.py"):
        (links / name).symlink_to(stub_zipapp)
        with_link = run_stub(python, links / name, "run", tmp_path=tmp_path)
        assert with_link == (0, {"program": "ams_sync", "argv": ["run"],
                                 "python": said["python"]}), name
    # Where a link is awkward (the snaps): the agent's name as first argument.
    code, said = run_stub(python, stub_zipapp, "ams-sync", "sync", tmp_path=tmp_path)
    assert (code, said["program"], said["argv"]) == (0, "ams_sync", ["sync"])
    # A first argument is a name only in first place.
    code, said = run_stub(python, stub_zipapp, "trust", "ams-sync", tmp_path=tmp_path)
    assert (said["program"], said["argv"]) == ("aar", ["trust", "ams-sync"])


def _version_of(python):
    return subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_runs_by_its_shebang(stub_zipapp, tmp_path):
    result = subprocess.run([str(stub_zipapp), "--version"], env=clean_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout)["argv"] == ["--version"]
    assert stub_zipapp.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_holds_the_program_only(stub_zipapp):
    with zipfile.ZipFile(stub_zipapp) as archive:
        packed = sorted(name for name in archive.namelist() if name.startswith("site-packages/"))
        environment = json.loads(archive.read("environment.json"))
    assert packed == ["site-packages/" + name for name in (
        "aar.py", "agent/__init__.py", "ams_sync.py", "cas.py", "cli/__init__.py",
        "extra/__init__.py",
        "launcher.py",
        "names.py", "registry/__init__.py", "trust/__init__.py", "version.py")]
    assert environment["entry_point"] == "launcher:main"
    assert environment["no_modify"] and environment["reproducible"]
    assert environment["root"] is None  # ~/.shiv unless SHIV_ROOT says otherwise


def test_extracts_under_shiv_root_only(stub_zipapp, tmp_path):
    env = clean_env(tmp_path)
    subprocess.run([sys.executable, str(stub_zipapp), "ams-sync"], env=env, check=True,
                   capture_output=True, timeout=60)
    assert [p.name for p in (tmp_path / "shiv").iterdir() if not p.name.startswith(".")] \
        == [f"aar.pyz_{_build_id(stub_zipapp)}"]
    assert not (tmp_path / "home").exists()


def _build_id(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("environment.json"))["build_id"]


def test_build_is_reproducible(stub_zipapp, tmp_path):
    again = _built(tmp_path / "again.pyz", build(stub_zipapp.parent.parent, tmp_path / "again.pyz"))
    assert again.read_bytes() == stub_zipapp.read_bytes()


def test_build_fails_clearly_without_a_module(tmp_path):
    tree = make_stub_tree(tmp_path / "tree")
    (tree / "ams_sync.py").unlink()
    result = build(tree, tmp_path / "out.pyz")
    assert result.returncode != 0
    assert "build.sh: missing ams_sync.py" in result.stderr
    assert not (tmp_path / "out.pyz").exists()


def test_build_rejects_unknown_arguments(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "build.sh"), "--bogus"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "unknown argument: --bogus" in result.stderr


# -- the program runs on Python 3.10 ------------------------------------------

NOT_SHIPPED = ("tests", "bench", "dist", "snap", "docs")


def program_files():
    """What build.sh packs: the named modules and every top-level package."""
    files = [ROOT / name for name in PROGRAM if name.endswith(".py")]
    for init in sorted(ROOT.glob("*/__init__.py")):
        if init.parent.name not in NOT_SHIPPED:
            files += sorted(init.parent.rglob("*.py"))
    return [f for f in files if f.exists()]


# Newer than 3.10 and easy to reach for; each breaks the zipapp on core22's 3.10.
NEWER_APIS = [
    (r"\bdatetime\.UTC\b|from datetime import[^\n]*\bUTC\b", "datetime.UTC (3.11)"),
    (r"^\s*(import tomllib|from tomllib)", "tomllib (3.11)"),
    (r"\bStrEnum\b", "enum.StrEnum (3.11)"),
    (r"\bTaskGroup\b|\basyncio\.timeout\(", "asyncio.TaskGroup/timeout (3.11)"),
    (r"\bExceptionGroup\b|\bexcept\s*\*|\.add_note\(", "exception groups/notes (3.11)"),
    (r"\bhashlib\.file_digest\b", "hashlib.file_digest (3.11)"),
    (r"\bcontextlib\.chdir\b|from contextlib import[^\n]*\bchdir\b", "contextlib.chdir (3.11)"),
    (r"\bsys\.exception\(\)", "sys.exception() (3.11)"),
    (r"from typing import[^\n]*\b(Self|LiteralString|Never|assert_never|reveal_type|override)\b",
     "typing names (3.11+)"),
    (r"\bHTTPMethod\b", "http.HTTPMethod (3.11)"),
    (r"\bitertools\.batched\b|from itertools import[^\n]*\bbatched\b", "itertools.batched (3.12)"),
    (r"\bautocommit\s*=", "sqlite3 autocommit= (3.12)"),
    (r"\bonexc\s*=", "shutil.rmtree(onexc=) (3.12)"),
    (r"\bdelete_on_close\s*=", "NamedTemporaryFile(delete_on_close=) (3.12)"),
    (r"\bPath\([^)]*\)\.walk\(|\bpathlib\.Path\.walk\b", "Path.walk (3.12)"),
    (r"\bsplitroot\(", "os.path.splitroot (3.12)"),
    (r"\bdeprecated\s*=\s*True", "argparse deprecated= (3.13)"),
    (r"\bqueue\.[A-Za-z]*\.shutdown\(|\bShutDown\b", "queue shutdown (3.13)"),
]


def code_only(text):
    """The source with comments and strings blanked out, lines kept in place."""
    lines = text.splitlines(keepends=True)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in (tokenize.COMMENT, tokenize.STRING):
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        for r in range(row, end_row + 1):
            line = lines[r - 1]
            start = col if r == row else 0
            stop = end_col if r == end_row else len(line.rstrip("\n"))
            lines[r - 1] = line[:start] + " " * (stop - start) + line[stop:]
    return "".join(lines)


def test_no_newer_apis():
    """A grep for APIs newer than 3.10 (dbm.sqlite3 only behind try/except)."""
    found = []
    for path in program_files():
        text = code_only(path.read_text())
        for pattern, what in NEWER_APIS:
            for match in re.finditer(pattern, text, re.M):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
        for match in re.finditer(r"^(\s*)(import dbm\.sqlite3|from dbm import sqlite3)", text, re.M):
            before = text[:match.start()].rstrip().splitlines()
            if not (before and before[-1].strip() == "try:"):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: dbm.sqlite3 (3.13) not under try:")
    assert not found, "\n".join(found)


def test_compiles_and_imports_on_310(tmp_path):
    python = find_python("3.10")
    if python is None:
        pytest.skip("no Python 3.10 here")
    files = program_files()
    if not files:
        pytest.skip("no program code yet")
    compiled = subprocess.run(
        [python, "-c", "import py_compile, sys\n"
         "for i, f in enumerate(sys.argv[1:]):\n"
         "    py_compile.compile(f, cfile='%d.pyc' % i, doraise=True)",
         *map(str, files)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    # Importing also catches names a module takes from the standard library at load.
    modules = sorted({".".join(f.relative_to(ROOT).with_suffix("").parts)
                      .removesuffix(".__init__") for f in files})
    imported = subprocess.run(
        [python, "-B", "-c", "import importlib, sys\n"
         "for m in sys.argv[1:]: importlib.import_module(m)", *modules],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=clean_env(tmp_path))
    assert imported.returncode == 0, imported.stderr


# -- the real program ----------------------------------------------------------

def build_zipapp(tmp_path_factory):
    """Build the program's zipapp once per session (shared with the recipe tests)."""
    missing = [name for name in PROGRAM if not (ROOT / name).exists()]
    if missing:
        pytest.skip("the program is not all there yet: no " + ", ".join(missing))
    output = tmp_path_factory.getbasetemp() / "zipapp" / "aar.pyz"
    if not output.exists():
        _built(output, build(ROOT, output))
    return output


@pytest.fixture(scope="session")
def zipapp(tmp_path_factory):
    return build_zipapp(tmp_path_factory)


def needs(*paths):
    """Skip unless the program has the modules a test exercises."""
    missing = [p for p in paths if not (ROOT / p).exists()]
    return pytest.mark.skipif(bool(missing), reason="not written yet: " + ", ".join(missing))


def fingerprint_of(cert_path):
    der = ssl.PEM_cert_to_DER_cert(pathlib.Path(cert_path).read_text())
    return hashlib.sha256(der).hexdigest()


class Run:
    """Runs the zipapp (or a link to it) with one interpreter in one sandbox."""

    def __init__(self, python, path, tmp_path):
        self.python, self.path, self.tmp_path = python, path, tmp_path

    def __call__(self, *args, input=None, check=True, timeout=120):
        result = subprocess.run([self.python, str(self.path), *map(str, args)],
                                input=input, env=clean_env(self.tmp_path),
                                capture_output=True, text=True, timeout=timeout,
                                cwd=self.tmp_path)
        if check:
            assert result.returncode == 0, (
                f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, *args):
        log = open(self.tmp_path / f"server-{time.monotonic_ns()}.log", "w+")
        process = subprocess.Popen([self.python, str(self.path), *map(str, args)],
                                   env=clean_env(self.tmp_path), cwd=self.tmp_path,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        process.log = log
        return process


@pytest.fixture
def aar(zipapp, python, tmp_path):
    return Run(python, zipapp, tmp_path)


@pytest.fixture
def ams_sync(zipapp, python, tmp_path):
    """The agent, through a link named ams-sync."""
    link = tmp_path / "bin" / "ams-sync"
    link.parent.mkdir()
    link.symlink_to(zipapp)
    return Run(python, link, tmp_path)


def test_packs_every_local_import(zipapp):
    """Every top-level name the program imports from this tree is in the zipapp."""
    with zipfile.ZipFile(zipapp) as archive:
        packed = {name.split("/")[1].removesuffix(".py") for name in archive.namelist()
                  if name.startswith("site-packages/")}
    imported = set()
    for path in program_files():
        for match in re.finditer(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", code_only(path.read_text()), re.M):
            imported.add(match.group(1))
    local = {name for name in imported
             if (ROOT / f"{name}.py").exists() or (ROOT / name / "__init__.py").exists()}
    assert local - packed == set()


@needs("aar.py")
def test_version(aar):
    from version import VERSION
    result = aar("--version")
    assert VERSION in result.stdout + result.stderr


@needs("aar.py", "trust/store.py")
def test_trust_add_from_stdin(aar, tmp_path):
    cert = make_cert(tmp_path / "c", "node-1")
    data = tmp_path / "data"
    aar("trust", "add", "--init", "--data-dir", data, input=cert.pem)
    listed = aar("trust", "list", "--format", "json", "--data-dir", data).stdout
    assert fingerprint_of(cert.cert) in listed
    assert (data / "trust.db").stat().st_mode & 0o777 == 0o600


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Registry:
    """`aar serve` as a subprocess on a free loopback port."""

    def __init__(self, aar, data):
        self.data, self.port = data, free_port()
        self.process = aar.start("serve", "--data-dir", data,
                                 "--listen", f"127.0.0.1:{self.port}")
        self.cert = data / "certs" / "server.crt"
        self.url = f"https://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.output()}")
            if self.cert.exists():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not start: {self.output()}")
            time.sleep(0.1)
        self.fingerprint = fingerprint_of(self.cert)

    def output(self):
        self.process.log.seek(0)
        return self.process.log.read()

    def get(self, path, pair):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # pinned below instead
        context.load_cert_chain(str(pair.cert), str(pair.key))
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context,
                                                 timeout=10)
        try:
            connection.connect()
            served = hashlib.sha256(connection.sock.getpeercert(binary_form=True)).hexdigest()
            assert served == self.fingerprint
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self):
        stop_process(self.process, timeout=15)
        self.process.log.close()


@pytest.fixture
def registry(aar, tmp_path):
    server = Registry(aar, tmp_path / "registry")
    yield server
    server.stop()


@needs("aar.py", "registry/server.py")
def test_serve_answers_a_trusted_client(aar, registry, tmp_path):
    client = make_cert(tmp_path / "c", "node-1")
    aar("trust", "add", client.cert, "--data-dir", registry.data)
    status, body = registry.get("/1.0/status", client)
    assert status == 200, body
    envelope = json.loads(body)
    assert envelope["status_code"] == 200 and envelope["metadata"] == {"status": "ok"}

    stranger = make_cert(tmp_path / "c", "stranger")
    try:
        status, _ = registry.get("/1.0/status", stranger)
    except (ssl.SSLError, OSError, http.client.HTTPException):
        status = None  # refused in the handshake: what a stranger should get
    assert status in (None, 401, 403)


def make_package(directory, name, version, payload):
    """A .tar.bz2 application package with a manifest.yaml, made the way AMS's are."""
    source = directory / f"{name}-src"
    source.mkdir(parents=True)
    (source / "manifest.yaml").write_text(
        f"name: {name}\nversion: {version}\ninstance-type: a2.3\n"
        f"tags: [demo]\nboot-package: com.example.{name}\n")
    (source / "app.apk").write_bytes(payload)
    package = directory / f"{name}.tar.bz2"
    with tarfile.open(package, "w:bz2") as tar:
        for item in sorted(source.iterdir()):
            tar.add(item, arcname=item.name)
    return package


def configure_agent(ams_sync, aar, data, registry, mode, role_flags):
    """The seed's manual registration, step by step, for one AMS node."""
    ams_sync("--data-dir", data, "config", "trust", "add", registry.cert)
    ams_sync("--data-dir", data, "config", "set", "registry.url", registry.url)
    ams_sync("--data-dir", data, "config", "set", "registry.fingerprint", registry.fingerprint)
    ams_sync("--data-dir", data, "config", "set", "registry.mode", mode)
    client_cert = data / "registry" / "client.crt"
    assert client_cert.exists(), "the agent made no registry/client.crt"
    aar("trust", "add", client_cert, *role_flags, "--data-dir", registry.data)


@needs("aar.py", "ams_sync.py", "agent/sync.py", "registry/server.py")
def test_publisher_to_client_round_trip(aar, ams_sync, registry, tmp_path):
    publisher, client = tmp_path / "publisher", tmp_path / "client"
    configure_agent(ams_sync, aar, publisher, registry, "push", ["--publisher"])
    configure_agent(ams_sync, aar, client, registry, "pull", [])

    payload = os.urandom(200_000)
    package = make_package(tmp_path / "work", "game", 0, payload)
    ams_sync("--data-dir", publisher, "application", "create", package)
    ams_sync("--data-dir", publisher, "application", "publish", "game", "0")
    ams_sync("--data-dir", publisher, "sync")
    ams_sync("--data-dir", client, "sync")

    shown = ams_sync("--data-dir", client, "application", "show", "game").stdout
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    assert digest in shown
    blobs = [p for p in client.rglob(digest) if p.is_file()]
    assert blobs and blobs[0].read_bytes() == package.read_bytes()


def test_runs_when_home_cannot_be_written(zipapp, python, tmp_path):
    # HOME=/dev/null: ~/.shiv can never be made, even by root.
    env = clean_env(tmp_path, HOME="/dev/null", TMPDIR=str(tmp_path / "tmp"))
    del env["SHIV_ROOT"]
    (tmp_path / "tmp").mkdir()
    result = subprocess.run([python, str(zipapp), "--version"], env=env,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("aar ")
    unpacked = tmp_path / "tmp" / f"aar-shiv-{os.getuid()}"
    assert unpacked.is_dir() and unpacked.stat().st_mode & 0o077 == 0

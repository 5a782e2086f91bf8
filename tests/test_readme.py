"""The README's operator guide, run as written against the built zipapp.

Every shell block of the "Operator guide" section carries a marker directly
above its fence:

    <!-- run: ROLE[, background][, fails] -->

ROLE (registry, publisher or client) is the machine the block runs on. The
blocks run in order with `bash -euo pipefail -c BLOCK`, all on loopback: `aar`
and `ams-sync` are links to the zipapp, `sudo` a shim that runs its arguments.
All roles share one working directory (so the certificates the guide copies
between machines are where the next host looks for them); each AMS role has a
data directory of its own, and every role sees the registry's as $AAR_DATA_DIR
(the guide copies server.crt from there, standing in for scp). The guide's port
3000 becomes a free port.

A `background` block is started, waited for until the port accepts TCP, and
stopped at the end; a `fails` block must fail (exit 1: the command failed, not
its command line); every other block must exit 0.
"""
import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import pytest

from test_zipapp import build_zipapp, clean_env, fingerprint_of, free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## Operator guide"
ROLES = ("registry", "publisher", "client")
FLAGS = ("background", "fails")
GUIDE_PORT = 3000

MARKER = re.compile(r"<!--\s*run:(.*?)-->")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
SHELLS = ("sh", "bash", "shell", "console", "shell-session", "zsh")


@dataclasses.dataclass
class Block:
    line: int          # README line number of the opening fence
    info: str          # the fence's info string ("sh")
    marker: str        # the marker line above the fence, or ""
    text: str

    @property
    def words(self):
        return [w.strip() for w in MARKER.search(self.marker).group(1).split(",")]

    @property
    def role(self):
        return self.words[0]

    @property
    def flags(self):
        return set(self.words[1:])

    def describe(self):
        return f"README.md:{self.line} [{self.marker.strip()}]\n{self.text}"


def guide_lines(text=None):
    """(line number, line) of the Operator guide section, up to the next `## `."""
    lines = (README.read_text() if text is None else text).splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    assert start is not None, f"README.md has no {SECTION!r} section"
    out = []
    for number, line in enumerate(lines[start + 1:], start + 2):
        if re.match(r"^##\s", line):
            break
        out.append((number, line))
    return out


def parse(text=None):
    """The fenced blocks of the guide, and the markers that precede no fence."""
    lines = guide_lines(text)
    blocks, orphans = [], []
    i = 0
    while i < len(lines):
        number, line = lines[i]
        fence = FENCE.match(line)
        if fence:
            close = fence.group(1)
            previous = lines[i - 1][1] if i > 0 else ""
            body = []
            i += 1
            while i < len(lines) and not lines[i][1].startswith(close):
                body.append(lines[i][1])
                i += 1
            blocks.append(Block(number, fence.group(2), previous if MARKER.search(previous) else "",
                                "\n".join(body) + "\n"))
        elif MARKER.search(line):
            following = lines[i + 1][1] if i + 1 < len(lines) else ""
            if not FENCE.match(following):
                orphans.append(f"README.md:{number}: {line.strip()} is not directly above a fence")
        i += 1
    return blocks, orphans


def runnable():
    return [b for b in parse()[0] if b.marker]


# -- the guide is all marked --------------------------------------------------

def test_every_shell_block_is_marked():
    """No untested block: each shell block of the guide is a marked ```sh block."""
    blocks, problems = parse()
    for block in blocks:
        if block.info not in SHELLS and not block.marker:
            continue  # not a shell block (yaml, say)
        where = f"README.md:{block.line}"
        if not block.marker:
            problems.append(f"{where}: ```{block.info} block without a <!-- run: ROLE --> "
                            f"marker directly above it:\n{block.text}")
            continue
        if block.info != "sh":
            problems.append(f"{where}: a marked block must be ```sh, not ```{block.info}")
        if block.role not in ROLES:
            problems.append(f"{where}: role {block.role!r} is none of {', '.join(ROLES)}")
        unknown = block.flags - set(FLAGS)
        if unknown:
            problems.append(f"{where}: unknown flag(s) {sorted(unknown)}; known: {', '.join(FLAGS)}")
        if {"background", "fails"} <= block.flags:
            problems.append(f"{where}: a block cannot be both background and fails")
    assert not problems, "\n".join(problems)
    assert runnable(), "the operator guide has no runnable block"


def test_marker_parsing():
    """The parser itself, on a small guide: markers, flags, orphans, the section's end."""
    text = "\n".join([
        "intro", "```sh", "outside the guide", "```",
        SECTION,
        "<!-- run: registry, background -->", "```sh", "aar serve", "```",
        "", "<!-- run: client -->", "",  "```sh", "not directly above", "```",
        "```yaml", "a: 1", "```",
        "<!--run:client,fails-->", "```sh", "false", "```",
        "## Next", "```sh", "after the guide", "```"])
    blocks, orphans = parse(text)
    assert [(b.info, b.text, b.marker and (b.role, b.flags)) for b in blocks] == [
        ("sh", "aar serve\n", ("registry", {"background"})),
        ("sh", "not directly above\n", ""),
        ("yaml", "a: 1\n", ""),
        ("sh", "false\n", ("client", {"fails"})),
    ]
    assert len(orphans) == 1 and "README.md:11" in orphans[0]


# -- the guide, run ------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    block: Block
    returncode: int
    stdout: str
    stderr: str


class Guide:
    """One run of the guide in a sandbox under `tmp`."""

    def __init__(self, zipapp, tmp):
        self.tmp = tmp
        self.port = free_port()
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in ("aar", "ams-sync"):
            (self.bin / name).symlink_to(zipapp)
        sudo = self.bin / "sudo"
        sudo.write_text('#!/bin/sh\nexec "$@"\n')
        sudo.chmod(0o755)
        self.workdir = tmp / "work"
        self.workdir.mkdir()
        self.registry_data = tmp / "registry-data"
        self.background = []
        self.outcomes = []
        self.stopped_at = None  # the outcome that failed, if one did
        self.server_log = ""

    def env(self, role):
        env = clean_env(self.tmp)
        env["PATH"] = str(self.bin) + os.pathsep + os.environ.get("PATH", "")
        env["AAR_DATA_DIR"] = str(self.registry_data)
        if role != "registry":
            env["AMS_SYNC_DATA_DIR"] = str(self.tmp / f"{role}-data")
        return env

    def script(self, block):
        return re.sub(rf"(?<![\d.]){GUIDE_PORT}(?!\d)", str(self.port), block.text)

    def run(self, role, script):
        return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.workdir,
                              env=self.env(role), capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    def run_all(self, blocks):
        for block in blocks:
            if "background" in block.flags:
                outcome = self.start(block)
            else:
                result = self.run(block.role, self.script(block))
                outcome = Outcome(block, result.returncode, result.stdout, result.stderr)
            self.outcomes.append(outcome)
            if self.failed(outcome):
                self.stopped_at = outcome
                return

    @staticmethod
    def failed(outcome):
        if outcome.returncode is None:  # a background block that is up
            return False
        if "Traceback (most recent call last)" in outcome.stderr:
            return True
        if "fails" in outcome.block.flags:
            return outcome.returncode != 1
        return outcome.returncode != 0

    def start(self, block):
        log = open(self.tmp / f"background-{len(self.background)}.log", "w+")
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", self.script(block)],
                                   cwd=self.workdir, env=self.env(block.role),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
        self.background.append((process, log))
        deadline = time.monotonic() + 120  # a hang guard, not a measurement
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return Outcome(block, None, "", "")
            except OSError:
                time.sleep(0.1)
        if process.poll() is None:
            return Outcome(block, -1, self.logs(), "never accepted TCP on port "
                           f"{self.port} (the guide's {GUIDE_PORT})")
        return Outcome(block, process.returncode, self.logs(), "exited instead of serving")

    def logs(self):
        text = []
        for process, log in self.background:
            log.flush()
            log.seek(0)
            text.append(log.read())
        return "\n".join(text)

    def stop(self):
        for process, log in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.server_log = self.logs()
        for _, log in self.background:
            log.close()

    def report(self, outcome):
        flags = outcome.block.flags
        expected = "exit 1" if "fails" in flags else "exit 0"
        return (f"{outcome.block.describe()}"
                f"--- as run (port {self.port}), expected {expected}, got {outcome.returncode}\n"
                f"--- stdout:\n{outcome.stdout}\n--- stderr:\n{outcome.stderr}\n"
                f"--- background log:\n{self.server_log}")


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    blocks = runnable()
    if not blocks:
        pytest.skip("the operator guide has no runnable block")
    zipapp = build_zipapp(tmp_path_factory)
    run = Guide(zipapp, tmp_path_factory.mktemp("readme"))
    try:
        run.run_all(blocks)
        # What the guide says it achieved, looked at on each host afterwards.
        run.client_apps = run.run("client", "ams-sync application list --format json")
        run.revoked = run.run("registry", "aar trust list --revoked --format json")
    finally:
        run.stop()
    return run


def test_guide_runs_as_written(guide):
    if guide.stopped_at is not None:
        pytest.fail("an operator guide block did not do what the guide says:\n"
                    + guide.report(guide.stopped_at), pytrace=False)
    assert len(guide.outcomes) == len(runnable())


def _json(result, what):
    assert result.returncode == 0, f"{what} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_client_pulled_the_game(guide):
    apps = _json(guide.client_apps, "client: ams-sync application list --format json")
    assert "game" in [app.get("name") for app in apps], apps


def test_registry_revoked_the_client(guide):
    records = _json(guide.revoked, "registry: aar trust list --revoked --format json")
    revoked = [r for r in records if r.get("revoked_at")]
    assert len(revoked) == 1, records
    # The certificate the client node handed over in the guide, in the client role.
    assert revoked[0]["fingerprint"] == fingerprint_of(guide.workdir / "client.crt")
    assert revoked[0]["role"] == "client"

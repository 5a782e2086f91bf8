"""The audit log: who changed what, and whom the registry refused.

One JSON object per line in <data-dir>/logs/audit.log:

    {"time": "2026-11-30T18:40:02Z", "event": "trust.add", "user": "root",
     "uid": 0, "command": "aar trust add --publisher", "fingerprint": "…", …}

Events: trust.add, trust.remove, trust.revoke, trust.set-role, token.add,
token.remove (the `aar` commands), token.use, package.write, package.delete (server) and refusal
(address, fingerprint and name where TLS told us, reason).

Both the `aar` commands and the running server append to the same file. Each
record is one write(2) on an O_APPEND descriptor, so lines from two processes
never interleave. A record is written before the answer (or the command's
output) that it describes, so a logged-out answer has no gap in the trail.

logrotate moves the file away and expects the writer to start a new one:
before each record the path's (st_dev, st_ino) is compared with the open
descriptor's, and a renamed or deleted file is replaced by a fresh one. That
costs one stat() per record; records are rare (changes and refusals, never
reads), so it is cheaper than any signal plumbing and needs no `copytruncate`.
"""
import datetime
import json
import os
import pwd
import sys
import threading

__all__ = ["AuditLog", "AuditError", "actor", "record_command", "read", "parse_since",
           "EVENTS"]

EVENTS = ("trust.add", "trust.remove", "trust.revoke", "trust.set-role", "token.add",
          "token.remove",
          "token.use", "package.write", "package.delete", "refusal")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class AuditError(Exception):
    """The audit log cannot be written or read; the message says which file."""


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime(_TIME_FORMAT)


def actor(argv=None) -> dict:
    """Who runs this command: login user (through sudo: the one who sudo'ed), uid, command."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    fields = {"user": user, "uid": uid}
    if os.environ.get("SUDO_USER") and uid == 0:
        fields["sudo_user"] = os.environ["SUDO_USER"]
    words = list(sys.argv[1:] if argv is None else argv)
    fields["command"] = " ".join(["aar"] + words)
    return fields


class AuditLog:
    """Appends records to one file, reopening it after a logrotate rename."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._fd = None
        self._id = None

    def record(self, event, **fields):
        """Append one record; AuditError if it cannot be written."""
        entry = {"time": _now(), "event": event}
        entry.update(fields)
        line = (json.dumps(entry, separators=(",", ":"), ensure_ascii=False,
                           default=str) + "\n").encode()
        with self._lock:
            try:
                fd = self._current()
                os.write(fd, line)
            except OSError as error:
                self._drop()
                raise AuditError(f"cannot write the audit log {self.path}: "
                                 f"{error.strerror or error}") from None

    def _current(self):
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._id
        except FileNotFoundError:
            same = False
        if self._fd is not None and same:
            return self._fd
        self._drop()
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._fd, self._id = fd, (st.st_dev, st.st_ino)
        return fd

    def _drop(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = self._id = None

    def close(self):
        with self._lock:
            self._drop()


def record_command(path, argv, event, **fields):
    """Record a change an `aar` command made, before the command reports it.

    The change is already committed: if the log cannot be written the command
    must fail saying so (AuditError), rather than leave a silent gap.
    """
    log = AuditLog(path)
    try:
        log.record(event, **actor(argv), **fields)
    except AuditError as error:
        raise AuditError(f"{event} done, but {error}") from None
    finally:
        log.close()


def parse_since(text) -> datetime.datetime:
    """'2026-11-30', '2026-11-30T18:00:00Z' or a duration back from now ('1h', '30m', '2d')."""
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        delta = datetime.timedelta(seconds=int(text[:-1]) * units[text[-1]])
        return datetime.datetime.now(datetime.timezone.utc) - delta
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"bad time {text!r}: use 2026-11-30, 2026-11-30T18:00:00Z "
                         "or a duration such as 1h, 30m, 2d") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment


def read(path, since=None) -> list:
    """The records of one audit log file, oldest first; since: an aware datetime.

    A damaged line (a crash mid-write, an editor) is returned as an
    {"event": "unreadable", "line": …} record rather than hidden.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read().splitlines()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise AuditError(f"cannot read the audit log {path}: "
                         f"{error.strerror or error}") from None
    cutoff = since.strftime(_TIME_FORMAT) if since is not None else None
    records = []
    for number, line in enumerate(raw, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError
        except ValueError:
            entry = {"time": "", "event": "unreadable", "line": number}
        if cutoff and str(entry.get("time", "")) < cutoff and entry["event"] != "unreadable":
            continue
        records.append(entry)
    return records

"""The agent's registry settings, the ones `amc config set registry.…` takes.

    registry.url              https://HOST:PORT of the registry      (unset)
    registry.fingerprint      64 hex: the registry certificate pin   (unset)
    registry.mode             push | pull | manual                   pull
    registry.update_interval  Go duration, at least 1s               1h
    registry.filter           comma-separated tags; empty = all      (empty)

Stored as one JSON object in <data-dir>/config.json, mode 0600. A write goes
to a temporary file in the same directory, is fsynced and renamed over the
old file, so a reader (the running loop) sees the old settings or the new,
never half a file; writers take a lock on the directory, so two `config set`
at once both land. Setting a key to "" puts back its default.

A running loop keeps one Config and calls reload() before each cycle: one
stat() tells whether the file changed, and only then is it read again.
"""
import contextlib
import fcntl
import json
import os
import tempfile
import urllib.parse

import names

from . import duration
from .errors import ConfigError
from .manifest import check_tag

__all__ = [
    "Config", "validate", "KEYS", "DEFAULTS", "MODES", "MIN_INTERVAL",
    "UNKNOWN_KEY", "BAD_URL", "PLAIN_HTTP", "BAD_FINGERPRINT", "BAD_MODE", "BAD_INTERVAL",
    "SHORT_INTERVAL", "BAD_FILTER", "UNREADABLE", "UNWRITABLE",
]

MODES = ("push", "pull", "manual")
MIN_INTERVAL = 1.0
DEFAULTS = {
    "registry.url": "",
    "registry.fingerprint": "",
    "registry.mode": "pull",
    "registry.update_interval": "1h",
    "registry.filter": "",
}
KEYS = tuple(DEFAULTS)

UNKNOWN_KEY = "unknown setting {key}: use one of " + ", ".join(KEYS)
BAD_URL = ("invalid registry.url {value}: expected https://HOST:PORT, like "
           "https://192.168.178.45:3000")
PLAIN_HTTP = ("invalid registry.url {value}: the registry speaks HTTPS only; use "
              "https://HOST:PORT")
BAD_FINGERPRINT = "invalid registry.fingerprint: {error}"
BAD_MODE = "invalid registry.mode {value}: expected push, pull or manual, like pull"
BAD_INTERVAL = "invalid registry.update_interval: {error}"
SHORT_INTERVAL = ("registry.update_interval {value} is too short: the least is "
                  "1s; use something like 30s or 5m")
BAD_FILTER = ("invalid registry.filter: {error}; expected comma-separated "
              "tags like 'game,casual', or '' for all")
UNREADABLE = "cannot read settings file {path}: {reason}"
UNWRITABLE = "cannot write settings file {path}: {reason}"

_MAX_VALUE = 1024


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _url(value):
    bad = ConfigError(BAD_URL.format(value=_show(value)))
    if any(char.isspace() or ord(char) < 32 for char in value):
        raise bad
    parts = urllib.parse.urlsplit(value)
    if parts.scheme.lower() == "http":
        raise ConfigError(PLAIN_HTTP.format(value=_show(value)))
    try:
        port = parts.port
    except ValueError:
        raise bad from None
    # Only scheme, host and port: the client builds every path itself, and
    # credentials in a URL would be shown by `config show`.
    if (parts.scheme != "https" or not parts.hostname or not port
            or parts.username is not None or parts.password is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or "?" in value or "#" in value):
        raise bad
    return f"https://{parts.netloc}"


def _fingerprint(value):
    try:
        return names.check_fingerprint(value, allow_prefix=False)
    except ValueError as error:
        raise ConfigError(BAD_FINGERPRINT.format(error=error)) from None


def _mode(value):
    if value not in MODES:
        raise ConfigError(BAD_MODE.format(value=_show(value)))
    return value


def _interval(value):
    try:
        seconds = duration.parse_duration(value)
    except ValueError as error:
        raise ConfigError(BAD_INTERVAL.format(error=error)) from None
    if seconds < MIN_INTERVAL:
        raise ConfigError(SHORT_INTERVAL.format(value=_show(value)))
    return value


def _filter(value):
    tags = []
    for tag in value.split(","):
        tag = tag.strip()
        try:
            check_tag(tag)
        except ValueError as error:
            raise ConfigError(BAD_FILTER.format(error=error)) from None
        if tag not in tags:
            tags.append(tag)
    return ",".join(tags)


_CHECKS = {
    "registry.url": _url,
    "registry.fingerprint": _fingerprint,
    "registry.mode": _mode,
    "registry.update_interval": _interval,
    "registry.filter": _filter,
}


def validate(key, value) -> str:
    """Return the value to store for key (normalised); ConfigError if invalid.

    "" stands for the default.
    """
    if key not in _CHECKS:
        raise ConfigError(UNKNOWN_KEY.format(key=_show(key)))
    if not isinstance(value, str):
        raise ConfigError(f"the value of {key} must be text")
    value = value.strip()
    if value == "":
        return DEFAULTS[key]
    if len(value) > _MAX_VALUE:
        raise ConfigError(f"the value of {key} is longer than {_MAX_VALUE} characters")
    return _CHECKS[key](value)


def _stamp(path):
    # The inode changes with every os.replace, so a rewrite is seen even when
    # it keeps the size and lands within the filesystem's mtime granularity.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read(path):
    """(stored values, stamp) of the file; ({}, None) when it does not exist."""
    try:
        with open(path, "rb") as file:
            stamp = os.fstat(file.fileno())
            data = file.read(1024 * 1024 + 1)
    except FileNotFoundError:
        return {}, None
    except OSError as error:
        raise ConfigError(UNREADABLE.format(path=path, reason=error.strerror)) from None
    try:
        stored = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(UNREADABLE.format(path=path, reason=f"not JSON ({error})")) from None
    if not isinstance(stored, dict):
        raise ConfigError(UNREADABLE.format(path=path, reason="not a JSON object"))
    for key in KEYS:
        if key in stored:
            try:
                # A hand-edited file may hold "AB:CD:…"; keep the canonical form.
                stored[key] = validate(key, stored[key])
            except ConfigError as error:
                raise ConfigError(UNREADABLE.format(path=path, reason=error)) from None
    return stored, (stamp.st_ino, stamp.st_mtime_ns, stamp.st_size)


def _temp_prefix(path):
    return "." + os.path.basename(path) + "."


def _write(path, stored):
    directory = os.path.dirname(os.path.abspath(path))
    text = json.dumps(stored, indent=2, sort_keys=True) + "\n"
    fd, temp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Config:
    """The settings in one config.json; see the module docstring."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._stored, self._stamp = {}, None

    @classmethod
    def load(cls, path) -> "Config":
        """Read path (a missing file means all defaults); ConfigError if unusable."""
        config = cls(path)
        config._stored, config._stamp = _read(config.path)
        return config

    def get(self, key) -> str:
        if key not in DEFAULTS:
            raise ConfigError(UNKNOWN_KEY.format(key=_show(key)))
        # _read() validated and normalised what is stored.
        return self._stored.get(key, DEFAULTS[key])

    def items(self) -> list:
        """[(key, value)] for every setting, defaults included, in KEYS order."""
        return [(key, self.get(key)) for key in KEYS]

    def as_dict(self) -> dict:
        return dict(self.items())

    def set(self, key, value) -> str:
        """Validate, store and return the value; ConfigError if invalid."""
        value = validate(key, value)
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            lock = os.open(directory, os.O_RDONLY)
        except OSError as error:
            raise ConfigError(UNWRITABLE.format(path=self.path, reason=error.strerror)) from None
        try:
            # Read again under the lock: another process may have set another
            # key since we loaded, and its change must survive ours.
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Under the lock no other write is in flight: a temporary file is
            # what a killed writer left behind.
            prefix = _temp_prefix(self.path)
            for name in os.listdir(directory):
                if name.startswith(prefix) and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
            stored, _ = _read(self.path)
            if value == DEFAULTS[key]:
                stored.pop(key, None)
            else:
                stored[key] = value
            try:
                _write(self.path, stored)
            except OSError as error:
                raise ConfigError(UNWRITABLE.format(path=self.path,
                                                    reason=error.strerror)) from None
            self._stored, self._stamp = _read(self.path)
        finally:
            os.close(lock)
        return value

    def changed(self) -> bool:
        """True if the file differs from what was loaded (one stat call)."""
        return _stamp(self.path) != self._stamp

    def reload(self) -> bool:
        """Read the file again if it changed; True if it did. On an invalid
        file the old settings stay and ConfigError is raised.
        """
        if not self.changed():
            return False
        self._stored, self._stamp = _read(self.path)
        return True

    # Typed views for the sync engine.

    @property
    def url(self) -> str:
        return self.get("registry.url")

    @property
    def fingerprint(self) -> str:
        return self.get("registry.fingerprint")

    @property
    def mode(self) -> str:
        return self.get("registry.mode")

    @property
    def update_interval(self) -> float:
        """Seconds."""
        return duration.parse_duration(self.get("registry.update_interval"))

    @property
    def filter(self) -> tuple:
        """The tags to pull; () means all."""
        value = self.get("registry.filter")
        return tuple(value.split(",")) if value else ()

"""Validation of the names both programs share: applications, versions,
architectures and certificate fingerprints.

Every check lives here once, so the CLIs, the server and the agent accept and
refuse exactly the same strings. Each check returns the canonical form and
raises ValueError with a message that shows a valid example, because the
person reading it usually typed the value by hand.
"""
import platform
import re

__all__ = [
    "NAME_RE", "ARCH_RE", "MAX_NAME", "MAX_VERSION", "FINGERPRINT_LEN",
    "MIN_PREFIX", "check_app_name", "check_version", "check_arch",
    "check_fingerprint", "host_architecture",
]

MAX_NAME = 64
MAX_VERSION = 2**31 - 1
FINGERPRINT_LEN = 64
MIN_PREFIX = 12

# A name becomes a URL path segment and a directory name: the first character
# must not be '.', '_' or '-' (hidden files, option-like arguments).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_NAME - 1))
ARCH_RE = re.compile(r"[a-z0-9_]{1,16}")
_HEX_RE = re.compile(r"[0-9a-f]+")
# str.isdigit() accepts other scripts' digits ('٣'); versions are ASCII only.
_DECIMAL_RE = re.compile(r"[0-9]+")

_NAME_EXAMPLE = "a name like 'my-game' or 'com.example.app_2'"
_ARCH_EXAMPLE = "an architecture like 'amd64' or 'arm64'"
_VERSION_EXAMPLE = f"a whole number from 0 to {MAX_VERSION}, like 0 or 12"
_FULL_EXAMPLE = ("64 hex digits (colons allowed) like "
                 "'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'")
_FP_EXAMPLE = (f"{_FULL_EXAMPLE}, or a unique prefix of at least {MIN_PREFIX} "
               "like 'e3b0c44298fc'")

# platform.machine() spellings -> the names AMS and Debian use.
_MACHINES = {
    "x86_64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "armhf", "armv8l": "armhf",
    "i386": "i386", "i486": "i386", "i586": "i386", "i686": "i386",
    "x86": "i386",
}


def _show(value) -> str:
    # repr() keeps control characters and trailing spaces visible, and the
    # cut keeps a pasted megabyte out of a one-line message.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_app_name(name) -> str:
    """Return name if it is a valid application name, else raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"application name must be text: expected {_NAME_EXAMPLE}")
    if len(name) > MAX_NAME:
        raise ValueError(f"application name is longer than {MAX_NAME} characters: "
                         f"expected {_NAME_EXAMPLE}")
    # fullmatch, never match: '$' would let a trailing newline through.
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid application name {_show(name)}: expected "
                         f"{_NAME_EXAMPLE} (letters, digits, '.', '_', '-'; "
                         "starting with a letter or digit)")
    if ".." in name:
        raise ValueError(f"invalid application name {_show(name)}: '..' is not "
                         f"allowed; expected {_NAME_EXAMPLE}")
    return name


def check_version(value) -> int:
    """Return value as an int in 0..2**31-1; accepts an int or a decimal string."""
    # bool is an int subclass; True as a version is always a mistake.
    if isinstance(value, bool):
        raise ValueError(f"invalid version {_show(value)}: expected {_VERSION_EXAMPLE}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _DECIMAL_RE.fullmatch(value):
        # Bound the length before int(): huge digit strings are slow to convert.
        if len(value.lstrip("0")) > 10:
            raise ValueError(f"version {_show(value)} is too large: "
                             f"expected {_VERSION_EXAMPLE}")
        number = int(value)
    else:
        raise ValueError(f"invalid version {_show(value)}: expected {_VERSION_EXAMPLE}")
    if not 0 <= number <= MAX_VERSION:
        raise ValueError(f"version {number} is out of range: expected {_VERSION_EXAMPLE}")
    return number


def check_arch(arch) -> str:
    """Return arch if it is a valid architecture name, else raise ValueError."""
    if not isinstance(arch, str) or not ARCH_RE.fullmatch(arch):
        raise ValueError(f"invalid architecture {_show(arch)}: expected "
                         f"{_ARCH_EXAMPLE} (lowercase letters, digits, '_'; "
                         "at most 16)")
    return arch


def check_fingerprint(value, allow_prefix=True) -> str:
    """Return the canonical fingerprint (or prefix): no colons, lowercase hex.

    Accepts the forms people paste: `openssl x509 -fingerprint` output with
    colons, upper case, surrounding whitespace.
    """
    if not isinstance(value, str):
        raise ValueError(f"fingerprint must be text: expected {_FP_EXAMPLE}")
    text = "".join(value.split()).replace(":", "").lower()
    if not text or not _HEX_RE.fullmatch(text):
        raise ValueError(f"invalid fingerprint {_show(value)}: expected {_FP_EXAMPLE}")
    if len(text) > FINGERPRINT_LEN:
        raise ValueError(f"fingerprint {_show(value)} has {len(text)} hex digits, "
                         f"more than {FINGERPRINT_LEN}: expected {_FP_EXAMPLE}")
    if len(text) < FINGERPRINT_LEN:
        if not allow_prefix:
            raise ValueError(f"fingerprint {_show(value)} has {len(text)} hex "
                             f"digits: expected {_FULL_EXAMPLE}")
        if len(text) < MIN_PREFIX:
            raise ValueError(f"fingerprint prefix {_show(value)} is shorter than "
                             f"{MIN_PREFIX} hex digits: expected {_FP_EXAMPLE}")
    return text


def host_architecture() -> str:
    """The architecture name of this machine: amd64, arm64, armhf, i386, …"""
    machine = platform.machine()
    return _MACHINES.get(machine.lower(), machine.lower())

"""`<data-dir>/conf/main.yaml`: the registry's configuration file.

    listen: 0.0.0.0:3000
    metrics: 127.0.0.1:9300
    storage:
      s3:
        endpoint: https://s3.example.net:443
        region: us-east-1
        bucket: aar
        ...

`aar serve` and every `aar` command read it when it exists; command-line flags
win over it. The file is a small subset of YAML, read by `parse()` here so the
runtime stays on the standard library: nested mappings by indentation, plain or
quoted scalars, `#` comments, true/false, integers. Anything else (lists, flow
style, anchors, multi-line strings) is refused with the file and line, rather
than read wrongly.

`load()` gives a Config; `Config.get("a.b")` reads any key, so other concerns
(metrics, say) take theirs without this module knowing them. The `storage.s3`
keys are checked here because a mistake there must stop `aar` at start.
"""
import os
import re

__all__ = ["Config", "ConfigError", "S3Settings", "load", "parse"]

_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
_S3_KEYS = {"endpoint", "region", "bucket", "prefix", "access-key", "secret-access-key",
            "ca-file", "redirect", "addressing", "stale-uploads"}


class ConfigError(Exception):
    """The configuration file cannot be used; the message says where and why."""


def _scalar(text, where):
    if not text:
        return None
    if text[0] in "\"'":
        quote = text[0]
        if len(text) < 2 or text[-1] != quote:
            raise ConfigError(f"{where}: unterminated quoted string")
        body = text[1:-1]
        return body.replace("''", "'") if quote == "'" else _unescape(body, where)
    if text[0] in "[{&*!|>":
        raise ConfigError(f"{where}: only plain values are supported here, not {text[0]!r}")
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("null", "~"):
        return None
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return text


def _unescape(body, where):
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: bad escape in quoted string: {exc}") from None


def _strip_comment(line):
    # A '#' starts a comment at the line's start or after a space, outside quotes.
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or line[i - 1] in " :"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def parse(text, name="main.yaml") -> dict:
    """Nested dicts of the YAML subset in ``text``; ConfigError names the line."""
    root = {}
    stack = [[None, root]]        # [indent of the mapping's keys, mapping]
    pending = None                # (mapping, key, indent): a key awaiting its block
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        if "\t" in line[:len(line) - len(line.lstrip())]:
            raise ConfigError(f"{where}: indent with spaces, not tabs")
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if body.startswith("- ") or body == "-":
            raise ConfigError(f"{where}: lists are not supported in this file")
        key, sep, value = body.partition(":")
        if not sep or (value and not value[0].isspace()):
            raise ConfigError(f"{where}: expected 'key: value'")
        key = key.strip().strip("\"'")
        if not _KEY_RE.match(key):
            raise ConfigError(f"{where}: bad key {key!r}")
        if pending is not None:
            parent, p_key, p_indent = pending
            pending = None
            if indent > p_indent:
                parent[p_key] = {}
                stack.append([indent, parent[p_key]])
        while len(stack) > 1 and indent < stack[-1][0]:
            stack.pop()
        if stack[-1][0] is None:
            stack[-1][0] = indent
        if indent != stack[-1][0]:
            raise ConfigError(f"{where}: inconsistent indentation")
        mapping = stack[-1][1]
        if key in mapping:
            raise ConfigError(f"{where}: {key!r} appears twice")
        value = value.strip()
        mapping[key] = _scalar(value, where)
        if not value:
            pending = (mapping, key, indent)
    return root


class S3Settings:
    """storage.s3, checked; secrets fall back to the AWS environment variables."""

    def __init__(self, values, where, env=os.environ):
        unknown = set(values) - _S3_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) under storage.s3: "
                              f"{', '.join(sorted(unknown))}")
        self.endpoint = values.get("endpoint") or None
        self.region = str(values.get("region") or env.get("AWS_REGION")
                          or env.get("AWS_DEFAULT_REGION") or "us-east-1")
        self.bucket = values.get("bucket")
        if not self.bucket or not isinstance(self.bucket, str):
            raise ConfigError(f"{where}: storage.s3.bucket is required")
        prefix = str(values.get("prefix") or "")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.access_key = values.get("access-key") or env.get("AWS_ACCESS_KEY_ID")
        self.secret_key = (values.get("secret-access-key")
                           or env.get("AWS_SECRET_ACCESS_KEY"))
        if not self.access_key or not self.secret_key:
            raise ConfigError(f"{where}: storage.s3 needs access-key and "
                              "secret-access-key (or $AWS_ACCESS_KEY_ID and "
                              "$AWS_SECRET_ACCESS_KEY)")
        self.session_token = env.get("AWS_SESSION_TOKEN")
        self.ca_file = values.get("ca-file") or None
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise ConfigError(f"{where}: storage.s3.ca-file {self.ca_file} does not exist")
        redirect = values.get("redirect", True)
        if not isinstance(redirect, bool):
            raise ConfigError(f"{where}: storage.s3.redirect must be true or false")
        self.redirect = redirect
        # Multipart uploads older than this (seconds) are a dead replica's and
        # are aborted at start; a live one's large upload must never be older.
        self.stale_uploads = values.get("stale-uploads", 86400)
        if isinstance(self.stale_uploads, bool) or not isinstance(self.stale_uploads, int) \
                or self.stale_uploads < 0:
            raise ConfigError(f"{where}: storage.s3.stale-uploads must be seconds (>= 0)")
        self.addressing = values.get("addressing") or None
        if self.addressing not in (None, "path", "virtual"):
            raise ConfigError(f"{where}: storage.s3.addressing must be path or virtual")


class Config:
    """The file's values; an absent file is an empty configuration."""

    def __init__(self, values=None, path=None, env=os.environ):
        self.values = values or {}
        self.path = path
        where = str(path or "main.yaml")
        storage = self.get("storage") or {}
        if not isinstance(storage, dict):
            raise ConfigError(f"{where}: storage must be a mapping")
        s3 = storage.get("s3")
        if s3 is not None and not isinstance(s3, dict):
            raise ConfigError(f"{where}: storage.s3 must be a mapping")
        self.s3 = S3Settings(s3, where, env) if s3 else None

    def get(self, dotted, default=None):
        node = self.values
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def load(data_dir, env=os.environ) -> Config:
    """The Config of ``<data_dir>/conf/main.yaml`` (empty when there is none)."""
    path = os.path.join(os.fspath(data_dir), "conf", "main.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return Config(path=path, env=env)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return Config(parse(text, path), path, env)

"""The HTTP API (version 1.0) over the package store.

Routes, authorisation and the JSON envelope. Transport concerns (TLS, keep-alive,
timeouts) are the business of `protocol` and `server`; storage is `storage`'s.

Every request is authorised against the live trust store before it is routed: a
certificate removed or revoked while its connection stays open is refused at its
next request, and the connection is closed.

A caller without a certificate (the TLS context is CERT_OPTIONAL for the sake of
joining nodes) may POST /1.0/join and nothing else: any other request of such a
caller is refused by closing the connection without an answer, the way a
refused handshake looks, so that nothing of the API shows to it.

Each request reports to `server.events` (registry/events.py): its route
template, status and duration for the metrics; refusals, writes, deletes and
downloads for the audit and service logs.
"""
import hashlib
import json
import logging
import re
import time
import urllib.parse

import names
from version import VERSION
from registry import join
from registry.errors import ApiError, envelope_error, envelope_sync
from registry.livetrust import Refusal
from registry.protocol import RequestHandler

__all__ = ["ApiHandler", "ListingCache"]

log = logging.getLogger("aar.api")

_JSON = "application/json"
_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)\Z")
_MAX_MANIFEST = 32 * 1024
_READ_CHUNK = 1 << 20
_LISTING_CACHE = 64


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class ApiHandler(RequestHandler):
    """Routes one request of the registry API."""

    server_version = "aar/" + VERSION

    @classmethod
    def attach(cls, server):
        """Give a new server the state these handlers share across requests."""
        server.listing_cache = ListingCache()
        server.join_gate = join.Gate()

    def dispatch(self):
        self.role = None
        self.route = "other"
        self.code = None
        self.sent = 0
        self.conn.consumed = 0
        started = time.monotonic()
        try:
            if self.conn.fingerprint is None:
                self._certificate_less()
            else:
                self._authorise()
                self._route()
        except ApiError as err:
            self._send_error(err)
        except (ConnectionError, TimeoutError):
            raise
        except OSError as exc:
            log.error("%s %s failed: %s", self.command, self.path, exc)
            self.server.events.storage_error()
            self._send_error(ApiError.of("internal", "server storage error"))
        finally:
            self.server.events.request(self.route, self.command, self.code or "none",
                                       time.monotonic() - started, self.conn.consumed,
                                       self.sent)

    def log_request(self, code="-", size="-"):
        self.code = str(code)
        if isinstance(size, int) and self.command != "HEAD":
            self.sent = size
        super().log_request(code, size)

    # -- authorisation -------------------------------------------------------

    def _addr(self):
        host, port = self.client_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _certificate_less(self):
        if self.command == "POST" and self.path.partition("?")[0] == join.PATH:
            self.route = join.PATH
            return self._join()
        self.server.events.refused(self._addr(), "no_certificate",
                                   f"{self.command} {self.path[:200]} without a client "
                                   "certificate (only the join endpoint takes none)")
        self.close_connection = True       # closed unanswered, like a refused handshake

    def _authorise(self):
        fp = self.conn.fingerprint
        try:
            self.role = self.server.trust.authorise(fp)
        except Refusal as refusal:
            self.server.events.refused(
                self._addr(), refusal.code, f"{self.command} {self.path[:200]}: "
                f"{refusal.reason}", fingerprint=fp, name=refusal.name)
            self.close_connection = True
            raise ApiError.of("forbidden", f"forbidden: {refusal.reason}")

    def _require_publisher(self):
        if self.role != "publisher":
            fp = self.conn.fingerprint
            self.server.events.refused(
                self._addr(), "read_only", f"{self.command} {self.path[:200]}: role "
                f"{self.role} cannot write", fingerprint=fp,
                name=self.server.trust.name_of(fp))
            self._body_unread()
            raise ApiError.of("forbidden", f"forbidden: the {self.role} role is "
                              "read-only; writes need a publisher certificate")

    def _body_unread(self):
        # An error answered before the request body is read leaves that body
        # on the wire; the connection cannot carry another request after it.
        if self.body_pending:
            self.close_connection = True

    # -- routing ---------------------------------------------------------------

    def _route(self):
        path, _, query = self.path.partition("?")
        parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
        if parts and parts[-1] == "" and len(parts) > 1:
            parts.pop()                   # tolerate a trailing slash
        if not parts or parts[0] != "1.0":
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        method = self.command
        n = len(parts)
        if n == 1:
            self.route = "/1.0"
            return self._only(method, ("GET", "HEAD"), self._info)
        if parts[1] == "status" and n == 2:
            self.route = "/1.0/status"
            return self._only(method, ("GET", "HEAD"),
                              lambda: self._send_json({"status": "ok"}))
        if "/".join(parts[:2]) == join.PATH[1:] and n == 2:
            self.route = join.PATH
            return self._only(method, ("POST",), self._join)
        if parts[1] != "applications":
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        if n == 2:
            self.route = "/1.0/applications"
            return self._only(method, ("GET", "HEAD"), lambda: self._listing(query))
        app = self._check(names.check_app_name, parts[2])
        if n == 3:
            self.route = "/1.0/applications/{app}"
            if method == "DELETE":
                return self._delete_application(app)
            return self._only(method, ("GET", "HEAD"), lambda: self._application(app))
        if n not in (5, 6):
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        version = self._check(names.check_version, parts[3])
        arch = self._check(names.check_arch, parts[4])
        if n == 5:
            self.route = "/1.0/applications/{app}/{version}/{arch}"
            if method == "DELETE":
                return self._delete_package(app, version, arch)
            return self._only(method, ("GET", "HEAD"),
                              lambda: self._send_json(self._package(app, version, arch)))
        if parts[5] != "package":
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        self.route = "/1.0/applications/{app}/{version}/{arch}/package"
        if method == "PUT":
            return self._upload(app, version, arch)
        return self._only(method, ("GET", "HEAD"), lambda: self._download(app, version, arch))

    def _only(self, method, allowed, action):
        if method not in allowed:
            self._body_unread()
            raise ApiError.of("method_not_allowed",
                              f"method {method} not allowed here; use {', '.join(allowed)}")
        return action()

    @staticmethod
    def _check(validate, value):
        try:
            return validate(value)
        except ValueError as exc:
            raise ApiError.of("bad_request", str(exc))

    # -- reads -------------------------------------------------------------------

    def _info(self):
        self._send_json({
            "api_version": "1.0",
            "server_version": VERSION,
            "server_fingerprint": self.server.server_fingerprint,
            "role": self.role,
            "fingerprint": self.conn.fingerprint,
        })

    def _listing(self, query):
        params = urllib.parse.parse_qs(query) if query else {}
        arch = params.get("architecture", [""])[-1] or None
        if arch is not None:
            arch = self._check(names.check_arch, arch)
        tags = tuple(sorted({t.strip() for v in params.get("tags", [])
                             for t in v.split(",") if t.strip()}))
        body, etag = self.server.listing_cache.get(self.server.packages, arch, tags)
        if etag in _etags(self.headers.get("if-none-match")):
            self.start_response(304, headers=(("ETag", etag),))
            return self.finish_response()
        self.send_bytes(200, body, _JSON, (("ETag", etag),))

    def _application(self, app):
        found = self.server.packages.application(app)
        if found is None:
            raise ApiError.of("not_found", f"application {app!r} not found")
        self._send_json(found)

    def _package(self, app, version, arch):
        found = self.server.packages.get(app, version, arch)
        if found is None:
            raise ApiError.of("not_found", f"package {app}/{version}/{arch} not found")
        return found

    def _download(self, app, version, arch):
        pkg = self._package(app, version, arch)
        etag = '"%s"' % pkg["sha256"]
        if etag in _etags(self.headers.get("if-none-match")):
            self.start_response(304, headers=(("ETag", etag),))
            return self.finish_response()
        packages = self.server.packages
        url = packages.redirect_url(pkg) if self.command == "GET" else None
        if url is not None:
            # The object store serves the bytes; the client checks the sha256.
            self.server.events.downloaded(self._addr(), self.conn.fingerprint, pkg,
                                          0, pkg["size"])
            self.start_response(307, None, 0, (("Location", url), ("ETag", etag)))
            return self.finish_response()
        size = pkg["size"]
        start, end = self._range(size)
        headers = [("ETag", etag), ("Accept-Ranges", "bytes")]
        status = 200
        if self.headers.get("range"):
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        if self.command == "HEAD":
            self.start_response(status, "application/octet-stream", end - start, headers)
            return self.finish_response()
        with packages.open_blob(pkg, start, end) as f:
            self.start_response(status, "application/octet-stream", end - start, headers)
            self.finish_response()
            self.server.events.downloaded(self._addr(), self.conn.fingerprint, pkg,
                                          start, end)
            self._stream_file(f, end - start)

    def _stream_file(self, f, remaining):
        buf = bytearray(_READ_CHUNK)
        view = memoryview(buf)
        send = self.conn.sock.sendall
        while remaining > 0:
            n = f.readinto(view[:min(remaining, _READ_CHUNK)])
            if not n:                     # the blob shrank: end the connection
                self.close_connection = True
                log.error("blob %s ended %d bytes early",
                          getattr(f, "name", "in the object store"), remaining)
                return
            send(view[:n])
            remaining -= n

    def _range(self, size):
        value = self.headers.get("range")
        if not value:
            return 0, size
        m = _RANGE_RE.match(value.strip())
        if not m or m.group(1) == m.group(2) == "":
            raise ApiError.of("range_not_satisfiable", f"unsupported Range {value!r}; "
                              "use one range such as 'bytes=1024-'")
        first, last = _offset(m.group(1)), _offset(m.group(2))
        if first is None:                 # suffix: the last N bytes
            start, end = max(0, size - last), size
        else:
            # An end past the size is clamped to it (RFC 9110 14.1.2).
            start = first
            end = min(size, last + 1) if last is not None else size
        if start >= size or start >= end:
            raise ApiError.of("range_not_satisfiable",
                              f"Range {value[:60]!r} outside the package's {size} bytes")
        return start, end

    # -- writes --------------------------------------------------------------------

    def _upload(self, app, version, arch):
        self._require_publisher()
        length = self.body_length
        if length is None or "content-length" not in self.headers:
            self.close_connection = True
            raise ApiError.of("length_required", "an upload needs Content-Length "
                              "(chunked transfer encoding is not accepted)")
        if length > self.server.settings.max_package_size:
            self.close_connection = True
            raise ApiError.of("too_large", f"package of {length} bytes exceeds the "
                              f"limit of {self.server.settings.max_package_size}")
        digest = (self.headers.get("x-aar-sha256") or "").strip().lower()
        if not _SHA256_RE.match(digest):
            self._body_unread()
            raise ApiError.of("bad_request", "X-Aar-Sha256 must hold the package's "
                              "sha256 as 64 hex digits")
        manifest = self._manifest_header()
        if "100-continue" in self.headers.get("expect", "").lower():
            self.send_continue()
        self.conn.consumed = 0
        events = self.server.events
        events.uploads.inc()
        try:
            created, pkg = self.server.packages.put(
                app, version, arch, self.conn, length, digest, manifest,
                self.conn.fingerprint)
        finally:
            events.uploads.dec()
            # A store that answers without reading the whole body (a refusal,
            # or a no-op for bytes it already has) leaves the rest on the wire.
            if self.conn.consumed != length:
                self.close_connection = True
        fp = self.conn.fingerprint
        events.stored(fp, self.server.trust.name_of(fp), pkg, created)
        self._send_json(pkg, status=201 if created else 200)

    def _manifest_header(self):
        raw = self.headers.get("x-aar-manifest")
        if not raw:
            return {}
        if len(raw) > _MAX_MANIFEST:
            self._body_unread()
            raise ApiError.of("bad_request", "X-Aar-Manifest too large")
        try:
            manifest = json.loads(raw)
        except RecursionError:
            self._body_unread()
            raise ApiError.of("bad_request", "X-Aar-Manifest is nested too deeply")
        except ValueError as exc:
            self._body_unread()
            raise ApiError.of("bad_request", f"X-Aar-Manifest is not JSON: {exc}")
        if not isinstance(manifest, dict):
            self._body_unread()
            raise ApiError.of("bad_request", "X-Aar-Manifest must be a JSON object")
        return manifest

    def _delete_package(self, app, version, arch):
        self._require_publisher()
        # Read first: the audit record names the bytes that went.
        pkg = self.server.packages.get(app, version, arch)
        if pkg is None or not self.server.packages.delete_package(app, version, arch):
            raise ApiError.of("not_found", f"package {app}/{version}/{arch} not found")
        self._deleted([pkg])
        self._send_json({})

    def _delete_application(self, app):
        self._require_publisher()
        found = self.server.packages.application(app)
        count = self.server.packages.delete_application(app)
        if not count:
            raise ApiError.of("not_found", f"application {app!r} not found")
        self._deleted((found or {}).get("versions", []))
        self._send_json({"deleted": count})

    def _deleted(self, packages):
        fp = self.conn.fingerprint
        self.server.events.deleted(fp, self.server.trust.name_of(fp), packages)

    # -- joining -------------------------------------------------------------------

    def _join(self):
        length = self.body_length_of_join()
        body = self.conn.read(length) if length else b""
        self.close_connection = True       # one join per connection, refused or not
        self._send_json(join.join(self.server, self._addr(), body))

    def _drop_body(self):
        # The transport drops every body but an upload's before dispatch; a
        # join's body is read by _join (at most join.MAX_BODY bytes).
        if self.command == "POST" and self.path.partition("?")[0] == join.PATH:
            return
        super()._drop_body()

    def body_length_of_join(self):
        length = self.body_length
        if length is None or "content-length" not in self.headers:
            self.close_connection = True
            raise ApiError.of("length_required", "a join needs Content-Length")
        if length > join.MAX_BODY:
            self.close_connection = True
            raise ApiError.of("too_large", f"a join body is at most {join.MAX_BODY} bytes")
        return length

    # -- bodies ----------------------------------------------------------------

    def _send_json(self, metadata, status=200):
        self.send_bytes(status, _dumps(envelope_sync(metadata, status)), _JSON)

    def _send_error(self, err):
        if err.status >= 500:
            self.close_connection = True
        self.send_bytes(err.status, _dumps(envelope_error(err)), _JSON)


def _offset(digits):
    """A Range offset as an int, None when empty. An offset longer than an
    int64 is refused rather than handed to int(), which raises past 4,300
    digits."""
    if not digits:
        return None
    if len(digits) > 18:
        raise ApiError.of("bad_request", f"Range offset of {len(digits)} digits")
    return int(digits)


def _etags(header):
    if not header:
        return ()
    return [t.strip() for t in header.split(",")]


class ListingCache:
    """Serialised listings by (store generation, architecture, tags).

    A listing of a thousand applications costs milliseconds to build and
    serialise, and AMS nodes ask for it every cycle; between two uploads the
    answer is the same bytes, so it is built once. The ETag is a digest of the
    bytes, which stays right across restarts.
    """

    def __init__(self):
        self._entries = {}

    def get(self, packages, arch, tags):
        key = (packages.generation(), arch, tags)
        hit = self._entries.get(key)
        if hit is None:
            body = _dumps(envelope_sync(packages.list(architecture=arch, tags=tags)))
            hit = (body, '"%s"' % hashlib.sha256(body).hexdigest()[:32])
            if len(self._entries) >= _LISTING_CACHE:
                self._entries.clear()
            self._entries[key] = hit
        return hit


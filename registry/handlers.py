"""The HTTP API (version 1.0) over the package store.

Authorisation, routes and the JSON envelope; connection.py carries the bytes.
Every request passes `handle`, which authorises it against the live trust
store before anything else: a certificate removed or revoked while its
connection stays open is refused at its next request, and the connection is
closed. Routing is the one table in `_route`.

A caller without a certificate (the TLS context is CERT_OPTIONAL for the sake
of joining nodes) may POST /1.0/join and nothing else: any other request of
such a caller is refused by closing the connection without an answer, the way
a refused handshake looks, so that nothing of the API shows to it.

Each request reports to `server.events` (registry/events.py): its route
template, status and duration for the metrics (sent by the connection with
the answer); refusals, writes, deletes and downloads for the audit and
service logs.

What runs where: answers that need no disk (status, info, a listing already
in the cache, 304s, errors) are built on the loop thread and sent at once.
Everything that may block (package metadata from the database, opening a
package file, uploads, deletes) runs as a job in the worker pool and comes
back as a Reply.
"""
import json
import logging
import re
import urllib.parse

import names
from version import VERSION
from registry import apiheaders, join, uploads
from registry.bodies import FileBody, Reply
from registry.errors import ApiError, envelope_error, envelope_sync
from registry.gate import StatGate
from registry.livetrust import Refusal
from registry.repeats import Repeats
from registry.waiters import ListingCache, Waiters, parse_wait
from trust.errors import StoreError

__all__ = ["ApiHandler"]

log = logging.getLogger("aar.api")

_JSON = "application/json"
_SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")


def _dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _json(metadata, status=200):
    return Reply(status, _dumps(envelope_sync(metadata, status)), _JSON)


_STATUS_OK = _dumps(envelope_sync({"status": "ok"}))


class ApiHandler:
    """Routes the requests of one server; shared by all its connections."""

    def __init__(self, server):
        self.server = server
        self.packages = server.packages
        self.trust = server.trust
        self.events = server.events
        self.listing_cache = ListingCache()
        server.join_gate = join.Gate()
        # A local store's generation is a query: gate it on its wal-index. An
        # object store keeps its own in memory (no path: read every time).
        datadir = getattr(self.packages, "datadir", None)
        self.generation = StatGate(getattr(datadir, "packages_db", None),
                                   self.packages.generation)
        self.waiters = Waiters(self)
        self.repeats = Repeats(self)

    # -- entry points (loop thread) ------------------------------------------

    def handle(self, conn, req, head=None):
        """Answer `req` (or hand it to the pool, or hold it). `head`, its
        bytes up to the blank line that ends it, lets a plain answer be
        kept for a repeat (repeats.py)."""
        conn.route = "other"
        if conn.fingerprint is None:
            return self._certificate_less(conn, req)
        try:
            role = self.authorise(conn, req)
        except ApiError as err:
            reply = self._error(err)
            reply.close = True            # a refused certificate gets no more
            return conn.reply(reply)
        before = self.repeats.generation() if head is not None else None
        try:
            reply = self._route(conn, req, role)
        except ApiError as err:
            reply = self._error(err)
        except Exception as exc:          # a bug: answer 500, keep serving others
            reply = self.error_reply(conn, req, exc)
        if reply is not None:
            if head is not None:
                self.repeats.keep(conn, req, head, reply, before)
            conn.reply(reply)

    def error_reply(self, conn, req, error):
        """The Reply for an exception a job raised (or `handle` caught)."""
        if isinstance(error, ApiError):
            return self._error(error)
        what = f"{req.method} {req.target}" if req is not None else "request"
        if isinstance(error, OSError):
            log.error("%s from %s failed: %s", what, conn.peer, error)
            self.events.storage_error()
            return self._error(ApiError.of("internal", "server storage error"))
        log.error("%s from %s failed", what, conn.peer, exc_info=error)
        return self._error(ApiError.of("internal"))

    def forget(self, conn):
        """A connection held by `wait=` (WAITING) closed: drop its waiter.
        (The server calls it for those only: nothing else is held.)"""
        self.waiters.forget(conn)

    def changed(self):
        """The package store changed through this server: wake the waiters."""
        self.waiters.check()

    # -- authorisation --------------------------------------------------------

    def authorise(self, conn, req):
        """The caller's role, or ApiError forbidden (closing the connection)."""
        fp = conn.fingerprint
        try:
            return self.trust.authorise(fp)
        except StoreError as error:       # fail closed: logged once by the store
            raise ApiError.of("unavailable", str(error)) from None
        except Refusal as refusal:
            self.events.refused(conn.address, refusal.code,
                                f"{req.method} {req.target[:200]}: {refusal.reason}",
                                fingerprint=fp, name=refusal.name)
            raise ApiError.of("forbidden", f"forbidden: {refusal.reason}") from None

    def _require_publisher(self, conn, req, role):
        if role != "publisher":
            fp = conn.fingerprint
            self.events.refused(conn.address, "read_only",
                                f"{req.method} {req.target[:200]}: role {role} cannot "
                                "write", fingerprint=fp, name=self.trust.name_of(fp))
            raise ApiError.of("forbidden", f"forbidden: the {role} role is "
                              "read-only; writes need a publisher certificate")

    def _certificate_less(self, conn, req):
        if req.method == "POST" and req.target.partition("?")[0] == join.PATH:
            conn.route = join.PATH
            try:
                return self._join(conn, req)
            except ApiError as err:
                reply = self._error(err)
                reply.close = True
                return conn.reply(reply)
        self.events.refused(conn.address, "no_certificate",
                            f"{req.method} {req.target[:200]} without a client "
                            "certificate (only the join endpoint takes none)")
        conn.unanswered()                 # closed unanswered, like a refused handshake

    # -- routing ------------------------------------------------------------------

    def _route(self, conn, req, role):
        path, _, query = req.target.partition("?")
        parts = path.split("/")[1:]
        if "%" in path:
            parts = [urllib.parse.unquote(p) for p in parts]
        if parts and parts[-1] == "" and len(parts) > 1:
            parts.pop()                   # tolerate a trailing slash
        if not parts or parts[0] != "1.0":
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        method = req.method
        n = len(parts)
        if n == 1:
            conn.route = "/1.0"
            _only(method, ("GET", "HEAD"))
            return self._info(conn, role)
        if parts[1] == "status" and n == 2:
            conn.route = "/1.0/status"
            _only(method, ("GET", "HEAD"))
            return Reply(200, _STATUS_OK, _JSON)
        if parts[1] == "join" and n == 2:
            conn.route = join.PATH
            _only(method, ("POST",))
            return self._join(conn, req)
        if parts[1] != "applications":
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        if n == 2:
            conn.route = "/1.0/applications"
            _only(method, ("GET", "HEAD"))
            return self._listing(conn, req, query)
        app = _check(names.check_app_name, parts[2])
        if n == 3:
            conn.route = "/1.0/applications/{app}"
            if method == "DELETE":
                self._require_publisher(conn, req, role)
                return conn.run(lambda: self._delete_application(conn, app))
            _only(method, ("GET", "HEAD"))
            return conn.run(lambda: self._application(app))
        if n not in (5, 6):
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        version = _check(names.check_version, parts[3])
        arch = _check(names.check_arch, parts[4])
        if n == 5:
            conn.route = "/1.0/applications/{app}/{version}/{arch}"
            if method == "DELETE":
                self._require_publisher(conn, req, role)
                return conn.run(lambda: self._delete_package(conn, app, version, arch))
            _only(method, ("GET", "HEAD"))
            return conn.run(lambda: _json(self._package(app, version, arch)))
        if parts[5] != "package":
            raise ApiError.of("not_found", f"no such endpoint: {path}")
        conn.route = "/1.0/applications/{app}/{version}/{arch}/package"
        if method == "PUT":
            self._require_publisher(conn, req, role)
            return self._upload(conn, req, app, version, arch)
        _only(method, ("GET", "HEAD"))
        return conn.run(lambda: self._download(conn, req, app, version, arch))

    # -- reads ---------------------------------------------------------------------

    def _info(self, conn, role):
        return _json({
            "api_version": "1.0",
            "server_version": VERSION,
            "server_fingerprint": self.server.server_fingerprint,
            "role": role,
            "fingerprint": conn.fingerprint,
        })

    def _listing(self, conn, req, query):
        params = urllib.parse.parse_qs(query) if query else {}
        arch = params.get("architecture", [""])[-1] or None
        if arch is not None:
            arch = _check(names.check_arch, arch)
        tags = tuple(sorted({t.strip() for v in params.get("tags", [])
                             for t in v.split(",") if t.strip()}))
        wait = parse_wait(params.get("wait"))
        etags = apiheaders.etags(req.headers.get("if-none-match"))
        key = (arch, tags)
        hit = self.listing_cache.get(self.generation.get(), key)
        if hit is None:
            return conn.run(lambda: self.listing_cache.build(self.packages, key),
                            lambda built: self._listed(conn, req, key, etags, wait, built))
        return self._listed(conn, req, key, etags, wait, hit)

    def _listed(self, conn, req, key, etags, wait, hit):
        if wait and hit[1] in etags:
            return self.waiters.add(conn, req, key, etags, wait)
        return self.listing_reply(hit, etags)

    @staticmethod
    def listing_reply(hit, etags):
        body, etag = hit
        if etag in etags:
            return Reply(304, headers=(("ETag", etag),))
        return Reply(200, body, _JSON, (("ETag", etag),))

    def listing(self, key):
        """The cached listing for key, or None (then build it in the pool)."""
        return self.listing_cache.get(self.generation.get(), key)

    def _application(self, app):
        found = self.packages.application(app)
        if found is None:
            raise ApiError.of("not_found", f"application {app!r} not found")
        return _json(found)

    def _package(self, app, version, arch):
        found = self.packages.get(app, version, arch)
        if found is None:
            raise ApiError.of("not_found", f"package {app}/{version}/{arch} not found")
        return found

    def _download(self, conn, req, app, version, arch):
        """A job: the package's head, and its open file for the loop to send."""
        pkg = self._package(app, version, arch)
        etag = '"%s"' % pkg["sha256"]
        if etag in apiheaders.etags(req.headers.get("if-none-match")):
            return Reply(304, headers=(("ETag", etag),))
        packages = self.packages
        url = packages.redirect_url(pkg) if req.method == "GET" else None
        if url is not None:
            # The object store serves the bytes; the client checks the sha256.
            self.events.downloaded(conn.address, conn.fingerprint, pkg, 0, pkg["size"])
            return Reply(307, headers=(("Location", url), ("ETag", etag)))
        size = pkg["size"]
        start, end = apiheaders.byte_range(req.headers.get("range"), size)
        headers = [("ETag", etag), ("Accept-Ranges", "bytes")]
        status = 200
        if req.headers.get("range"):
            status = 206
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        if req.method == "HEAD":
            return Reply(status, content_type="application/octet-stream", headers=headers,
                         length=end - start)
        f = packages.open_blob(pkg, start, end)      # positioned at start
        self.events.downloaded(conn.address, conn.fingerprint, pkg, start, end)
        return Reply(status, content_type="application/octet-stream", headers=headers,
                     file=FileBody(f, end - start))

    # -- writes ----------------------------------------------------------------------

    def _upload(self, conn, req, app, version, arch):
        length = req.body_length
        if length is None or "content-length" not in req.headers:
            raise ApiError.of("length_required", "an upload needs Content-Length "
                              "(chunked transfer encoding is not accepted)")
        limit = self.server.settings.max_package_size
        if length > limit:
            raise ApiError.of("too_large", f"package of {length} bytes exceeds the "
                              f"limit of {limit}")
        digest = (req.headers.get("x-aar-sha256") or "").strip().lower()
        if not _SHA256_RE.match(digest):
            raise ApiError.of("bad_request", "X-Aar-Sha256 must hold the package's "
                              "sha256 as 64 hex digits")
        manifest = apiheaders.manifest(req.headers.get("x-aar-manifest"))
        expect = "100-continue" in req.headers.get("expect", "").lower()
        fingerprint = conn.fingerprint
        events = self.events

        def stored(created, pkg):         # in a worker, once stored (or known)
            events.stored(fingerprint, self.trust.name_of(fingerprint), pkg, created)
            if created:
                self.server.loop.call_soon_threadsafe(self.changed)
            return _json(pkg, status=201 if created else 200)
        uploads.receive(conn, self.packages, (app, version, arch, length, digest,
                                              manifest, fingerprint), expect, stored)

    def _delete_package(self, conn, app, version, arch):
        # Read first: the audit record names the bytes that went.
        pkg = self.packages.get(app, version, arch)
        if pkg is None or not self.packages.delete_package(app, version, arch):
            raise ApiError.of("not_found", f"package {app}/{version}/{arch} not found")
        self._deleted(conn, [pkg])
        return _json({})

    def _delete_application(self, conn, app):
        found = self.packages.application(app)
        count = self.packages.delete_application(app)
        if not count:
            raise ApiError.of("not_found", f"application {app!r} not found")
        self._deleted(conn, (found or {}).get("versions", []))
        return _json({"deleted": count})

    def _deleted(self, conn, packages):
        fp = conn.fingerprint
        self.events.deleted(fp, self.trust.name_of(fp), packages)
        self.server.loop.call_soon_threadsafe(self.changed)

    # -- joining ---------------------------------------------------------------------

    def _join(self, conn, req):
        """POST /1.0/join; its body was read by the connection (at most
        MAX_DISCARD bytes, which is join.MAX_BODY)."""
        if req.body_length is None or "content-length" not in req.headers:
            raise ApiError.of("length_required", "a join needs Content-Length")
        if req.body_length > join.MAX_BODY:
            raise ApiError.of("too_large", f"a join body is at most {join.MAX_BODY} bytes")
        address, body = conn.address, req.body

        def job():
            reply = _json(join.join(self.server, address, body))
            reply.close = True            # one join per connection, refused or not
            return reply
        return conn.run(job)

    # -- errors --------------------------------------------------------------------

    @staticmethod
    def _error(err):
        return Reply(err.status, _dumps(envelope_error(err)), _JSON,
                     close=err.status >= 500)


def _only(method, allowed):
    if method not in allowed:
        raise ApiError.of("method_not_allowed",
                          f"method {method} not allowed here; use {', '.join(allowed)}")


def _check(validate, value):
    try:
        return validate(value)
    except ValueError as exc:
        raise ApiError.of("bad_request", str(exc))

"""RegistryClient: the agent's side of the registry API, over pinned mutual TLS.

One client holds one keep-alive connection (trust.tls.PinnedHTTPSConnection)
and reuses it for every request. The pin is checked right after the TLS
handshake, before a byte of any request is written, so a server with another
certificate learns nothing, not even which path we wanted.

Construction is free: the TLS context (which reads the key) and the connection
are made on the first request, so the loop can build a client per cycle and
an unchanged registry costs one request, answered 304. clone() gives another
client of the same registry with its own connection and the same TLS context,
for downloads that run side by side; abort() breaks the connections of the
client and of every clone it made.

Every failure is an AgentError (the RegistryError family of agent/errors.py)
with a one-line message for the operator, which failures.py words; the
subclasses let the sync engine decide what a failure means (a listing that
failed in any way deletes nothing).
"""
import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import urllib.parse
import weakref

import names
from trust import tls
from trust.errors import PinMismatch, TrustError

from . import failures
from .errors import (AgentError, BadResponse, Cancelled, Forbidden, RegistryConflict,
                     RegistryError, RegistryNotFound, RegistryUnavailable)
from .failures import BAD_RESPONSE, CONFLICT, READ_ONLY
from .listing import check_listing
from .transfer import CANCELLED, Download, send_file

__all__ = ["RegistryClient"]

_MAX_JSON = 256 << 20      # a listing of many thousand versions fits easily


def _what(app, version, arch):
    return f"{app}/{version}/{arch}"


def _package_path(app, version, arch):
    return "/1.0/applications/%s/%d/%s" % (
        urllib.parse.quote(names.check_app_name(app), safe=""),
        names.check_version(version), urllib.parse.quote(names.check_arch(arch), safe=""))


class RegistryClient:
    """The registry API at url (https://HOST:PORT), pinned to fingerprint."""

    def __init__(self, url, fingerprint, certfile, keyfile, timeout=30.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise RegistryError(f"invalid registry.url {url!r}: expected https://HOST:PORT")
        self.url = f"https://{parts.netloc}"
        self.host, self.port = parts.hostname, parts.port or 443
        try:
            self.fingerprint = names.check_fingerprint(fingerprint, allow_prefix=False)
        except ValueError as error:
            raise RegistryError(f"invalid registry.fingerprint: {error}") from None
        self.certfile, self.keyfile = os.fspath(certfile), os.fspath(keyfile)
        self.timeout = timeout
        self._read_timeout = timeout     # of the request under way, for messages
        self.requests = 0          # requests written, for logs and tests
        self._context = None
        self._conn = None
        self._clones = weakref.WeakSet()     # abort() breaks theirs too
        self._clones_lock = threading.Lock()

    # -- connection ----------------------------------------------------------

    def clone(self):
        """Another client of the same registry with its own connection and
        this client's TLS context; this client's abort() reaches it too."""
        twin = RegistryClient(self.url, self.fingerprint, self.certfile, self.keyfile,
                              self.timeout)
        twin._context = self._tls_context()
        with self._clones_lock:
            self._clones.add(twin)
        return twin

    def close(self):
        """Close the keep-alive connection; the next request opens another."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def abort(self):
        """Break the connection from another thread, to end a blocked read at once.

        Shutting the socket down wakes a recv() waiting on it, where closing
        it would not; the transfer then sees the stop event and gives up.
        """
        conn = self._conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        with self._clones_lock:
            clones = list(self._clones)
        for twin in clones:
            twin.abort()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _tls_context(self):
        if self._context is None:
            try:
                self._context = tls.client_context(self.certfile, self.keyfile)
            except TrustError as error:
                raise RegistryError(str(error)) from None
        return self._context

    def _connection(self):
        if self._conn is None:
            self._conn = tls.PinnedHTTPSConnection(
                self.host, self.port, fingerprint=self.fingerprint,
                context=self._tls_context(), timeout=self.timeout)
        return self._conn

    def _send(self, method, path, headers=(), body=None, retry=True, stop=None, timeout=None):
        """Write one request and read the response head; return the response.

        A keep-alive connection the server has closed in the meantime shows
        up as a failed write or an empty answer; every request here is
        idempotent (PUT of the same bytes is a no-op), so it is sent once more
        on a fresh connection. A fresh connection that fails is the answer.
        timeout: seconds for this request's reads instead of self.timeout.
        """
        while True:
            conn = self._connection()
            reused = conn.sock is not None
            self._read_timeout = timeout or self.timeout
            if conn.timeout != self._read_timeout:
                conn.timeout = self._read_timeout
                if reused:
                    conn.sock.settimeout(self._read_timeout)
            try:
                conn.putrequest(method, path, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders()
                self.requests += 1
                if body is not None:
                    early = self._send_body(conn, body, stop)
                    if early is not None:
                        return early
                return conn.getresponse()
            except PinMismatch as error:
                self.close()
                raise failures.pin_mismatch(self.fingerprint, error) from None
            except AgentError:          # stopped, or the file to upload shrank
                self.close()
                raise
            except (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
                    http.client.BadStatusLine) as error:
                self.close()
                if stop is not None and stop.is_set():
                    raise Cancelled(CANCELLED.format(what=path)) from None
                if reused and retry:
                    retry = False
                    continue
                raise self._unavailable(error) from None
            except (OSError, http.client.HTTPException) as error:
                self.close()
                if stop is not None and stop.is_set():
                    raise Cancelled(CANCELLED.format(what=path)) from None
                raise self._unavailable(error) from None

    def _send_body(self, conn, body, stop):
        """Write the body; None when done, or the answer the server gave early.

        A server that knows its answer from the headers alone (the package is
        already there; the role may not write) answers without reading the
        body and closes the connection, and the write then fails. That answer
        usually still waits in the socket, and it is the one that counts.
        """
        try:
            body(conn, stop)
            return None
        except (ConnectionError, ssl.SSLError) as error:
            if stop is not None and stop.is_set():
                raise Cancelled(CANCELLED.format(what="upload")) from None
            try:
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise error from None

    def _unavailable(self, error):
        return failures.unavailable(self.url, self.host, self.certfile, self._read_timeout,
                                    error)

    def _finish(self, resp):
        if resp.will_close:
            self.close()

    # -- answers -------------------------------------------------------------

    def _read_json(self, resp, method, path):
        try:
            data = resp.read(_MAX_JSON + 1)
            if len(data) > _MAX_JSON:
                raise BadResponse(BAD_RESPONSE.format(url=self.url, method=method, path=path,
                                                      reason="answer too large"))
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise self._unavailable(error) from None
        finally:
            self._finish(resp)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as error:
            raise BadResponse(BAD_RESPONSE.format(url=self.url, method=method, path=path,
                                                  reason=f"not JSON ({error})"),
                              resp.status) from None

    def _fail(self, resp, method, path, what=None):
        """Raise the error that a non-2xx response stands for."""
        status = resp.status
        try:
            body = self._read_json(resp, method, path)
            error = body.get("error") if isinstance(body, dict) else None
        except RegistryError:
            error = None
        error = str(error or resp.reason or "no reason given")[:300]
        raise failures.refusal(self.url, self.certfile, method, path, status, error, what)

    def _metadata(self, method, path):
        resp = self._send(method, path, (("Accept", "application/json"),))
        if resp.status != 200:
            self._fail(resp, method, path)
        body = self._read_json(resp, method, path)
        if not isinstance(body, dict) or body.get("type") != "sync" or "metadata" not in body:
            raise BadResponse(BAD_RESPONSE.format(url=self.url, method=method, path=path,
                                                  reason="not a sync envelope"), resp.status)
        return body["metadata"]

    # -- the API -------------------------------------------------------------

    def info(self) -> dict:
        """GET /1.0: api version, server fingerprint, our role and fingerprint."""
        info = self._metadata("GET", "/1.0")
        return info if isinstance(info, dict) else {}

    def list(self, architecture=None, tags=(), etag=None, wait=None, stop=None):
        """(etag, applications) of the listing; applications is None on 304.

        The applications are checked field by field (listing.check_listing):
        what this returns is whole, and anything else raised BadResponse.
        wait=SECONDS (with etag) asks the registry to hold the request until
        the listing differs from etag or the time is up (DESIGN.md "Waiting
        for changes"); the reads then allow that long plus self.timeout.
        """
        query = {}
        if architecture:
            query["architecture"] = architecture
        tags = sorted(set(tags))
        if tags:
            query["tags"] = ",".join(tags)
        if wait:
            query["wait"] = str(int(wait))
        path = "/1.0/applications"
        if query:
            path += "?" + urllib.parse.urlencode(query, safe=",")
        headers = [("Accept", "application/json")]
        if etag:
            headers.append(("If-None-Match", etag))
        resp = self._send("GET", path, headers, stop=stop,
                          timeout=self.timeout + int(wait) if wait else None)
        if resp.status == 304:
            resp.read()
            self._finish(resp)
            return resp.getheader("ETag") or etag, None
        if resp.status != 200:
            self._fail(resp, "GET", path)
        new_etag = resp.getheader("ETag")
        body = self._read_json(resp, "GET", path)
        try:
            if not isinstance(body, dict) or body.get("type") != "sync":
                raise ValueError("not a sync envelope")
            apps = check_listing(body.get("metadata"), architecture, tags)
        except ValueError as error:
            raise BadResponse(BAD_RESPONSE.format(url=self.url, method="GET", path=path,
                                                  reason=error), 200) from None
        return new_etag, apps

    def delete(self, app, version, arch) -> bool:
        """DELETE one package; False if the registry did not have it."""
        try:
            self._metadata("DELETE", _package_path(app, version, arch))
        except RegistryNotFound:
            return False
        return True

    def upload(self, app, version, arch, path, sha256, manifest, progress=None, stop=None):
        """PUT the package file at path; True if stored, False if it was already there."""
        what = _what(app, version, arch)
        url_path = _package_path(app, version, arch) + "/package"
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            headers = (("Content-Type", "application/octet-stream"),
                       ("Content-Length", str(size)),
                       ("X-Aar-Sha256", sha256),
                       ("X-Aar-Manifest", json.dumps(manifest or {}, separators=(",", ":"),
                                                     ensure_ascii=True, sort_keys=True)),
                       ("Accept", "application/json"))

            def body(conn, stop):
                send_file(conn, file, size, what, path, stop, progress)

            try:
                resp = self._send("PUT", url_path, headers, body=body, stop=stop)
            except RegistryUnavailable as error:
                return self._upload_outcome(app, version, arch, sha256, error)
            if resp.status not in (200, 201):
                self._fail(resp, "PUT", url_path, what)
            created = resp.status == 201
            self._read_json(resp, "PUT", url_path)
            return created

    def _upload_outcome(self, app, version, arch, sha256, error):
        """After an upload whose connection broke with no answer: did it land?

        The registry commits a package only whole and checked, so the package
        being there with our sha256 means the upload (or an earlier one)
        succeeded. Not there at all may be a refusal we could not read: the
        role tells whether it was.
        """
        if error.status is not None:          # a 5xx answer: nothing to find out
            raise error
        what = _what(app, version, arch)
        try:
            found = self._metadata("GET", _package_path(app, version, arch))
        except RegistryNotFound:
            if self.info().get("role") != "publisher":
                raise Forbidden(READ_ONLY, 403) from None
            raise error from None
        if isinstance(found, dict) and found.get("sha256") == sha256:
            return False
        raise RegistryConflict(CONFLICT.format(what=what), 409)

    def download(self, app, version, arch, dest, sha256, size, progress=None,
                 deadline=None, stop=None, durable=True):
        """Stream a package into the file dest, checked and resumed as
        transfer.Download does it; deadline is a time.monotonic() moment. On
        any failure dest is removed, so a caller never finds half a package.
        durable=False leaves the fsync to the caller.
        """
        Download(self, _what(app, version, arch), _package_path(app, version, arch) + "/package",
                 sha256, size, progress, deadline, stop).save(dest, durable)

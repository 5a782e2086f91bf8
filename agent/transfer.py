"""Package transfers: a download streamed, capped, verified and resumed;
an upload's body streamed.

The registry declared the package's size and sha256 in its listing; the
bytes must match both. The body is read 1 MiB at a time into one reused
buffer, never more than the declared size, hashed on the way and written in
place with pwrite(). Every KICK bytes the kernel is asked to start writing
what came so far to disk, so the disk works while the network does and the
fsync that makes the file durable (here, or in the importer that takes the
file over) finds little left to do.

When the connection breaks (a dropped link, a restarted registry, a read
that waited longer than the client's timeout) the download asks for the rest
with `Range: bytes=N-` on a new connection, a few times at most; the sha256
of the whole file is the final word on whether the pieces belong together.
A file that cannot be written (a full disk) ends the download at once.

A registry that keeps its packages in an object store may answer 307 with a
presigned URL. The bytes are then fetched from there on a connection of
their own: HTTPS verified against the system's CA store (for that host, not
the registry's pinned fingerprint) and without the node's client
certificate, which is the registry's business alone. The sha256 is checked
just the same, and every retry asks the registry again (a fresh URL).

Between chunks it looks at the stop event and the deadline, so a stopping
agent or a transfer that is not getting anywhere gives up promptly.
"""
import contextlib
import hashlib
import http.client
import os
import re
import ssl
import time
import urllib.parse

from .errors import (Cancelled, IntegrityError, RegistryUnavailable, StoreError,
                     TransferError, TransferTimeout)

__all__ = ["Download", "send_file", "CHUNK", "KICK", "RESUME_ATTEMPTS", "TOO_LARGE",
           "SHA_MISMATCH", "INCOMPLETE", "STALLED", "CANCELLED", "SHRANK", "UNWRITABLE"]

TOO_LARGE = "download of {what} refused: the registry sent more than the declared {size} bytes"
SHA_MISMATCH = ("download of {what} discarded: its sha256 {actual} differs from "
                "the registry's {expected}")
INCOMPLETE = "download of {what} failed after {attempts} attempts: {reason}"
STALLED = "download of {what} abandoned: no progress before its deadline ({reason})"
CANCELLED = "transfer of {what} stopped"
SHRANK = "{path} shrank while it was being uploaded"
UNWRITABLE = "download of {what} failed: cannot write {path}: {reason}"

CHUNK = 1 << 20            # a transfer moves 1 MiB at a time, either way
RESUME_ATTEMPTS = 4        # connections one download may use in all
KICK = 16 << 20            # a download starts the write-back of every 16 MiB
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")
_REDIRECTS = (301, 302, 303, 307, 308)
_store_context = None


def _object_store(location, headers, timeout):
    """GET a redirect's Location: (response, connection). No client certificate."""
    global _store_context
    url = urllib.parse.urlsplit(location)
    if url.scheme == "https":
        if _store_context is None:
            _store_context = ssl.create_default_context()
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443,
                                           context=_store_context, timeout=timeout)
    elif url.scheme == "http":
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    else:
        raise TransferError(f"the registry redirected to {location[:80]!r}: "
                            "not an http(s) URL")
    try:
        conn.request("GET", url.path + (f"?{url.query}" if url.query else ""),
                     headers=dict(headers))
        return conn.getresponse(), conn
    except BaseException:
        conn.close()
        raise


class Download:
    """Fetch `path` of `client` into a file; see the module docstring."""

    def __init__(self, client, what, path, sha256, size, progress=None,
                 deadline=None, stop=None):
        self.client = client
        self.what, self.path = what, path
        self.sha256, self.size = sha256, size
        self.progress, self.deadline, self.stop = progress, deadline, stop
        self.dest = None
        self._kicked = 0           # bytes whose write-back was started
        self.received = 0          # bytes written and hashed so far

    def _check(self):
        if self.stop is not None and self.stop.is_set():
            raise Cancelled(CANCELLED.format(what=self.what))
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TransferTimeout(STALLED.format(what=self.what,
                                                     reason="deadline passed"))

    def _pause(self, attempt):
        delay = min(0.25 * attempt, 2.0)
        if self.deadline is not None:
            delay = max(0.0, min(delay, self.deadline - time.monotonic()))
        if self.stop is not None:
            self.stop.wait(delay)
        else:
            time.sleep(delay)

    def save(self, dest, durable=True):
        """Download into the file dest (created or emptied); on disk when
        this returns if durable (else the caller fsyncs it before relying
        on it). On any failure dest is removed: nobody finds half a package.
        """
        self.dest = os.fspath(dest)
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                self.run(fd)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise

    def run(self, fd):
        """Write the package into the file descriptor fd (an empty file)."""
        hasher = hashlib.sha256()
        buf = memoryview(bytearray(min(CHUNK, self.size + 1)))
        received = 0
        last = "no attempt made"
        timed_out = False
        for attempt in range(1, RESUME_ATTEMPTS + 1):
            self._check()
            if attempt > 1:
                self._pause(attempt - 1)
                self._check()
            headers = [("Accept", "application/octet-stream")]
            if received:
                headers.append(("Range", f"bytes={received}-"))
            try:
                resp = self.client._send("GET", self.path, headers, stop=self.stop)
            except RegistryUnavailable as error:
                last, timed_out = str(error), "no answer within" in str(error)
                continue
            store = None
            if resp.status in _REDIRECTS and resp.getheader("Location"):
                location = resp.getheader("Location")
                resp.read(64 * 1024)       # done with it: the connection is free again
                self.client._finish(resp)
                try:
                    resp, store = _object_store(location, headers, self.client.timeout)
                except (OSError, http.client.HTTPException) as error:
                    last, timed_out = (f"object store {urllib.parse.urlsplit(location).netloc}"
                                       f" unreachable: {error}"), False
                    continue
                if resp.status not in (200, 206):
                    store.close()
                    last, timed_out = (f"object store answered {resp.status} "
                                       f"{resp.reason}"), False
                    continue
            if resp.status == 200 and received:
                # The server ignored the Range: start again from the top.
                hasher, received, self._kicked = hashlib.sha256(), 0, 0
            elif resp.status == 206:
                match = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
                if not match or int(match.group(1)) != received or int(match.group(3)) != self.size:
                    self.client.close()
                    last, timed_out = "the registry resumed at the wrong place", False
                    received = -1  # forces a restart below
            elif resp.status != 200:
                try:
                    self.client._fail(resp, "GET", self.path, self.what)
                except RegistryUnavailable as error:   # 5xx: try again
                    last, timed_out = str(error), False
                    continue
            if received < 0:
                hasher, received, self._kicked = hashlib.sha256(), 0, 0
                if store is not None:
                    store.close()
                continue
            if resp.length is not None and received + resp.length > self.size:
                self.client.close()
                if store is not None:
                    store.close()
                raise TransferError(TOO_LARGE.format(what=self.what, size=self.size))
            try:
                received = self._body(resp, fd, buf, hasher, received, store)
            except (OSError, http.client.HTTPException) as error:
                # What the body gave before it broke is written and hashed:
                # the next attempt asks for the rest, not for it again.
                received = self.received
                self.client.close()
                if store is not None:
                    store.close()
                self._check()
                timed_out = isinstance(error, TimeoutError)
                last = ("no data for %gs" % self.client.timeout if timed_out
                        else f"connection broken after {received} bytes "
                             f"({type(error).__name__})")
                continue
            if store is not None:
                store.close()
            else:
                self.client._finish(resp)
            if received == self.size:
                break
            last, timed_out = f"the body ended after {received} of {self.size} bytes", False
        else:
            kind = TransferTimeout if timed_out else TransferError
            raise kind(INCOMPLETE.format(what=self.what, attempts=RESUME_ATTEMPTS,
                                           reason=last))
        actual = hasher.hexdigest()
        if actual != self.sha256:
            raise IntegrityError(SHA_MISMATCH.format(what=self.what, actual=actual,
                                                       expected=self.sha256))

    def _body(self, resp, fd, buf, hasher, received, store=None):
        """Copy the body into fd; return the new count of bytes received,
        which self.received also keeps as it grows (for when a read raises)."""
        self.received = received
        conn = store if store is not None else self.client._conn
        sock = conn.sock if conn is not None else None
        while True:
            self._check()
            if sock is not None:
                wait = self.client.timeout
                if self.deadline is not None:
                    wait = min(wait, max(0.01, self.deadline - time.monotonic()))
                sock.settimeout(wait)
            want = min(CHUNK, self.size - received)
            if not want:
                # Everything declared is here: one byte more would be too many.
                if resp.readinto(buf[:1]):
                    self.client.close()
                    raise TransferError(TOO_LARGE.format(what=self.what, size=self.size))
                return received
            n = resp.readinto(buf[:want])
            if not n:
                return received
            self._write(fd, buf[:n], received)
            hasher.update(buf[:n])
            received += n
            self.received = received
            if self.progress is not None:
                self.progress(received, self.size)

    def _write(self, fd, data, at):
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], at + done)
        except OSError as error:
            # Not the connection's fault: trying again would not help.
            self.client.close()
            raise StoreError(UNWRITABLE.format(what=self.what, path=self.dest or fd,
                                               reason=error.strerror or error)) from None
        end = at + done
        if end - self._kicked >= KICK:
            # DONTNEED starts the write-back of the range's dirty pages;
            # pages dirty or under write-back stay cached for the importer.
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, self._kicked, end - self._kicked, os.POSIX_FADV_DONTNEED)
            self._kicked = end


def send_file(conn, file, size, what, path, stop=None, progress=None):
    """Send the first size bytes of file (an upload's body) on conn."""
    file.seek(0)
    sent = 0
    view = memoryview(bytearray(CHUNK))
    while sent < size:
        if stop is not None and stop.is_set():
            raise Cancelled(CANCELLED.format(what=what))
        n = file.readinto(view[:min(CHUNK, size - sent)])
        if not n:
            raise TransferError(SHRANK.format(path=path))
        conn.send(view[:n])
        sent += n
        if progress is not None:
            progress(sent, size)

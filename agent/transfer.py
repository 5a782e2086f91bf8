"""One package download: streamed, capped, verified and resumed.

The registry declared the package's size and sha256 in its listing; the
bytes must match both. The body is read 1 MiB at a time into the caller's
file, never more than the declared size, and hashed on the way. When the
connection breaks (a dropped link, a restarted registry, a read that waited
longer than the client's timeout) the download asks for the rest with
`Range: bytes=N-` on a new connection, a few times at most; the sha256 of the
whole file is the final word on whether the pieces belong together.

Between chunks it looks at the stop event and the deadline, so a stopping
agent or a transfer that is not getting anywhere gives up promptly.
"""
import hashlib
import http.client
import re
import time

from .errors import (Cancelled, IntegrityError, RegistryUnavailable, TransferError,
                     TransferTimeout)

__all__ = ["Download", "CHUNK", "RESUME_ATTEMPTS", "TOO_LARGE", "SHA_MISMATCH",
           "INCOMPLETE", "STALLED", "CANCELLED"]

TOO_LARGE = "download of {what} refused: the registry sent more than the declared {size} bytes"
SHA_MISMATCH = ("download of {what} discarded: its sha256 {actual} differs from "
                "the registry's {expected}")
INCOMPLETE = "download of {what} failed after {attempts} attempts: {reason}"
STALLED = "download of {what} abandoned: no progress before its deadline ({reason})"
CANCELLED = "transfer of {what} stopped"

CHUNK = 1 << 20            # a transfer moves 1 MiB at a time
RESUME_ATTEMPTS = 4        # connections one download may use in all

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")


class Download:
    """Fetch `path` of `client` into a file; see the module docstring."""

    def __init__(self, client, what, path, sha256, size, progress=None,
                 deadline=None, stop=None):
        self.client = client
        self.what, self.path = what, path
        self.sha256, self.size = sha256, size
        self.progress, self.deadline, self.stop = progress, deadline, stop

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

    def run(self, out):
        """Write the package into out (a binary file at position 0)."""
        hasher = hashlib.sha256()
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
            if resp.status == 200 and received:
                # The server ignored the Range: start again from the top.
                out.seek(0)
                out.truncate()
                hasher, received = hashlib.sha256(), 0
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
                out.seek(0)
                out.truncate()
                hasher, received = hashlib.sha256(), 0
                continue
            if resp.length is not None and received + resp.length > self.size:
                self.client.close()
                raise TransferError(TOO_LARGE.format(what=self.what, size=self.size))
            try:
                received = self._body(resp, out, hasher, received)
            except (OSError, http.client.HTTPException) as error:
                self.client.close()
                self._check()
                timed_out = isinstance(error, TimeoutError)
                last = ("no data for %gs" % self.client.timeout if timed_out
                        else f"connection broken after {received} bytes "
                             f"({type(error).__name__})")
                continue
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

    def _body(self, resp, out, hasher, received):
        """Copy the body into out; return the new count of bytes received."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        sock = self.client._conn.sock if self.client._conn is not None else None
        while True:
            self._check()
            if sock is not None:
                wait = self.client.timeout
                if self.deadline is not None:
                    wait = min(wait, max(0.01, self.deadline - time.monotonic()))
                sock.settimeout(wait)
            # One byte beyond what may come tells an oversized body apart.
            want = min(CHUNK, self.size - received + 1)
            n = resp.readinto(view[:want])
            if not n:
                return received
            if received + n > self.size:
                self.client.close()
                raise TransferError(TOO_LARGE.format(what=self.what, size=self.size))
            out.write(view[:n])
            hasher.update(view[:n])
            received += n
            if self.progress is not None:
                self.progress(received, self.size)

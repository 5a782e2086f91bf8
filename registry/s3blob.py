"""A blob of the bucket read like a file: a proxied download's source.

S3PackageStore.open_blob() answers one for registry/bodies.py's FileStream,
which reads it a chunk at a time, a few chunks ahead of what it sends.
"""
import http.client
import logging
import socket

__all__ = ["ObjectReader"]

log = logging.getLogger("aar.storage")


class ObjectReader:
    """A streamed GET of a blob, read like a file and closed after.

    A proxied download (bodies.FileStream) reads it `chunk` bytes at a time,
    up to `read_ahead` chunks ahead of the one it sends: the store's bytes
    keep flowing while the loop encrypts, at 3 x 2 MiB per download. Each
    chunk wakes the reading thread about once (see readinto), not once per
    arriving segment: on a machine the store shares, the replica's CPU per
    byte is what the store does not get.
    """

    read_ahead = 2
    chunk = 2 << 20

    def __init__(self, resp):
        self._resp = resp
        self._sock = resp.conn_to_close.sock
        self._lowat = 1

    def readinto(self, buf):
        left = self._resp.length
        try:
            self._wake_after(len(buf))
            got = self._resp.readinto(buf)
            if not got and buf and left:  # http.client returns 0 for a cut body
                raise http.client.IncompleteRead(b"", left)
            return got
        except (OSError, http.client.HTTPException) as exc:
            # Headers are out: all that is left is ending the connection,
            # which the client sees as a short body (its sha256 check fails).
            log.error("object store stopped mid-download: %s", exc)
            raise ConnectionAbortedError(f"object store: {exc}") from None

    def _wake_after(self, n):
        """The socket reports readable once `want` bytes are in, or at its
        end or an error (SO_RCVLOWAT). Never more than the body still has to
        send at any read of these n bytes (left - n + 1 at the last one), or
        that read would wait for bytes that never come."""
        left = self._resp.length
        want = 1 if left is None else max(1, min(n, left - n + 1))
        if want != self._lowat:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            except (OSError, AttributeError):
                return                    # only slower where unsupported
            self._lowat = want

    def read(self, n):
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def close(self):
        self._resp.close()
        self._resp.conn_to_close.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""Non-blocking TLS on one socket, for the event loop: the layer beneath
connection.py.

It waits for the first TLS record (the ClientHello) to be all here before
it makes the socket a TLS one, does the handshake (with the reasons a
refused one is logged under), reads (None when nothing is ready, b"" at the end), writes a queue of
buffers as far as the socket takes them, and closes so that the client reads
our last bytes. What the bytes mean is Connection's business: it subclasses
Transport and supplies `_established()` (the handshake is done), `_sent()`
(the queue is empty) and `close()`.
"""
import logging
import select
import socket
import ssl

from registry.loop import READ, WRITE
from registry.plainhttp import answer_plain_http

__all__ = ["Transport", "close_socket", "HELLO", "HANDSHAKE", "READING", "DISCARD", "BUSY",
           "UPLOAD", "WAITING", "WRITING", "STREAMING", "LINGER", "CLOSED"]

log = logging.getLogger("aar.server")

HANDSHAKE, READING, DISCARD, BUSY, UPLOAD, WAITING, WRITING, STREAMING, LINGER, \
    CLOSED = ("handshake", "reading", "discard", "busy", "upload", "waiting", "writing",
              "streaming", "linger", "closed")

# One TLS record holds at most 16 KiB and a read returns at most one record,
# so a read this large always empties OpenSSL's buffer: nothing is ever left
# pending() that epoll would not announce.
_RECV = 64 * 1024
# While a ClientHello is incomplete, only new bytes are announced: they are
# peeked at, not read, so a level-triggered watch would fire on and on.
HELLO = READ | select.EPOLLET
# A TLS record: a 5-byte header, then at most 16 KiB (+ 2 KiB of expansion).
_RECORD_MAX = 5 + 16384 + 2048
_peeked = bytearray(_RECORD_MAX)          # the loop thread's; never kept
_LINGER_SECONDS = 0.5
_CORK = getattr(socket, "TCP_CORK", None)     # Linux's
_RECORD = 16 * 1024           # an answer longer than this is several TLS records
_LINGER_BYTES = 256 * 1024


class Transport:
    """The socket half of a Connection (see the module's docstring)."""

    def _watch(self, events):
        if events != self.events:
            self.events = events
            self.loop.modify(self.fd, events)

    def handshake(self):
        if self.raw is not None and not self._hello_here():
            return
        # The C object's do_handshake, as for reads and writes: SSLSocket's
        # wrapper also resets the socket's timeout (a system call) each time,
        # and a peer that drips its ClientHello makes one call per byte.
        tls = getattr(self.sock, "_sslobj", None) or self.sock
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            return self._watch(READ)
        except ssl.SSLWantWriteError:
            return self._watch(WRITE)
        except ssl.SSLCertVerificationError as exc:
            self.server.events.refused(self.peer, "untrusted",
                                       "at TLS handshake: " + _verify_reason(exc))
            return self.linger()
        except ssl.SSLError as exc:
            self.server.events.refused(self.peer, "tls",
                                       "at TLS handshake: " + _tls_reason(exc))
            if exc.reason == "HTTP_REQUEST":
                answer_plain_http(self.sock)    # say why, in words curl shows
            return self.linger()
        except OSError as exc:
            log.debug("closing %s during TLS handshake: %s", self.peer, exc)
            return self.close()
        self._established()

    def _hello_here(self):
        """True once the first record is all here; the socket is then a TLS one.

        Until then its bytes are only peeked at: a peer that drips its
        ClientHello a byte at a time costs no TLS object and no OpenSSL call
        per byte, and a flood of them is accepted and closed cheaply. Bytes
        that are no TLS handshake record go to OpenSSL at once, which says
        what they are (plain HTTP, an old protocol)."""
        try:
            n = self.raw.recv_into(_peeked, _RECORD_MAX, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            log.debug("closing %s before its TLS handshake: %s", self.peer, exc)
            return self.close()
        if not n:
            log.debug("closing %s: closed before its TLS handshake", self.peer)
            return self.close()
        if _peeked[0] == 0x16:            # a handshake record: all of it here?
            need = 5 + int.from_bytes(_peeked[3:5], "big") if n >= 5 else 5
            if n < min(need, _RECORD_MAX):
                self._watch(HELLO)        # from now on, only new bytes
                return False
        try:
            self.sock = self.server.trust.context.wrap_socket(
                self.raw, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.debug("closing %s before its TLS handshake: %s", self.peer, exc)
            return self.close()
        self.raw = None
        self._read, self._write = self.sock.recv, self.sock.send
        self._watch(READ)
        return True

    def _recv(self):
        """Bytes read, b"" at the end of the stream, None when none are ready."""
        try:
            return self._read(_RECV)
        except (ssl.SSLWantReadError, BlockingIOError):
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""                    # close_notify, or a TCP close without it
        except ssl.SSLWantWriteError:
            self._watch(WRITE)
            return None
        except ssl.SSLError as exc:
            log.info("closing %s: TLS error: %s", self.peer, exc.reason or exc)
            return b""
        except OSError as exc:
            log.debug("closing %s: %s", self.peer, exc)
            return b""

    def _flush(self):
        out = self.out
        write = self._write
        while out:
            data = out[0]
            try:
                sent = write(data)
            except (ssl.SSLWantWriteError, BlockingIOError):
                sent = 0
            except ssl.SSLWantReadError:  # pragma: no cover - renegotiation
                self._watch(READ)
                return
            except OSError as exc:
                log.debug("closing %s: %s", self.peer, exc)
                return self.close()
            if sent < len(data):
                # OpenSSL wants the same buffer again (no partial writes);
                # the kernel's socket buffer took what it could.
                if sent:
                    out[0] = memoryview(data)[sent:]
                self._watch(WRITE)
                return
            # Progress: a slow reader is cut off only after request_timeout
            # without any.
            self.deadline = self.loop.now + self.server.settings.request_timeout
            out.pop(0)
        self._sent()

    def _send(self, size):
        """Write the answer just queued, `size` bytes. OpenSSL writes each TLS
        record with its own send(): uncorked, each record of a longer answer
        would leave as its own segment and wake the client for it; corked, a
        listing of 100 applications (47 KB, three records) is one segment and
        one wake-up. Uncorked again at once, whether all went or the socket
        is full, so nothing waits for the cork's timer."""
        self.state = WRITING
        self.deadline = self.loop.now + self.server.settings.request_timeout
        if size <= _RECORD or _CORK is None:
            return self._flush()
        sock = self.sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        except OSError:
            pass                          # closing anyway: the write says so
        self._flush()
        if self.state != CLOSED:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)
            except OSError:
                pass

    def linger(self):
        """Close so that the client reads what we sent before anything else.

        Closing with unread bytes makes the kernel answer with a reset, which
        can overtake our last bytes (a TLS 1.3 client sends its request before
        our alert arrives). So send FIN and read what is in flight, briefly.
        """
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self.close()
        self.state = LINGER
        self.buf = b""
        self.deadline = self.loop.now + _LINGER_SECONDS
        self._watch(READ)

    def _linger_read(self):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            data = b""
        self.lingered += len(data)
        if not data or self.lingered > _LINGER_BYTES:
            self.close()

    @property
    def address(self):
        host, port = self.addr[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def peer(self):
        host, port = self.addr[:2]
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"{where} ({self.fingerprint[:12]})" if self.fingerprint else where


def close_socket(sock):
    try:
        sock.close()
    except OSError:
        pass


_TLS_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate presented",
    "CERTIFICATE_VERIFY_FAILED": "client certificate not trusted",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust this server's certificate",
    "TLSV1_ALERT_CERTIFICATE_UNKNOWN": "the client does not trust this server's certificate",
    "UNSUPPORTED_PROTOCOL": "TLS version below 1.2",
    "NO_SHARED_CIPHER": "no shared cipher",
    "HTTP_REQUEST": "plain HTTP on the HTTPS port",
    "WRONG_VERSION_NUMBER": "not a TLS client",
}


def _verify_reason(exc):
    message = exc.verify_message or exc.reason or "verification failed"
    if "expired" in message:
        return f"client certificate expired ({message})"
    # A self-signed certificate outside the store (never added, removed or
    # revoked) fails as "self-signed certificate" or "unable to get local issuer".
    return f"client certificate not trusted ({message})"


def _tls_reason(exc):
    return _TLS_REASONS.get(exc.reason, exc.reason or str(exc))

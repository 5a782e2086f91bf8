"""TLS records through memory BIOs: the bytes between OpenSSL and the socket.

OpenSSL's object (transport.py makes it) reads from and writes to two
ssl.MemoryBIOs; this layer alone moves their bytes to and from the TCP
socket, in large pieces:

* out: an answer is sealed 64 KiB (four records) per call and up to BATCH
  bytes of records leave in one sendmsg(). On a socket BIO OpenSSL makes one
  write() per 16 KiB record, 64 per MiB of a download, and loopback charges
  each its whole receive path: measured, 1.07 s of server CPU per GiB
  against 0.96 (bench row 4). Sealing a record per call cost more than it
  saved where a reader thread wants the GIL too (a proxied object-store
  download): four records per call is as cheap as the socket BIO there.
* in: one recv() takes what the socket has, many records at once, where
  OpenSSL on a socket reads each record with two read()s, header then body
  (an upload: 4.6 s of server CPU per GiB against 5.8, row 5).

What this changes, and how it is kept right:
* epoll knows only the socket. Records already in the incoming BIO (a
  request that came in one segment with the end of the handshake, the rest
  of a recv an upload's buffer had no room for) are announced by no event:
  `_recv` decrypts all it can, and what stays is read when reading resumes
  (Transport._watch, after a handshake: `buffered()`).
* a BIO keeps its largest size for the life of the connection: the
  incoming one is fed at most a record's size at a time and the outgoing
  one is emptied after each call, so they stay within 34 and 64 KiB.
* what is sealed and not yet sent (`wire`) is at most BATCH bytes, and the
  next is sealed only when it is gone: a slow reader holds that and the
  answer's own buffers, no more.
"""
import logging
import ssl

from registry.loop import WRITE

__all__ = ["TlsIO", "BATCH"]

log = logging.getLogger("aar.server")

_RECORD = 16 * 1024                # the most plaintext one TLS record carries
_PIECE = _RECORD + 1024            # ... and about the most bytes it takes sealed
_RECV = 64 * 1024                  # a read of plaintext: always a whole record
_SEAL = 64 * 1024                  # plaintext sealed per call (4 records)
BATCH = 256 * 1024                 # plaintext sealed per sendmsg() (16 records)


class TlsIO:
    """The socket side of a connection's memory BIOs (see the module's docstring)."""

    tls = inbio = outbio = None
    inbox = None                          # the loop's (RegistryServer.inbox)
    ended = False                         # the stream's end is read (_recv_failed)
    # The next _recv takes only what the BIO holds: set where the socket was
    # just read and a level-triggered watch announces whatever comes after.
    bio_only = False
    wire = None                           # sealed buffers not yet sent: a list

    def _recv(self):
        """Bytes read, b"" at the end of the stream, None when none are ready.
        Decrypts every whole record the BIO holds, so none is left that no
        event would announce."""
        inbio = self.inbio
        fresh = not self.bio_only
        if fresh:
            try:
                n = self.sock.recv_into(self.inbox)
            except (BlockingIOError, InterruptedError):
                n = -1
            except OSError as exc:
                log.debug("closing %s: %s", self.peer, exc)
                return b""
        else:                             # records the BIO holds; the socket waits
            self.bio_only = False
            # As if just read: what the BIO holds, when none of it is
            # decrypted yet (after the handshake) and it is at most a record.
            n = inbio.pending
            if not 0 < n <= _PIECE or self.tls.pending():
                n = -1
        if n < 0:                         # nothing new, records left from before?
            if self.ended:
                return b""
            if not self.buffered():
                return None
        read = self._read
        if 0 < n <= _PIECE:               # a request: one record, most often
            if fresh:
                inbio.write(self.inbox[:n])
            try:
                # Its plaintext is shorter than the n bytes it came in: a
                # buffer of n, not _RECV (64 KiB allocated and shrunk again).
                data = read(n)
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLError as exc:
                return self._recv_failed(exc, b"")
            if not inbio.pending:
                return data
            got = [data]
            start = n
        else:
            if not n:
                inbio.write_eof()
            got = []
            start = 0
        while True:
            if start < n:                 # a record's size at a time: the BIO stays small
                end = min(n, start + _PIECE)
                inbio.write(self.inbox[start:end])
                start = end
            try:
                got.append(read(_RECV))
                while inbio.pending:
                    got.append(read(_RECV))
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                return self._recv_failed(exc, b"".join(got))
            if start >= n:
                break
        # Anything OpenSSL wrote meanwhile (the answer to a key update) stays
        # in the outgoing BIO and leads the next answer out.
        if got:
            return got[0] if len(got) == 1 else b"".join(got)
        return None

    def _recv_failed(self, exc, data):
        """The stream ended (close_notify, a TCP close, a TLS error): what
        was read before it, else b"". The end is remembered, so the next
        read says b"" though no event comes for it (see _watch)."""
        if not isinstance(exc, (ssl.SSLZeroReturnError, ssl.SSLEOFError)):
            log.info("closing %s: TLS error: %s", self.peer, exc.reason or exc)
        self.ended = True
        return data

    def _recv_into(self, view):
        """_recv into ``view`` (an upload's buffer, uploads.py), with no bytes
        object made and copied: the count read, 0 at the end of the stream,
        None when none are ready. One recv() at most, so that a fast
        uploader leaves the loop to others between calls; what does not fit
        stays in the BIO, for `buffered()` and Transport._watch to find."""
        tls = self.tls
        if tls is None:
            return 0
        inbio = self.inbio
        room = len(view)
        got = 0
        pulled = False
        while got < room:
            try:
                got += tls.read(room - got, view[got:])
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                self._recv_failed(exc, None)
                return got
            if pulled:
                break
            pulled = True
            # No whole record in the BIO: bring more, no more than the buffer
            # has room for (and the records' framing), so little is left over.
            try:
                n = self.sock.recv_into(self.inbox, min(BATCH, room - got + 1024))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.debug("closing %s: %s", self.peer, exc)
                return got
            if not n:
                inbio.write_eof()         # the next read says how it ended
                continue
            for start in range(0, n, _PIECE):
                inbio.write(self.inbox[start:min(n, start + _PIECE)])
                while got < room:         # decrypt as it goes: the BIO stays small
                    try:
                        got += tls.read(room - got, view[got:])
                    except ssl.SSLError:  # wants more; an error shows on the next read
                        break
        return got or None

    def buffered(self):
        """True if records wait in the incoming BIO, or the stream's end was
        read with the last bytes: no event comes for either."""
        return self.tls is not None and (self.ended or self.inbio.pending
                                         or self.tls.pending())

    # -- out ---------------------------------------------------------------------

    def _send_sealed(self):
        """Send what OpenSSL has sealed (a handshake flight, an alert) after
        whatever `wire` still holds: True when all went. Raises OSError.
        Most often `wire` is empty and one send() takes it all."""
        sealed = self.outbio.read()
        if self.wire:
            self.wire.append(sealed)
            return self._send_wire()
        try:
            sent = self.sock.send(sealed)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(sealed):
            return True
        self.wire = [memoryview(sealed)[sent:]]
        return False

    def _seal(self, out):
        """Seal up to BATCH bytes of `out`'s buffers into `wire`, _SEAL at a
        time; what is taken leaves `out`."""
        write = self._write
        take = self.outbio.read
        wire = self.wire = []
        room = BATCH
        while out and room > 0:
            data = out[0]
            size = len(data)
            if size <= _RECORD and size <= room:
                write(data)
                wire.append(take())
                room -= size
                out.pop(0)
                continue
            view = data if isinstance(data, memoryview) else memoryview(data)
            pos = 0
            while pos < size and room > 0:
                n = min(_SEAL, size - pos, room)
                write(view[pos:pos + n])
                wire.append(take())
                pos += n
                room -= n
            if pos < size:
                out[0] = view[pos:]
            else:
                out.pop(0)

    def _send_wire(self):
        """Send `wire` as far as the socket takes it: True when all went.
        Raises OSError."""
        wire = self.wire
        while wire:
            try:
                sent = self.sock.sendmsg(wire) if len(wire) > 1 else self.sock.send(wire[0])
            except (BlockingIOError, InterruptedError):
                return False
            while sent:
                first = wire[0]
                if sent >= len(first):
                    sent -= len(first)
                    wire.pop(0)
                else:
                    wire[0] = memoryview(first)[sent:]
                    return False          # the socket is full
        self.wire = None
        return True

    def _flush(self):
        out = self.out
        if len(out) == 1 and not self.wire and len(out[0]) <= _RECORD:
            # Most answers: one record, sealed and sent at once.
            try:
                self._write(out[0])
                sealed = self.outbio.read()
                sent = self.sock.send(sealed)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (OSError, ssl.SSLError) as exc:
                log.debug("closing %s: %s", self.peer, exc)
                return self.close()
            out.pop()
            if sent < len(sealed):
                self.wire = [memoryview(sealed)[sent:]]
                return self._watch(WRITE)
            self.deadline = self.loop.now + self.server.settings.request_timeout
            return self._sent()
        while True:
            if self.wire:
                try:
                    all_sent = self._send_wire()
                except OSError as exc:
                    log.debug("closing %s: %s", self.peer, exc)
                    return self.close()
                if not all_sent:
                    self._watch(WRITE)
                    return
                # Progress: a slow reader is cut off only after
                # request_timeout without any.
                self.deadline = self.loop.now + self.server.settings.request_timeout
            if not out:
                break
            try:
                self._seal(out)
            except (OSError, ssl.SSLError) as exc:         # OSError: closed
                log.debug("closing %s: %s", self.peer, exc)
                return self.close()
        self._sent()

    def _send_alert(self):
        """Send what OpenSSL wrote when it refused the handshake (its alert),
        as far as the socket takes it at once, before the connection lingers."""
        if self.outbio is not None and self.outbio.pending:
            try:
                self._send_sealed()
            except OSError:
                pass
            self.wire = None

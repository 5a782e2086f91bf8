"""A package body pushed into a store, and the pump for callers that pull.

Both stores' ``receive(app, version, arch, length, sha256, manifest,
publisher)`` answer ``(created, package)`` when no body is needed (the same
bytes are published already; other bytes raise conflict), else an incoming
body, which takes the bytes in chunks from whoever has them:

* ``part``: the bytes of one chunk (the last may be shorter; a chunk may be
  up to 64 KiB longer, so that the server reads whole TLS records into it);
* ``lanes``: how many ``write`` calls may run at once (2 for a file: one
  writes while the other waits for the disk; the parts in flight for an
  object store);
* ``received``: bytes of the body arrived so far, set by the caller (the
  object store's claim heartbeat watches it);
* ``digest(view)``: the chunks in order, one call at a time (sha256), beside
* ``write(number, offset, view)``: chunk ``number`` (from 1), which starts
  at byte ``offset`` of the body, to the disk or the store;
* ``finish()`` -> ``(created, package)`` once every chunk is digested and
  written: length and sha256 checked, then committed; a failure leaves nothing;
* ``abort()``: leave nothing, once no call is running (also after a failed
  ``write``, which leaves that to it).

The server's loop pushes as bytes arrive (registry/uploads.py); ``pump``
is the same for a caller with a readable stream (put(), the tests).
"""

__all__ = ["pump"]

_READ = 1 << 20      # bytes per read: a chunk (24 MiB for the bucket) is filled in
                     # pieces, never held twice, and a stream is read as it comes


def pump(incoming, stream, length):
    """Push ``length`` bytes read from ``stream`` into ``incoming`` and finish.

    ``incoming`` is what a store's receive() answered: an answer that needs
    no body, ``(created, package)``, is returned as it is, nothing read. Reads with ``stream.read(n)`` and never past ``length``: the bytes after
    the body belong to whoever reads the stream next. A stream that ends
    early leaves the rest to finish(), which says how short it was."""
    if isinstance(incoming, tuple):
        return incoming
    try:
        buf = bytearray(min(incoming.part, length))
        view = memoryview(buf)
        done, number = 0, 0
        while done < length:
            want = min(len(buf), length - done)
            pos = 0
            while pos < want:
                data = stream.read(min(want - pos, _READ))
                if not data:
                    break
                view[pos:pos + len(data)] = data
                pos += len(data)
            if pos:
                number += 1
                incoming.received = done + pos
                incoming.digest(view[:pos])
                incoming.write(number, done, view[:pos])
                done += pos
            if pos < want:
                break
    except BaseException:
        incoming.abort()
        raise
    return incoming.finish()

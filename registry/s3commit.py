"""One push's commit in the bucket: claim first, publish only if first.

The protocol and why it is safe are in registry/s3claims.py; this is the
pusher's side of it. A `Push` claims its version when the upload starts,
keeps the claim's heartbeat fresh while bytes flow and while it commits, and
at the end either publishes the record (201) or withdraws (409 to a first
claim of other bytes, or any failure), leaving no claim behind.

A delete of the version may remove the claim of a push in flight (it removes
the claims of the digest it deletes, and a re-push of the same bytes has
one). The push then claims again and commits after the delete: the
delete removed what was published before, the push publishes after it.
Only a store that keeps failing, or a version deleted again and again
while one push commits, ends in 503.

`Incoming` is a push's body on its way (registry/incoming.py): claimed and
its multipart upload begun when it is made, parts sent as the server hands
them over, and finish() judges, completes and publishes, or leaves nothing.
"""
import contextlib
import json
import logging
import os
import threading
import time

from objstore import upload
from objstore.client import S3Error, Unreachable
from registry import s3claims as claims
from registry.errors import ApiError

__all__ = ["Push", "Incoming", "stale_claim", "unavailable"]

log = logging.getLogger("aar.storage")

_ATTEMPTS = 4          # claims of one push (a delete that removed it: claim again)


@contextlib.contextmanager
def unavailable(what):
    """The object store's errors as the 503 a client gets, logged."""
    try:
        yield
    except (S3Error, Unreachable) as exc:
        log.error("%s: %s", what, exc)
        raise ApiError.of("unavailable", f"storage unavailable: {exc}") from None


def stale_claim(client, prefix, item, date, stale):
    """Whether a claim without a record can be removed: neither it nor its
    heartbeat were written for ``stale`` seconds (store clock), and no record
    names it. Removes the heartbeat with it; returns True if removed."""
    parsed = claims.parse_claim_key(prefix, item["key"])
    now = claims.date_time(date)
    if parsed is None or now - claims.store_time(item["modified"]) < stale:
        return False
    alive = client.head(claims.alive_key(prefix, *parsed))
    record = claims.record_key(prefix, *parsed[:4])
    if alive is not None and "last-modified" in alive and \
            now - claims.date_time(alive["last-modified"]) < stale:
        return False
    if client.head(record) is not None:
        return False
    log.warning("removing claim %s: no record and no heartbeat for %.0fs",
                item["key"], stale)
    client.delete(item["key"])
    client.delete(claims.alive_key(prefix, *parsed))
    return True


class Push:
    """The claim of one push of (app, version, arch) with bytes ``sha256``."""

    def __init__(self, client, prefix, app, version, arch, sha256, stale=claims.STALE):
        self.client, self.prefix, self.stale = client, prefix, stale
        self.app, self.version, self.arch, self.sha256 = app, version, arch, sha256
        push = os.urandom(6).hex()
        self.claim = claims.claim_key(prefix, app, version, arch, sha256, push)
        self.alive = claims.alive_key(prefix, app, version, arch, sha256, push)
        self.record_key = claims.record_key(prefix, app, version, arch, sha256)
        self.published = False
        self._claims = 0
        self._beat_ok = 0.0           # monotonic start of the last heartbeat written
        self._committing = False
        self._stop = threading.Event()
        self._beater = None

    # -- the claim and its heartbeat -----------------------------------------------

    def begin(self, progress):
        """Claim the version and keep the claim alive while ``progress()`` (bytes
        received so far) moves, or while committing."""
        self._put_claim()
        self._beater = threading.Thread(target=self._beats, args=(progress,),
                                        name="aar-s3-heartbeat", daemon=True)
        self._beater.start()

    def _put_claim(self):
        self._claims += 1
        if self._claims > _ATTEMPTS:
            raise ApiError.of("unavailable", f"storage unavailable: {self._where()} was "
                              "deleted while it was being published, again and "
                              "again; try again")
        started = time.monotonic()
        self.client.put(self.claim, b"")
        took = time.monotonic() - started
        if took > claims.FAST:
            self.client.delete(self.claim)
            raise ApiError.of("unavailable", f"storage unavailable: the object store "
                              f"took {took:.1f}s to write a claim: too slow to "
                              "commit safely; try again")
        self._beat_ok = started

    def _beats(self, progress):
        seen = progress()
        while not self._stop.wait(claims.HEARTBEAT):
            now = progress()
            if now == seen and not self._committing:
                continue              # the client stalls: let the claim age
            seen = now
            started = time.monotonic()
            try:
                self.client.put(self.alive, b"")
            except (S3Error, Unreachable, OSError) as exc:
                log.warning("heartbeat of %s: %s", self.claim, exc)
                continue
            if time.monotonic() - started <= claims.FAST:
                self._beat_ok = started

    def _where(self):
        return f"{self.app} {self.version} {self.arch}"

    # -- committing --------------------------------------------------------------------

    def commit(self, record, finish):
        """Judge the claim; if first, ``finish()`` the blob and write the record.
        Raises ApiError conflict (409) when another digest's claim is first."""
        self._committing = True
        while True:
            self._judge()
            finish()
            if self._publish(record):
                return
            self._put_claim()         # a delete took the claim: claim again, after it

    def _judge(self):
        """Return once our claim has settled and is first; raise 409 if another
        digest's is. A vanished claim (a delete) is claimed again."""
        prefix = claims.claim_prefix(self.prefix, self.app, self.version, self.arch)
        while True:
            items, date = self.client.list(prefix)
            own = next((i for i in items if i["key"] == self.claim), None)
            if own is None:
                self._put_claim()
                continue
            wait = claims.store_time(own["modified"]) + claims.SETTLE + claims.GRACE - \
                claims.date_time(date)
            if wait > 0:
                time.sleep(min(wait, claims.SETTLE + claims.GRACE) + 0.05)
                continue
            first = claims.first_claim(items)
            winner = claims.digest_of(first["key"])
            if winner == self.sha256:
                return
            if stale_claim(self.client, self.prefix, first, date, self.stale):
                continue
            raise ApiError.of("conflict", f"{self._where()} is already published with "
                              f"sha256 {winner}")

    def _publish(self, record):
        """Write the record; False if a delete removed our claim meanwhile (the
        record is taken back then, and the push claims again)."""
        since = time.monotonic() - self._beat_ok
        if since > self.stale / 2:
            raise ApiError.of("unavailable", f"storage unavailable: publishing "
                              f"{self._where()} stalled for {since:.0f}s: its claim "
                              "may have expired; try again")
        self.client.put(self.record_key, json.dumps(record, sort_keys=True).encode())
        self.published = True
        if self.client.head(self.claim) is not None:
            return True
        # A delete of this version ran between our judgement and now. If it
        # removed our record too, the delete came after us: done. Else our
        # record stands without its claim, which would let another digest
        # win later: take it back and publish after the delete.
        if self.client.head(self.record_key) is None:
            log.info("%s was deleted just after it was published", self._where())
            return True
        log.info("%s: a delete removed the claim while publishing; claiming again",
                 self._where())
        self.client.delete(self.record_key)
        self.published = False
        return False

    def end(self):
        """Stop the heartbeat; remove the claim unless the record was written."""
        self._stop.set()
        try:                          # once: what stays is collected (s3gc)
            self.client.delete(self.alive, attempts=1)
            if not self.published:
                self.client.delete(self.claim, attempts=1)
        except (S3Error, Unreachable, OSError) as exc:
            log.warning("cleaning the claim %s: %s (collected later)", self.claim, exc)


class Incoming:
    """The body of one push into the bucket, as registry/incoming.py says:
    ``record`` (the package's) is published at ``blob`` if its claim is
    first, and ``published(record)`` is called then. Made in a worker: the
    claim and the multipart upload are written before the first byte."""

    received = 0                  # the loop's count; the heartbeat watches it

    def __init__(self, client, prefix, record, blob, stale, published):
        self.record, self._published = record, published
        name, version, arch = record["name"], record["version"], record["architecture"]
        self.what = f"storing {name} {version} {arch}"
        self._push = Push(client, prefix, name, version, arch, record["sha256"], stale)
        self._up = upload.Upload(client, blob, record["size"], record["sha256"])
        self.part, self.lanes = self._up.part, self._up.lanes
        try:
            with unavailable(self.what):
                self._push.begin(lambda: self.received)
                self._up.begin()
        except BaseException:
            self.abort()
            raise

    def digest(self, view):
        self._up.digest(view)

    def write(self, number, offset, view):
        with unavailable(self.what):
            self._up.write(number, offset, view)

    def finish(self):
        """Check, judge the claim, complete the upload, publish: (True, record)."""
        try:
            with unavailable(self.what):
                try:
                    self._up.check()
                except upload.ShortBody as exc:
                    raise ApiError.of("size_mismatch", str(exc)) from None
                except upload.DigestMismatch as exc:
                    raise ApiError.of("digest_mismatch", str(exc)) from None
                self._push.commit(self.record, self._up.finish)
        finally:
            self.abort()              # the upload is done by then; the push ends
        self._published(self.record)
        return True, self.record

    def abort(self):
        self._up.abort()
        self._push.end()

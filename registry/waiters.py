"""Listings: their cache of serialised bytes, and requests held until they change.

ListingCache keeps each listing's bytes and ETag per store generation.
Long-poll: `GET /1.0/applications?…&wait=SECONDS` is held until the listing changes.

A request whose If-None-Match names the current listing's ETag and that asks
to wait is not answered at once. Its connection stays in the loop (no thread,
no CPU: a socket, a timer and an entry here) until either

* the package store changes: a publish or delete through this server calls
  `check()` at once. In a worker of `aar serve --processes N`, check() also
  nudges the sibling workers (nudges.py), which then compare the store's
  generation at once. A change made by any other process (another replica
  on the same S3 bucket; a worker that died before its nudge) is noticed
  by a generation check every Settings.change_poll seconds
  (POLL_SECONDS by default; no system call, see gate.py). Each waiter whose
  ETag no longer matches gets the new listing (200);
* its time is up: 304 with the unchanged ETag.

Every answer is authorised again first, so a certificate revoked while its
request waited gets 403, not the listing.
"""
import hashlib
import json
import logging

from registry.errors import ApiError, envelope_sync
from registry.loop import READ

__all__ = ["Waiters", "ListingCache", "parse_wait", "MAX_WAIT", "POLL_SECONDS"]

log = logging.getLogger("aar.api")

MAX_WAIT = 60
POLL_SECONDS = 1.0
_LISTING_CACHE = 64


def parse_wait(values):
    """The `wait` query parameter in seconds (0 when absent); ApiError when bad."""
    if not values:
        return 0
    value = values[-1]
    if not value.isascii() or not value.isdigit() or len(value) > 3 \
            or int(value) > MAX_WAIT:
        raise ApiError.of("bad_request", f"wait must be whole seconds from 0 to "
                          f"{MAX_WAIT}, not {value[:20]!r}")
    return int(value)


class _Waiter:
    __slots__ = ("req", "key", "etags", "timer")

    def __init__(self, req, key, etags, timer):
        self.req = req
        self.key = key
        self.etags = etags
        self.timer = timer


class Waiters:
    """The held listing requests of one server, by connection."""

    def __init__(self, handler):
        self._handler = handler
        self._loop = handler.server.loop
        self._waiting = {}                # Connection -> _Waiter
        self._building = set()            # listing keys being built in the pool
        self._generation = None
        self._poll = None
        settings = handler.server.settings
        self._every = getattr(settings, "change_poll", POLL_SECONDS)
        self._nudge = getattr(settings, "nudge", None)
        if self._nudge is not None:       # a sibling worker's change
            self._loop.add(self._nudge.fileno(), self, READ)

    def __len__(self):
        return len(self._waiting)

    def add(self, conn, req, key, etags, seconds):
        """Hold conn's request for at most `seconds`; returns None (no reply yet)."""
        timer = self._loop.call_later(seconds, self._expire, conn)
        self._waiting[conn] = _Waiter(req, key, etags, timer)
        conn.wait()
        log.debug("%s: listing held for at most %d s", conn.peer, seconds)
        if self._poll is None:
            self._generation = self._handler.generation.get()
            self._poll = self._loop.call_later(self._every, self._tick)
        return None

    def forget(self, conn):
        waiter = self._waiting.pop(conn, None)
        if waiter is not None:
            self._loop.cancel(waiter.timer)

    def _expire(self, conn):
        waiter = self._waiting.pop(conn, None)
        if waiter is not None:
            hit = self._handler.listing(waiter.key)
            etag = hit[1] if hit is not None else waiter.etags[0]
            self._answer(conn, waiter, None, etag)

    def _tick(self):
        """Notice changes made by other processes, while anyone waits."""
        self._poll = None
        if not self._waiting:
            return
        self._poll = self._loop.call_later(self._every, self._tick)
        self._look()

    def on_event(self, mask):
        """A sibling worker nudged us: it changed the store."""
        self._nudge.take()
        if self._waiting:
            self._look()

    def _look(self):
        if self._handler.generation.get() != self._generation:
            self._refresh()

    def check(self):
        """The store changed through this server: answer every waiter whose
        listing changed, here and (nudged) in the sibling workers."""
        if self._nudge is not None:
            self._nudge.others()
        self._refresh()

    def _refresh(self):
        self._generation = self._handler.generation.get()
        keys = {w.key for w in self._waiting.values()}
        for key in keys:
            hit = self._handler.listing(key)
            if hit is not None:
                self._deliver(key, hit)
            elif key not in self._building:
                self._building.add(key)
                self._handler.server.pool.submit(
                    lambda key=key: self._handler.listing_cache.build(
                        self._handler.packages, key),
                    lambda hit, error, key=key: self._built(key, hit, error))

    def _built(self, key, hit, error):
        self._building.discard(key)
        if error is not None:
            log.error("building the listing for waiting requests failed: %s", error)
            return                        # they get their 304 when time is up
        self._deliver(key, hit)

    def _deliver(self, key, hit):
        for conn, waiter in list(self._waiting.items()):
            if waiter.key == key and hit[1] not in waiter.etags:
                del self._waiting[conn]
                self._loop.cancel(waiter.timer)
                self._answer(conn, waiter, hit, None)

    def _answer(self, conn, waiter, hit, etag):
        handler = self._handler
        try:
            handler.authorise(conn, waiter.req)
        except ApiError as err:
            reply = handler.error_reply(conn, waiter.req, err)
            reply.close = True
            return conn.reply(reply)
        if hit is None:
            return conn.reply(handler.listing_reply((b"", etag), [etag]))
        conn.reply(handler.listing_reply(hit, waiter.etags))


class ListingCache:
    """Serialised listings by (store generation, (architecture, tags)).

    A listing of a thousand applications costs milliseconds to build and
    serialise, and AMS nodes ask for it every cycle; between two uploads the
    answer is the same bytes, so it is built once. The ETag is a digest of the
    bytes, which stays right across restarts.
    """

    def __init__(self):
        self._entries = {}

    def get(self, generation, key):
        return self._entries.get((generation, key))

    def build(self, packages, key):
        """Build (body, etag) for key; called in a worker."""
        generation = packages.generation()
        hit = self._entries.get((generation, key))
        if hit is None:
            arch, tags = key
            body = json.dumps(envelope_sync(packages.list(architecture=arch, tags=tags)),
                              separators=(",", ":"), ensure_ascii=False).encode()
            hit = (body, '"%s"' % hashlib.sha256(body).hexdigest()[:32])
            if len(self._entries) >= _LISTING_CACHE:
                self._entries.clear()     # atomic under the GIL, like the set below
            self._entries[(generation, key)] = hit
        return hit

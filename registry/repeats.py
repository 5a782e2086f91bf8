"""Answers kept for repeated request heads.

Nodes ask the same thing again and again with the same bytes: a status
probe, an agent polling its listing on a keep-alive connection. Parsing,
routing and building the answer anew cost more than sending it, so the
handler keeps a plain answer (a status, or a listing and its 304) by the
request's bytes (its head and the blank line that ends it), and `answer`
sends it again for the same bytes.

What the full path must decide is still decided for every repeat:

* the caller is authorised against the live trust store first; a refusal
  (revoked, expired, removed) or an unavailable store falls through to the
  handler, which answers and logs it as it would any request;
* a listing's answer is kept with the package store's generation and used
  only while the generation is the same; an unreadable generation (an object
  store out of date) falls through as well;
* the answer goes out through `conn.reply_kept` (or `conn.reply` for a large
  body): counted in the metrics, access-logged when that is on, deadlines.

Only answers that depend on nothing else are kept: a GET with no body,
answered on the loop with 200 or 304 (never a held `wait=`, an error, a file
or a refusal). Whether the connection stays open is in the request's bytes
(`Connection: close`, HTTP/1.0), so a kept answer says so as the full path
did, and closes after it: a status probe on a new connection each time (a
load balancer's, a monitor's) is a repeat like any other. Kept answers are of
one generation at a time, at most _KEPT of them, so old listings are let go.
"""

import time

from registry.protocol import response_head
from registry.replies import JOIN_BELOW

_monotonic = time.monotonic
_time = time.time

__all__ = ["Repeats", "KEPT_LONGEST"]

_ROUTES = ("/1.0/status", "/1.0/applications")
_STATIC = "/1.0/status"           # its answer depends on no generation
_KEPT = 256
KEPT_LONGEST = 2048               # longer requests are not kept


class _Kept:
    __slots__ = ("request", "route", "reply", "generation", "until", "data", "status",
                 "length", "record")

    def __init__(self, request, route, reply, generation, record):
        self.request = request
        self.route = route
        self.reply = reply
        self.generation = generation
        self.until = 0.0              # `data` is good until then (its Date header)
        self.data = b""
        self.status = reply.status
        self.length = len(reply.body)
        self.record = record          # its line of the metrics (events.recorder)


class Repeats:
    """The kept answers of one handler (loop thread only)."""

    def __init__(self, handler):
        self._handler = handler
        self._authorise = handler.trust.authorise
        self._kept = {}               # a request's bytes -> _Kept
        self._of = None               # the generation of the kept listings

    def generation(self):
        """The package store's generation, or None when it cannot be read."""
        try:
            return self._handler.generation.get()
        except Exception:             # unavailable: nothing is kept or used
            return None

    def keep(self, conn, req, head, reply, before):
        """Keep `reply` to `req` (whose bytes, blank line included, are
        `head`) if it may be sent again as it is; `before` is generation()
        from before it was made."""
        route = conn.route
        if route not in _ROUTES or reply.status not in (200, 304) \
                or req.method != "GET" or req.body_length != 0 \
                or reply.file is not None or reply.close or len(head) > KEPT_LONGEST:
            return
        if route == _STATIC:
            generation = None
        else:
            # The listing was made between the two reads: of this generation.
            if before is None or self.generation() != before:
                return
            generation = before
        kept = self._kept
        if len(kept) >= _KEPT or (generation is not None and generation != self._of):
            kept.clear()
            self._of = generation if generation is not None else self._of
        record = self._handler.events.recorder(route, "GET", reply.status)
        kept[bytes(head)] = _Kept(req, route, reply, generation, record)

    def answer(self, conn, head):
        """Send the answer kept for `head` again; False if there is none or
        it may not be used now (then the handler answers the request)."""
        entry = self._kept.get(head)
        if entry is None:
            return False
        conn.started = _monotonic()
        generation = entry.generation
        if generation is not None and self.generation() != generation:
            return False
        try:
            self._authorise(conn.fingerprint)
        except Exception:             # refused or unavailable: the handler says so
            return False
        conn.route = entry.route
        conn.request = entry.request
        conn.body_unread = 0
        if entry.length >= JOIN_BELOW:
            conn.reply(entry.reply)
            return True
        # Head and body as reply() would build them, kept for the second
        # their Date header names.
        now = _time()
        if now >= entry.until:
            reply = entry.reply
            entry.data = response_head(reply.status, reply.content_type, entry.length,
                                       reply.headers, entry.request.close,
                                       conn.server.server_version, reply.body)
            entry.until = int(now) + 1
        conn.reply_kept(entry, entry.data)
        return True

"""Who publishes a package version when several replicas push it at once.

S3 offers no "create if absent" we can rely on (Swift lets several concurrent
`If-None-Match: *` PUTs win), so a package is committed in two phases that
every replica judges the same way, keyed under the bucket's prefix:

    blobs/sha256/<sha256>                         the bytes, checked before upload ends
    claims/<app>/<version>/<arch>/<sha256>        phase 1: "I want to publish these bytes"
    packages/<app>/<version>/<arch>/<sha256>.json phase 2: the record; only the winner writes it

1. The pusher uploads the bytes to their blob (its sha256 checked on the way).
2. It PUTs its claim, an empty object, and times that PUT. A claim whose PUT
   took longer than FAST seconds is withdrawn (503: try again): every claim
   that stays is visible within FAST of its LastModified.
3. It waits until the store's clock (a LIST's Date header) is SETTLE seconds
   past its claim's LastModified, then LISTs the package's claims. Every
   claim with an earlier LastModified is visible by then (SETTLE > FAST +
   the 1 s granularity of Date and of some stores' LastModified + clock skew);
   every claim written later has a later LastModified.
4. The claims are ordered by (LastModified, sha256). The first one wins: its
   pusher writes the record and answers 201. Any other deletes its claim and
   answers 409. Two pushers can never both be first, so at most one record
   per package ever exists, and readers simply list ``packages/``: what
   every replica lists is the winner, and a 409 push is never listed.

A pusher that dies after 2 leaves a claim. If that claim is first it blocks
the version without a record; once it is older than STALE (far above the few
seconds between a claim and its record), a later push or start-up recovery
removes it, which is safe: a claim that old without a record can no longer
write one (its pusher would have had to stall for STALE between two steps).
Deleting a package deletes its record, then its claims.
"""
import datetime
import email.utils

__all__ = ["FAST", "SETTLE", "STALE", "claim_prefix", "claim_key", "record_prefix",
           "record_key", "parse_record_key", "store_time", "date_time", "first_claim"]

FAST = 1.5
SETTLE = 3.0
STALE = 600.0


def claim_prefix(prefix, app, version, arch):
    return f"{prefix}claims/{app}/{version}/{arch}/"


def claim_key(prefix, app, version, arch, sha256):
    return claim_prefix(prefix, app, version, arch) + sha256


def record_prefix(prefix, app=None, version=None, arch=None):
    parts = [p for p in (app, version, arch) if p is not None]
    return f"{prefix}packages/" + "".join(f"{p}/" for p in parts)


def record_key(prefix, app, version, arch, sha256):
    return record_prefix(prefix, app, version, arch) + sha256 + ".json"


def parse_record_key(prefix, key):
    """(app, version, arch, sha256) of a record key, or None if it is not one."""
    parts = key[len(prefix) + len("packages/"):].split("/")
    if len(parts) != 4 or not parts[3].endswith(".json") or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2], parts[3][:-5]


def store_time(text) -> float:
    """A LIST LastModified ("2026-11-30T18:33:40.123Z") as epoch seconds."""
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]:0<6}"
    moment = datetime.datetime.fromisoformat(text)
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def date_time(header) -> float:
    """An HTTP Date header as epoch seconds."""
    return email.utils.parsedate_to_datetime(header).timestamp()


def first_claim(items):
    """The first of a package's claims by (LastModified, sha256), or None."""
    best = None
    for item in items:
        order = (store_time(item["modified"]), item["key"].rsplit("/", 1)[1])
        if best is None or order < best[0]:
            best = (order, item)
    return None if best is None else best[1]

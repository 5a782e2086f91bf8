"""Who publishes a package version when several replicas push it at once.

S3 offers no "create if absent" we can rely on (Swift lets several concurrent
`If-None-Match: *` PUTs win), so a package is committed in two phases that
every replica judges the same way, keyed under the bucket's prefix:

    claims/<app>/<version>/<arch>/<sha256>.<push>  phase 1: "I am publishing these bytes"
    alive/<app>/<version>/<arch>/<sha256>.<push>   the claim's heartbeat while its push runs
    blobs/sha256/<sha256>                         the bytes, checked before they exist
    packages/<app>/<version>/<arch>/<sha256>.json phase 2: the record; only the winner writes it
    index/changed                                 rewritten after records are written or deleted

1. The pusher PUTs its claim, an empty object named by the digest and a random
   id of its own (so that no push ever rewrites or removes another's claim),
   when the upload starts, and
   times that PUT. A claim whose PUT took longer than FAST seconds is
   withdrawn (503: try again): every claim that stays is visible within FAST
   of its LastModified. While the body's bytes flow, and while it commits,
   the pusher re-PUTs the claim's heartbeat every HEARTBEAT seconds (the
   claim itself is never rewritten: its LastModified is its place in line).
2. The bytes travel (a multipart upload, not completed yet), sha256 checked.
3. It waits until the store's clock (a LIST's Date header) is SETTLE + GRACE
   seconds past its claim's LastModified (for a large upload this has long
   passed: the wait overlaps the transfer), then LISTs the package's claims.
   Every claim with an earlier LastModified is visible by then (SETTLE >
   FAST + the 1 s granularity of Date and of some stores' LastModified +
   clock skew); every claim written later has a later LastModified.
4. The claims are ordered by (LastModified, sha256, id). If the first is of
   its bytes (its own claim or another push's of the same bytes), the pusher
   completes the blob, writes the record and answers 201.
   Otherwise it aborts its upload, deletes its claim and answers 409. Two
   different digests can never both be first, so at most one record per
   package ever exists, and readers simply list ``packages/``.

A claim without a record whose heartbeat (or, without one, the claim) is
older than STALE is removed by the next push that finds it first, or by the
collector (registry/s3gc.py). A pusher writes its record only if its last
heartbeat began less than STALE/2 ago, so a claim can only be judged stale
after its pusher stalled for STALE/2 between two steps; a dead replica's
claim blocks its version for at most STALE.

Blobs are written (step 4) only GRACE after the claim that names them has
settled, and the collector deletes a blob nothing names only within
GC_DEADLINE of the LIST of claims that showed nothing names it: a pusher's
claim either was in that LIST, or its blob is written after the deletion.

Deleting a package deletes its record, then the claims of that record's
digest only; a push in flight keeps its claim. A push whose claim a delete
removed claims again (the push then lands after the delete, see
registry/s3commit.py).
"""
import datetime
import email.utils

__all__ = ["FAST", "SETTLE", "GRACE", "GC_DEADLINE", "HEARTBEAT", "STALE",
           "claim_prefix", "claim_key", "alive_key", "record_prefix", "record_key",
           "parse_record_key", "parse_claim_key", "digest_of", "store_time", "date_time",
           "first_claim"]

FAST = 1.5
SETTLE = 3.0
GRACE = 1.0
GC_DEADLINE = 0.5
HEARTBEAT = 5.0
STALE = 60.0


def claim_prefix(prefix, app=None, version=None, arch=None):
    parts = [p for p in (app, version, arch) if p is not None]
    return f"{prefix}claims/" + "".join(f"{p}/" for p in parts)


def claim_key(prefix, app, version, arch, sha256, push):
    return claim_prefix(prefix, app, version, arch) + f"{sha256}.{push}"


def alive_key(prefix, app, version, arch, sha256, push):
    return f"{prefix}alive/{app}/{version}/{arch}/{sha256}.{push}"


def record_prefix(prefix, app=None, version=None, arch=None):
    parts = [p for p in (app, version, arch) if p is not None]
    return f"{prefix}packages/" + "".join(f"{p}/" for p in parts)


def record_key(prefix, app, version, arch, sha256):
    return record_prefix(prefix, app, version, arch) + sha256 + ".json"


def changed_key(prefix):
    """The object every writer of records rewrites (random bytes, so a new
    ETag) after it wrote or deleted some: readers HEAD it to know whether
    packages/ needs listing again (registry/s3store.py)."""
    return f"{prefix}index/changed"


def parse_record_key(prefix, key):
    """(app, version, arch, sha256) of a record key, or None if it is not one."""
    parts = key[len(prefix) + len("packages/"):].split("/")
    if len(parts) != 4 or not parts[3].endswith(".json") or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2], parts[3][:-5]


def parse_claim_key(prefix, key, kind="claims"):
    """(app, version, arch, sha256, push) of a claim (or heartbeat) key, or None."""
    parts = key[len(prefix) + len(kind) + 1:].split("/")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    sha256, _, push = parts[3].partition(".")
    if len(sha256) != 64:
        return None
    return parts[0], int(parts[1]), parts[2], sha256, push


def digest_of(key):
    """The sha256 a claim key names."""
    return key.rsplit("/", 1)[1][:64]


def store_time(text) -> float:
    """A LIST LastModified ("2026-11-30T18:33:40.123Z") as epoch seconds."""
    text = text.rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]:0<6}"
    moment = datetime.datetime.fromisoformat(text)
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def date_time(header) -> float:
    """An HTTP Date (or Last-Modified) header as epoch seconds."""
    return email.utils.parsedate_to_datetime(header).timestamp()


def first_claim(items):
    """The first of a package's claims by (LastModified, sha256, id), or None."""
    best = None
    for item in items:
        order = (store_time(item["modified"]), item["key"].rsplit("/", 1)[1])
        if best is None or order < best[0]:
            best = (order, item)
    return None if best is None else best[1]

"""Collecting what pushes leave in the bucket, only what is provably garbage.

Run by every serving replica: once at start (`recover`) and then as a
periodic pass on the index thread (`collect`), each pass bounded (at most
``budget`` deletions). What goes:

* multipart uploads under ``blobs/`` older than ``stale_uploads`` (a replica
  that died mid-upload);
* claims without a record whose heartbeat stopped STALE ago (their pusher
  died, and it writes no record once its heartbeat is STALE/2 old), and
  heartbeats without a claim as old;
* blobs that no record and no claim names, older than ``blob_age``: deleted
  packages, 409 losers, dead pushes.

A blob is deleted only within GC_DEADLINE of the LIST of claims that showed
nothing names it. A push writes its blob GRACE after its claim settled
(registry/s3claims.py), so a claim missing from that LIST belongs to a push
whose blob is written after the deletion: no push can lose its bytes to the
collector, even when it re-sends bytes of a blob being collected.
"""
import logging
import time

from registry import s3claims as claims

__all__ = ["collect", "abort_stale_uploads"]

log = logging.getLogger("aar.storage")


def abort_stale_uploads(client, prefix, stale_uploads, budget):
    aborted = 0
    now = time.time()
    for key, upload_id, initiated in client.list_multipart(prefix + "blobs/"):
        if aborted >= budget:
            break
        if initiated and now - claims.store_time(initiated) > stale_uploads:
            client.abort_multipart(key, upload_id)
            aborted += 1
            log.warning("collected the interrupted upload of %s", key)
    return aborted


def _sweep_claims(client, prefix, stale, budget):
    """Remove dead pushes' claims and orphan heartbeats; the number removed.
    Three LISTs, no request per claim: a bucket of 1,000 packages holds 1,000
    claims, and this runs every minute."""
    recorded = {claims.parse_record_key(prefix, i["key"])
                for i in client.list(prefix + "packages/")[0]}
    beats = {}
    for item in client.list(prefix + "alive/")[0]:
        beats[claims.parse_claim_key(prefix, item["key"], "alive")] = item
    items, date = client.list(prefix + "claims/")
    now = claims.date_time(date)
    removed, live = 0, set()
    for item in items:
        parsed = claims.parse_claim_key(prefix, item["key"])
        if parsed is None or parsed[:4] in recorded:
            live.add(parsed)
            continue
        beat = beats.get(parsed)
        last = max(claims.store_time(item["modified"]),
                   claims.store_time(beat["modified"]) if beat else 0.0)
        if now - last <= stale or removed >= budget:
            live.add(parsed)
            continue
        log.warning("removing claim %s: no record and no heartbeat for %.0fs",
                    item["key"], now - last)
        client.delete(item["key"])
        if beat:
            client.delete(beat["key"])
        live.add(parsed)              # its heartbeat is gone with it
        removed += 1
    for parsed, beat in beats.items():
        if removed >= budget:
            break
        if parsed not in live and now - claims.store_time(beat["modified"]) > stale:
            client.delete(beat["key"])
            removed += 1
    return removed


def collect(client, prefix, stale_uploads, stale_claims, blob_age, budget=200) -> dict:
    """One pass; returns what it removed, by kind."""
    counts = {"uploads": abort_stale_uploads(client, prefix, stale_uploads, budget)}
    counts["claims"] = _sweep_claims(client, prefix, stale_claims, budget)
    blobs, _ = client.list(prefix + "blobs/sha256/")
    named = set()
    for item in client.list(prefix + "packages/")[0]:
        parsed = claims.parse_record_key(prefix, item["key"])
        if parsed:
            named.add(parsed[3])
    listed = time.monotonic()
    claim_items, date = client.list(prefix + "claims/")
    for item in claim_items:
        named.add(claims.digest_of(item["key"]))
    now = claims.date_time(date)
    counts["blobs"] = 0
    for item in blobs:
        sha256 = item["key"].rsplit("/", 1)[1]
        if sha256 in named or now - claims.store_time(item["modified"]) <= blob_age:
            continue
        if counts["blobs"] >= budget or time.monotonic() - listed > claims.GC_DEADLINE:
            break                     # the next pass goes on
        client.delete(item["key"], attempts=1)
        counts["blobs"] += 1
        log.warning("collected blob %s: no package or push uses it", sha256)
    return counts

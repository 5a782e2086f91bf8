"""First writer wins, on an object store without an atomic "create if absent".

Swift lets several concurrent `If-None-Match: *` PUTs win, so a contested
write (two hosts adding one certificate, two nodes using one join token) is
decided the way registry/s3claims.py decides package versions: each
contender PUTs its own object under a shared prefix, waits until every
earlier PUT must be visible, then LISTs the prefix; every contender sees the
same objects and orders them the same way, by (LastModified, key).

    claim(client, key, body, prefix) -> (settled listing of prefix, store's time)

A PUT slower than s3claims.FAST is withdrawn (TooSlow): every object that
stays was visible within FAST of its LastModified, and SETTLE is larger
than FAST plus the store clock's granularity and skew.
"""
import time

from registry.s3claims import FAST, SETTLE, date_time, store_time

__all__ = ["claim", "order", "first", "TooSlow", "Vanished"]


class TooSlow(Exception):
    """The object store took too long to write a claim; nothing was decided."""


class Vanished(Exception):
    """Our claim was deleted while we waited (its subject was removed)."""


def order(item):
    """How contenders are ranked: earliest LastModified, then key."""
    return store_time(item["modified"]), item["key"]


def first(items):
    """The first of items by order(), or None."""
    return min(items, key=order, default=None)


def claim(client, key, body, prefix) -> tuple:
    """PUT key, wait until it is settled; prefix's listing then, and the
    store's clock (epoch seconds) at that listing."""
    started = time.monotonic()
    client.put(key, body)
    took = time.monotonic() - started
    if took > FAST:
        client.delete(key)
        raise TooSlow(f"the object store took {took:.1f}s to write {key}: too slow "
                      "to decide safely; try again")
    while True:
        items, date = client.list(prefix)
        own = next((i for i in items if i["key"] == key), None)
        if own is None:
            raise Vanished(f"{key} was deleted meanwhile; try again")
        now = date_time(date)
        wait = store_time(own["modified"]) + SETTLE - now
        if wait <= 0:
            return items, now
        time.sleep(min(wait, SETTLE) + 0.05)

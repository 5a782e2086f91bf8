"""Join tokens in the bucket, next to the S3 trust store: any replica's host
makes one, any replica redeems it, and it is used once.

The same interface as trust/tokens.py's Tokens, over objects under
``<prefix>tokens/<id>/``:

    token.json          the token: hash of the secret, role, name, times
    claims/<fp>         a node wants to use it (empty)
    used.json           it was used: used_at, used_by

Using a token cannot be one transaction here, so it is a contest decided by
registry/s3settle.py: the node claims the token, waits until every earlier
claim must be visible, and goes on only if its claim is the first one. The
winner keeps its claim (so every later claimant loses), writes used.json and
trusts the node's certificate. A winner whose certificate cannot be
trusted (already trusted, revoked) withdraws its claim: the token stays
usable. Losers withdraw theirs and are refused as "used". The claim comes
before the certificate, so no loser's certificate is ever trusted, not even
for a moment. The winner writes used.json before it trusts the certificate,
so a first claim older than s3claims.STALE without used.json belongs to a
winner that died before doing anything: the next claimant removes it.

Token records are not under ``trust/``, so making or using one does not
disturb the replicas' trust polling.
"""
import json

from objstore.client import S3Error, Unreachable
from registry import s3settle
from registry.s3claims import STALE, store_time
from trust.errors import AlreadyExists, NotFound, Revoked, StoreError
from trust.tokens import TokenRefused, check, new_token, public

__all__ = ["S3Tokens"]

_ERRORS = (S3Error, Unreachable, s3settle.TooSlow, s3settle.Vanished)


class S3Tokens:
    """The join tokens of one S3TrustStore."""

    def __init__(self, store):
        self._store = store
        self.client = store.client
        self.prefix = store.root + "tokens/"

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except _ERRORS as exc:
            raise StoreError(f"join tokens s3://{self.client.endpoint.bucket}/"
                             f"{self.prefix}: {exc}") from None

    def _json(self, key):
        body = self._call(self.client.get, key)
        if body is None:
            return None
        try:
            value = json.loads(body)
        except ValueError:
            raise StoreError(f"join token object {key} is damaged (not JSON)") from None
        return value if isinstance(value, dict) else None

    def _get(self, token_id):
        """The token's row with its use filled in, or None."""
        if not isinstance(token_id, str) or not token_id.isalnum():
            return None               # never a key built from arbitrary text
        row = self._json(f"{self.prefix}{token_id}/token.json")
        if row is None:
            return None
        used = self._json(f"{self.prefix}{token_id}/used.json") or {}
        row.update(used_at=used.get("used_at"), used_by=used.get("used_by"))
        return row

    def create(self, role, ttl_seconds, name="") -> tuple:
        row, secret = new_token(role, ttl_seconds, name)
        stored = {k: v for k, v in row.items() if k not in ("used_at", "used_by")}
        self._call(self.client.put, f"{self.prefix}{row['id']}/token.json",
                   json.dumps(stored, sort_keys=True).encode())
        return public(row), secret

    def list(self) -> list:
        items, _ = self._call(self.client.list, self.prefix)
        ids = sorted({i["key"][len(self.prefix):].split("/", 1)[0] for i in items
                      if i["key"].endswith("/token.json")})
        rows = [row for row in map(self._get, ids) if row is not None]
        return [public(row) for row in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]

    def remove(self, token_id) -> dict:
        row = self._get(token_id)
        if row is None:
            raise NotFound(f"no join token {token_id}: see `aar trust token list`")
        items, _ = self._call(self.client.list, f"{self.prefix}{token_id}/")
        # The token first: a node that has not claimed it yet finds nothing.
        keys = sorted((i["key"] for i in items), key=lambda k: not k.endswith("/token.json"))
        for key in keys:
            self._call(self.client.delete, key)
        return public(row)

    def redeem(self, token_id, secret, cert) -> tuple:
        """Use the token to trust cert: (token row, trust Record).

        Raises TokenRefused (nothing changed), or the store's errors for the
        certificate (AlreadyExists, Revoked), after which the token stays usable.
        """
        row = self._get(token_id)
        now = check(row, token_id, secret)
        claims = f"{self.prefix}{token_id}/claims/"
        mine = claims + cert.fingerprint
        items, store_now = self._call(s3settle.claim, self.client, mine, b"", claims)
        used_key = f"{self.prefix}{token_id}/used.json"
        first = s3settle.first(items)
        if first["key"] != mine and store_time(first["modified"]) < store_now - STALE \
                and self._call(self.client.head, used_key) is None:
            # A winner that died before using the token (it writes used.json
            # first): its claim no longer blocks the token.
            self._call(self.client.delete, first["key"])
            first = s3settle.first(i for i in items if i is not first)
        if first["key"] != mine:
            self._call(self.client.delete, mine)
            raise TokenRefused("used", token_id)
        # Used before the certificate is trusted: a crash in between leaves a
        # used token and no trusted node, never a token good for a second node.
        used = {"used_at": now, "used_by": cert.fingerprint}
        self._call(self.client.put, used_key, json.dumps(used, sort_keys=True).encode())
        try:
            record = self._store.add(cert, row["role"], name=row["name"] or None)
        except (AlreadyExists, Revoked, StoreError):
            self._call(self.client.delete, used_key)      # not used after all
            self._call(self.client.delete, mine)
            raise
        row.update(used)
        return public(row), record

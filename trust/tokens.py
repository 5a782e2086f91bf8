"""Join tokens: one printable line that lets one AMS node enrol itself, once.

    aar1.<base64url of {"u": [registry URLs], "f": server fingerprint,
                        "i": token id, "s": secret}>

The registry keeps, per token, the SHA-256 of the secret (the secret has 256
random bits, so a plain hash is as good as a slow one), the role and name the
node will be trusted with, and when it expires and was used. The rows live in
their own table of the trust store's database (trust.db), so that using a
token and trusting the node's certificate are one transaction: two nodes
racing for one token cannot both win, and a refused attempt changes nothing.
(A trust store in S3 keeps its tokens in the bucket: registry/s3tokens.py,
which shares new_token, check and public from here.)
"""
import base64
import dataclasses
import datetime
import hashlib
import hmac
import json
import secrets

from names import check_fingerprint
from .errors import NotFound, TokenError, TrustError
from .store import check_role

__all__ = ["Token", "Tokens", "TokenError", "TokenRefused", "PREFIX", "REFUSALS",
           "new_token", "check", "public"]

PREFIX = "aar1."
_MAX_TOKEN = 4096
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TABLE = """
  CREATE TABLE IF NOT EXISTS JoinTokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT,
    used_by TEXT
  )
"""
_COLUMNS = ("id", "hash", "role", "name", "created_at", "expires_at", "used_at", "used_by")

# Why a token was refused: the audit log's reason codes. The caller is told
# only "invalid", so that a guesser learns nothing about which ids exist.
REFUSALS = {
    "unknown": "no such token (never issued, or removed)",
    "wrong_secret": "wrong secret for this token",
    "used": "token already used",
    "expired": "token expired",
}


class TokenRefused(TrustError):
    """A join refused; `reason` is a key of REFUSALS."""

    def __init__(self, reason, token_id=None):
        super().__init__(REFUSALS[reason])
        self.reason = reason
        self.token_id = token_id


@dataclasses.dataclass(frozen=True)
class Token:
    """What a token line carries."""

    urls: tuple
    fingerprint: str
    id: str
    secret: str

    def encode(self) -> str:
        body = json.dumps({"u": list(self.urls), "f": self.fingerprint, "i": self.id,
                           "s": self.secret}, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(body).decode().rstrip("=")

    @classmethod
    def decode(cls, text) -> "Token":
        text = (text or "").strip()
        bad = TokenError("not a join token: expected one line starting "
                         f"{PREFIX!r}, as printed by `aar trust token add`")
        if not text.startswith(PREFIX) or len(text) > _MAX_TOKEN:
            raise bad
        body = text[len(PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            value = json.loads(raw)
            urls = tuple(value["u"])
            token = cls(urls=urls, fingerprint=check_fingerprint(value["f"]),
                        id=value["i"], secret=value["s"])
        except (ValueError, KeyError, TypeError):
            raise bad from None
        if (not urls or not all(isinstance(u, str) and u.startswith("https://") for u in urls)
                or not isinstance(token.id, str) or not isinstance(token.secret, str)):
            raise bad
        return token


def new_token(role, ttl_seconds, name="") -> tuple:
    """(row with the secret's hash, secret) of a new token, in any store."""
    check_role(role)
    now = _utcnow()
    secret = secrets.token_urlsafe(32)
    row = {"id": secrets.token_hex(6), "hash": _hash(secret), "role": role,
           "name": name or "", "created_at": _stamp(now),
           "expires_at": _stamp(now + datetime.timedelta(seconds=ttl_seconds)),
           "used_at": None, "used_by": None}
    return row, secret


def check(row, token_id, secret) -> str:
    """The time of use if the token row may be used with secret, else raise
    TokenRefused (row None: no such token)."""
    if row is None:
        raise TokenRefused("unknown", token_id)
    # compare_digest: timing must not tell how much of a guess matched.
    if not hmac.compare_digest(row["hash"], _hash(secret)):
        raise TokenRefused("wrong_secret", token_id)
    if row["used_at"]:
        raise TokenRefused("used", token_id)
    now = _stamp(_utcnow())
    if row["expires_at"] <= now:
        raise TokenRefused("expired", token_id)
    return now


def public(row) -> dict:
    """A token row as shown: without the hash, with its state."""
    row = {k: v for k, v in row.items() if k != "hash"}
    if row["used_at"]:
        row["state"] = "used"
    elif row["expires_at"] <= _stamp(_utcnow()):
        row["state"] = "expired"
    else:
        row["state"] = "valid"
    return row


def _hash(secret) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def _stamp(moment) -> str:
    return moment.strftime(_TIME_FORMAT)


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


class Tokens:
    """The join tokens of one trust store."""

    def __init__(self, store):
        self._store = store
        store.execute(_TABLE, write=True)

    def create(self, role, ttl_seconds, name="") -> tuple:
        """A new token's (row without the hash, secret)."""
        row, secret = new_token(role, ttl_seconds, name)
        self._store.execute(
            "INSERT INTO JoinTokens (id, hash, role, name, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            tuple(row[c] for c in _COLUMNS[:6]), write=True)
        return public(row), secret

    def list(self) -> list:
        """Every token (oldest first) with its state: valid, used or expired."""
        rows = self._store.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM JoinTokens ORDER BY created_at, id")
        return [public(dict(zip(_COLUMNS, r))) for r in rows]

    def remove(self, token_id) -> dict:
        """Delete a token (used or not); NotFound if there is none."""
        with self._store.transaction():
            row = self._get(token_id)
            if row is None:
                raise NotFound(f"no join token {token_id}: see `aar trust token list`")
            self._store.execute("DELETE FROM JoinTokens WHERE id = ?", (token_id,),
                                write=True)
        return public(row)

    def redeem(self, token_id, secret, cert) -> tuple:
        """Use the token to trust cert: (token row, trust Record), all or nothing.

        Raises TokenRefused (nothing changed), or the store's errors for the
        certificate (AlreadyExists, Revoked), which roll the use back too.
        """
        with self._store.transaction():
            row = self._get(token_id) if isinstance(token_id, str) else None
            now = check(row, token_id, secret)
            record = self._store.add(cert, row["role"], name=row["name"] or None)
            self._store.execute("UPDATE JoinTokens SET used_at = ?, used_by = ? WHERE id = ?",
                                (now, record.fingerprint, token_id), write=True)
        row.update(used_at=now, used_by=record.fingerprint)
        return public(row), record

    def _get(self, token_id):
        rows = self._store.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM JoinTokens WHERE id = ?", (token_id,))
        return dict(zip(_COLUMNS, rows[0])) if rows else None


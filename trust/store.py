"""The trust store: which client certificates the registry trusts, and how.

A `shelve` keyed by fingerprint, over SqliteMapping (sqlmap.py) so that the
CLI can change it while the server reads it. Each value is a plain dict:

    {"pem": "-----BEGIN CERTIFICATE-----…", "role": "client" | "publisher",
     "name": <subject CN>, "added_at": "2026-11-22T07:49:05Z",
     "not_after": "2027-11-22T07:49:05Z", "revoked_at": None | <timestamp>}

A revoked record is never deleted, so the same certificate can never be added
back: revocation is final, removal is not.
"""
import dataclasses
import datetime
import os
import pickle
import shelve

from names import check_fingerprint
from .certs import Certificate
from .errors import AlreadyExists, Ambiguous, NotFound, Revoked, StoreError
from .sqlmap import SqliteMapping

__all__ = ["ROLES", "Record", "TrustStore", "check_role", "pick",
           "check_absent"]

ROLES = ("client", "publisher")
_FIELDS = ("pem", "role", "name", "added_at", "not_after", "revoked_at")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclasses.dataclass(frozen=True)
class Record:
    """One trusted (or revoked) certificate."""

    fingerprint: str
    pem: str = dataclasses.field(repr=False)
    role: str
    name: str
    added_at: str
    not_after: str
    revoked_at: "str | None" = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict:
        """All fields, fingerprint included (what `trust list` prints)."""
        return dataclasses.asdict(self)

    def _stored(self) -> dict:
        # The shelf value: everything but the fingerprint, which is the key.
        return {name: getattr(self, name) for name in _FIELDS}


def check_role(role) -> str:
    """Return role if it is 'client' or 'publisher', else raise ValueError."""
    if role not in ROLES:
        raise ValueError(f"invalid role {role!r}: expected 'client' or 'publisher'")
    return role


def pick(wanted, fingerprints) -> str:
    """The one of fingerprints that starts with wanted; NotFound or Ambiguous."""
    matches = sorted(fp for fp in fingerprints if fp.startswith(wanted))
    if not matches:
        raise NotFound(f"no certificate with a fingerprint starting {wanted} "
                       "in the trust store")
    if len(matches) > 1:
        raise Ambiguous(f"{len(matches)} certificates have fingerprints starting "
                        f"{wanted}; give more digits")
    return matches[0]


def check_absent(fingerprint, existing):
    """Refuse to add fingerprint over its record: Revoked or AlreadyExists."""
    if existing is not None and existing.revoked:
        raise Revoked(f"certificate {fingerprint} was revoked at "
                      f"{existing.revoked_at} and cannot be trusted again")
    if existing is not None:
        raise AlreadyExists(f"certificate {fingerprint} is already "
                            f"trusted as {existing.role}")


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(_TIME_FORMAT)


def _now() -> str:
    return _timestamp(datetime.datetime.now(datetime.timezone.utc))


class TrustStore:
    """The trust records in one file (created 0600 with its directory)."""

    def __init__(self, path, check_integrity=False):
        """Open (creating if missing) the store at path; with check_integrity,
        refuse a damaged file (StoreError) instead of serving from it."""
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the directory of trust store "
                             f"{self.path}: {error.strerror or error}") from None
        self._map = SqliteMapping(self.path)
        if check_integrity:
            try:
                self._map.check_integrity()
            except StoreError:
                self._map.close()
                raise
        # writeback=False: every assignment goes straight to the database;
        # a cache would hide other processes' changes.
        self._shelf = shelve.Shelf(self._map, writeback=False)
        self._closed = False

    # Reading

    def get(self, fingerprint) -> "Record | None":
        """The record of this exact fingerprint, revoked or not, or None."""
        fingerprint = check_fingerprint(fingerprint, allow_prefix=False)
        self._check_open()
        try:
            raw = self._map[fingerprint]
        except KeyError:
            return None
        return self._record(fingerprint, raw)

    def resolve(self, fp_or_prefix) -> str:
        """The one full fingerprint that starts with fp_or_prefix (>= 12 hex)."""
        wanted = check_fingerprint(fp_or_prefix, allow_prefix=True)
        self._check_open()
        if len(wanted) == 64:
            if wanted not in self._map:
                raise NotFound(f"no certificate with fingerprint {wanted} in the trust store")
            return wanted
        return pick(wanted, (key.decode("utf-8", "replace") for key in self._map))

    def records(self, revoked=False) -> list:
        """Trusted records; with revoked=True the revoked ones too. Oldest first."""
        found = [record for record in self._all() if revoked or not record.revoked]
        return sorted(found, key=lambda record: (record.added_at, record.fingerprint))

    def trusted(self) -> dict:
        """{fingerprint: Record} of every unrevoked record."""
        return {record.fingerprint: record for record in self._all() if not record.revoked}

    def generation(self) -> int:
        """Changes whenever any process commits a change; one cheap query."""
        self._check_open()
        return self._map.data_version()

    # Changing

    def add(self, cert: Certificate, role, name=None) -> Record:
        """Trust cert in role; AlreadyExists if trusted, Revoked if revoked.

        name: what lists show for it; default the certificate's common name.
        """
        if not isinstance(cert, Certificate):
            raise TypeError("add() takes a trust.certs.Certificate")
        check_role(role)
        self._check_open()
        # One transaction: another process cannot add or revoke the same
        # fingerprint between our check and our write.
        with self._map.transaction():
            check_absent(cert.fingerprint, self.get(cert.fingerprint))
            record = Record(fingerprint=cert.fingerprint, pem=cert.pem, role=role,
                            name=cert.common_name if name is None else name,
                            added_at=_now(),
                            not_after=_timestamp(cert.not_after), revoked_at=None)
            self._shelf[record.fingerprint] = record._stored()
        return record

    def remove(self, prefix) -> Record:
        """Forget a trusted certificate; a revoked one stays (Revoked)."""
        self._check_open()
        with self._map.transaction():
            record = self._existing(prefix)
            if record.revoked:
                raise Revoked(f"certificate {record.fingerprint} is revoked; revoked "
                              "certificates stay in the trust store for good")
            del self._shelf[record.fingerprint]
        return record

    def set_role(self, prefix, role) -> Record:
        """Change a trusted certificate's role, keeping the rest of its record."""
        check_role(role)
        self._check_open()
        with self._map.transaction():
            record = self._existing(prefix)
            if record.revoked:
                raise Revoked(f"certificate {record.fingerprint} is revoked; its role "
                              "no longer matters")
            record = dataclasses.replace(record, role=role)
            self._shelf[record.fingerprint] = record._stored()
        return record

    def revoke(self, prefix) -> Record:
        """Mark a certificate revoked, for good; Revoked if it already is."""
        self._check_open()
        with self._map.transaction():
            record = self._existing(prefix)
            if record.revoked:
                raise Revoked(f"certificate {record.fingerprint} was already "
                              f"revoked at {record.revoked_at}")
            record = dataclasses.replace(record, revoked_at=_now())
            self._shelf[record.fingerprint] = record._stored()
        return record

    # Join tokens (trust/tokens.py) keep their own table in this database, so
    # that "use the token" and "trust the certificate" commit together.

    def transaction(self):
        """One write transaction over the whole database (nests)."""
        self._check_open()
        return self._map.transaction()

    def execute(self, sql, params=(), write=False) -> list:
        """Run one SQL statement on the store's database; its rows."""
        self._check_open()
        return self._map.execute(sql, params, write)

    def join_tokens(self):
        """The join tokens kept in this store's database (trust/tokens.py)."""
        from .tokens import Tokens      # it imports this module
        return Tokens(self)

    def close(self):
        if not self._closed:
            self._closed = True
            self._shelf.close()  # closes the mapping too

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # Helpers

    def _check_open(self):
        if self._closed:
            raise StoreError(f"trust store {self.path} is closed")

    def _existing(self, prefix) -> Record:
        fingerprint = self.resolve(prefix)
        record = self.get(fingerprint)
        if record is None:  # resolved, then removed by nobody: we hold the lock
            raise NotFound(f"no certificate with fingerprint {fingerprint} in the trust store")
        return record

    def _all(self) -> list:
        self._check_open()
        return [self._record(key.decode("utf-8", "replace"), raw)
                for key, raw in self._map.snapshot()]

    def _record(self, fingerprint: str, raw: bytes) -> Record:
        # shelve would unpickle the same way; reading the rows ourselves lets
        # records() take one consistent snapshot in one query.
        try:
            value = pickle.loads(raw)
        except Exception as error:  # any damage: pickle raises many types
            raise StoreError(f"trust store {self.path}: the record {fingerprint} is "
                             f"damaged ({type(error).__name__})") from None
        # Extra keys are ignored, so a later version may add fields.
        if (not isinstance(value, dict) or not set(_FIELDS) <= set(value)
                or value["role"] not in ROLES):
            raise StoreError(f"trust store {self.path}: the record {fingerprint} "
                             "has an unexpected shape")
        return Record(fingerprint=fingerprint, **{name: value[name] for name in _FIELDS})

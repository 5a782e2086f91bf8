"""AWS Signature Version 4 for S3: signed headers and presigned query strings.

Both forms sign the same canonical request:

    METHOD \\n /uri-encoded/path \\n sorted&query \\n name:value\\n... \\n
    signed;header;names \\n payload-sha256-or-UNSIGNED-PAYLOAD

then "AWS4-HMAC-SHA256 \\n time \\n date/region/s3/aws4_request \\n
sha256(canonical request)" with a key derived by HMAC chaining from the
secret. S3 encodes the path once (never twice, unlike other AWS services) and
keeps '/' as is; query names and values encode '/' too. The tests check every
form against botocore's signer.
"""
import datetime
import hashlib
import hmac
import urllib.parse

__all__ = ["Credentials", "UNSIGNED", "sign_headers", "presign", "uri_encode"]

UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ALGORITHM = "AWS4-HMAC-SHA256"
_SAFE = "-_.~"


class Credentials:
    """An access key pair and the region it signs for."""

    def __init__(self, access_key, secret_key, region, session_token=None):
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.session_token = session_token
        self._keys = {}

    def __repr__(self):
        return f"Credentials({self.access_key!r}, <secret>, {self.region!r})"

    def signing_key(self, date):
        # One derivation per day is enough; the cache keeps the last one.
        key = self._keys.get(date)
        if key is None:
            key = _hmac(("AWS4" + self.secret_key).encode(), date)
            for part in (self.region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._keys = {date: key}
        return key


def _hmac(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def uri_encode(text, keep_slash):
    return urllib.parse.quote(text, safe=_SAFE + ("/" if keep_slash else ""))


def _canonical_query(params):
    pairs = sorted((uri_encode(k, False), uri_encode(v, False)) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _stamp(now):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def _signature(creds, method, path, params, headers, payload, amz_date):
    names = sorted(headers)
    canonical = "\n".join([
        method, uri_encode(path, True), _canonical_query(params),
        "".join(f"{n}:{' '.join(str(headers[n]).split())}\n" for n in names),
        ";".join(names), payload])
    date = amz_date[:8]
    scope = f"{date}/{creds.region}/s3/aws4_request"
    to_sign = "\n".join([_ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(creds.signing_key(date), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    return scope, ";".join(names), signature


def sign_headers(creds, method, host, path, params=(), headers=None,
                 payload=UNSIGNED, now=None) -> dict:
    """The headers to send: ``headers`` plus host, x-amz-date,
    x-amz-content-sha256 and Authorization.

    ``path`` is the decoded object path ("/bucket/key with space");
    ``params`` a sequence of (name, value) query pairs, decoded;
    ``payload`` the body's hex sha256, or UNSIGNED for streamed bodies.
    """
    amz_date = _stamp(now)
    out = {k.lower(): v for k, v in (headers or {}).items()}
    out["host"] = host
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload
    if creds.session_token:
        out["x-amz-security-token"] = creds.session_token
    scope, signed, signature = _signature(creds, method, path, params, out,
                                          payload, amz_date)
    out["authorization"] = (f"{_ALGORITHM} Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    return out


def presign(creds, method, host, path, params=(), expires=300, now=None) -> str:
    """The query string (without '?') that lets anyone do this one request
    for ``expires`` seconds, with no headers to add."""
    amz_date = _stamp(now)
    query = list(params) + [
        ("X-Amz-Algorithm", _ALGORITHM),
        ("X-Amz-Credential", f"{creds.access_key}/{amz_date[:8]}/{creds.region}"
                             "/s3/aws4_request"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(int(expires))),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if creds.session_token:
        query.append(("X-Amz-Security-Token", creds.session_token))
    _, _, signature = _signature(creds, method, path, query, {"host": host},
                                 UNSIGNED, amz_date)
    query.append(("X-Amz-Signature", signature))
    return _canonical_query(query)

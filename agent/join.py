"""`ams-sync registry join TOKEN`: enrol this node with a registry in one step.

1. Decode the token (trust/tokens.py): registry URLs, server fingerprint,
   token id and secret.
2. Make the node's client certificate if it has none yet.
3. Connect to each URL in turn, with no client certificate (the registry does
   not trust it yet), and check the server's certificate against the token's
   fingerprint right after the handshake: a server with another certificate
   is refused before a byte of the request, and so of the secret, leaves.
4. POST /1.0/join with the secret and the node's certificate; the registry
   trusts the certificate with the token's role and name.
5. Import the registry's certificate (its fingerprint must be the token's)
   and set registry.url, registry.fingerprint and registry.mode (pull for a
   client token, push for a publisher one).

The registry applies the trust at once, so `ams-sync sync` works right after.
"""
import http.client
import json
import urllib.parse

from trust import certs, tls
from trust.errors import AlreadyExists, PinMismatch
from trust.store import TrustStore
from trust.tokens import Token

from . import config as config_mod
from .errors import RegistryError, RegistryUnavailable

__all__ = ["join", "JOINED", "REFUSED", "UNREACHABLE", "MODES"]

MODES = {"client": "pull", "publisher": "push"}
JOINED = ("Joined {url} as {role} ({name}); registry.mode is {mode}. "
          "Run `ams-sync sync` to sync now.")
REFUSED = "the registry {url} refused the join: {error}"
UNREACHABLE = "cannot reach the registry at {urls}: {reason}"
_PATH = "/1.0/join"
_MAX_ANSWER = 1 << 20


def _post(url, fingerprint, body, timeout):
    parts = urllib.parse.urlsplit(url)
    conn = tls.PinnedHTTPSConnection(parts.hostname, parts.port or 443,
                                     fingerprint=fingerprint,
                                     context=tls.client_context(), timeout=timeout)
    try:
        conn.request("POST", _PATH, body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read(_MAX_ANSWER)
        return resp.status, data
    finally:
        conn.close()


def _answer(url, status, data):
    try:
        envelope = json.loads(data)
    except ValueError:
        envelope = {}
    if status != 200:
        error = envelope.get("error") if isinstance(envelope, dict) else None
        raise RegistryError(REFUSED.format(url=url, error=error or f"HTTP {status}"))
    metadata = envelope.get("metadata") if isinstance(envelope, dict) else None
    if not isinstance(metadata, dict) or metadata.get("role") not in MODES:
        raise RegistryError(f"the registry {url} sent a malformed answer to the join")
    return metadata


def join(dirs, text, timeout=30.0) -> str:
    """Join the registry the token names; the line to print. Errors: AgentError, TrustError."""
    token = Token.decode(text)
    cert_path, _ = dirs.client_certificate()
    own = certs.load_certificate(cert_path)
    body = json.dumps({"token": token.id, "secret": token.secret,
                       "certificate": own.pem}).encode()
    failures = []
    for url in token.urls:
        try:
            status, data = _post(url, token.fingerprint, body, timeout)
        except PinMismatch as error:
            # Not the registry the token was made for: stop here, whatever
            # the other addresses say. Nothing was sent to it.
            raise RegistryError(f"{error}; nothing was sent. Check the token, "
                                "or ask the registry's operator for a new one") from None
        except (OSError, http.client.HTTPException) as error:
            failures.append(f"{url}: {getattr(error, 'strerror', None) or error}")
            continue
        metadata = _answer(url, status, data)
        break
    else:
        raise RegistryUnavailable(UNREACHABLE.format(urls=", ".join(token.urls),
                                                     reason="; ".join(failures)))
    server = certs.parse_pem(str(metadata.get("server_certificate", "")).encode())
    if server.fingerprint != token.fingerprint:
        raise RegistryError(f"the registry {url} answered with a certificate other than "
                            "the token's; nothing was configured")
    with TrustStore(dirs.trust_db) as store:
        try:
            store.add(server, "client")
        except AlreadyExists:
            pass
    mode = MODES[metadata["role"]]
    settings = config_mod.Config.load(dirs.config)
    settings.set("registry.url", url)
    settings.set("registry.fingerprint", token.fingerprint)
    settings.set("registry.mode", mode)
    return JOINED.format(url=url, role=metadata["role"],
                         name=metadata.get("name") or own.common_name, mode=mode)

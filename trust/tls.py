"""TLS contexts for both sides, and fingerprint pinning for the client.

The server trusts exactly the certificates in the trust store: each one is
loaded as its own trust anchor (VERIFY_X509_PARTIAL_CHAIN), so a self-signed
client certificate verifies against itself and nothing else is needed. The
handshake is only the first gate: the registry also checks the caller's
fingerprint against the store on every request, because a trusted
certificate that happens to be a CA could otherwise vouch for others.

The client does not verify the server against any CA. It pins the server's
certificate by fingerprint instead (what AMS's `registry.fingerprint` holds),
and checks the pin right after the handshake, before a single request byte
leaves the machine.
"""
import hashlib
import hmac
import http.client
import socket
import ssl

from names import check_fingerprint
from .errors import PinMismatch, TrustError

__all__ = ["CIPHERS", "server_context", "client_context", "peer_fingerprint",
           "PinnedHTTPSConnection"]

# TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are all AEAD
# and are not affected by this string.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _base(protocol) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    # Compression leaks secrets through length (CRIME); OpenSSL 3 has it off
    # already, the option makes sure on older builds.
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def _load_chain(context, certfile, keyfile, who):
    try:
        context.load_cert_chain(certfile, keyfile)
    except OSError as error:  # ssl.SSLError is an OSError too
        detail = getattr(error, "reason", None) or error.strerror or error
        raise TrustError(f"cannot load the {who} certificate {certfile} with key "
                         f"{keyfile}: {detail}") from None


# X509_V_FLAG_NO_CHECK_TIME (OpenSSL 1.1.0+), which the ssl module has no name for.
_NO_CHECK_TIME = 0x200000


def server_context(certfile, keyfile, trusted_pems, *, check_time=True,
                   certificate_optional=False) -> ssl.SSLContext:
    """A server context that verifies client certificates against trusted_pems.

    check_time=False lets a certificate past its dates through the handshake:
    OpenSSL would refuse it without telling us whom it refused, and the
    registry wants to log and audit the fingerprint of an expired (or, with
    revoked PEMs among trusted_pems, a revoked) certificate. The caller must
    then refuse those itself from the trust records, before any request is
    served (registry/livetrust.py authorises every request anyway).

    certificate_optional: a caller without any certificate completes the
    handshake (CERT_OPTIONAL); one presenting an unknown certificate is still
    refused in the handshake. The registry admits cert-less callers to the
    join endpoint only.

    With no PEM at all every handshake that presents a certificate fails,
    which is the point: an empty trust store lets nobody in.
    """
    context = _base(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_OPTIONAL if certificate_optional else ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # No session tickets: nodes keep their connection open instead of
    # resuming, and issuing two tickets per TLS 1.3 handshake costs about a
    # third of the server's handshake CPU. Nothing to revoke, either.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    if not check_time:
        context.verify_flags |= _NO_CHECK_TIME
    _load_chain(context, certfile, keyfile, "server")
    pems = [pem.decode("ascii") if isinstance(pem, bytes) else pem
            for pem in trusted_pems]
    if pems:
        try:
            context.load_verify_locations(cadata="\n".join(pems))
        except (ssl.SSLError, ValueError) as error:
            raise TrustError(f"cannot load the trusted certificates: "
                             f"{getattr(error, 'reason', None) or error}") from None
    return context


def client_context(certfile=None, keyfile=None) -> ssl.SSLContext:
    """A client context that presents certfile and trusts the pin, not CAs.

    Without certfile it presents no certificate (only useful to probe a
    server; the registry will refuse the handshake).
    """
    context = _base(ssl.PROTOCOL_TLS_CLIENT)
    # Hostname and CA checks would refuse every self-signed registry; the
    # pin in PinnedHTTPSConnection is the check that counts.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certfile is not None:
        _load_chain(context, certfile, keyfile, "client")
    return context


def peer_fingerprint(sslsocket) -> str:
    """SHA-256 hex of the certificate the other side presented."""
    der = sslsocket.getpeercert(binary_form=True)
    if not der:
        raise TrustError("the peer presented no certificate")
    return hashlib.sha256(der).hexdigest()


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to the one server whose fingerprint is pinned.

    connect() raises PinMismatch, with the socket closed, when the server
    presents any other certificate; request() calls connect() before it
    writes, so nothing of the request is sent to the wrong server.
    """

    def __init__(self, host, port=None, fingerprint=None, context=None,
                 timeout=socket._GLOBAL_DEFAULT_TIMEOUT, **kwargs):
        if fingerprint is None:
            raise TypeError("PinnedHTTPSConnection needs the server's fingerprint")
        try:
            self.fingerprint = check_fingerprint(fingerprint, allow_prefix=False)
        except ValueError as error:
            raise TrustError(str(error)) from None
        if context is None:
            context = client_context()
        super().__init__(host, port, timeout=timeout, context=context, **kwargs)

    def connect(self):
        super().connect()  # TCP, then the TLS handshake inside wrap_socket
        try:
            actual = peer_fingerprint(self.sock)
        except TrustError:
            self.close()
            raise PinMismatch(f"the server at {self.host}:{self.port} presented no "
                              f"certificate; expected fingerprint {self.fingerprint}") from None
        # compare_digest: how much of a guess matched must not show in timing.
        if not hmac.compare_digest(actual, self.fingerprint):
            self.close()
            raise PinMismatch(f"the server at {self.host}:{self.port} is not the pinned "
                              f"registry: expected fingerprint {self.fingerprint}, "
                              f"got {actual}")

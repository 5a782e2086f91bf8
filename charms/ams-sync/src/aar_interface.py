"""The `aar` relation interface: what each side writes in its unit databag.

    aar unit     certificate   PEM of its certs/server.crt
                 fingerprint   SHA-256 of that certificate's DER, 64 lowercase hex
                 ip            the address to reach it
                 port          its port, as a string
    ams unit     certificate   PEM of its registry/client.crt
                 mode          "client" or "publisher"

Unit databags only, never application databags, so the relation works across
models (`juju offer aar:client`). Pure functions: no Juju, no files. This
module is the same file in both charms (a test keeps the copies equal), as a
charm library would be.

The real AMS charm writes some values JSON-quoted ('"client"') and some
certificates with escaped newlines; both are accepted here.
"""
import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import re

__all__ = [
    "InterfaceError", "NodeData", "RegistryData", "ROLES",
    "der_fingerprint", "parse_node", "parse_registry", "node_databag",
    "registry_databag", "registry_url",
]

ROLES = ("client", "publisher")

_PEM_RE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----")


class InterfaceError(ValueError):
    """A databag value that cannot be used; the message names the key."""


def _unquote(value):
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def _certificate(value):
    """(normalised PEM, DER) of the one certificate in value."""
    text = _unquote(value).replace("\\n", "\n")
    found = _PEM_RE.findall(text)
    if len(found) != 1:
        raise InterfaceError("certificate: expected exactly one PEM certificate, "
                             f"found {len(found)}")
    try:
        der = base64.b64decode("".join(found[0].split()), validate=True)
    except binascii.Error:
        raise InterfaceError("certificate: the PEM body is not base64") from None
    if not der.startswith(b"\x30"):
        raise InterfaceError("certificate: the PEM body is not a DER certificate")
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    pem = "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
    return pem, der


def der_fingerprint(pem):
    """SHA-256 over the certificate's DER bytes (not over the PEM text, which is
    what the real AAR charm hashed and which no program can match)."""
    return hashlib.sha256(_certificate(pem)[1]).hexdigest()


@dataclasses.dataclass(frozen=True)
class NodeData:
    """What an AMS unit offers: its client certificate and the role it asks for."""
    certificate: str
    fingerprint: str
    mode: str


@dataclasses.dataclass(frozen=True)
class RegistryData:
    """What an aar unit offers: where it is and which certificate to pin."""
    certificate: str
    fingerprint: str
    ip: str
    port: int
    published_fingerprint: str


def parse_node(databag):
    """NodeData from an AMS unit's databag; None while its certificate is not
    there yet (a unit writes its data after joining). InterfaceError if bad."""
    if not databag.get("certificate") or not databag.get("mode"):
        return None
    pem, der = _certificate(databag["certificate"])
    return NodeData(pem, hashlib.sha256(der).hexdigest(), _unquote(databag["mode"]))


def parse_registry(databag):
    """RegistryData from an aar unit's databag; None while incomplete."""
    if not all(databag.get(key) for key in ("certificate", "ip", "port")):
        return None
    pem, der = _certificate(databag["certificate"])
    ip = _unquote(databag["ip"])
    if not ip or any(c.isspace() or c in "/?#@[]" for c in ip):
        raise InterfaceError(f"ip: {ip!r} is not an address")
    try:
        port = int(_unquote(databag["port"]))
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise InterfaceError(f"port: {databag['port']!r} is not a port number")
    return RegistryData(pem, hashlib.sha256(der).hexdigest(), ip, port,
                        _unquote(databag.get("fingerprint", "")).lower())


def node_databag(certificate, mode):
    if mode not in ROLES:
        raise InterfaceError(f"mode: {mode!r} is not one of {', '.join(ROLES)}")
    return {"certificate": _certificate(certificate)[0], "mode": mode}


def registry_databag(certificate, ip, port):
    pem, der = _certificate(certificate)
    return {"certificate": pem, "fingerprint": hashlib.sha256(der).hexdigest(),
            "ip": ip, "port": str(port)}


def registry_url(ip, port):
    """https://ip:port, an IPv6 address in brackets."""
    try:
        if ipaddress.ip_address(ip).version == 6:
            ip = f"[{ip}]"
    except ValueError:
        pass  # a host name: as it is
    return f"https://{ip}:{port}"

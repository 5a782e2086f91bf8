"""Certificates: PEM in, a Certificate with the few fields trust needs out.

Operators paste and upload these files by hand, so parse_pem accepts what
they really have (CRLF, text around the block, `openssl x509 -text` output)
and answers every mistake with one line that says what to do instead. The
X.509 structure is read with the strict DER reader in der.py; signatures are
not checked, because trust here is the fingerprint, never a CA.
"""
import base64
import binascii
import dataclasses
import datetime
import hashlib
import os
import re

from . import der
from .errors import CertificateError

__all__ = [
    "Certificate", "parse_pem", "read_der", "fingerprint", "load_certificate",
    "EMPTY", "PRIVATE_KEY", "CSR", "SEVERAL", "TRUNCATED", "BAD_BASE64",
    "NOT_PEM", "LOOKS_DER", "OTHER_BLOCK", "TOO_LARGE", "UNREADABLE",
]

# Every message a user can see, named so callers and tests can refer to them.
EMPTY = "no certificate found: the input is empty"
PRIVATE_KEY = ("this is a private key, not a certificate: give the .crt file, "
               "never share the key")
CSR = ("this is a certificate signing request, not a certificate: give the "
       "signed certificate (.crt)")
SEVERAL = "found {count} certificates; give exactly one"
TRUNCATED = ("the PEM text is truncated: '-----BEGIN {label}-----' has no "
             "matching '-----END {label}-----'")
BAD_BASE64 = "the certificate's base64 text is damaged: {detail}"
NOT_PEM = ("no certificate found: expected PEM text starting with "
           "'-----BEGIN CERTIFICATE-----'")
LOOKS_DER = ("this looks like a binary (DER) certificate: convert it with "
             "'openssl x509 -inform der -in FILE -out FILE.crt'")
OTHER_BLOCK = "this is a {label}, not a certificate"
TOO_LARGE = "the input is larger than {limit} bytes: not a certificate"
UNREADABLE = "cannot read certificate {path}: {reason}"

_CERT_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
_CSR_LABELS = ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
_CN_OID = "2.5.4.3"
_BOOLEAN = 0x01
# Base64 of DER is a third larger than the DER, plus line breaks and text.
_MAX_INPUT = 2 * der.MAX_SIZE
_BEGIN_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
_END_RE = re.compile(r"-----END ([A-Z0-9 ]+)-----")


@dataclasses.dataclass(frozen=True)
class Certificate:
    """One parsed certificate; compare and key by fingerprint."""

    der: bytes = dataclasses.field(repr=False)
    fingerprint: str
    common_name: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    pem: str = dataclasses.field(repr=False)

    def expired(self, now=None) -> bool:
        """True once now (default: the current UTC time) is past notAfter."""
        if now is None:
            now = datetime.datetime.now(datetime.timezone.utc)
        return now > self.not_after


def fingerprint(der_bytes: bytes) -> str:
    """SHA-256 of the DER bytes as 64 lowercase hex digits, no colons."""
    return hashlib.sha256(der_bytes).hexdigest()


def read_der(der_bytes) -> Certificate:
    """Read one DER-encoded X.509 certificate; CertificateError if it is not."""
    root = der.parse(der_bytes)
    common_name, not_before, not_after = _read_certificate(root)
    data = root.encoded
    return Certificate(
        der=data, fingerprint=fingerprint(data), common_name=common_name,
        not_before=not_before, not_after=not_after, pem=_to_pem(data))


def parse_pem(data) -> Certificate:
    """Read exactly one PEM certificate from text or bytes."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) > _MAX_INPUT:
            raise CertificateError(TOO_LARGE.format(limit=_MAX_INPUT))
        text = _decode(data)
    elif isinstance(data, str):
        if len(data) > _MAX_INPUT:
            raise CertificateError(TOO_LARGE.format(limit=_MAX_INPUT))
        text = data
    else:
        raise CertificateError(NOT_PEM)
    # Windows editors start UTF-8 files with a byte-order mark.
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise CertificateError(EMPTY)
    blocks, broken = _blocks(text)
    labels = [label for label, _ in blocks]
    # A key anywhere in the input is refused first: the operator is about to
    # hand a secret to someone, and that matters more than any other mistake.
    if any(label.endswith("PRIVATE KEY") for label in labels + broken):
        raise CertificateError(PRIVATE_KEY)
    certs = [body for label, body in blocks if label in _CERT_LABELS]
    if len(certs) > 1:
        raise CertificateError(SEVERAL.format(count=len(certs)))
    if broken:
        raise CertificateError(TRUNCATED.format(label=broken[0]))
    if not certs:
        if any(label in _CSR_LABELS for label in labels):
            raise CertificateError(CSR)
        if labels:
            raise CertificateError(OTHER_BLOCK.format(label=labels[0]))
        if isinstance(data, bytes) and data[:1] == b"\x30":
            raise CertificateError(LOOKS_DER)
        raise CertificateError(NOT_PEM)
    return read_der(_unbase64(certs[0]))


def load_certificate(path) -> Certificate:
    """parse_pem of a file's contents; an unreadable file is a CertificateError."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(_MAX_INPUT + 1)
    except OSError as error:
        reason = error.strerror or str(error)
        raise CertificateError(UNREADABLE.format(path=os.fspath(path), reason=reason)) from None
    return parse_pem(data)


def _decode(data: bytes) -> str:
    # PEM is ASCII; Latin-1 turns any other byte into some character, so
    # garbage reaches the "not PEM" message instead of a UnicodeError.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text


def _blocks(text: str):
    """The complete PEM blocks in text as [(label, [body lines])], and the
    labels of blocks cut off (a BEGIN without its END)."""
    blocks = []
    broken = []
    label = None
    body = []
    # splitlines() handles \n, \r\n and a lone \r alike.
    for raw in text.splitlines():
        line = raw.strip()
        begin = _BEGIN_RE.fullmatch(line)
        end = _END_RE.fullmatch(line)
        if begin:
            if label is not None:
                # A new BEGIN before the END: the earlier block was cut off.
                broken.append(label)
            label, body = begin.group(1), []
        elif end and label is not None:
            if end.group(1) == label:
                blocks.append((label, body))
            else:
                broken.append(label)
            label = None
        elif label is not None:
            body.append(line)
    if label is not None:
        broken.append(label)
    return blocks, broken


def _unbase64(lines) -> bytes:
    # RFC 7468 allows no headers in a certificate block; a ':' line is one.
    if any(":" in line for line in lines):
        raise CertificateError(BAD_BASE64.format(detail="unexpected header line"))
    joined = "".join("".join(line.split()) for line in lines)
    if not joined:
        raise CertificateError(BAD_BASE64.format(detail="the block is empty"))
    try:
        return base64.b64decode(joined.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as error:
        raise CertificateError(BAD_BASE64.format(detail=_one_line(error))) from None


def _one_line(error) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _to_pem(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    lines = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _fail(what: str):
    raise CertificateError(f"not a valid certificate ({what})")


def _children(element, tag, count, what):
    # The element must have this tag and exactly count children (a range for
    # optional trailing parts is checked by the caller).
    if element.tag != tag:
        _fail(f"{what}: unexpected tag 0x{element.tag:02x}")
    if count is not None and len(element.children) != count:
        _fail(f"{what}: {len(element.children)} parts instead of {count}")
    return element.children


def _read_certificate(root):
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    tbs, sig_alg, signature = _children(root, der.SEQUENCE, 3, "Certificate")
    _algorithm(sig_alg, "signatureAlgorithm")
    der.bit_string(signature)
    parts = list(_children(tbs, der.SEQUENCE, None, "tbsCertificate"))
    if parts and parts[0].tag == 0xA0:
        # [0] EXPLICIT Version; v1 (0) should be omitted in DER, but some
        # issuers write it and nothing here depends on the difference.
        (version,) = _children(parts.pop(0), 0xA0, 1, "version")
        if der.integer(version) not in (0, 1, 2):
            _fail("unknown certificate version")
    if len(parts) < 6:
        _fail("tbsCertificate has too few parts")
    serial, inner_alg, issuer, validity, subject, spki = parts[:6]
    der.integer(serial)
    _algorithm(inner_alg, "signature")
    # RFC 5280 4.1.1.2: the two algorithm fields must be identical.
    if inner_alg.encoded != sig_alg.encoded:
        _fail("signature algorithms in the certificate disagree")
    _name(issuer, "issuer")
    start, end = _children(validity, der.SEQUENCE, 2, "validity")
    not_before, not_after = der.time(start), der.time(end)
    common_name = _name(subject, "subject")
    key_alg, key = _children(spki, der.SEQUENCE, 2, "subjectPublicKeyInfo")
    _algorithm(key_alg, "public key algorithm")
    der.bit_string(key)
    _optional_tail(parts[6:])
    return common_name, not_before, not_after


def _algorithm(element, what):
    # AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }
    parts = _children(element, der.SEQUENCE, None, what)
    if not 1 <= len(parts) <= 2:
        _fail(f"{what}: malformed algorithm identifier")
    der.oid(parts[0])


def _name(element, what) -> str:
    """Check a Name and return its CN ('' when it has none)."""
    common_name = ""
    for rdn in _children(element, der.SEQUENCE, None, what):
        attributes = _children(rdn, der.SET, None, what)
        if not attributes:
            _fail(f"{what}: empty name component")
        for attribute in attributes:
            kind, value = _children(attribute, der.SEQUENCE, 2, what)
            if der.oid(kind) == _CN_OID:
                if value.tag not in der.STRING_TAGS:
                    _fail(f"{what}: common name is not a string")
                # The last CN is the most specific one (as Go's crypto/x509).
                common_name = der.text(value)
    return common_name


def _optional_tail(parts):
    # issuerUniqueID [1] and subjectUniqueID [2] (IMPLICIT BIT STRING, so
    # primitive in DER) and extensions [3], in this order, each at most once.
    order = [0x81, 0x82, 0xA3]
    position = 0
    for part in parts:
        if part.tag not in order[position:]:
            _fail(f"tbsCertificate: unexpected part with tag 0x{part.tag:02x}")
        position = order.index(part.tag) + 1
        if part.tag == 0xA3:
            _extensions(part)


def _extensions(element):
    # [3] EXPLICIT SEQUENCE OF Extension; Extension ::= SEQUENCE {
    #   extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
    # Only the shape is checked: trust never depends on an extension.
    (sequence,) = _children(element, 0xA3, 1, "extensions")
    extensions = _children(sequence, der.SEQUENCE, None, "extensions")
    if not extensions:
        _fail("extensions: empty list")
    for extension in extensions:
        parts = _children(extension, der.SEQUENCE, None, "extension")
        if len(parts) not in (2, 3):
            _fail("extension: malformed")
        der.oid(parts[0])
        if len(parts) == 3 and (parts[1].tag != _BOOLEAN
                                or parts[1].content not in (b"\x00", b"\xff")):
            _fail("extension: malformed critical flag")
        if parts[-1].tag != der.OCTET_STRING:
            _fail("extension: value is not an OCTET STRING")

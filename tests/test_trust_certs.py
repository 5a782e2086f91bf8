"""trust/certs.py against real openssl certificates and the mistakes operators
make with PEM files. Every refusal is one CertificateError whose message is
the named constant for that mistake."""
import base64
import datetime
import re
import subprocess

import pytest

from certs import make_cert
from trust import certs as tcerts
from trust.certs import CertificateError, parse_pem
from trust.errors import TrustError


def _openssl(*args) -> str:
    return subprocess.run(["openssl", *args], check=True, capture_output=True,
                          text=True).stdout


def _openssl_fingerprint(path) -> str:
    out = _openssl("x509", "-in", str(path), "-noout", "-fingerprint", "-sha256")
    return out.strip().split("=", 1)[1].replace(":", "").lower()


def _openssl_dates(path):
    out = _openssl("x509", "-in", str(path), "-noout", "-dates")
    found = dict(line.split("=", 1) for line in out.strip().splitlines())

    def when(text):
        # e.g. "Nov 22 07:54:34 2026 GMT" ("Nov  2 …" for one-digit days)
        moment = datetime.datetime.strptime(text.strip(), "%b %d %H:%M:%S %Y GMT")
        return moment.replace(tzinfo=datetime.timezone.utc)
    return when(found["notBefore"]), when(found["notAfter"])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Certificates beyond the session set: RSA, far future, a key and a CSR."""
    directory = tmp_path_factory.mktemp("certs_extra")

    class _Pairs:
        rsa = make_cert(directory, "rsa-client", rsa=True)
        # Past 2049, so notAfter is a GeneralizedTime.
        far = make_cert(directory, "far", days=20000)
        csr = directory / "req.csr"
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(directory / "req.key"), "-out", str(csr),
                 "-subj", "/CN=req")
        no_cn = directory / "no-cn.crt"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(directory / "no-cn.key"), "-out", str(no_cn),
                 "-subj", "/O=Example/OU=Ops", "-days", "10")
        utf8 = directory / "utf8.crt"
        _openssl("req", "-x509", "-utf8", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(directory / "utf8.key"),
                 "-out", str(utf8), "-subj", "/O=x/CN=Zürich ☃", "-days", "10")
    return _Pairs


def test_ec_certificate_matches_openssl(certs):
    for pair in (certs.server, certs.client, certs.publisher):
        cert = tcerts.load_certificate(pair.cert)
        assert cert.fingerprint == _openssl_fingerprint(pair.cert)
        assert cert.common_name == pair.cert.stem
        assert (cert.not_before, cert.not_after) == _openssl_dates(pair.cert)
        assert cert.not_after.tzinfo is datetime.timezone.utc
        assert not cert.expired()


def test_rsa_certificate_matches_openssl(pairs):
    cert = tcerts.load_certificate(pairs.rsa.cert)
    assert cert.fingerprint == _openssl_fingerprint(pairs.rsa.cert)
    assert cert.common_name == "rsa-client"
    assert (cert.not_before, cert.not_after) == _openssl_dates(pairs.rsa.cert)


def test_generalized_time_after_2049(pairs):
    cert = tcerts.load_certificate(pairs.far.cert)
    assert cert.not_after.year >= 2050
    assert (cert.not_before, cert.not_after) == _openssl_dates(pairs.far.cert)


def test_expired_certificate(certs):
    cert = tcerts.load_certificate(certs.expired.cert)
    assert cert.expired()
    assert (cert.not_before, cert.not_after) == _openssl_dates(certs.expired.cert)
    # The boundary: valid up to and including notAfter.
    assert not cert.expired(now=cert.not_after)
    assert cert.expired(now=cert.not_after + datetime.timedelta(seconds=1))


def test_common_name_absent_is_empty(pairs):
    assert tcerts.load_certificate(pairs.no_cn).common_name == ""


def test_common_name_utf8(pairs):
    assert tcerts.load_certificate(pairs.utf8).common_name == "Zürich ☃"


def test_fingerprint_is_sha256_of_der(certs):
    cert = parse_pem(certs.client.pem)
    assert tcerts.fingerprint(cert.der) == cert.fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", cert.fingerprint)


def test_pem_is_normalised_and_round_trips(certs):
    original = parse_pem(certs.server.pem)
    lines = original.pem.splitlines()
    assert lines[0] == "-----BEGIN CERTIFICATE-----"
    assert lines[-1] == "-----END CERTIFICATE-----"
    assert all(len(line) == 64 for line in lines[1:-2])
    assert 0 < len(lines[-2]) <= 64
    assert original.pem.endswith("-----END CERTIFICATE-----\n")
    assert parse_pem(original.pem) == original
    assert tcerts.read_der(original.der) == original


def test_accepts_what_operators_really_have(certs):
    pem = certs.client.pem
    expected = parse_pem(pem)
    body = base64.b64encode(expected.der).decode()
    variants = {
        "bytes": pem.encode(),
        "crlf": pem.replace("\n", "\r\n"),
        "crlf bytes": pem.replace("\n", "\r\n").encode(),
        "text around": "Here is my certificate:\n\n" + pem + "\nthanks!\n",
        "x509 -text output": _openssl("x509", "-in", str(certs.client.cert), "-text"),
        "indented": "".join("    " + line + "\n" for line in pem.splitlines()),
        "no final newline": pem.rstrip("\n"),
        "long lines": f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n",
        "utf-8 bom": "\ufeff" + pem,
        "X509 label": pem.replace("BEGIN CERTIFICATE", "BEGIN X509 CERTIFICATE")
                         .replace("END CERTIFICATE", "END X509 CERTIFICATE"),
        "memoryview": memoryview(pem.encode()),
    }
    for label, data in variants.items():
        assert parse_pem(data) == expected, label


def _key_text(pair):
    return pair.key.read_text()


def _bad_inputs(certs, pairs):
    """(label, input, expected message) for every mistake parse_pem names."""
    pem = certs.client.pem
    lines = pem.splitlines()
    key = _key_text(certs.client)
    other = certs.server.pem
    der = parse_pem(pem).der
    garbage_der = base64.encodebytes(b"\x30\x03\x02\x01\x05").decode()
    return [
        ("empty str", "", tcerts.EMPTY),
        ("empty bytes", b"", tcerts.EMPTY),
        ("whitespace", " \r\n\t\n", tcerts.EMPTY),
        ("private key", key, tcerts.PRIVATE_KEY),
        ("rsa private key", key.replace("PRIVATE KEY", "RSA PRIVATE KEY"), tcerts.PRIVATE_KEY),
        ("encrypted key", key.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY"),
         tcerts.PRIVATE_KEY),
        ("cert and key", pem + key, tcerts.PRIVATE_KEY),
        ("key and cert", key + pem, tcerts.PRIVATE_KEY),
        ("truncated key", "\n".join(key.splitlines()[:2]), tcerts.PRIVATE_KEY),
        ("csr", pairs.csr.read_text(), tcerts.CSR),
        ("two certificates", pem + other, tcerts.SEVERAL.format(count=2)),
        ("three certificates", pem + other + pem, tcerts.SEVERAL.format(count=3)),
        ("no END", "\n".join(lines[:-1]), tcerts.TRUNCATED.format(label="CERTIFICATE")),
        ("cut in half", "\n".join(lines[:len(lines) // 2]),
         tcerts.TRUNCATED.format(label="CERTIFICATE")),
        ("BEGIN only", lines[0], tcerts.TRUNCATED.format(label="CERTIFICATE")),
        ("wrong END", "\n".join(lines[:-1] + ["-----END PUBLIC KEY-----"]),
         tcerts.TRUNCATED.format(label="CERTIFICATE")),
        ("BEGIN inside BEGIN", "\n".join(lines[:3]) + "\n" + pem,
         tcerts.TRUNCATED.format(label="CERTIFICATE")),
        ("garbage text", "hello world\n", tcerts.NOT_PEM),
        ("END only", lines[-1], tcerts.NOT_PEM),
        ("binary garbage", bytes(range(256)), tcerts.NOT_PEM),
        ("DER certificate", der, tcerts.LOOKS_DER),
        ("public key", _public_key(certs.client), tcerts.OTHER_BLOCK.format(label="PUBLIC KEY")),
        ("wrong type", 42, tcerts.NOT_PEM),
        ("too large", "A" * (5 << 20), tcerts.TOO_LARGE.format(limit=2 << 20)),
        ("not a certificate inside",
         f"-----BEGIN CERTIFICATE-----\n{garbage_der}-----END CERTIFICATE-----\n",
         "not a valid certificate"),
        ("public key labelled certificate",
         _public_key(certs.client).replace("PUBLIC KEY", "CERTIFICATE"),
         "not a valid certificate"),
    ] + _bad_base64(lines)


def _bad_base64(lines):
    body = lines[1:-1]
    star = body[0][:10] + "*" + body[0][11:]
    short = body[:-1] + [body[-1][:-1]]
    empty = [lines[0], lines[-1]]
    header = [lines[0], "Proc-Type: 4,ENCRYPTED"] + body + [lines[-1]]
    return [
        ("bad base64 char", "\n".join([lines[0], star] + body[1:] + [lines[-1]]), "damaged"),
        ("base64 missing a char", "\n".join([lines[0]] + short + [lines[-1]]), "damaged"),
        ("empty block", "\n".join(empty), "damaged"),
        ("header line", "\n".join(header), "damaged"),
        ("non-ascii in body", "\n".join([lines[0], "é" + body[0][1:]] + body[1:]
                                        + [lines[-1]]), "damaged"),
    ]


def _public_key(pair) -> str:
    return _openssl("pkey", "-in", str(pair.key), "-pubout")


def test_every_mistake_has_its_message(certs, pairs):
    for label, data, message in _bad_inputs(certs, pairs):
        with pytest.raises(CertificateError) as info:
            parse_pem(data)
        text = str(info.value)
        assert message in text, (label, text)
        assert "\n" not in text, label


def test_messages_are_distinct_one_liners():
    messages = [tcerts.EMPTY, tcerts.PRIVATE_KEY, tcerts.CSR, tcerts.SEVERAL, tcerts.TRUNCATED,
                tcerts.BAD_BASE64, tcerts.NOT_PEM, tcerts.LOOKS_DER, tcerts.OTHER_BLOCK,
                tcerts.TOO_LARGE, tcerts.UNREADABLE]
    assert len(set(messages)) == len(messages)
    assert all("\n" not in message for message in messages)


def test_exact_messages_asked_for():
    assert tcerts.EMPTY == "no certificate found: the input is empty"
    assert tcerts.PRIVATE_KEY == ("this is a private key, not a certificate: give the .crt "
                                 "file, never share the key")
    assert tcerts.SEVERAL.format(count=2) == "found 2 certificates; give exactly one"


def test_load_certificate_errors(tmp_path, certs):
    with pytest.raises(CertificateError, match="cannot read certificate .*missing.crt"):
        tcerts.load_certificate(tmp_path / "missing.crt")
    with pytest.raises(CertificateError, match="cannot read certificate"):
        tcerts.load_certificate(tmp_path)
    with pytest.raises(CertificateError, match="private key"):
        tcerts.load_certificate(certs.client.key)


def test_certificate_error_is_a_trust_error():
    assert issubclass(CertificateError, TrustError)


def test_certificate_is_frozen_and_repr_is_short(certs):
    cert = parse_pem(certs.client.pem)
    with pytest.raises(AttributeError):
        cert.common_name = "x"
    assert "BEGIN" not in repr(cert) and cert.fingerprint in repr(cert)

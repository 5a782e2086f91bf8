"""trust/der.py and the X.509 reader in certs.py: DER's rules one by one, the
field variants openssl does not produce (string types, time forms), and
property tests that hostile bytes only ever raise CertificateError."""
import datetime

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trust import der
from trust.certs import CertificateError, parse_pem, read_der

UTC = datetime.timezone.utc
PROPS = settings(deadline=None, max_examples=300,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
CN = b"\x06\x03\x55\x04\x03"       # OID 2.5.4.3
ORG = b"\x06\x03\x55\x04\x0a"      # OID 2.5.4.10


def tlv(tag: int, content: bytes) -> bytes:
    """Minimal DER encoding of one element."""
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + length + content


def name(*attributes) -> bytes:
    """A Name with one attribute per RDN: name((CN, 0x0C, b"x"), ...)."""
    return tlv(0x30, b"".join(tlv(0x31, tlv(0x30, oid + tlv(tag, value)))
                              for oid, tag, value in attributes))


def rebuild(real_der: bytes, subject=None, not_before=None, not_after=None) -> bytes:
    """The real certificate with its subject and/or validity replaced."""
    root = der.parse(real_der)
    tbs, alg, sig = root.children
    parts = [part.encoded for part in tbs.children]
    offset = 1 if tbs.children[0].tag == 0xA0 else 0
    validity = tbs.children[offset + 3].children
    if not_before is not None or not_after is not None:
        parts[offset + 3] = tlv(0x30, (not_before or validity[0].encoded)
                                + (not_after or validity[1].encoded))
    if subject is not None:
        parts[offset + 4] = subject
    return tlv(0x30, tlv(0x30, b"".join(parts)) + alg.encoded + sig.encoded)


@pytest.fixture(scope="session")
def real_der(certs):
    return parse_pem(certs.client.pem).der


# DER rules -----------------------------------------------------------------

@pytest.mark.parametrize("label,data", [
    ("empty", b""),
    ("tag only", b"\x30"),
    ("indefinite length", b"\x30\x80\x02\x01\x01\x00\x00"),
    ("long form for a short length", b"\x30\x81\x03\x02\x01\x01"),
    ("leading zero length octet", b"\x30\x82\x00\x83" + tlv(0x04, b"a" * 0x80)),
    ("length past the end", b"\x30\x05\x02\x01\x01"),
    ("child past its parent", b"\x30\x03\x02\x05\x01"),
    ("length of 5 octets", b"\x30\x85\x00\x00\x00\x00\x01\x00"),
    ("reserved length 0xff", b"\x30\xff"),
    ("trailing bytes", b"\x02\x01\x01\x00"),
    ("high tag number", b"\x1f\x81\x00\x00"),
    ("constructed string", b"\x2c\x00"),
    ("primitive sequence", b"\x10\x00"),
    ("tag zero", b"\x00\x00"),
    ("length field cut off", b"\x30\x82\x01"),
])
def test_der_rules(label, data):
    with pytest.raises(CertificateError, match="bad DER"):
        der.parse(data)


def _nested(depth: int) -> bytes:
    data = b"\x05\x00"
    for _ in range(depth):
        data = tlv(0x30, data)
    return data


def test_nesting_is_bounded():
    assert der.parse(_nested(der.MAX_DEPTH)).tag == 0x30
    with pytest.raises(CertificateError, match="nested deeper"):
        der.parse(_nested(der.MAX_DEPTH + 1))
    # Far beyond Python's recursion limit: still a CertificateError.
    with pytest.raises(CertificateError):
        der.parse(_nested(5000))


def test_size_is_bounded():
    with pytest.raises(CertificateError, match="larger than"):
        der.parse(tlv(0x04, b"\x00" * der.MAX_SIZE))


def test_long_lengths_are_read():
    element = der.parse(tlv(0x04, b"x" * 300))
    assert element.content == b"x" * 300 and element.end == len(element.encoded)


@pytest.mark.parametrize("content,value", [
    (b"\x00", 0), (b"\x7f", 127), (b"\x00\x80", 128), (b"\xff", -1), (b"\x80", -128),
    (b"\x01\x00", 256),
])
def test_integers(content, value):
    assert der.integer(der.parse(tlv(0x02, content))) == value


@pytest.mark.parametrize("content", [b"", b"\x00\x01", b"\xff\x80"])
def test_integers_not_minimal(content):
    with pytest.raises(CertificateError):
        der.integer(der.parse(tlv(0x02, content)))


@pytest.mark.parametrize("content,dotted", [
    (b"\x55\x04\x03", "2.5.4.3"), (b"\x2a\x86\x48\xce\x3d\x02\x01", "1.2.840.10045.2.1"),
    (b"\x00", "0.0"), (b"\x88\x37", "2.999"),
])
def test_oids(content, dotted):
    assert der.oid(der.parse(tlv(0x06, content))) == dotted


@pytest.mark.parametrize("content", [b"", b"\x55\x84", b"\x55\x80\x01"])
def test_bad_oids(content):
    with pytest.raises(CertificateError):
        der.oid(der.parse(tlv(0x06, content)))


@pytest.mark.parametrize("content", [b"", b"\x08\x00", b"\x01", b"\x01\x01"])
def test_bad_bit_strings(content):
    with pytest.raises(CertificateError):
        der.bit_string(der.parse(tlv(0x03, content)))


# Fields of a certificate ---------------------------------------------------

@pytest.mark.parametrize("tag,value,text", [
    (0x0C, "Zürich ☃".encode("utf-8"), "Zürich ☃"),       # UTF8String
    (0x13, b"Printable Name", "Printable Name"),           # PrintableString
    (0x16, b"ia5@example.com", "ia5@example.com"),         # IA5String
    (0x1E, "Zürich".encode("utf-16-be"), "Zürich"),        # BMPString
    (0x14, b"Z\xfcrich", "Zürich"),                        # TeletexString as Latin-1
    (0x1C, "𝄞".encode("utf-32-be"), "𝄞"),                 # UniversalString
])
def test_common_name_string_types(real_der, tag, value, text):
    cert = read_der(rebuild(real_der, subject=name((ORG, 0x0C, b"x"), (CN, tag, value))))
    assert cert.common_name == text


def test_name_without_cn_and_several_cns(real_der):
    assert read_der(rebuild(real_der, subject=name((ORG, 0x13, b"org")))).common_name == ""
    assert read_der(rebuild(real_der, subject=tlv(0x30, b""))).common_name == ""
    two = name((CN, 0x0C, b"first"), (CN, 0x0C, b"last"))
    assert read_der(rebuild(real_der, subject=two)).common_name == "last"


@pytest.mark.parametrize("label,tag,value", [
    ("bad utf-8", 0x0C, b"\xff\xfe"),
    ("odd BMPString", 0x1E, b"\x00"),
    ("non-ascii PrintableString", 0x13, b"\xe9"),
    ("CN as INTEGER", 0x02, b"\x01"),
])
def test_bad_common_names(real_der, label, tag, value):
    with pytest.raises(CertificateError):
        read_der(rebuild(real_der, subject=name((CN, tag, value))))


@pytest.mark.parametrize("tag,text,moment", [
    (0x17, b"491231235959Z", datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)),
    (0x17, b"500101000000Z", datetime.datetime(1950, 1, 1, tzinfo=UTC)),
    (0x17, b"000229120000Z", datetime.datetime(2000, 2, 29, 12, tzinfo=UTC)),
    (0x18, b"20500101000000Z", datetime.datetime(2050, 1, 1, tzinfo=UTC)),
    (0x18, b"99991231235959Z", datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
])
def test_validity_times(real_der, tag, text, moment):
    cert = read_der(rebuild(real_der, not_after=tlv(tag, text)))
    assert cert.not_after == moment and cert.not_after.tzinfo is UTC


@pytest.mark.parametrize("tag,text", [
    (0x17, b"4912312359Z"),          # no seconds
    (0x17, b"491231235959"),         # no Z
    (0x17, b"491231235959+0100"),    # offset
    (0x17, b"491331235959Z"),        # month 13
    (0x17, b"490230235959Z"),        # 30 February
    (0x17, b"49123123595 Z"),        # space for a digit
    (0x17, b"+9123123595 Z"),
    (0x18, b"20500101000000.5Z"),    # fraction (RFC 5280 forbids)
    (0x18, b"00000101000000Z"),      # year 0
    (0x18, b"205001010000Z"),        # no seconds
    (0x04, b"20500101000000Z"),      # OCTET STRING, not a time
])
def test_bad_validity_times(real_der, tag, text):
    with pytest.raises(CertificateError):
        read_der(rebuild(real_der, not_after=tlv(tag, text)))


def test_structure_errors(real_der):
    root = der.parse(real_der)
    tbs, alg, sig = (child.encoded for child in root.children)
    for label, data in [
        ("two parts", tlv(0x30, tbs + alg)),
        ("four parts", tlv(0x30, tbs + alg + sig + sig)),
        ("not a sequence", tlv(0x31, tbs + alg + sig)),
        ("tbs is a set", tlv(0x30, tlv(0x31, tbs[2:]) + alg + sig)),
        ("signature not a bit string", tlv(0x30, tbs + alg + tlv(0x04, b"x"))),
        ("algorithms differ", tlv(0x30, tbs + tlv(0x30, tlv(0x06, b"\x2a\x03")) + sig)),
        ("a bare integer", tlv(0x02, b"\x01")),
        ("empty sequence", tlv(0x30, b"")),
    ]:
        with pytest.raises(CertificateError):
            read_der(data)


# Properties ----------------------------------------------------------------

def _only_certificate_error(call, data):
    try:
        call(data)
    except CertificateError as error:
        assert "\n" not in str(error)


@PROPS
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_certificate_error(data):
    _only_certificate_error(read_der, data)
    _only_certificate_error(parse_pem, data)


@PROPS
@given(st.binary(max_size=512))
def test_random_der_looking_bytes(tail):
    # Start like a certificate so the reader gets past the first checks.
    _only_certificate_error(read_der, b"\x30\x82" + tail)
    _only_certificate_error(read_der, tlv(0x30, tlv(0x30, tail)))


@PROPS
@given(st.text(max_size=600))
def test_random_text_in_a_pem_block(body):
    text = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    _only_certificate_error(parse_pem, text)


@PROPS
@given(st.data())
def test_bit_flips(real_der, data):
    mutated = bytearray(real_der)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(mutated) - 1))
        mutated[index] ^= 1 << data.draw(st.integers(0, 7))
    _only_certificate_error(read_der, bytes(mutated))


@PROPS
@given(st.data())
def test_truncations(real_der, data):
    end = data.draw(st.integers(0, len(real_der) - 1))
    start = data.draw(st.integers(0, end))
    _only_certificate_error(read_der, real_der[:end])
    _only_certificate_error(read_der, real_der[start:end])


@PROPS
@given(st.data())
def test_insertions_and_deletions(real_der, data):
    index = data.draw(st.integers(0, len(real_der)))
    insert = data.draw(st.binary(min_size=1, max_size=16))
    _only_certificate_error(read_der, real_der[:index] + insert + real_der[index:])
    width = data.draw(st.integers(1, 16))
    _only_certificate_error(read_der, real_der[:index] + real_der[index + width:])


@PROPS
@given(st.data())
def test_mutated_pem(certs, data):
    pem = certs.client.pem
    index = data.draw(st.integers(0, len(pem) - 1))
    char = data.draw(st.characters())
    _only_certificate_error(parse_pem, pem[:index] + char + pem[index + 1:])
    _only_certificate_error(parse_pem, pem[:index])


@PROPS
@given(st.data())
def test_a_mutation_that_parses_keeps_its_fields_consistent(real_der, data):
    mutated = bytearray(real_der)
    index = data.draw(st.integers(0, len(mutated) - 1))
    mutated[index] ^= 1 << data.draw(st.integers(0, 7))
    try:
        cert = read_der(bytes(mutated))
    except CertificateError:
        return
    assert cert.der == bytes(mutated)
    assert parse_pem(cert.pem) == cert

"""A strict, bounded reader of DER, the binary encoding of X.509 certificates.

Certificates arrive from operators and from the network, so this reader treats
every byte as hostile: it refuses what DER forbids (indefinite lengths,
non-minimal lengths, constructed strings, lengths past the buffer, trailing
bytes), bounds the nesting depth and the input size, and raises only
CertificateError. It reads only what X.509 needs; anything else is an error,
not a guess.

    parse(data)            -> Element spanning all of data, its subtree checked
    integer / oid / bit_string / text / time (Element) -> Python values
"""
import datetime

from .errors import CertificateError

__all__ = [
    "MAX_DEPTH", "MAX_SIZE", "Element", "parse",
    "INTEGER", "BIT_STRING", "OCTET_STRING", "NULL", "OID", "UTF8_STRING",
    "PRINTABLE_STRING", "TELETEX_STRING", "IA5_STRING", "UTC_TIME",
    "GENERALIZED_TIME", "UNIVERSAL_STRING", "BMP_STRING", "SEQUENCE", "SET",
    "STRING_TAGS", "integer", "oid", "bit_string", "text", "time",
]

# A certificate nests about 10 deep; 32 leaves room for odd extensions while
# keeping the recursive walk far from Python's recursion limit.
MAX_DEPTH = 32
# Real certificates are a few kilobytes; a megabyte is generous and bounds work.
MAX_SIZE = 1 << 20
# Lengths beyond 4 octets would describe more than MAX_SIZE anyway.
_MAX_LENGTH_OCTETS = 4

# Identifier octets (class, constructed bit and number in one byte).
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
TELETEX_STRING = 0x14
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
UNIVERSAL_STRING = 0x1C
BMP_STRING = 0x1E
SEQUENCE = 0x30
SET = 0x31

_CONSTRUCTED = 0x20
_CLASS_MASK = 0xC0
_UNIVERSAL = 0x00
_HIGH_TAG = 0x1F

# How each string type becomes text. TeletexString has no workable charset in
# practice; every TLS library reads it as Latin-1, so do we.
_CODECS = {
    UTF8_STRING: "utf-8",
    PRINTABLE_STRING: "ascii",
    IA5_STRING: "ascii",
    TELETEX_STRING: "latin-1",
    BMP_STRING: "utf-16-be",
    UNIVERSAL_STRING: "utf-32-be",
}


# The tags text() reads.
STRING_TAGS = frozenset(_CODECS)


def _fail(what: str):
    raise CertificateError(f"not a valid certificate (bad DER: {what})")


class Element:
    """One TLV: its identifier octet, where it lies in the buffer, and for a
    constructed element its children (checked when parsed)."""

    __slots__ = ("_data", "tag", "start", "body", "end", "children")

    def __init__(self, data, tag, start, body, end, children):
        self._data = data
        self.tag = tag
        self.start = start      # first identifier octet
        self.body = body        # first content octet
        self.end = end          # one past the last content octet
        self.children = children

    @property
    def constructed(self) -> bool:
        return bool(self.tag & _CONSTRUCTED)

    @property
    def content(self) -> bytes:
        return self._data[self.body:self.end]

    @property
    def encoded(self) -> bytes:
        """The whole TLV, as signed (e.g. the tbsCertificate)."""
        return self._data[self.start:self.end]

    def __repr__(self):
        return f"Element(tag=0x{self.tag:02x}, length={self.end - self.body})"


def parse(data) -> Element:
    """Read one element that spans all of data; walk and check its subtree."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        _fail("input is not bytes")
    data = bytes(data)
    if not data:
        _fail("empty input")
    if len(data) > MAX_SIZE:
        _fail(f"input is larger than {MAX_SIZE} bytes")
    element = _read(data, 0, len(data), 0)
    if element.end != len(data):
        _fail(f"{len(data) - element.end} trailing bytes after the certificate")
    return element


def _read(data: bytes, pos: int, limit: int, depth: int) -> Element:
    # One TLV starting at pos that must end by limit (its parent's end).
    if depth > MAX_DEPTH:
        _fail(f"nested deeper than {MAX_DEPTH} levels")
    if pos >= limit:
        _fail("element expected but the data ended")
    tag = data[pos]
    if tag & _HIGH_TAG == _HIGH_TAG:
        # Multi-octet tag numbers never occur in the parts of X.509 we walk.
        _fail(f"unsupported high tag number at offset {pos}")
    if tag & _CLASS_MASK == _UNIVERSAL:
        number = tag & _HIGH_TAG
        if number == 0:
            _fail(f"reserved tag 0 at offset {pos}")
        # DER: SEQUENCE and SET are always constructed, everything else in
        # the universal class is primitive (no constructed strings).
        if bool(tag & _CONSTRUCTED) != (number in (0x10, 0x11)):
            _fail(f"wrong constructed bit for tag 0x{tag:02x} at offset {pos}")
    body, end = _length(data, pos + 1, limit)
    children = ()
    if tag & _CONSTRUCTED:
        kids = []
        child_pos = body
        while child_pos < end:
            kid = _read(data, child_pos, end, depth + 1)
            kids.append(kid)
            child_pos = kid.end
        children = tuple(kids)
    return Element(data, tag, pos, body, end, children)


def _length(data: bytes, pos: int, limit: int):
    # Returns (first content offset, end offset), enforcing DER's length rules.
    if pos >= limit:
        _fail("length expected but the data ended")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        _fail("indefinite length (BER, not DER)")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_OCTETS:
            _fail(f"length field of {count} octets")
        if pos + count > limit:
            _fail("length field runs past the end of the data")
        octets = data[pos:pos + count]
        pos += count
        if octets[0] == 0:
            _fail("length with a leading zero octet (not minimal)")
        length = int.from_bytes(octets, "big")
        if length < 0x80:
            _fail("long-form length below 128 (not minimal)")
    if length > limit - pos:
        _fail(f"length {length} runs past the end of its container")
    return pos, pos + length


def _expect(element: Element, tag: int, what: str):
    if element.tag != tag:
        _fail(f"{what} expected, found tag 0x{element.tag:02x}")


def integer(element: Element) -> int:
    """An INTEGER's value; DER requires the shortest two's-complement form."""
    _expect(element, INTEGER, "INTEGER")
    content = element.content
    if not content:
        _fail("empty INTEGER")
    if len(content) > 1 and (
            (content[0] == 0x00 and content[1] < 0x80)
            or (content[0] == 0xFF and content[1] >= 0x80)):
        _fail("INTEGER not in its shortest form")
    return int.from_bytes(content, "big", signed=True)


def oid(element: Element) -> str:
    """An OBJECT IDENTIFIER in dotted form, e.g. '2.5.4.3'."""
    _expect(element, OID, "OBJECT IDENTIFIER")
    content = element.content
    if not content:
        _fail("empty OBJECT IDENTIFIER")
    if content[-1] & 0x80:
        _fail("OBJECT IDENTIFIER ends inside a sub-identifier")
    arcs = []
    value = 0
    fresh = True
    for octet in content:
        # A leading 0x80 would pad a sub-identifier: not minimal, not DER.
        if fresh and octet == 0x80:
            _fail("OBJECT IDENTIFIER sub-identifier not minimal")
        value = (value << 7) | (octet & 0x7F)
        fresh = not octet & 0x80
        if fresh:
            arcs.append(value)
            value = 0
    first = arcs[0]
    # The first sub-identifier packs two arcs: 40 * X + Y with X in 0..2.
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])


def bit_string(element: Element) -> bytes:
    """A BIT STRING's bytes; DER wants the unused trailing bits to be zero."""
    _expect(element, BIT_STRING, "BIT STRING")
    content = element.content
    if not content:
        _fail("empty BIT STRING")
    unused = content[0]
    if unused > 7 or (unused and len(content) == 1):
        _fail("BIT STRING with a bad unused-bits count")
    if unused and content[-1] & ((1 << unused) - 1):
        _fail("BIT STRING with non-zero unused bits")
    return content[1:]


def text(element: Element) -> str:
    """Any of the X.520 string types as str."""
    codec = _CODECS.get(element.tag)
    if codec is None:
        _fail(f"string expected, found tag 0x{element.tag:02x}")
    try:
        return element.content.decode(codec)
    except UnicodeDecodeError:
        _fail(f"string (tag 0x{element.tag:02x}) is not valid {codec}")


def time(element: Element) -> datetime.datetime:
    """A UTCTime or GeneralizedTime as an aware UTC datetime (RFC 5280 4.1.2.5).

    RFC 5280 fixes the forms: YYMMDDHHMMSSZ and YYYYMMDDHHMMSSZ, always 'Z',
    always seconds, never fractions. A two-digit year 50..99 is 19xx, 00..49
    is 20xx.
    """
    content = element.content
    if element.tag == UTC_TIME:
        if len(content) != 13:
            _fail("UTCTime is not YYMMDDHHMMSSZ")
        digits = content[:12]
    elif element.tag == GENERALIZED_TIME:
        if len(content) != 15:
            _fail("GeneralizedTime is not YYYYMMDDHHMMSSZ")
        digits = content[:14]
    else:
        _fail(f"time expected, found tag 0x{element.tag:02x}")
    # bytes.isdigit() is ASCII-only; int() alone would accept ' 1' or '+1'.
    if content[-1:] != b"Z" or not digits.isdigit():
        _fail("time is not digits followed by 'Z'")
    if element.tag == UTC_TIME:
        year = int(digits[:2])
        year += 1900 if year >= 50 else 2000
        rest = digits[2:]
    else:
        year = int(digits[:4])
        rest = digits[4:]
    fields = [int(rest[i:i + 2]) for i in range(0, 10, 2)]
    try:
        return datetime.datetime(year, *fields, tzinfo=datetime.timezone.utc)
    except ValueError:
        _fail(f"impossible date {content.decode('ascii')}")

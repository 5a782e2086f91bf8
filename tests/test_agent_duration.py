"""agent.duration: Go duration syntax, both ways."""
import pytest

from agent import duration
from agent.duration import format_duration, parse_duration

GOOD = [
    ("0", 0.0), ("+0", 0.0), ("0s", 0.0),
    ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("1.5h", 5400.0), ("300ms", 0.3), ("2h45m10s", 9910.0),
    ("1.s", 1.0), (".5s", 0.5), ("+5s", 5.0), ("1h0m0s", 3600.0),
    ("10ns", 1e-8), ("1us", 1e-6), ("1\u00b5s", 1e-6), ("1\u03bcs", 1e-6),
    ("1m30.5s", 90.5), ("1.000000001s", 1.000000001),
    ("2562047h47m16.854775807s", (2**63 - 1) / 1e9),
]

BAD = [
    ("", duration.EMPTY),
    ("-5s", duration.NEGATIVE.format(value="'-5s'")),
    ("-0", duration.NEGATIVE.format(value="'-0'")),
    ("5", duration.MISSING_UNIT.format(value="'5'")),
    ("1h5", duration.MISSING_UNIT.format(value="'1h5'")),
    ("5x", duration.UNKNOWN_UNIT.format(unit="'x'", value="'5x'")),
    ("5 s", duration.UNKNOWN_UNIT.format(unit="' s'", value="'5 s'")),
    ("5S", duration.UNKNOWN_UNIT.format(unit="'S'", value="'5S'")),
    ("1d", duration.UNKNOWN_UNIT.format(unit="'d'", value="'1d'")),
    ("s", duration.INVALID.format(value="'s'")),
    (".s", duration.INVALID.format(value="'.s'")),
    ("+", duration.INVALID.format(value="'+'")),
    (" 5s", duration.INVALID.format(value="' 5s'")),
    ("1..5s", duration.INVALID.format(value="'1..5s'")),
    ("2562047h47m16.854775808s",
     duration.TOO_LARGE.format(value="'2562047h47m16.854775808s'")),
    ("9" * 30 + "h", duration.TOO_LARGE.format(value=repr("9" * 30 + "h"))),
    ("1s" * 40, duration.INVALID.format(value=repr("1s" * 40)[:37] + "...")),
]


@pytest.mark.parametrize("text, seconds", GOOD)
def test_parse_good(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("text, message", BAD)
def test_parse_bad(text, message):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == message


def test_every_message_shows_an_example():
    for text, _ in BAD:
        with pytest.raises(ValueError) as info:
            parse_duration(text)
        assert "30s" in str(info.value) or "2562047h" in str(info.value), text


def test_not_text():
    with pytest.raises(ValueError):
        parse_duration(5)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (1e-9, "1ns"), (1.5e-6, "1.5\u00b5s"), (0.3, "300ms"),
    (0.0015, "1.5ms"), (1, "1s"), (30, "30s"), (90.5, "1m30.5s"),
    (300, "5m0s"), (3600, "1h0m0s"), (5400, "1h30m0s"), (9910, "2h45m10s"),
    (-5, "-5s"),
])
def test_format(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text", [t for t, _ in GOOD])
def test_round_trip(text):
    seconds = parse_duration(text)
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)

"""Go's duration syntax, the one AMS uses for ``registry.update_interval``.

    parse_duration("1h30m")   -> 5400.0
    parse_duration("300ms")   -> 0.3
    format_duration(5400)     -> "1h30m0s"

A duration is a sequence of decimal numbers, each with an optional fraction
and a unit: ns, us (or µs), ms, s, m, h. As in Go, "0" is the one number that
may stand without a unit, and the value is counted in whole nanoseconds and
must fit a signed 64-bit integer. Unlike Go, negative durations are refused:
every duration the agent reads is an interval, and "-5m" is always a typo.
"""
import fractions
import re

__all__ = [
    "parse_duration", "format_duration",
    "EMPTY", "INVALID", "MISSING_UNIT", "UNKNOWN_UNIT", "NEGATIVE", "TOO_LARGE",
]

EXAMPLES = "like 30s, 5m, 1h30m or 1.5h"
EMPTY = f"empty duration: expected a number with a unit, {EXAMPLES}"
INVALID = f"invalid duration {{value}}: expected a number with a unit, {EXAMPLES}"
MISSING_UNIT = f"missing unit in duration {{value}}: expected a unit, {EXAMPLES}"
UNKNOWN_UNIT = ("unknown unit {unit} in duration {value}: use ns, us, ms, s, m "
                f"or h, {EXAMPLES}")
NEGATIVE = f"negative duration {{value}}: expected a positive one, {EXAMPLES}"
TOO_LARGE = "duration {value} is too large: the most is 2562047h47m16.854775807s"

_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # MICRO SIGN, what Go prints
    "\u03bcs": 1_000,  # GREEK SMALL LETTER MU, which Go also accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_MAX_NS = 2**63 - 1
# Longer input is never a sensible interval; the bound keeps the big-number
# arithmetic below cheap whatever is pasted into `config set`.
_MAX_LEN = 64
# One component: digits, an optional fraction, then the unit, which runs to
# the next digit or dot so that "5x" reports the unknown unit "x" rather
# than a vague syntax error.
_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(text) -> float:
    """Return the duration in seconds; ValueError (with an example) if invalid."""
    if not isinstance(text, str):
        raise ValueError(INVALID.format(value=_show(text)))
    value = _show(text)
    if text == "":
        raise ValueError(EMPTY)
    if len(text) > _MAX_LEN:
        raise ValueError(INVALID.format(value=value))
    rest = text
    if rest[0] in "+-":
        if rest[0] == "-":
            raise ValueError(NEGATIVE.format(value=value))
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if rest == "":
        raise ValueError(INVALID.format(value=value))
    total = fractions.Fraction(0)
    pos = 0
    while pos < len(rest):
        match = _PART.match(rest, pos)
        whole, frac, unit = match.groups()
        # A component needs a digit on one side of the dot: "1.s" and ".5s"
        # are Go durations, ".s" and "s" are not.
        if not whole and not frac:
            raise ValueError(INVALID.format(value=value))
        if not unit:
            # At the end it is a forgotten unit ("1h5"); in the middle, a
            # second dot ("1..5s").
            error = MISSING_UNIT if match.end() == len(rest) else INVALID
            raise ValueError(error.format(value=value))
        if unit not in _NS:
            raise ValueError(UNKNOWN_UNIT.format(unit=_show(unit), value=value))
        number = fractions.Fraction(int(whole or "0"))
        if frac:
            number += fractions.Fraction(int(frac), 10 ** len(frac))
        total += number * _NS[unit]
        if total > _MAX_NS:
            raise ValueError(TOO_LARGE.format(value=value))
        pos = match.end()
    # Go counts whole nanoseconds; digits past that are dropped, not rounded.
    return int(total) / 1e9


def _frac(value: int, digits: int) -> str:
    """value / 10**digits in decimal, without trailing zeros (Go's fmtFrac)."""
    whole, part = divmod(value, 10 ** digits)
    text = str(part).rjust(digits, "0").rstrip("0")
    return f"{whole}.{text}" if text else str(whole)


def format_duration(seconds) -> str:
    """Go's Duration.String() for a number of seconds: 5400 -> "1h30m0s"."""
    ns = round(seconds * 1_000_000_000)
    sign = "-" if ns < 0 else ""
    # A float cannot hold every nanosecond near the limit; clamp, so that
    # what is printed always parses back.
    ns = min(abs(ns), _MAX_NS)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_frac(ns, 3)}\u00b5s"
    if ns < 1_000_000_000:
        return f"{sign}{_frac(ns, 6)}ms"
    minutes, rest = divmod(ns, 60 * 1_000_000_000)
    text = _frac(rest, 9) + "s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        text = f"{minutes}m{text}"
        if hours:
            text = f"{hours}h{text}"
    return sign + text

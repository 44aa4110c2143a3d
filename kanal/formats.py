"""Value formats the spec cannot express alone: money, timestamps, phone numbers.

Each parser is used twice from this one place: by the request validator's format
checker (so a bad value is a 422 listed with every other failing field) and by
the handlers (to store the normalised value).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import phonenumbers

# phonenumbers compiles its metadata's patterns through re.compile at every parse; with
# its pattern cache on, each is compiled once and looked up in a dict after: a new
# number parses in about 20 us instead of 24 (a few thousand patterns at most).
phonenumbers.enable_pattern_cache()

CENT = Decimal("0.01")

#: The default region of the store the current request is for (set by auth): where a
#: phone number without a country code is read.
current_region: ContextVar[str | None] = ContextVar("current_region", default=None)


def money(value: float | int) -> str:
    """Render a JSON number as an exact decimal string with two places.

    JSON numbers arrive as Python floats; ``repr`` gives the shortest decimal that
    reads back as the same float, which is the literal the client sent for any
    amount within the spec's maximum (15 significant digits). That decimal is
    rounded half-up to cents (``49.999`` -> ``"50.00"``, ``2.675`` -> ``"2.68"``, a
    positive amount under 0.005 -> ``"0.00"``), and zero has no sign (``-0.0`` ->
    ``"0.00"``, as the spec's ``^[0-9]+\\.[0-9]{2}$`` requires).
    """
    cents = Decimal(repr(value)).quantize(CENT, rounding=ROUND_HALF_UP)
    return str(abs(cents) if cents.is_zero() else cents)


#: RFC 3339 section 5.6 ``date-time``: ASCII digits only, ``T`` and ``Z`` in either case
#: (its note on section 5.6), a fraction of any length, a numeric offset or ``Z``.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
#: Why a string is not a timestamp kanal can hold (see :func:`timestamp_problem`).
NOT_RFC3339 = "not RFC 3339"
OUT_OF_RANGE = "out of range"
#: The 400-year Gregorian cycle: a date shifted by it keeps its weekday and leap years.
_CYCLE = 400


@functools.lru_cache(maxsize=65536)
def _read_timestamp(value: str) -> datetime | str:
    """The instant in UTC, or why there is none (NOT_RFC3339 or OUT_OF_RANGE)."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return NOT_RFC3339
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, offset_hour, offset_minute = match.group(7, 8, 9, 10)
    if hour > 23 or minute > 59 or second > 60:
        return NOT_RFC3339
    offset = timedelta()
    if sign is not None:
        if int(offset_hour) > 23 or int(offset_minute) > 59:
            return NOT_RFC3339
        offset = timedelta(hours=int(offset_hour), minutes=int(offset_minute))
        offset = -offset if sign == "-" else offset
    # Year 0000 is RFC 3339 but not Python: read it 400 years on, then come back.
    shift = _CYCLE if year == 0 else 0
    try:
        local = datetime(
            year + shift,
            month,
            day,
            hour,
            minute,
            min(second, 59),
            int((fraction or "")[:6].ljust(6, "0")),
        )
    except ValueError:
        return NOT_RFC3339  # no such day (2026-02-30)
    try:
        instant = local - offset
    except OverflowError:
        return OUT_OF_RANGE
    if second == 60:
        # A leap second ends the last minute of a UTC day (23:59:60Z, 15:59:60-08:00);
        # Python cannot hold :60, so it is read as the last microsecond of that minute.
        if (instant.hour, instant.minute) != (23, 59):
            return NOT_RFC3339
        instant = instant.replace(second=59, microsecond=999999)
    if instant.year - shift < 1:
        return OUT_OF_RANGE
    return instant.replace(year=instant.year - shift, tzinfo=UTC)


def timestamp_problem(value: str) -> str | None:
    """Why ``value`` is not a timestamp kanal accepts: None (it is one), NOT_RFC3339,
    or OUT_OF_RANGE (RFC 3339, but before 0001-01-01 or after 9999-12-31 in UTC)."""
    read = _read_timestamp(value)
    return read if isinstance(read, str) else None


def parse_timestamp(value: str) -> datetime | None:
    """Parse an RFC 3339 timestamp (``date-time``) to UTC; None when it is not one.

    ``t`` and ``z`` may be lowercase; a leap second (``23:59:60Z``) is read as
    ``23:59:59.999999``; digits beyond microseconds are dropped; the instant must
    fall between 0001-01-01 and 9999-12-31 in UTC.
    """
    read = _read_timestamp(value)
    return None if isinstance(read, str) else read


def utc_timestamp(value: str) -> str:
    """Normalise a valid timestamp to UTC with an explicit offset (``+00:00``)."""
    parsed = parse_timestamp(value)
    if parsed is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    return parsed.isoformat()


def _system_clock() -> datetime:
    return datetime.now(UTC)


#: Where the time comes from; tests move a fake clock instead of sleeping.
clock: Callable[[], datetime] = _system_clock


def utcnow() -> datetime:
    """The current time (from :data:`clock`), timezone-aware UTC."""
    return clock()


def now() -> str:
    """The current time, as stored: UTC ISO 8601 with an explicit offset."""
    return clock().isoformat()


@functools.lru_cache(maxsize=65536)
def e164(value: str, region: str | None) -> str | None:
    """Normalise a phone number to E.164, reading a national number in ``region``.

    Returns None when the number does not parse or is not a valid number, and when
    it has letters or an extension: phonenumbers reads letters as keypad digits
    (``+33 6 AB CD EF GH`` would become someone else's ``+33622233344``) and drops an
    extension, which no WhatsApp message can reach. An RFC 3966 ``tel:`` prefix is
    accepted. Cached: the same numbers come back with every order, checkout and cart.
    """
    digits = value.strip()
    if digits[:4].lower() == "tel:":
        digits = digits[4:]
    if any(character.isalpha() for character in digits):
        return None
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if number.extension or not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

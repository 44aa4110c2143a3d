"""Value formats the spec cannot express alone: money, timestamps, phone numbers.

Each parser is used twice from this one place: by the request validator's format
checker (so a bad value is a 422 listed with every other failing field) and by
the handlers (to store the normalised value).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import phonenumbers
from rfc3339_validator import validate_rfc3339

CENT = Decimal("0.01")

#: The default region of the store the current request is for (set by auth): where a
#: phone number without a country code is read.
current_region: ContextVar[str | None] = ContextVar("current_region", default=None)


def money(value: float | int) -> str:
    """Render a JSON number as an exact decimal string with two places.

    JSON numbers arrive as Python floats; ``repr`` gives the shortest decimal that
    reads back as the same float, which is the literal the client sent for any
    amount within the spec's maximum (15 significant digits).
    """
    return str(Decimal(repr(value)).quantize(CENT, rounding=ROUND_HALF_UP))


@functools.lru_cache(maxsize=65536)
def parse_timestamp(value: str) -> datetime | None:
    """Parse an RFC 3339 timestamp with an offset; None when it is not one."""
    if not validate_rfc3339(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.upper())
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


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

"""Formats are really checked (jsonschema silently skips a format whose library is missing)."""

from __future__ import annotations

import pytest

from kanal.formats import current_region
from kanal.validation import FORMAT_CHECKER


@pytest.mark.parametrize(
    "value, ok",
    [
        ("2026-05-18T10:00:00Z", True),
        ("2026-05-18T10:00:00.250+02:00", True),
        ("2026-05-18", False),
        ("2026-05-18T10:00:00", False),
        ("2026-13-01T00:00:00Z", False),
        ("0001-01-01T00:00:00+01:00", False),
        ("2026-05-18T23:59:60Z", True),  # a leap second (RFC 3339), read as 23:59:59.999999
    ],
)
def test_format_date_time_is_checked(value: str, ok: bool) -> None:
    assert FORMAT_CHECKER.conforms(value, "date-time") is ok


@pytest.mark.parametrize(
    "value, ok",
    [
        ("marie@example.com", True),
        ("marie@", False),
        # Found by Schemathesis: special-use domains are addresses too (syntax only, no DNS).
        ("cw|t3zps4b@8zn4b.fhx.test", True),
        ("@example.com", False),
        ("marie@@example.com", False),
        ("marie example@example.com", False),
    ],
)
def test_format_email_is_checked(value: str, ok: bool) -> None:
    assert FORMAT_CHECKER.conforms(value, "email") is ok


@pytest.mark.parametrize(
    "value, ok",
    [
        ("https://shop.example.com/checkout/recover/7700", True),
        ("not a url", False),
        ("https://exa mple.com/", False),
        ("//no-scheme.example.com", False),
    ],
)
def test_format_uri_is_checked(value: str, ok: bool) -> None:
    assert FORMAT_CHECKER.conforms(value, "uri") is ok


@pytest.mark.parametrize(
    "value, region, ok",
    [
        ("+33612345678", None, True),
        ("06 12 34 56 78", "FR", True),
        ("06 12 34 56 78", None, False),
        ("(202) 555-0123", "US", True),
        ("555-0123", "US", False),
        ("+1 202-456-1111", "FR", True),
        ("+33 6 12", "FR", False),
        ("hello", "FR", False),
        # Letters are not keypad digits: a typo must not become a stranger's number.
        ("+33 6 AB CD EF GH", "FR", False),
        ("+1-800-FLOWERS", "US", False),
        ("06 12 34 56 7O", "FR", False),
        # An RFC 3966 tel: URI is a phone number; an extension cannot be messaged.
        ("tel:+33612345678", None, True),
        ("TEL:+33-6-12-34-56-78", None, True),
        ("tel:+33-6-12-34-56-78;ext=12", None, False),
        ("+33612345678 x12", None, False),
        ("+33612345678#12", None, False),
        ("+33612345678,12", None, False),
    ],
)
def test_format_phone_is_checked(value: str, region: str | None, ok: bool) -> None:
    token = current_region.set(region)
    try:
        assert FORMAT_CHECKER.conforms(value, "phone") is ok
    finally:
        current_region.reset(token)

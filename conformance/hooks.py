"""Schemathesis hooks: teach the generator the spec's one custom format.

``format: phone`` (openapi.yaml, ``Phone``) means "a number phonenumbers can
parse and validate"; generic strings are not phone numbers. Valid examples come
from phonenumbers itself: an example number of every type for every region, in
E.164 and international notation, plus national notation for the conformance
store's region (FR). Invalid phones are still produced by the negative phases
(wrong type, empty, too long) and are covered by tests/test_field_rules.py.

Import jobs take JSON Lines (``application/x-ndjson``), which Schemathesis does not
know: a serializer writes a generated list of records one JSON text a line.
"""

from __future__ import annotations

import json

import phonenumbers
import schemathesis
from hypothesis import strategies as st

STORE_REGION = "FR"


def _valid_numbers() -> list[str]:
    numbers: set[str] = set()
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None or not phonenumbers.is_valid_number(example):
                continue
            numbers.add(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
            numbers.add(
                phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
            )
            if region == STORE_REGION:
                numbers.add(
                    phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
                )
    return sorted(numbers)


schemathesis.openapi.format("phone", st.sampled_from(_valid_numbers()))


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: dict | None) -> dict | None:
    """Let the list filters be fuzzed: `page_info` (an opaque, server-signed cursor)
    combined with filters is always a 400, so a generated one is dropped when filters
    come with it; alone, it is still sent (and must be a clean 400)."""
    if query and "page_info" in query and set(query) - {"page_info", "limit"}:
        query = {key: value for key, value in query.items() if key != "page_info"}
    return query


NDJSON = "application/x-ndjson"


@schemathesis.serializer(NDJSON)
def ndjson(context: schemathesis.SerializationContext, value: object) -> bytes:
    """JSON Lines (POST /imports): a list of records, one JSON text a line."""
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """A JSON Lines body is a list of records by construction (its lines): a generated
    value that is not a list has no JSON Lines form, so such a case is not made for
    `application/x-ndjson` (sent anyway it would be one line, that is a list of one
    record, which the server rightly accepts). The same operation's `application/json`
    body is fuzzed with non-lists (and answers 400); the list's own bounds (at least one
    record, at most 10,000) are fuzzed in both media types."""
    return not (case.media_type == NDJSON and not isinstance(case.body, list))

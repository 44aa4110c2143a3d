"""Edges of JSON, money and time that are valid input: never a 500, one documented rule each.

- Valid JSON never gives a 500: a lone surrogate escape (``"\\ud800"``) is valid JSON
  syntax but not Unicode text; in any string or object key of any body it is a 422
  naming the field (in ``kanal import``, an invalid line with the same message).
- Money: rounded half-up to the cent on the decimal sent, ``-0.0`` is ``"0.00"``; a
  line item's price is kept as sent.
- Timestamps are RFC 3339: lowercase ``t``/``z``, a leap second read as
  ``23:59:59.999999``, and an instant outside 0001-01-01..9999-12-31 in UTC is a 422
  that says so.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kanal.cli import main
from kanal.formats import current_region, parse_timestamp, utc_timestamp
from kanal.spec import load_spec, resolve
from kanal.storage import Storage, connect
from kanal.validation import FORMAT_CHECKER, compiled, fast, has_lone_surrogate

from .conftest import Api, Rows

LONE = "\ud800"
LOW = "\udfff"
CUSTOMER = {"phone": "+33612345678", "first_name": "Marie"}
ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": CUSTOMER,
}
CHECKOUT = {
    "external_id": "CHECKOUT-1",
    "abandoned_at": "2026-05-18T09:40:00Z",
    "total_price": 49.9,
    "customer": CUSTOMER,
}
CART = {**CHECKOUT, "external_id": "CART-1"}
UNICODE = "The {} field must be valid Unicode text (no lone surrogate)."
UNICODE_NAME = "The name of the {} field must be valid Unicode text (no lone surrogate)."
DATE = "The {} field must be a valid date."
DATE_RANGE = "The {} field must be a date between 0001-01-01 and 9999-12-31 in UTC."


def send(api: Api, method: str, path: str, body: Any) -> httpx.Response:
    """The body as JSON text with escapes (``json.dumps``): a lone surrogate goes as
    ``\\ud800``, as any client's JSON encoder would send it."""
    return api.client.request(
        method,
        api.url(path),
        content=json.dumps(body).encode(),
        headers={**api.headers(), "Content-Type": "application/json"},
    )


def with_field(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``body`` with ``value`` at the dot path (lists by index)."""
    out = copy.deepcopy(body)
    node: Any = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


@pytest.fixture
def records(api: Api) -> Api:
    """An order, a checkout and a cart to PATCH."""
    assert api.post("orders", ORDER).status_code == 201
    assert api.post("checkouts", CHECKOUT).status_code == 201
    assert api.post("carts", CART).status_code == 201
    return api


# (method, path, body, field): a lone surrogate in a value at ``field``.
LONE_VALUES = [
    ("POST", "orders", ORDER, "external_id"),
    ("POST", "orders", ORDER, "customer.first_name"),
    ("POST", "orders", ORDER, "customer.external_id"),
    ("POST", "orders", ORDER, "customer.phone"),
    ("POST", "orders", ORDER, "financial_status"),
    ("POST", "orders", {**ORDER, "tags": ["web", "x"]}, "tags.1"),
    ("POST", "orders", ORDER, "metadata.source"),
    ("POST", "orders", {**ORDER, "metadata": {"deep": ["a", {}]}}, "metadata.deep.1.x"),
    ("POST", "orders", {**ORDER, "line_items": [{"title": "T"}]}, "line_items.0.title"),
    ("POST", "orders", {**ORDER, "line_items": [{"title": "T"}]}, "line_items.0.color"),
    ("POST", "orders", ORDER, "ignored_unknown_key"),
    ("POST", "checkouts", CHECKOUT, "recovery_url"),
    ("POST", "checkouts", CHECKOUT, "customer.last_name"),
    ("POST", "carts", CART, "external_id"),
    ("POST", "carts", CART, "customer.email"),
    ("POST", "customers", {"phone": "+33612345678"}, "external_id"),
    ("POST", "customers", {"phone": "+33612345678"}, "first_name"),
    ("POST", "customers", {"phone": "+33612345678", "tags": ["a"]}, "tags.0"),
    ("POST", "shipments", {"external_id": "S-1", "order_external_id": "ORDER-1"}, "carrier"),
    ("POST", "shipments", {"external_id": "S-1"}, "order_external_id"),
    ("POST", "shipments", {"external_id": "S-1", "order_external_id": "ORDER-1"}, "metadata.a"),
    ("PATCH", "orders/ORDER-1", {"tags": ["a"]}, "tags.0"),
    ("PATCH", "orders/ORDER-1", {}, "financial_status"),
    ("PATCH", "checkouts/CHECKOUT-1", {}, "recovery_url"),
    ("PATCH", "carts/CART-1", {}, "metadata.note"),
]


@pytest.mark.parametrize(
    "method, path, body, field", LONE_VALUES, ids=[f"{m} {p} {f}" for m, p, _, f in LONE_VALUES]
)
@pytest.mark.parametrize("surrogate", [LONE, LOW, f"Marie {LONE}!"], ids=["high", "low", "inside"])
def test_valid_json_never_gives_a_500_lone_surrogate_value_is_a_422_naming_it(
    records: Api, method: str, path: str, body: dict[str, Any], field: str, surrogate: str
) -> None:
    answer = send(records, method, path, with_field(body, field, surrogate))
    message = UNICODE.format(field)
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"message": message, "errors": {field: [message]}}


# (method, path, body, parent): an object key with a lone surrogate under ``parent``.
LONE_KEYS = [
    ("POST", "orders", ORDER, "metadata"),
    ("POST", "orders", ORDER, ""),
    ("POST", "orders", {**ORDER, "line_items": [{"title": "T"}]}, "line_items.0"),
    ("POST", "orders", ORDER, "customer"),
    ("POST", "checkouts", CHECKOUT, "metadata"),
    ("POST", "carts", CART, "metadata"),
    ("POST", "customers", {"phone": "+33612345678"}, ""),
    ("POST", "shipments", {"external_id": "S-1", "order_external_id": "ORDER-1"}, "metadata"),
    ("PATCH", "orders/ORDER-1", {}, "metadata"),
    ("PATCH", "checkouts/CHECKOUT-1", {}, ""),
    ("PATCH", "carts/CART-1", {}, "metadata"),
    ("PATCH", "contacts/%2B33612345678", {"opted_out": True}, ""),
]


@pytest.mark.parametrize(
    "method, path, body, parent", LONE_KEYS, ids=[f"{m} {p} {k}" for m, p, _, k in LONE_KEYS]
)
def test_valid_json_never_gives_a_500_lone_surrogate_key_is_a_422_naming_it(
    records: Api, method: str, path: str, body: dict[str, Any], parent: str
) -> None:
    key = f"k{LONE}"
    sent = with_field(body, f"{parent}.{key}" if parent else key, 1)
    answer = send(records, method, path, sent)
    field = f"{parent}.k\\ud800" if parent else "k\\ud800"  # the escape, as text
    message = UNICODE_NAME.format(field)
    assert answer.status_code == 422, answer.text
    assert answer.json() == {"message": message, "errors": {field: [message]}}


def test_valid_json_never_gives_a_500_every_lone_surrogate_is_listed_in_order(api: Api) -> None:
    body = {
        **ORDER,
        "external_id": LONE,
        "customer": {**CUSTOMER, "first_name": LOW},
        "metadata": {LONE: LONE},
    }
    answer = send(api, "POST", "orders", body)
    assert answer.status_code == 422
    assert answer.json() == {
        "message": UNICODE.format("external_id") + " (and 3 more errors)",
        "errors": {
            "external_id": [UNICODE.format("external_id")],
            "customer.first_name": [UNICODE.format("customer.first_name")],
            "metadata.\\ud800": [
                UNICODE_NAME.format("metadata.\\ud800"),
                UNICODE.format("metadata.\\ud800"),
            ],
        },
    }
    assert api.client.get(api.url("orders"), headers=api.headers()).json() == {"orders": []}


def test_valid_json_never_gives_a_500_pairs_and_escaped_backslashes_are_text(
    api: Api, storage: Storage
) -> None:
    """A surrogate pair is one character; ``\\\\ud800`` is a backslash and five letters."""
    raw = (
        '{"phone": "+33612345678", "external_id": "C-1", "first_name": "\\ud83d\\ude00",'
        ' "last_name": "\\\\ud800", "tags": ["\\\\\\ud83d\\udE00"]}'
    )
    answer = api.client.post(
        api.url("customers"),
        content=raw.encode(),
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    stored = storage.get("customers", 123, "C-1")
    assert stored is not None
    assert (stored["first_name"], stored["last_name"]) == ("\U0001f600", "\\ud800")
    assert stored["tags"] == ["\\\U0001f600"]


@pytest.mark.parametrize(
    "text, lone",
    [
        (b'{"a": "plain"}', False),
        (b'{"a": "\\u00e9\\u4e2d"}', False),
        (b'{"a": "\\ud83d\\ude00"}', False),
        (b'{"a": "\\uD83D\\uDE00"}', False),
        (b'{"a": "\\ud7ff\\ue000"}', False),
        (b'{"a": "\\\\ud800"}', False),  # an escaped backslash, then text
        (b'{"a": "\\ud800"}', True),
        (b'{"a": "\\uDFFF"}', True),
        (b'{"a": "\\ude00\\ud83d"}', True),  # a pair the wrong way round
        (b'{"a": "\\ud800\\ud83d\\ude00"}', True),
        (b'{"a": "\\\\\\ud800"}', True),  # an escaped backslash, then a lone surrogate
        (b'{"a": "\\\\ud800\\udc00"}', True),  # "ud800" is text: \\udc00 is alone
    ],
)
def test_valid_json_never_gives_a_500_lone_surrogate_escapes_are_found_exactly(
    text: bytes, lone: bool
) -> None:
    assert has_lone_surrogate(text) is lone
    decoded = json.loads(text)["a"]
    assert any(0xD800 <= ord(c) <= 0xDFFF for c in decoded) is lone


@pytest.mark.parametrize(
    "path",
    [
        "orders/%ED%A0%80",
        "customers/%ED%A0%80",
        "contacts/%ED%A0%80",
        "orders?since_id=%ED%A0%80",
        "orders?created_at_min=%ED%A0%80",
        "orders?financial_status=%ED%A0%80",
    ],
)
def test_valid_json_never_gives_a_500_encoded_surrogates_in_urls(api: Api, path: str) -> None:
    """A percent-encoded surrogate is invalid UTF-8: read as U+FFFD, never a 500."""
    answer = api.client.get(api.url(path), headers=api.headers())
    assert answer.status_code in (200, 404, 422), answer.text


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_valid_json_never_gives_a_500_import_lone_surrogate_is_an_invalid_line(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    good = {"phone": "+33612345678", "external_id": "C-1", "first_name": "\U0001f600"}
    lines = [
        json.dumps(good),
        json.dumps({**good, "external_id": "C-2", "first_name": LONE}),
        json.dumps({**good, "external_id": "C-3", "metadata": {LOW: 1}}),
    ]
    for name, text in (
        ("customers.jsonl", "\n".join(lines) + "\n"),
        ("customers.json", "[" + ", ".join(lines) + "]"),  # ijson's C parser reads "?"
    ):
        source = tmp_path / name
        source.write_text(text)
        result = run("import", str(source), "--store", "123", "--resource", "customers", "--db", db)
        assert result.exit_code == 1, result.output
        assert f"line 2: {UNICODE.format('first_name')} [first_name]" in result.output
        assert "line 3: " + UNICODE_NAME.format("metadata.\\udfff") in result.output
        assert "1 imported" in result.output and "2 invalid" in result.output
    assert Rows(db).value("SELECT count(*) FROM customers") == 1
    storage = connect(db)
    stored = storage.get("customers", 123, "C-1")
    assert stored is not None and stored["first_name"] == "\U0001f600"
    storage.close()


def test_money_negative_zero_is_0_00(api: Api) -> None:
    """``-0.0`` passes ``minimum: 0``; it renders as the contract's pattern says."""
    for resource, body in (("orders", ORDER), ("checkouts", CHECKOUT), ("carts", CART)):
        answer = send(api, "POST", resource, {**body, "total_price": -0.0})
        assert answer.status_code == 201, answer.text
        assert answer.json()["total_price"] == "0.00"
        listed = api.client.get(api.url(resource), headers=api.headers())
        assert listed.status_code == 200, listed.text  # responses are validated
        assert [r["total_price"] for r in listed.json()[resource]] == ["0.00"]


@pytest.mark.parametrize(
    "sent, rendered",
    [
        (49.999, "50.00"),
        (24.955, "24.96"),
        (2.675, "2.68"),  # the decimal sent, not the binary float (2.67499999...)
        (0.005, "0.01"),
        (0.004, "0.00"),
        (1e-7, "0.00"),
        (0.0049999, "0.00"),
        (999999999999.99, "999999999999.99"),
    ],
)
def test_money_is_rounded_half_up_to_the_cent(api: Api, sent: float, rendered: str) -> None:
    for resource, body in (("orders", ORDER), ("checkouts", CHECKOUT), ("carts", CART)):
        answer = api.post(resource, {**body, "total_price": sent})
        assert answer.status_code == 201
        assert answer.json()["total_price"] == rendered


def test_money_line_item_price_is_kept_as_sent(api: Api) -> None:
    lines = [{"title": "T", "quantity": 1, "price": 24.999}, {"title": "U", "price": 1e-7}]
    assert api.post("orders", {**ORDER, "line_items": lines}).status_code == 201
    read = api.client.get(api.url("orders/ORDER-1"), headers=api.headers()).json()
    assert read["line_items"] == lines
    assert read["total_price"] == "49.90"


def test_money_one_rule_for_every_money_field_in_the_spec() -> None:
    spec = load_spec()
    schemas = spec["components"]["schemas"]
    money = schemas["Money"]
    for words in ("half-up", "49.999", '"50.00"', "under 0.005", '"0.00"', "-0.0", "price"):
        assert words in money["description"]
    assert "no sign" in schemas["MoneyString"]["description"]
    # Every input amount is Money; the only other one, a line item's price, has its values.
    amounts = {
        (name, prop): sub
        for name, schema in schemas.items()
        for prop, sub in schema.get("properties", {}).items()
        if "price" in prop or "amount" in prop or sub.get("maximum") == money["maximum"]
    }
    for (name, prop), sub in amounts.items():
        if name == "LineItem":
            assert prop == "price"
            assert {k: sub[k] for k in ("type", "minimum", "maximum")} == {
                k: money[k] for k in ("type", "minimum", "maximum")
            }
            assert "as sent" in sub["description"] and "Money" in sub["description"]
        elif name.endswith("Input"):
            assert sub["allOf"] == [{"$ref": "#/components/schemas/Money"}], (name, prop)
        else:
            assert sub == {"$ref": "#/components/schemas/MoneyString"}, (name, prop)
    assert {name for name, _ in amounts} >= {"OrderInput", "CheckoutInput", "LineItem"}


@pytest.mark.parametrize(
    "value, ok",
    [
        ("2026-05-18t10:00:00z", True),
        ("1963-06-19t08:30:06.283185z", True),
        ("2026-05-18T10:00:00.123456789+02:00", True),
        ("2026-05-18T10:00:00-00:00", True),
        ("1998-12-31T23:59:60Z", True),
        ("1998-12-31T15:59:60.123-08:00", True),
        ("0000-12-31T23:00:00-02:00", True),
        ("1998-12-31T23:59:61Z", False),
        ("1998-12-31T23:58:60Z", False),
        ("1998-12-31T22:59:60Z", False),
        ("1990-02-31T15:59:59.123-08:00", False),
        ("1990-12-31T15:59:59-24:00", False),
        ("2026-05-18T10:00:00+0200", False),
        ("2026-05-18 10:00:00Z", False),
        ("2026-05-18T10:00Z", False),
        ("2013-350T01:01:01Z", False),
        ("1963-06-1\u09eaT00:00:00Z", False),  # a Bengali digit
        ("2026-05-18T10:00:00Z\n", False),
        ("0001-01-01T01:00:00+02:00", False),
        ("9999-12-31T23:00:00-02:00", False),
        ("0000-06-01T00:00:00Z", False),
    ],
)
def test_timestamps_are_rfc_3339_format_checker(value: str, ok: bool) -> None:
    assert FORMAT_CHECKER.conforms(value, "date-time") is ok
    assert (parse_timestamp(value) is not None) is ok


@pytest.mark.parametrize(
    "sent, stored",
    [
        ("2026-05-18t10:00:00z", "2026-05-18T10:00:00+00:00"),
        ("2026-05-18t12:00:00.5+02:00", "2026-05-18T10:00:00.500000+00:00"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999999+00:00"),
        ("2016-12-31T15:59:60.25-08:00", "2016-12-31T23:59:59.999999+00:00"),
        ("9999-12-31T23:59:60Z", "9999-12-31T23:59:59.999999+00:00"),
        ("0000-12-31T23:00:00-02:00", "0001-01-01T01:00:00+00:00"),
        ("2026-05-18T10:00:00.1234569Z", "2026-05-18T10:00:00.123456+00:00"),
    ],
)
def test_timestamps_are_rfc_3339_lowercase_and_leap_seconds(
    api: Api, sent: str, stored: str
) -> None:
    assert utc_timestamp(sent) == stored
    order = api.post("orders", {**ORDER, "placed_at": sent})
    assert order.status_code == 201, order.text
    assert order.json()["created_at"] == stored
    checkout = api.post("checkouts", {**CHECKOUT, "abandoned_at": sent})
    assert checkout.status_code == 201, checkout.text
    assert checkout.json()["created_at"] == stored


def test_timestamps_are_rfc_3339_in_list_filters_and_stats(api: Api) -> None:
    assert api.post("orders", ORDER).status_code == 201
    for query, count in (
        ("created_at_min=2026-05-18t10:00:00z", 1),
        ("created_at_max=2026-05-18t09:59:59.999z", 0),
        ("created_at_max=2026-05-18T10:00:00Z", 1),
        ("updated_at_min=2000-12-31t23:59:60z", 1),
    ):
        answer = api.client.get(api.url(f"orders?{query}"), headers=api.headers())
        assert answer.status_code == 200, (query, answer.text)
        assert len(answer.json()["orders"]) == count, query
    stats = api.client.get(
        api.url("stats/recovery?from=2026-05-01t00:00:00z&to=2026-05-31t23:59:60z"),
        headers=api.headers(),
    )
    assert stats.status_code == 200, stats.text


@pytest.mark.parametrize(
    "value", ["0001-01-01T01:00:00+02:00", "9999-12-31T23:00:00-02:00", "0000-06-01T00:00:00Z"]
)
def test_timestamps_outside_0001_9999_in_utc_are_a_422_that_says_so(api: Api, value: str) -> None:
    for resource, body, field in (
        ("orders", ORDER, "placed_at"),
        ("checkouts", CHECKOUT, "abandoned_at"),
        ("carts", CART, "abandoned_at"),
    ):
        answer = api.post(resource, {**body, field: value})
        message = DATE_RANGE.format(field)
        assert answer.status_code == 422
        assert answer.json() == {"message": message, "errors": {field: [message]}}
    query = api.client.get(
        api.url(f"orders?created_at_min={value.replace('+', '%2B')}"), headers=api.headers()
    )
    assert query.status_code == 422
    assert query.json()["errors"] == {"created_at_min": [DATE_RANGE.format("created_at_min")]}


@pytest.mark.parametrize("value", ["2026-05-18T23:58:60Z", "2026-02-30T10:00:00Z", "tomorrow"])
def test_timestamps_that_are_not_rfc_3339_keep_the_generic_message(api: Api, value: str) -> None:
    answer = api.post("orders", {**ORDER, "placed_at": value})
    assert answer.json()["errors"] == {"placed_at": [DATE.format("placed_at")]}


@pytest.mark.parametrize(
    "value",
    [
        "2026-05-18t10:00:00z",
        "2016-12-31T23:59:60Z",
        "2016-12-31T23:58:60Z",
        "0001-01-01T01:00:00+02:00",
        "0000-12-31T23:00:00-02:00",
        "9999-12-31T23:00:00-02:00",
    ],
)
def test_timestamps_fast_and_reference_validators_agree(value: str) -> None:
    spec = load_spec()
    schema = resolve(spec, spec["components"]["schemas"]["OrderInput"])
    body = {**ORDER, "placed_at": value}
    token = current_region.set("FR")
    try:
        reference = not list(compiled(schema).iter_errors(body))
        assert fast(schema).is_valid(body) is reference
        assert reference is (parse_timestamp(value) is not None)
    finally:
        current_region.reset(token)

"""The fast (Rust) validator and the reference (Python) one agree on every field rule:
the fast one decides, the reference one words the 422."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kanal.formats import current_region
from kanal.spec import load_spec, resolve
from kanal.validation import compiled, fast
from tests.test_field_rules import BODIES, PARAMS, put

SPEC = load_spec()


def schema(name: str) -> Any:
    return resolve(SPEC, SPEC["components"]["schemas"][name])


SCHEMAS = {
    "orders": schema("OrderInput"),
    "checkouts": schema("CheckoutInput"),
    "carts": schema("CheckoutInput"),
    "customers": schema("CustomerInput"),
    "shipments": schema("ShipmentInput"),
}


@pytest.mark.parametrize("resource, field, value, message", PARAMS)
def test_fast_and_reference_validators_agree(
    resource: str, field: str, value: Any, message: str | None
) -> None:
    body = copy.deepcopy(BODIES[resource])
    put(body, field, value)
    schema = SCHEMAS[resource]
    token = current_region.set("FR")
    try:
        reference = not list(compiled(schema).iter_errors(body))
        assert fast(schema).is_valid(body) is reference
        assert reference is (message is None)
    finally:
        current_region.reset(token)


@pytest.mark.parametrize("value", [1.0, 2.5, True, "1", None])
def test_integers_agree(value: Any) -> None:
    schema = SCHEMAS["customers"]
    body = {"phone": "+33612345678", "orders_count": value}
    assert fast(schema).is_valid(body) is (not list(compiled(schema).iter_errors(body)))

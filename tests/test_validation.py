"""The fast (Rust) validator and the reference (Python) one agree on every field rule:
the fast one decides, the reference one words the 422."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from kanal.validation import compiled, current_region, fast
from tests.test_field_rules import BODIES, PARAMS, put

from .conftest import ROOT

SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())


def resolve(node: Any) -> Any:
    """The spec's schema with every $ref inlined (what Connexion hands the validators)."""
    if isinstance(node, list):
        return [resolve(item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return resolve(target)
    return {key: resolve(value) for key, value in node.items()}


SCHEMAS = {
    "orders": resolve(SPEC["components"]["schemas"]["OrderInput"]),
    "checkouts": resolve(SPEC["components"]["schemas"]["CheckoutInput"]),
    "carts": resolve(SPEC["components"]["schemas"]["CheckoutInput"]),
    "customers": resolve(SPEC["components"]["schemas"]["CustomerInput"]),
    "shipments": resolve(SPEC["components"]["schemas"]["ShipmentInput"]),
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

"""openapi.yaml: valid OpenAPI 3.0.3, and written to the project's own standard."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from .conftest import ROOT

SPEC_PATH = ROOT / "openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
OPERATIONS = [
    (path, method, op)
    for path, item in SPEC["paths"].items()
    for method, op in item.items()
    if method in ("get", "post", "patch", "put", "delete")
]


def test_spec_is_valid_openapi_303() -> None:
    spec, _ = read_from_filename(str(SPEC_PATH))
    validate(spec)
    assert SPEC["openapi"] == "3.0.3"


@pytest.mark.parametrize("path, method, op", OPERATIONS, ids=lambda v: str(v)[:40])
def test_operation_is_documented(path: str, method: str, op: dict[str, Any]) -> None:
    assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", op["operationId"])
    assert op["summary"] and op["description"] and len(op["tags"]) == 1
    assert "." not in op["operationId"]
    if path.startswith("/api/v1/stores/"):
        assert {"401", "403", "404", "422", "429"} <= set(op["responses"])
    if method in ("post", "patch"):
        assert {"400", "413", "415"} <= set(op["responses"])


def test_every_write_endpoint_is_there() -> None:
    got = {(method.upper(), path) for path, method, _ in OPERATIONS}
    base = "/api/v1/stores/{store_id}"
    assert {
        ("POST", f"{base}/orders"),
        ("PATCH", f"{base}/orders/{{external_id}}"),
        ("POST", f"{base}/checkouts"),
        ("PATCH", f"{base}/checkouts/{{external_id}}"),
        ("POST", f"{base}/carts"),
        ("PATCH", f"{base}/carts/{{external_id}}"),
        ("POST", f"{base}/customers"),
        ("DELETE", f"{base}/customers/{{external_id}}"),
        ("POST", f"{base}/shipments"),
        ("GET", "/healthz"),
    } <= got


def test_every_schema_property_is_described() -> None:
    missing = [
        f"{name}.{prop}"
        for name, schema in SPEC["components"]["schemas"].items()
        for prop, sub in schema.get("properties", {}).items()
        if "description" not in sub and "$ref" not in sub
    ]
    assert missing == []


def test_handlers_exist_for_every_operation() -> None:
    import importlib

    from kanal.stubs import snake_case

    for _, _, op in OPERATIONS:
        module = importlib.import_module(op["x-openapi-router-controller"])
        assert callable(getattr(module, snake_case(op["operationId"])))

"""The fast path (kanal/operations.py) and what it relies on in Connexion.

kanal/operations.py is the one module that leans on Connexion's internals: the
middleware stack it builds, the objects it keeps per operation, its context
variables, its routers. These tests fail when a Connexion upgrade changes any of
that: the pinned version, every operation of openapi.yaml getting a fast path, the
same answers with and without it (statuses, bodies, headers), and the fall back to
Connexion's own stack for an operation whose request body is not JSON.
"""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
from connexion.middleware import ConnexionMiddleware
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.request_validation import RequestValidationMiddleware
from connexion.middleware.security import SecurityMiddleware
from starlette.testclient import TestClient

import kanal.app
from kanal import operations
from kanal.app import create_app
from kanal.spec import load_spec, resolve
from kanal.stubs import controller_for, snake_case
from tests.conftest import STORE, make_accounts

ORDER = {
    "external_id": "FAST-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "financial_status": "pending",
    "customer": {"external_id": "CUST-42", "phone": "+33612345678", "first_name": "Marie"},
    "line_items": [{"title": "T-shirt", "quantity": 2, "price": 24.95}],
    "tags": ["web"],
    "metadata": {"source": "test"},
}
CHECKOUT = {
    "external_id": "FAST-C",
    "abandoned_at": "2026-05-18T09:40:00Z",
    "recovery_url": "https://shop.example.com/r/1",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": {"phone": "+33612345678", "first_name": "Marie"},
}
#: Headers the server adds that say nothing about the answer.
UNCOMPARED = {"date", "server"}


def fast_path_of(client: TestClient) -> operations.FastPathMiddleware:
    """The fast path middleware of a running app (after its first request)."""
    stack = client.app.app.middleware.middleware_stack  # type: ignore[attr-defined]
    found = [layer for layer in stack if isinstance(layer, operations.FastPathMiddleware)]
    assert len(found) == 1
    return found[0]


def test_connexion_is_the_pinned_version() -> None:
    """kanal/operations.py was written against this version's internals; an upgrade
    must be made on purpose, with these tests run."""
    assert importlib.metadata.version("connexion") == "3.3.0"


def test_the_stack_kanal_builds_from_connexions() -> None:
    """The classes kanal replaces, and the one it inserts after, are Connexion's
    default stack's."""
    defaults = ConnexionMiddleware.default_middlewares
    for kind in (SecurityMiddleware, RequestValidationMiddleware, ExceptionMiddleware):
        assert kind in defaults
    stack = operations.middlewares([])
    assert stack[stack.index(ExceptionMiddleware) + 1] is operations.FastPathMiddleware
    assert operations.OnceRequestValidationMiddleware in stack
    assert stack.index(ContextMiddleware) == len(stack) - 1
    assert operations.FastPathMiddleware not in operations.middlewares([], fast=False)


def test_every_operation_has_a_fast_path(db: str, keys: dict[str, Any]) -> None:
    """Every operation of openapi.yaml that takes JSON only is built into a
    FastOperation from the objects Connexion resolved for it: the handler, its request
    validation, its operation. One that takes another media type too (an import's JSON
    Lines) is not: it goes through Connexion's stack."""
    with TestClient(create_app(db)) as client:
        assert client.get("/healthz").status_code == 200
        fast = fast_path_of(client)
    assert fast.operations is not None
    spec = load_spec()
    # Connexion names an operation by the handler it resolved (kanal's resolver).
    ids = {
        f"{controller_for(operation)}.{snake_case(operation['operationId'])}": all(
            map(
                operations.is_json,
                resolve(spec, operation.get("requestBody", {})).get("content", {}),
            )
        )
        for item in spec["paths"].values()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    built = {operation_id for (_, operation_id), op in fast.operations.items() if op}
    assert built == {operation_id for operation_id, json_only in ids.items() if json_only}
    assert "handlers.imports.create_import" in set(ids) - built  # JSON Lines too
    for op in fast.operations.values():
        if op is not None:
            assert isinstance(op, operations.FastOperation)
            assert callable(op.function) and op.operation.operation_id


def _exchange(client: TestClient, key: str, other: str) -> list[tuple[Any, ...]]:
    """A round of requests covering every outcome the fast path renders: statuses,
    bodies and headers (but the date and the server's name), in order."""
    auth = {"Authorization": f"Bearer {key}"}
    base = f"/api/v1/stores/{STORE}"
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/orders", {"json": ORDER}),
        ("POST", "/orders", {"json": ORDER}),  # 200 now
        ("POST", "/orders", {"json": {**ORDER, "total_price": -1, "customer": {}}}),
        ("POST", "/orders", {"content": b'{"a": 1, "a": 2}'}),
        ("POST", "/orders", {"content": b"external_id=x"}),
        ("POST", "/checkouts", {"json": CHECKOUT}),
        ("PATCH", "/checkouts/FAST-C", {"json": {"status": "recovered"}}),
        ("PATCH", "/orders/FAST-1", {"json": {"financial_status": "paid"}}),
        ("PATCH", "/orders/NOPE", {"json": {"financial_status": "paid"}}),
        ("PATCH", "/orders/FAST-1", {"json": {"total_price": 3}}),
        ("POST", "/shipments", {"json": {"external_id": "S", "order_external_id": "NOPE"}}),
        ("GET", "/orders/FAST-1", {}),
        ("GET", "/orders?limit=1", {}),
        ("GET", "/orders?limit=0", {}),
        ("GET", "/orders/count?status=paid", {}),
        ("GET", "/orders/count", {}),
        ("GET", "/contacts/%2B33612345678", {}),
        ("GET", "/checkouts/FAST-C", {}),
        ("DELETE", "/customers/CUST-42", {}),
        ("PUT", "/orders", {"json": ORDER}),  # 405
    ]
    answers = []
    for method, path, kwargs in calls:
        headers = {**auth}
        if "content" in kwargs:
            headers["Content-Type"] = (
                "application/x-www-form-urlencoded"
                if kwargs["content"].startswith(b"external")
                else "application/json"
            )
        response = client.request(method, base + path, headers=headers, **kwargs)
        answers.append((method, path, response.status_code, response.content, _headers(response)))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {other}"}):
        response = client.get(f"{base}/orders/FAST-1", headers=headers)
        answers.append(("GET", "auth", response.status_code, response.content, _headers(response)))
    response = client.get("/api/v1/stores/999/orders", headers=auth)
    answers.append(("GET", "999", response.status_code, response.content, _headers(response)))
    response = client.get("/healthz")
    answers.append(("GET", "/healthz", response.status_code, response.content, _headers(response)))
    return answers


def _headers(response: Any) -> list[tuple[str, str]]:
    return sorted(
        (name.lower(), value)
        for name, value in response.headers.items()
        if name.lower() not in UNCOMPARED
    )


def test_the_same_answers_with_and_without_the_fast_path(tmp_path: Path) -> None:
    """Byte for byte: every status, body and header of a round of requests (created,
    replaced, 422, 400, 415, 404, 405, 401, 403, reads, lists with their Link header,
    erasure) is the same through the fast path as through Connexion's stack, with
    response validation on, as the tests and the conformance run serve."""
    rounds = []
    for fast in (True, False):
        db = str(tmp_path / f"{fast}.db")
        keys = make_accounts(db)
        with TestClient(create_app(db, validate_responses=True, fast_path=fast)) as client:
            rounds.append(_exchange(client, keys["store"], keys["other"]))
    with_fast, without = rounds
    assert len(with_fast) == len(without)
    for a, b in zip(with_fast, without, strict=True):
        # Timestamps differ between the two runs; everything else must not.
        assert a[:3] == b[:3], (a, b)
        if a[2] not in (200, 201):
            assert a == b
        assert [h for h in a[4] if h[0] != "content-length"] == [
            h for h in b[4] if h[0] != "content-length"
        ]


def lines(store_id: int, **kwargs: Any) -> dict[str, Any]:
    """The handler of the test's operation whose body is JSON Lines."""
    return {"store_id": store_id, "path": "connexion"}


async def async_lines(store_id: int, **kwargs: Any) -> dict[str, Any]:
    return lines(store_id)


@pytest.mark.parametrize("function", ["async_lines", "lines"])
def test_an_operation_the_fast_path_cannot_take_goes_through_connexion(
    db: str, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch, function: str
) -> None:
    """An operation whose request body is not JSON (application/x-ndjson), or whose
    handler is a plain function, gets no fast path: its requests go through Connexion's
    stack (routing, security, validation) and reach the handler; the others keep theirs."""
    spec = copy.deepcopy(load_spec())
    spec["paths"]["/api/v1/stores/{store_id}/lines"] = {
        "post": {
            "operationId": "asyncLines" if function == "async_lines" else "lines",
            "x-openapi-router-controller": "tests.test_fastpath",
            "parameters": [{"$ref": "#/components/parameters/StoreId"}],
            "requestBody": {
                "required": True,
                "content": {"application/x-ndjson": {}},
            }
            if function == "async_lines"
            else {"content": {"application/json": {"schema": {"type": "object"}}}},
            "responses": {"200": {"description": "ok"}},
        }
    }
    monkeypatch.setattr(kanal.app, "load_spec", lambda: spec)
    taken: list[str] = []
    real = operations.FastOperation.__call__

    async def spy(self: operations.FastOperation, *args: Any) -> None:
        taken.append(self.operation.operation_id)
        await real(self, *args)

    monkeypatch.setattr(operations.FastOperation, "__call__", spy)
    auth = {"Authorization": f"Bearer {keys['store']}"}
    content_type = "application/x-ndjson" if function == "async_lines" else "application/json"
    with TestClient(create_app(db)) as client:
        response = client.post(
            f"/api/v1/stores/{STORE}/lines",
            content=b'{"a": 1}\n',
            headers={**auth, "Content-Type": content_type},
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"store_id": STORE, "path": "connexion"}
        assert taken == []
        assert client.post(f"/api/v1/stores/{STORE}/lines", content=b"{}").status_code == 401
        assert client.post(f"/api/v1/stores/{STORE}/orders", json=ORDER, headers=auth).status_code
        assert taken == ["handlers.orders.upsert_order"]
        fast = fast_path_of(client)
    assert fast.operations is not None
    assert {op_id for (_, op_id), op in fast.operations.items() if op is None} == {
        f"tests.test_fastpath.{function}",
        "handlers.imports.create_import",  # openapi.yaml's own JSON Lines operation
    }

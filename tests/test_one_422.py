"""Every failing field in one 422; no unknown query parameter passes silently.

Checks the spec cannot state (the order a shipment points to must exist) run
with the schema's own, so an integrator fixes everything in one round trip; a
mistyped filter is a 400 naming it instead of a list of the wrong records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kanal.cli import main

from .conftest import Api

ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "customer": {"phone": "+33612345678"},
}
UNKNOWN = "The selected order_external_id is invalid."


def test_an_unknown_order_is_reported_with_the_schema_errors(api: Api) -> None:
    body = {"external_id": "S", "order_external_id": "NOPE", "status": "lost"}
    response = api.post("shipments", body)
    assert response.status_code == 422
    assert response.json() == {
        "message": "The selected status is invalid. (and 1 more error)",
        "errors": {
            "status": ["The selected status is invalid."],
            "order_external_id": [UNKNOWN],
        },
    }


def test_a_field_the_schema_refused_is_reported_once(api: Api) -> None:
    for value, message in (
        ("x" * 256, "The order_external_id field must not be greater than 255 characters."),
        (7, "The order_external_id field must be a string."),
    ):
        response = api.post("shipments", {"external_id": "S", "order_external_id": value})
        assert response.status_code == 422
        assert response.json()["errors"] == {"order_external_id": [message]}
    response = api.post("shipments", {"external_id": "S"})
    assert response.json()["errors"] == {
        "order_external_id": ["The order_external_id field is required."]
    }


def test_a_known_order_with_a_schema_error_lists_only_the_schema_error(api: Api) -> None:
    assert api.post("orders", ORDER).status_code == 201
    body = {"external_id": "S", "order_external_id": "ORDER-1", "status": "lost"}
    response = api.post("shipments", body)
    assert response.json()["errors"] == {"status": ["The selected status is invalid."]}
    assert api.post("shipments", {**body, "status": "in_transit"}).status_code == 201


def test_an_order_of_another_store_is_unknown_in_the_same_422(
    api: Api, keys: dict[str, Any]
) -> None:
    other = Api(api.client, keys["other"], store=456)
    assert other.post("orders", {**ORDER, "customer": {"phone": "+12025550123"}}).status_code == 201
    response = api.post("shipments", {"external_id": "S", "order_external_id": "ORDER-1", "x": 1})
    assert response.json()["errors"] == {"order_external_id": [UNKNOWN]}


def test_an_import_line_lists_every_failing_field_too(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    source = tmp_path / "shipments.jsonl"
    source.write_text(
        json.dumps({"external_id": "S1", "order_external_id": "NOPE", "status": "lost"}) + "\n"
    )
    result = CliRunner().invoke(
        main,
        ["import", str(source), "--store", "123", "--resource", "shipments", "--db", db],
    )
    assert result.exit_code == 1
    assert "line 1: The selected status is invalid. [status]" in result.output
    assert f"line 1: {UNKNOWN} [order_external_id]" in result.output


@pytest.mark.parametrize(
    "path, unknown",
    [
        ("orders/count?status=foo", "status"),
        ("orders?finacial_status=paid", "finacial_status"),
        ("checkouts?recovery=abandoned", "recovery"),
        ("customers/count?since=1", "since"),
        ("messages?state=sent&triger=recovery", "triger"),
        ("orders/ORDER-1?fields=id", "fields"),
        (
            "stats/recovery?from=2026-05-01T00:00:00Z&to=2026-05-31T00:00:00Z&currency=EUR",
            "currency",
        ),
    ],
)
def test_an_unknown_query_parameter_is_a_400_naming_it(api: Api, path: str, unknown: str) -> None:
    response = api.client.get(api.url(path), headers=api.headers())
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("Unknown query parameter for this operation: ")
    assert f": {unknown} (" in message


def test_an_unknown_query_parameter_on_a_write_is_a_400_and_writes_nothing(api: Api) -> None:
    response = api.post("orders?dry_run=1", ORDER)
    assert response.status_code == 400
    assert response.json() == {
        "error": "Unknown query parameter for this operation: dry_run (it takes none)."
    }
    count = api.client.get(api.url("orders/count"), headers=api.headers()).json()
    assert count == {"count": 0}


def test_known_query_parameters_and_cursors_still_pass(api: Api) -> None:
    for n in range(3):
        assert api.post("orders", {**ORDER, "external_id": f"O-{n}"}).status_code == 201
    first = api.client.get(
        api.url("orders?limit=2&created_at_min=2026-01-01T00:00:00Z"), headers=api.headers()
    )
    assert first.status_code == 200
    link = first.headers["Link"].split(";")[0].strip("<>")
    second = api.client.get(link, headers=api.headers())
    assert second.status_code == 200 and len(second.json()["orders"]) == 1


def test_unknown_query_parameters_on_a_real_server(server: Any, keys: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {keys['store']}"}
    url = f"{server.url}/api/v1/stores/123/orders/count"
    assert httpx.get(url, params={"status": "foo"}, headers=headers).status_code == 400
    assert httpx.get(url, params={"financial_status": "paid"}, headers=headers).status_code == 200


def test_a_lone_surrogate_is_reported_with_the_other_failing_fields(api: Api) -> None:
    raw = b'{"external_id": "S", "order_external_id": "N\\ud800", "status": "lost"}'
    response = api.client.post(
        api.url("shipments"),
        content=raw,
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert errors == {
        "status": ["The selected status is invalid."],
        "order_external_id": [
            "The order_external_id field must be valid Unicode text (no lone surrogate)."
        ],
    }
    raw = b'{"first_name": "\\udc00", "email": "nope"}'
    response = api.client.post(
        api.url("customers"),
        content=raw,
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"first_name", "email", "phone"}

"""Malformed and hostile requests: a clean JSON 4xx, never a 500, never a traceback."""

from __future__ import annotations

import pytest

from .conftest import Api

ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 1,
    "customer": {"phone": "+33612345678"},
}


def raw(
    api: Api,
    content: bytes,
    content_type: str = "application/json",
    path: str = "orders",
    method: str = "POST",
):
    headers = {**api.headers(), "Content-Type": content_type}
    return api.client.request(method, api.url(path), content=content, headers=headers)


@pytest.mark.parametrize(
    "content, message",
    [
        (
            b"{bad",
            "Malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2.",
        ),
        (b'{"a": 1, "a": 2}', "Malformed JSON: duplicate key 'a'."),
        (b'{"total_price": NaN}', "Malformed JSON: NaN is not valid JSON."),
        (b'{"total_price": Infinity}', "Malformed JSON: Infinity is not valid JSON."),
        (b'{"external_id": "\xff"}', "The request body is not valid UTF-8."),
        (b"[" * 10000 + b"]" * 10000, "Malformed JSON: nested too deeply."),
        (b"[1, 2]", "The request body must be a JSON object."),
        (b'"order"', "The request body must be a JSON object."),
        (b"null", "The request body must be a JSON object."),
        (b"", "The request body must be a JSON object."),
        (b'{"external_id": "a\x00b"}', None),
    ],
)
def test_malformed_body_is_400(api: Api, content: bytes, message: str | None) -> None:
    response = raw(api, content)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    if message:
        assert response.json() == {"error": message}


def test_escaped_nul_is_kept_in_free_json_and_refused_in_text_fields(api: Api) -> None:
    """PostgreSQL's text cannot hold U+0000: the fields stored as text say so in their
    pattern, on both engines; free JSON (metadata, line items) keeps it."""
    response = api.post("orders", {**ORDER, "metadata": {"note": "a\x00b"}})
    assert response.status_code == 201
    for field in ("financial_status", "external_id"):
        response = api.post("orders", {**ORDER, field: "a\x00b"})
        assert response.json()["errors"] == {field: [f"The {field} field format is invalid."]}
    customer = {**ORDER["customer"], "first_name": "\x00"}
    response = api.post("orders", {**ORDER, "customer": customer})
    assert response.json()["errors"] == {
        "customer.first_name": ["The customer.first_name field format is invalid."]
    }


def test_huge_numbers_are_422_not_500(api: Api) -> None:
    response = raw(
        api,
        b'{"external_id": "x", "placed_at": "2026-05-18T10:00:00Z", '
        b'"total_price": 1e400, "customer": {"phone": "+33612345678", '
        b'"orders_count": 100000000000000000000000000000}}',
    )
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"total_price", "customer.orders_count"}


def test_wrong_content_type_is_415(api: Api) -> None:
    response = raw(api, b"external_id=x", "application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.json() == {"error": "Unsupported content type; send application/json."}


def test_body_over_one_mebibyte_is_413(api: Api) -> None:
    response = raw(api, b" " * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json() == {"error": "The request body must not be larger than 1048576 bytes."}


def test_body_of_exactly_one_mebibyte_is_read(api: Api) -> None:
    body = b'{"external_id": "x"}'
    response = raw(api, body + b" " * (1024 * 1024 - len(body)))
    assert response.status_code == 422


def test_unknown_route_is_404_json(api: Api) -> None:
    response = api.client.get("/nope", headers=api.headers())
    assert (response.status_code, response.json()) == (404, {"error": "Not found"})


def test_wrong_method_is_405_json(api: Api) -> None:
    response = api.client.put(api.url("orders"), json=ORDER, headers=api.headers())
    assert (response.status_code, response.json()) == (405, {"error": "Method not allowed"})


def test_every_failing_field_is_listed(api: Api) -> None:
    response = api.post(
        "orders",
        {
            "external_id": "",
            "placed_at": "x",
            "total_price": -1,
            "currency": "eu",
            "customer": {"email": "nope"},
            "tags": [1],
        },
    )
    assert response.status_code == 422
    body = response.json()
    assert body["errors"] == {
        "external_id": ["The external_id field is required."],
        "placed_at": ["The placed_at field must be a valid date."],
        "total_price": ["The total_price field must be at least 0."],
        "currency": ["The currency field format is invalid."],
        "customer.phone": ["The customer.phone field is required."],
        "customer.email": ["The customer.email field must be a valid email address."],
        "tags.0": ["The tags.0 field must be a string."],
    }
    assert body["message"] == "The external_id field is required. (and 6 more errors)"


def test_single_error_message_matches_reference(api: Api) -> None:
    response = api.post("orders", {**ORDER, "customer": {"first_name": "Marie"}})
    assert response.json() == {
        "message": "The customer.phone field is required.",
        "errors": {"customer.phone": ["The customer.phone field is required."]},
    }


def test_path_parameter_too_long_is_422(api: Api) -> None:
    response = api.patch("orders/" + "x" * 256, {})
    assert response.status_code == 422
    assert response.json()["errors"] == {
        "external_id": ["The external_id field must not be greater than 255 characters."]
    }


def test_path_id_with_a_control_character_is_422(api: Api) -> None:
    response = api.patch("orders/ORDER%0D1", {})
    assert response.status_code == 422
    assert response.json()["errors"] == {
        "external_id": ["The external_id field format is invalid."]
    }

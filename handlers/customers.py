"""Customers: POST upsert, DELETE (GDPR erasure), reads."""

from typing import Any

from starlette.responses import Response as NoContent

from kanal import reads
from kanal.records import Body, Response, phone, storage, upsert_linked
from kanal.render import customer_response


async def upsert_customer(store_id: int, body: Body) -> Response:
    """Create or update a customer, keyed by external_id or else by phone."""
    number = phone(body["phone"])
    external_id = body.get("external_id")
    key = (
        {"external_id": external_id}
        if external_id is not None
        else {"external_id": None, "phone": number, "deleted_at": None}
    )
    row, created = await upsert_linked(
        "customers",
        store_id,
        {
            "external_id": external_id,
            "phone": number,
            "first_name": body.get("first_name"),
            "last_name": body.get("last_name"),
            "email": body.get("email"),
            "locale": body.get("locale"),
            "tags": body.get("tags") or [],
            "lifetime_value": body.get("lifetime_value"),
            "orders_count": body.get("orders_count"),
        },
        key=key,
    )
    return customer_response(row), 201 if created else 200


async def delete_customer(store_id: int, external_id: str) -> NoContent:
    """Erase a person (GDPR) wherever they appear: by external_id, or by phone for one
    keyed by phone."""
    await storage().erase_person(store_id, external_id, phone(external_id))
    return NoContent(status_code=204)


async def list_customers(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List customers (erased ones are gone)."""
    return await reads.listing("customers", store_id, params)


async def count_customers(store_id: int, **params: Any) -> Body:
    """Count customers."""
    return await reads.counting("customers", store_id, params)


async def get_customer(store_id: int, external_id: str) -> Body:
    """Retrieve a customer by external_id, or else by phone for one keyed by phone (as
    DELETE finds the person)."""
    by_id = [("external_id", "=", external_id)]
    number = phone(external_id)
    if number is None:
        return await reads.retrieve("customers", store_id, by_id)
    by_phone = [("external_id", "is null", None), ("phone", "=", number)]
    return await reads.retrieve("customers", store_id, by_id, by_phone)

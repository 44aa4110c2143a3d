"""Orders: POST upsert (with recovery attribution), PATCH status, reads."""

from typing import Any

from kanal import automations, formats, reads
from kanal.auth import current_store
from kanal.errors import not_found
from kanal.records import Body, Response, basket_columns, changes, storage, upsert_linked
from kanal.render import order_response


def order_record(body: Body) -> Body:
    """An order's body as the columns written (by POST /orders and by ``kanal import``)."""
    return {
        "external_id": body["external_id"],
        "placed_at": formats.utc_timestamp(body["placed_at"]),
        "financial_status": body.get("financial_status"),
        "fulfillment_status": body.get("fulfillment_status"),
        **basket_columns(body),
    }


async def upsert_order(store_id: int, body: Body) -> Response:
    """Create or update an order."""
    row, created = await upsert_linked("orders", store_id, order_record(body))
    return order_response(row), 201 if created else 200


async def update_order(store_id: int, external_id: str, body: Body) -> Response:
    """Update an order's status, tags or metadata."""
    store = storage()
    async with store.transaction():
        row = await store.patch("orders", store_id, external_id, changes(body))
        if row is None:
            raise not_found("Order")
        await automations.sync_order(store, current_store.get(), row)
    return order_response(row), 200


async def list_orders(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List orders."""
    return await reads.listing("orders", store_id, params)


async def count_orders(store_id: int, **params: Any) -> Body:
    """Count orders."""
    return await reads.counting("orders", store_id, params)


async def get_order(store_id: int, external_id: str) -> Body:
    """Retrieve an order."""
    return await reads.by_external_id("orders", store_id, external_id)

"""Shipments: POST upsert (no PATCH: a POST with the same external_id replaces)."""

from typing import Any

from kanal import automations, reads
from kanal.auth import current_store
from kanal.records import Body, Response, require_order, storage
from kanal.render import shipment_response
from kanal.storage import AsyncStorage


async def upsert_shipment(store_id: int, body: Body) -> Response:
    """Create or update a shipment linked to an order of the same store."""
    store = storage()
    async with store.transaction():
        row, created, order = await _upsert(store, store_id, body)
        await automations.sync_shipping(store, current_store.get(), row, order)
    return shipment_response(row), 201 if created else 200


async def _upsert(store: AsyncStorage, store_id: int, body: Body) -> tuple[Body, bool, Body]:
    order = await require_order(store_id, body["order_external_id"])
    row, created = await store.upsert(
        "shipments",
        store_id,
        {
            "external_id": body["external_id"],
            "order_id": order["id"],
            "order_external_id": body["order_external_id"],
            "tracking_number": body.get("tracking_number"),
            "tracking_url": body.get("tracking_url"),
            "carrier": body.get("carrier"),
            "status": body.get("status"),
            "metadata": body.get("metadata"),
        },
    )
    return row, created, order


async def list_shipments(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List shipments."""
    return await reads.listing("shipments", store_id, params)


async def count_shipments(store_id: int, **params: Any) -> Body:
    """Count shipments."""
    return await reads.counting("shipments", store_id, params)


async def get_shipment(store_id: int, external_id: str) -> Body:
    """Retrieve a shipment."""
    return await reads.by_external_id("shipments", store_id, external_id)

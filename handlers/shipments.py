"""Shipments: POST upsert (no PATCH: a POST with the same external_id replaces)."""

from typing import Any

from kanal import automations, reads
from kanal.auth import current_store
from kanal.records import Body, Response, require_order, storage
from kanal.render import shipment_response
from kanal.storage import Storage


async def upsert_shipment(store_id: int, body: Body) -> Response:
    """Create or update a shipment linked to an order of the same store."""
    store = storage()
    with store.transaction():
        row, created, order = _upsert(store, store_id, body)
        automations.sync_shipping(store, current_store.get(), row, order)
    return shipment_response(row), 201 if created else 200


def _upsert(store: Storage, store_id: int, body: Body) -> tuple[Body, bool, Body]:
    order = require_order(store_id, body["order_external_id"])
    row, created = store.upsert(
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
    return reads.listing("shipments", store_id, params)


async def count_shipments(store_id: int, **params: Any) -> Body:
    """Count shipments."""
    return reads.counting("shipments", store_id, params)


async def get_shipment(store_id: int, external_id: str) -> Body:
    """Retrieve a shipment."""
    return reads.by_external_id("shipments", store_id, external_id)

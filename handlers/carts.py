"""Carts: same body, statuses and response as checkouts, in their own table."""

from typing import Any

from kanal import reads
from kanal.records import Body, Response, update_abandoned, upsert_abandoned


async def upsert_cart(store_id: int, body: Body) -> Response:
    """Create or update an abandoned cart."""
    return await upsert_abandoned("carts", store_id, body)


async def update_cart(store_id: int, external_id: str, body: Body) -> Response:
    """Update a cart's status, recovery URL, tags, metadata or notifications."""
    return await update_abandoned("carts", "Cart", store_id, external_id, body)


async def list_carts(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List carts."""
    return await reads.listing("carts", store_id, params)


async def count_carts(store_id: int, **params: Any) -> Body:
    """Count carts."""
    return await reads.counting("carts", store_id, params)


async def get_cart(store_id: int, external_id: str) -> Body:
    """Retrieve a cart, with its recovery and notification state."""
    return await reads.by_external_id("carts", store_id, external_id)

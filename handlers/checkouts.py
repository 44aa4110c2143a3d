"""Checkouts: POST upsert, PATCH status, reads. Carts share this logic (kanal.records)."""

from typing import Any

from kanal import reads
from kanal.records import Body, Response, update_abandoned, upsert_abandoned


async def upsert_checkout(store_id: int, body: Body) -> Response:
    """Create or update an abandoned checkout."""
    return await upsert_abandoned("checkouts", store_id, body)


async def update_checkout(store_id: int, external_id: str, body: Body) -> Response:
    """Update a checkout's status, recovery URL, tags, metadata or notifications."""
    return await update_abandoned("checkouts", "Checkout", store_id, external_id, body)


async def list_checkouts(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List checkouts."""
    return await reads.listing("checkouts", store_id, params)


async def count_checkouts(store_id: int, **params: Any) -> Body:
    """Count checkouts."""
    return await reads.counting("checkouts", store_id, params)


async def get_checkout(store_id: int, external_id: str) -> Body:
    """Retrieve a checkout, with its recovery and notification state."""
    return await reads.by_external_id("checkouts", store_id, external_id)

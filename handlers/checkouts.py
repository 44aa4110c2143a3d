"""Checkouts: POST upsert, PATCH status. Carts share this logic (kanal.records)."""

from kanal.records import Body, Response, update_abandoned, upsert_abandoned


async def upsert_checkout(store_id: int, body: Body) -> Response:
    """Create or update an abandoned checkout."""
    return upsert_abandoned("checkouts", store_id, body)


async def update_checkout(store_id: int, external_id: str, body: Body) -> Response:
    """Update a checkout's status, recovery URL, tags or metadata."""
    return update_abandoned("checkouts", "Checkout", store_id, external_id, body)

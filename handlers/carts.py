"""Carts: same body, statuses and response as checkouts, in their own table."""

from kanal.records import Body, Response, update_abandoned, upsert_abandoned


async def upsert_cart(store_id: int, body: Body) -> Response:
    """Create or update an abandoned cart."""
    return upsert_abandoned("carts", store_id, body)


async def update_cart(store_id: int, external_id: str, body: Body) -> Response:
    """Update a cart's status, recovery URL, tags or metadata."""
    return update_abandoned("carts", "Cart", store_id, external_id, body)

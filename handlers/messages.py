"""Messages: the outbox, so a store can see what was (or will be) sent."""

from typing import Any

from kanal import reads
from kanal.records import Body


async def list_messages(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List messages."""
    return await reads.listing("messages", store_id, params)


async def count_messages(store_id: int, **params: Any) -> Body:
    """Count messages."""
    return await reads.counting("messages", store_id, params)


async def get_message(store_id: int, message_id: int) -> Body:
    """Retrieve a message by its id."""
    return await reads.retrieve("messages", store_id, [("id", "=", message_id)])

"""Figures for a store's dashboard."""

from kanal import reads
from kanal.records import Body


async def get_recovery_stats(store_id: int, from_: str, to: str) -> Body:
    """Recovery statistics of the checkouts and carts abandoned in [from, to]."""
    return await reads.recovery_stats(store_id, from_, to)

"""Per-store rate limits: fixed one-minute windows shared by every worker process.

The count lives in SQLite (table ``rate_limits``), so every process of a server
draws from the same window. Taking one request at a time from it would cost a
write transaction per request; instead each process reserves a block of
permits (1/200 of the limit, at least one) and spends them in memory, coming
back for more when they run out.

- Never more than the limit: a permit is granted from the shared count only
  while it is below the limit.
- At most ``workers x block`` fewer than the limit (permits a process reserved
  and did not spend before the window ended): 0.5 % per process, and exact for
  limits under 400 a minute, where a block is a single request.
- Once the window is used up, a process answers 429 from memory until it ends.
"""

from __future__ import annotations

import math
import time
from contextvars import ContextVar
from dataclasses import dataclass

from kanal.storage import RATE_WINDOW, AsyncStorage

#: A process reserves this fraction of a store's limit at a time.
SHARE = 200


@dataclass
class Decision:
    allowed: bool
    remaining: int
    retry_after: int


@dataclass
class _Block:
    limit: int
    window_start: float
    permits: int  # reserved by this process and not spent yet
    taken: int  # the window's shared count after this process's last reservation


class RateLimiter:
    """The rate limits of one process, drawing on the shared windows of ``storage``."""

    def __init__(self, storage: AsyncStorage) -> None:
        self.storage = storage
        self.blocks: dict[int, _Block] = {}

    async def hit(self, store_id: int, limit: int, now: float | None = None) -> Decision:
        """Count one request of the store; allowed or not, with what remains."""
        now = time.time() if now is None else now
        block = self.blocks.get(store_id)
        if (
            block is None
            or block.limit != limit
            or now >= block.window_start + RATE_WINDOW
            or (block.permits == 0 and block.taken < limit)
        ):
            wanted = max(1, limit // SHARE)
            start, granted, taken = await self.storage.reserve_permits(store_id, limit, wanted, now)
            block = self.blocks[store_id] = _Block(limit, start, granted, taken)
        retry_after = max(1, math.ceil(block.window_start + RATE_WINDOW - now))
        if block.permits == 0:
            return Decision(False, 0, retry_after)
        block.permits -= 1
        return Decision(True, max(0, limit - block.taken + block.permits), retry_after)


#: The rate limiter of the application serving the current request.
current_limiter: ContextVar[RateLimiter] = ContextVar("current_limiter")

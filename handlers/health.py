"""GET /healthz."""

import sqlite3

import psycopg

from kanal.errors import error
from kanal.records import storage


async def get_health() -> dict[str, str]:
    """Check that the service is up and its database answers."""
    try:
        await storage().ping()
    except (sqlite3.Error, psycopg.Error, OSError):
        raise error(503, "Database unavailable") from None
    return {"status": "ok"}

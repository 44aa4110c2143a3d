"""GET /healthz."""

from kanal.records import storage


async def get_health() -> dict[str, str]:
    """Check that the service is up."""
    storage().ping()
    return {"status": "ok"}

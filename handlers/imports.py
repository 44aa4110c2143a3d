"""Import jobs: start one (202), follow it, list them and their invalid records, cancel one.

The upload is stored with its job (``kanal.uploads`` has counted its records); a
worker runs it (``kanal.jobs``), through the engine of ``kanal import``.
"""

from typing import Any

from kanal import reads
from kanal.errors import ApiError, error, not_found
from kanal.records import Body, storage
from kanal.render import import_record
from kanal.uploads import Upload

#: Import jobs a store may have queued or running at once (the spec's createImport).
MAX_UNFINISHED = 2
#: Seconds a client is asked to wait when the store has that many.
RETRY_AFTER = 5


async def create_import(store_id: int, resource: str, body: Upload) -> tuple[Body, int, dict]:
    """Start an import job."""
    job = await storage().create_import(
        store_id,
        {"resource": resource, "format": body.format, "total": body.total},
        body.payload,
        MAX_UNFINISHED,
    )
    if job is None:
        raise ApiError(
            429,
            {
                "message": f"The store has {MAX_UNFINISHED} imports queued or running, the most "
                "it may have: wait for one to end (Retry-After) or cancel one."
            },
            {"Retry-After": str(RETRY_AFTER)},
        )
    return import_record(job), 202, {"Location": f"/api/v1/stores/{store_id}/imports/{job['id']}"}


async def list_imports(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List import jobs."""
    return await reads.listing("imports", store_id, params)


async def get_import(store_id: int, import_id: int) -> Body:
    """Retrieve an import job."""
    return await reads.retrieve("imports", store_id, [("id", "=", import_id)])


async def cancel_import(store_id: int, import_id: int) -> Body:
    """Cancel an import job."""
    job, cancelled = await storage().cancel_import(store_id, import_id)
    if job is None:
        raise not_found("Import")
    if not cancelled:
        raise error(
            409,
            f"Import {import_id} has ended ({job['state']}); only a queued or running import "
            "can be cancelled.",
        )
    return import_record(job)


async def list_import_errors(
    store_id: int, import_id: int, **params: Any
) -> tuple[Body, int, dict[str, str]]:
    """List an import job's invalid records."""
    await get_import(store_id, import_id)  # 404 for an unknown job
    return await reads.listing(
        "import_errors",
        store_id,
        params,
        scope={"import_id": import_id},
        path=f"imports/{import_id}/errors",
    )

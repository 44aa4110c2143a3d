"""The plain stack: Starlette on uvicorn, ``json.loads``, one ``INSERT ... ON CONFLICT``
of the order as one JSON row. No validation, no key, no rate limit: the floor under
every other server of bench.run.

    KANAL_DB=... uvicorn --factory bench.plain:create_app
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.onerow import OneRow


def create_app() -> Starlette:
    rows = OneRow()

    async def upsert_order(request: Request) -> JSONResponse:
        raw = await request.body()
        body = json.loads(raw)
        store_id = int(request.path_params["store_id"])
        await rows.upsert(store_id, body["external_id"], raw.decode())
        return JSONResponse({"external_id": body["external_id"], "store_id": store_id})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await rows.open()
        yield
        await rows.close()

    return Starlette(
        routes=[Route("/api/v1/stores/{store_id:int}/orders", upsert_order, methods=["POST"])],
        lifespan=lifespan,
    )

"""The bare baseline: Starlette, ``json.loads`` and the same upsert as kanal (SQLite, or
the PostgreSQL engine when KANAL_DB is a postgresql:// URL),
with no validation, no auth and no rate limit. What kanal's extra work is measured against.

    uvicorn --factory bench.baseline:create_app   (KANAL_DB names the database)
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kanal.storage import Storage, is_postgres, open_async


def create_app() -> Starlette:
    db = os.environ["KANAL_DB"]
    # SQLite: the synchronous Storage, called in place; PostgreSQL: its async engine
    # (the pool opened at the first request, in the server's event loop).
    sqlite = None if is_postgres(db) else Storage(db)
    engine: list[Any] = []
    opening = asyncio.Lock()

    async def upsert(store_id: int, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if sqlite is not None:
            return sqlite.upsert("orders", store_id, record)
        if not engine:
            async with opening:
                if not engine:
                    engine.append(await open_async(db))
        return await engine[0].upsert("orders", store_id, record)

    async def upsert_order(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        store_id = int(request.path_params["store_id"])
        customer = body["customer"]
        row, created = await upsert(
            store_id,
            {
                "external_id": body["external_id"],
                "placed_at": body["placed_at"],
                "total_price": str(body["total_price"]),
                "currency": body.get("currency"),
                "financial_status": body.get("financial_status"),
                "fulfillment_status": body.get("fulfillment_status"),
                "customer": customer,
                "customer_external_id": customer.get("external_id"),
                "customer_phone": customer.get("phone"),
                "line_items": body.get("line_items"),
                "tags": body.get("tags") or [],
                "metadata": body.get("metadata"),
            },
        )
        return JSONResponse(
            {"external_id": row["external_id"], "store_id": store_id},
            status_code=201 if created else 200,
        )

    return Starlette(
        routes=[Route("/api/v1/stores/{store_id}/orders", upsert_order, methods=["POST"])]
    )

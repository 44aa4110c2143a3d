"""A local fake of the WhatsApp Cloud API messages endpoint (and of a merchant webhook).

It runs on a loopback port in a thread, records every request, and answers what
the test queues (429, 500, 400...) or else a success with a ``wamid``. A webhook
request carrying an ``Idempotency-Key`` it has already accepted is answered as
a success again but counted once, as a merchant that drops repeats would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class FakeWhatsApp:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.delivered: dict[str, dict[str, Any]] = {}  # idempotency key -> first body
        self.queued: deque[tuple[int, dict[str, Any], dict[str, str]]] = deque()
        self.delay = 0.0
        self.lock = threading.Lock()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(
            routes=[
                Route("/v21.0/{phone_number_id}/messages", self.messages, methods=["POST"]),
                Route("/hook", self.hook, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> FakeWhatsApp:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def respond(
        self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """Queue the answer to the next request."""
        self.queued.append((status, body or {}, headers or {}))

    async def _record(self, request: Request) -> tuple[dict[str, Any], bytes]:
        raw = await request.body()
        entry = {
            "path": request.url.path,
            "headers": dict(request.headers),
            "json": json.loads(raw),
            "raw": raw,
        }
        with self.lock:
            self.requests.append(entry)
        return entry, raw

    def _answer(self, default: dict[str, Any]) -> JSONResponse:
        with self.lock:
            status, body, headers = self.queued.popleft() if self.queued else (200, default, {})
        return JSONResponse(body, status_code=status, headers=headers)

    async def messages(self, request: Request) -> JSONResponse:
        await self._record(request)
        await asyncio.sleep(self.delay)
        return self._answer(
            {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.{len(self.requests)}"}]}
        )

    async def hook(self, request: Request) -> JSONResponse:
        entry, _ = await self._record(request)
        key = entry["headers"].get("idempotency-key", "")
        with self.lock:
            self.delivered.setdefault(key, entry["json"])
        await asyncio.sleep(self.delay)
        return self._answer({"id": f"hook-{key}"})

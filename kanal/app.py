"""The application: Connexion routes openapi.yaml's operations to ``handlers/``.

The request's way: the body-size guard (413) -> Connexion's routing -> auth and
rate limit (401/403/404/429) -> validation against openapi.yaml (400/415/422)
-> the handler -> the store (one transaction) -> the response, with the store's
rate-limit headers added on the way out.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import functools
import gc
import inspect
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import yaml
from connexion import AsyncApp
from connexion.exceptions import ProblemException
from connexion.jsonifier import JSONEncoder, Jsonifier
from connexion.options import SwaggerUIOptions
from connexion.resolver import Resolver
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kanal import affinity, errors, operations, uploads
from kanal.auth import with_rate_limit_headers
from kanal.ratelimit import RateLimiter, current_limiter
from kanal.spec import load_spec, resolve
from kanal.storage import AsyncStorage, Storage, connect, current, is_postgres, open_async
from kanal.stubs import controller_for, snake_case

ROOT = Path(__file__).resolve().parent.parent
MAX_BODY = 1024 * 1024
MAX_HEADERS = 100
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_DB = "kanal.db"
#: The contract (openapi.json, openapi.yaml) and Swagger UI are served under the API's base path.
DOCS_BASE = "/api/v1"


class ResponseJsonifier(Jsonifier):
    """Connexion's jsonifier, writing responses with orjson: compact JSON, the same
    values (Connexion's encoder for the types orjson leaves to it, such as dates and
    decimals; the standard library's json for what orjson cannot write, such as
    integers beyond 64 bits)."""

    OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME

    def __init__(self) -> None:
        super().__init__()
        self._default = JSONEncoder().default

    def dumps(self, data: Any, **kwargs: Any) -> str:
        if not kwargs:
            try:
                return orjson.dumps(data, default=self._default, option=self.OPTIONS).decode()
            except TypeError:
                pass
        return super().dumps(data, **kwargs)


class SnakeCaseResolver(Resolver):
    """Route camelCase operationIds to snake_case functions of the operation's controller.

    The same rule tells ``kanal stubs`` where to write a missing handler.
    """

    def resolve_operation_id(self, operation: Any) -> str:
        return f"{controller_for(operation._operation)}.{snake_case(operation.operation_id)}"


@functools.cache
def contract_documents() -> dict[str, tuple[bytes, bytes]]:
    """openapi.json and openapi.yaml as served: the contract with its named components
    and $refs intact (what client generators need), ``servers`` pointing at the host
    that serves them so Swagger UI's "Try it out" calls this server."""
    spec = {**load_spec()}
    spec["servers"] = [{"url": "", "description": "The server that serves this document."}]
    return {
        f"{DOCS_BASE}/openapi.json": (b"application/json", json.dumps(spec).encode()),
        f"{DOCS_BASE}/openapi.yaml": (
            b"application/yaml",
            yaml.dump(
                spec,
                Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                sort_keys=False,
                allow_unicode=True,
            ).encode(),
        ),
    }


async def _send(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class PathTable:
    """Which methods a URL path supports, by the spec's own matching rule: a concrete
    path wins over a templated one (``/orders/count`` is not the order ``count``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        ordered = sorted(spec["paths"].items(), key=lambda item: item[0].count("{"))
        self.routes = []
        #: (path, method, bytes) of the request bodies that state their own limit.
        self.limited: list[tuple[re.Pattern[str], str, int]] = []
        for path, item in ordered:
            # A parameter of `format: path` takes the rest of the path, `/` included
            # (Connexion's rule); any other one segment.
            whole = {
                parameter["name"]
                for operation in (item, *(v for v in item.values() if isinstance(v, dict)))
                for parameter in resolve(spec, operation.get("parameters", []))
                if parameter["in"] == "path" and parameter["schema"].get("format") == "path"
            }
            pattern = re.sub(
                r"\\\{([^}/]+)\\\}",
                lambda match, whole=whole: ".+" if match.group(1) in whole else "[^/]+",
                re.escape(path),
            )
            methods = {m.upper() for m in item if m in ("get", "put", "post", "patch", "delete")}
            if "GET" in methods:
                methods.add("HEAD")
            self.routes.append((re.compile(f"^{pattern}$"), frozenset(methods)))
            # A request body that states its own limit (an import's: x-kanal-max-bytes).
            for method in methods & {"POST", "PUT", "PATCH"}:
                body = resolve(spec, item[method.lower()].get("requestBody", {}))
                if "x-kanal-max-bytes" in body:
                    limit = int(body["x-kanal-max-bytes"])
                    self.limited.append((re.compile(f"^{pattern}$"), method, limit))

    def methods(self, path: str) -> frozenset[str] | None:
        """The methods of the most specific path that matches, or None."""
        for pattern, methods in self.routes:
            if pattern.match(path):
                return methods
        return None

    def body_limit(self, path: str, method: str) -> int:
        """The most bytes a request body may hold: the operation's own limit, else 1 MiB."""
        for pattern, limited, limit in self.limited:
            if method == limited and pattern.match(path):
                return limit
        return MAX_BODY


class KanalASGI:
    """The outermost layer: storage for the request, body limit, rate-limit headers."""

    def __init__(self, app: ASGIApp, opener: Callable[[], Awaitable[Any]]) -> None:
        self.app = app
        #: The storage, opened at the first request: a PostgreSQL pool belongs to the
        #: event loop that serves the requests.
        self.opener, self.opening = opener, asyncio.Lock()
        self.storage: Any = None
        self.limiter: RateLimiter | None = None
        self.documents = contract_documents()
        self.paths = PathTable(load_spec())

    def closing(self, receive: Receive) -> Receive:
        """``receive`` of the lifespan: at shutdown, the storage's pool is closed first."""

        async def receive_closing() -> Message:
            message = await receive()
            close = getattr(self.storage, "close", None)
            if message["type"] == "lifespan.shutdown" and inspect.iscoroutinefunction(close):
                await close()
            return message

        return receive_closing

    async def open(self) -> None:
        async with self.opening:
            if self.storage is None:
                storage = await self.opener()
                self.limiter, self.storage = RateLimiter(storage), storage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self.closing(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        document = self.documents.get(scope["path"])
        if document is not None and scope["method"] in ("GET", "HEAD"):
            await _send(send, 200, *document)
            return
        methods = self.paths.methods(scope["path"])
        if methods is not None and scope["method"] not in methods:
            body = json.dumps({"error": "Method not allowed"}).encode()
            await _send(
                send,
                405,
                b"application/json",
                body,
                [(b"allow", ", ".join(sorted(methods)).encode())],
            )
            return
        headers = scope["headers"]
        if (
            len(headers) > MAX_HEADERS
            or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES
        ):
            message = (
                f"Request headers too large (at most {MAX_HEADERS} headers and "
                f"{MAX_HEADER_BYTES} bytes)."
            )
            await _send(send, 431, b"application/json", json.dumps({"error": message}).encode())
            return
        if self.storage is None:
            await self.open()
        current.set(self.storage)
        current_limiter.set(self.limiter)
        state: dict[str, Any] = {}
        scope["kanal"] = state
        length = dict(scope["headers"]).get(b"content-length")
        limit = self.paths.body_limit(scope["path"], scope["method"])
        if length is not None and (not length.isdigit() or int(length) > limit):
            await self._too_large(send, 413 if length.isdigit() else 400, limit)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # No declared length (chunked): read up to the limit before going on.
            messages, size = [], 0
            while True:
                message = await receive()
                messages.append(message)
                size += len(message.get("body", b""))
                if size > limit:
                    await self._too_large(send, 413, limit)
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(messages, receive)

        await self.app(scope, receive, with_rate_limit_headers(scope, send))

    @staticmethod
    async def _too_large(send: Send, status: int, limit: int = MAX_BODY) -> None:
        message = (
            f"The request body must not be larger than {limit} bytes."
            if status == 413
            else "Invalid Content-Length header."
        )
        await _send(send, status, b"application/json", json.dumps({"error": message}).encode())


class RateLimitHeadersMiddleware:
    """Adds the headers inside response validation, so the validator sees them.

    Error responses rendered further out (401 ... 429, 422) get them from KanalASGI.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            send = with_rate_limit_headers(scope, send)
        await self.app(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def create_app(
    db_path: str | None = None,
    *,
    validate_responses: bool = False,
    pool_size: int | None = None,
    fast_path: bool | None = None,
) -> ASGIApp:
    """Build the ASGI application over ``db_path``: a SQLite file, or a PostgreSQL
    database (``postgresql://...``, ``pool_size`` connections per process). The fast
    path (``kanal.operations``) is on unless ``fast_path`` is False, or, when it is
    not given, ``KANAL_FAST_PATH=0`` (every request then takes Connexion's stack)."""
    if fast_path is None:
        fast_path = os.environ.get("KANAL_FAST_PATH") != "0"
    db = db_path or os.environ.get("KANAL_DB", DEFAULT_DB)
    if is_postgres(db):
        connect(db, 1).close()  # migrated before the first request (one connection)
        opener = functools.partial(open_async, db, pool_size)
    else:
        # The database is checked and migrated now; requests' transactions commit in
        # groups (AsyncStorage.transaction).
        storage = AsyncStorage(Storage(db), group_commit=True)

        async def opener() -> AsyncStorage:
            return storage

    app = AsyncApp(
        __name__,
        specification_dir=str(ROOT),
        middlewares=operations.middlewares([RateLimitHeadersMiddleware], fast=fast_path),
        jsonifier=ResponseJsonifier(),
        # Connexion serves Swagger UI; the documents it reads are served by KanalASGI.
        swagger_ui_options=SwaggerUIOptions(
            serve_spec=False,
            spec_path=f"{DOCS_BASE}/openapi.json",
            swagger_ui_path=f"{DOCS_BASE}/ui",
        ),
    )
    operations.install(app)  # per-operation work once, not per request
    app.add_api(
        copy.deepcopy(load_spec()),
        resolver=SnakeCaseResolver(),
        validator_map=uploads.VALIDATOR_MAP,
        validate_responses=validate_responses,
        # A query parameter the operation does not define is a 400 naming it.
        strict_validation=True,
        # Parameter names as Python names: `from` arrives as `from_` (kanal stubs agrees).
        pythonic_params=True,
    )
    app.add_error_handler(errors.ApiError, errors.api_error_handler)
    app.add_error_handler(HTTPException, errors.http_error_handler)
    app.add_error_handler(ProblemException, errors.http_error_handler)
    app.add_error_handler(Exception, errors.server_error_handler)
    asgi = KanalASGI(app, opener)
    # The spec, validators and routes live as long as the process: keep them out of
    # the garbage collector's scans, which otherwise pause requests (p99).
    gc.freeze()
    return asgi


def die_with_parent() -> None:
    """Have the kernel end this process when the one that started it ends, SIGKILL
    included (Linux's ``PR_SET_PDEATHSIG``): a server's worker process never outlives
    its supervisor (``kanal serve``) to keep serving on its own."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor was gone already
        os._exit(1)


#: prctl's option that sets the signal a process gets when its parent ends.
PR_SET_PDEATHSIG = 1


def app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory`` and granian (``kanal serve``): in a worker
    process of theirs (``KANAL_WORKER_PROCESS=1``), it ends with its supervisor, and
    takes a CPU of its own when ``kanal serve`` binds its workers (``kanal.affinity``)."""
    if os.environ.get("KANAL_WORKER_PROCESS") == "1":
        die_with_parent()
        affinity.bind_worker()  # before the server starts this process's threads
    pool_size = os.environ.get("KANAL_POOL_SIZE")
    return create_app(
        os.environ.get("KANAL_DB", DEFAULT_DB),
        validate_responses=os.environ.get("KANAL_VALIDATE_RESPONSES") == "1",
        pool_size=int(pool_size) if pool_size else None,
    )

"""API keys, and the middleware that authenticates, authorises and rate-limits.

A key is a 24-character token of letters and digits drawn with ``secrets``. Only
its SHA-256 is stored (the token is random, so a slow hash adds nothing), and the
stored hash is compared in constant time. A key covers one store, or every store
of its team.

The middleware sits where Connexion's security middleware would (after routing,
before validation), so the order of the documented outcomes is: missing or
invalid key 401, unknown or paused store 404, key not covering the store 403,
rate limit 429, then validation 422 and the handler.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kanal import storage as storage_module
from kanal.errors import ApiError, error
from kanal.formats import current_region
from kanal.ratelimit import current_limiter

TOKEN_ALPHABET = string.ascii_letters + string.digits
TOKEN_LENGTH = 24
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9]{24}")
MAX_STORE_ID = 2**63 - 1

#: The store the current request is for (its settings: region, attribution window...).
current_store: ContextVar[dict[str, Any]] = ContextVar("current_store")


def new_token() -> str:
    """A fresh random key: 24 letters and digits."""
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(scope: Scope) -> str | None:
    """The token of the Authorization header, '' when malformed, None when absent."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


async def authorize(
    store: storage_module.AsyncStorage, scope: Scope, store_id: Any, remembered: bool = False
) -> dict[str, Any]:
    """Check the request's key against the store; returns the store or raises.
    ``remembered``: see ``guard``."""
    token = bearer_token(scope)
    if token is None:
        raise error(401, "API key is missing")
    if not TOKEN_PATTERN.fullmatch(token):
        raise error(401, "Invalid API key")
    digest = hash_token(token)
    key, shop = await store.account(
        digest, store_id if 1 <= store_id <= MAX_STORE_ID else 0, remembered=remembered
    )
    if key is None or not hmac.compare_digest(key["token_hash"], digest):
        raise error(401, "Invalid API key")
    if shop is None or shop["paused"]:
        raise error(404, "Store not found or paused")
    if key["store_id"] is not None:
        allowed = key["store_id"] == shop["id"]
    else:
        allowed = key["team_id"] is not None and key["team_id"] == shop["team_id"]
    if not allowed:
        raise error(403, "API key does not authorize this store")
    return shop


async def guard(scope: Scope, remembered: bool = False) -> None:
    """Authenticate and rate-limit a request for an operation under a store (one with an
    integer ``store_id`` path parameter); nothing for the others. Raises the 401, 403,
    404 or 429; else the store's settings are the request's (``current_store``).

    ``remembered``: the key and store may come from memory, to be verified by the
    request's first statement (``AsyncStorage.account``); the caller then serves the
    request again when ``AccountChanged`` is raised, and calls ``verify_account``
    before answering a request that has not used the database."""
    store_id = scope.get("path_params", {}).get("store_id")
    if not isinstance(store_id, int):
        return
    store = storage_module.current.get()
    shop = await authorize(store, scope, store_id, remembered)
    decision = await current_limiter.get().hit(shop["id"], shop["rate_limit"])
    headers = {
        "X-RateLimit-Limit": str(shop["rate_limit"]),
        "X-RateLimit-Remaining": str(decision.remaining),
    }
    scope["kanal"]["headers"] = headers
    if not decision.allowed:
        raise ApiError(
            429,
            {"message": "Too Many Attempts."},
            {"Retry-After": str(decision.retry_after)},
        )
    current_store.set(shop)
    current_region.set(shop["region"])


class AuthMiddleware:
    """Authenticate and rate-limit every operation under a store (``guard``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await guard(scope)
        await self.app(scope, receive, send)


def with_rate_limit_headers(scope: Scope, send: Send) -> Send:
    """Wrap ``send`` to add the store's X-RateLimit-* headers, once, to the response."""

    async def send_with_headers(message: Message) -> None:
        headers = scope["kanal"].get("headers")
        if message["type"] == "http.response.start" and headers:
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [
                (name.lower().encode(), value.encode())
                for name, value in headers.items()
                if name.lower().encode() not in present
            ]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers

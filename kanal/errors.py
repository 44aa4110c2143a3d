"""The two error shapes of the API and the handlers that render them.

Before validation (auth, store, malformed request): ``{"error": "<message>"}``.
Validation: 422 ``{"message": ..., "errors": {"dot.path": [...]}}`` (Laravel's shape).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("kanal")


class ApiError(Exception):
    """An error answered with a JSON body, a status and optional headers."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(body)
        self.status = status
        self.body = body
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiError:
    """An error of the pre-validation shape: ``{"error": message}``."""
    return ApiError(status, {"error": message}, headers)


def not_found(resource: str) -> ApiError:
    """404 for a record that does not exist in this store."""
    return error(404, f"{resource} not found")


class ValidationFailed(ApiError):
    """422 listing every failing field, keyed by dot path."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        messages = [m for field in errors.values() for m in field]
        summary = messages[0]
        others = len(messages) - 1
        if others:
            summary += f" (and {others} more error{'s' if others > 1 else ''})"
        super().__init__(422, {"message": summary, "errors": errors})


def _response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
    return ConnexionResponse(
        status_code=status,
        mimetype="application/json",
        content_type="application/json",
        body=json.dumps(body).encode(),
        headers=headers or {},
    )


async def api_error_handler(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ApiError)
    return _response(exc.status, exc.body, exc.headers)


# Connexion's and Starlette's own HTTP errors (unknown route, wrong method,
# unsupported media type, ...) keep their status but speak our error shape.
MESSAGES = {
    404: "Not found",
    405: "Method not allowed",
}


async def http_error_handler(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 415:
        # Connexion's detail names what the operation consumes: "... expected ['a', 'b']".
        expected = re.findall(r"'([^']+)'", str(exc.detail).rpartition("expected")[2])
        message = f"Unsupported content type; send {' or '.join(expected or ['application/json'])}."
    else:
        message = MESSAGES.get(status) or str(exc.detail or "Bad request")
    headers = dict(exc.headers or {})
    headers.pop("content-type", None)
    return _response(status, {"error": message}, headers)


async def server_error_handler(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unhandled error", exc_info=exc)
    return _response(500, {"error": "Internal server error"})

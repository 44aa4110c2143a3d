"""Checks the spec cannot state (an order that must exist), run with the spec's own.

A request body is checked against its schema and, in the same pass, against the
checks of its operation here, so one 422 lists every failing field: an unknown
order and a bad status are reported together, not one after the other. A field
the schema already refused is reported once, with the schema's message. The
checks look at whatever the body holds (it may be invalid elsewhere).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kanal.auth import current_store
from kanal.storage import current

Errors = dict[str, list[str]]
#: A check of a body: the errors of the fields it refuses.
Check = Callable[[dict[str, Any]], Awaitable[Errors]]
ORDER_MISSING = "The selected order_external_id is invalid."


async def order_exists(body: dict[str, Any]) -> Errors:
    """A shipment's order must be one of the store's orders."""
    external_id = body.get("order_external_id")
    if not isinstance(external_id, str):
        return {}  # missing or of the wrong type: the schema says so
    if await current.get().get("orders", current_store.get()["id"], external_id) is None:
        return {"order_external_id": [ORDER_MISSING]}
    return {}


#: The checks of each operation's body, by operationId.
BODY_CHECKS: dict[str, Check] = {"upsertShipment": order_exists}


async def merged(errors: Errors, check: Check | None, body: Any) -> Errors:
    """The schema's ``errors`` with the check's for the fields the schema let pass."""
    if check is None or not isinstance(body, dict):
        return errors
    found = {path: messages for path, messages in (await check(body)).items() if path not in errors}
    return {**errors, **found} if found else errors

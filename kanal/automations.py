"""Automations: which WhatsApp messages a write schedules, updates or cancels.

Every message has a dedupe key per trigger and step (``checkouts:7:recovery:1``,
``shipments:3:status:delivered``, ``orders:9:paid``) under a UNIQUE index, so a
retried or replayed request can never schedule a second copy. These functions
run inside the write's own transaction.

- Recovery (checkouts and carts): while a record is abandoned, has a
  ``recovery_url``, notifications enabled, no recovery and a contact that has
  not opted out, its steps are scheduled relative to ``abandoned_at``; a step
  already in the past is skipped, not sent late. Anything else cancels the
  pending steps, with the reason. A checkout or cart written after the order that
  completes it is recovered before this runs (``records.follow_arrival``), so it
  schedules nothing; one PATCHed back to ``abandoned`` gets its steps still ahead.
- Shipping: one message per (shipment, status) for the store's notifying statuses.
- Order confirmation: when ``financial_status`` is ``paid`` (off by default).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from typing import Any

from kanal import formats
from kanal.storage import AsyncStorage

Row = dict[str, Any]

DEFAULTS: dict[str, Any] = {
    "sender": "log",
    "recovery_steps": [60, 1440],  # minutes after abandoned_at
    "shipping_statuses": ["in_transit", "delivered", "failed", "returned"],
    "order_confirmation": False,
    "language": "en",
    "max_attempts": 5,
    "templates": {
        "recovery": "abandoned_checkout",
        "shipping": "shipping_update",
        "order_confirmation": "order_confirmation",
    },
    "whatsapp": {"base_url": None, "phone_number_id": None, "access_token": None},
    "webhook": {"url": None, "secret": None},
}


@functools.lru_cache(maxsize=1024)
def _own(text: str) -> dict[str, Any]:
    """A store's ``automations`` column, parsed (once per text: read, never changed)."""
    return json.loads(text)


def settings(store: Row) -> dict[str, Any]:
    """The store's automation settings over the defaults."""
    own = _own(store.get("automations") or "{}")
    merged = {**DEFAULTS, **own}
    for nested in ("templates", "whatsapp", "webhook"):
        merged[nested] = {**DEFAULTS[nested], **own.get(nested, {})}
    return merged


def language(customer: Row | None, config: dict[str, Any]) -> str:
    """WhatsApp's language code for a customer locale (``fr-FR`` -> ``fr_FR``)."""
    locale = (customer or {}).get("locale")
    return locale.replace("-", "_") if locale else config["language"]


def _message(
    config: dict[str, Any], trigger: str, table: str, row: Row, customer: Row | None
) -> Row:
    return {
        "trigger": trigger,
        "record_table": table,
        "record_id": row["id"],
        "record_external_id": row["external_id"],
        "contact_phone": (customer or {}).get("phone"),
        "template": config["templates"][trigger],
        "language": language(customer, config),
        "sender": config["sender"],
    }


async def recovery_blocker(storage: AsyncStorage, store_id: int, row: Row) -> str | None:
    """Why a checkout or cart may not get recovery messages now, or None."""
    phone = (row.get("customer") or {}).get("phone")
    if row["recovered_at"] is not None:
        return "recovered"
    if row["status"] != "abandoned":
        return f"status {row['status']}"
    if not row["recovery_url"]:
        return "no recovery_url"
    if not row["notifications_enabled"]:
        return "notifications disabled"
    if phone is None:
        return "no phone (erased)"
    if await storage.opted_out(store_id, phone):
        return "contact opted out"
    return None


async def sync_recovery(storage: AsyncStorage, store: Row, table: str, row: Row) -> None:
    """Bring a checkout's or cart's recovery messages in line with its state."""
    blocker = await recovery_blocker(storage, store["id"], row)
    if blocker is not None:
        await storage.cancel_messages(
            store["id"], f"cancelled: {blocker}", record=(table, row["id"]), trigger="recovery"
        )
        return
    config = settings(store)
    customer = row["customer"]
    abandoned_at = datetime.fromisoformat(row["abandoned_at"])
    now = formats.utcnow()
    for step, minutes in enumerate(config["recovery_steps"], 1):
        key = f"{table}:{row['id']}:recovery:{step}"
        try:
            due = abandoned_at + timedelta(minutes=minutes)
        except OverflowError:  # abandoned at the end of time: never due
            continue
        if due <= now:
            await storage.cancel_messages(
                store["id"], "skipped: due before it was scheduled", key=key
            )
            continue
        parameters = {
            "first_name": customer.get("first_name"),
            "recovery_url": row["recovery_url"],
            "total_price": row["total_price"],
            "currency": row["currency"],
        }
        await storage.schedule_message(
            store["id"],
            {
                **_message(config, "recovery", table, row, customer),
                "step": f"recovery_{step}",
                "dedupe_key": key,
                "parameters": parameters,
            },
            due.isoformat(),
        )


async def sync_shipping(storage: AsyncStorage, store: Row, shipment: Row, order: Row) -> None:
    """One message per (shipment, status) for the statuses the store notifies."""
    config = settings(store)
    status = shipment["status"]
    customer = order.get("customer") or {}
    if status not in config["shipping_statuses"] or not customer.get("phone"):
        return  # not a notifying status, or nobody to tell (an erased customer)
    parameters = {
        "first_name": customer.get("first_name"),
        "order": order["external_id"],
        "status": status,
        "tracking_number": shipment["tracking_number"],
        "tracking_url": shipment["tracking_url"],
        "carrier": shipment["carrier"],
    }
    await storage.schedule_message(
        store["id"],
        {
            **_message(config, "shipping", "shipments", shipment, customer),
            "step": f"shipping_{status}",
            "dedupe_key": f"shipments:{shipment['id']}:status:{status}",
            "parameters": parameters,
        },
        formats.now(),
    )


async def sync_order(storage: AsyncStorage, store: Row, order: Row) -> None:
    """The order confirmation, when the store wants one and the order is paid."""
    message = _confirmation(settings(store), order)
    if message is not None:
        await storage.schedule_message(store["id"], message, formats.now())


async def sync_orders(storage: AsyncStorage, store: Row, orders: list[Row]) -> None:
    """``sync_order`` for each of ``orders``, in order: their confirmations in one call."""
    config = settings(store)
    messages = [m for order in orders if (m := _confirmation(config, order)) is not None]
    if messages:
        await storage.schedule_messages(store["id"], messages, formats.now())


def _confirmation(config: dict[str, Any], order: Row) -> Row | None:
    """The confirmation message of an order, if it gets one."""
    customer = order.get("customer") or {}
    if not config["order_confirmation"] or order["financial_status"] != "paid":
        return None
    if not customer.get("phone"):
        return None  # nobody to tell (an erased customer)
    parameters = {
        "first_name": customer.get("first_name"),
        "order": order["external_id"],
        "total_price": order["total_price"],
        "currency": order["currency"],
    }
    return {
        **_message(config, "order_confirmation", "orders", order, customer),
        "step": "order_paid",
        "dedupe_key": f"orders:{order['id']}:paid",
        "parameters": parameters,
    }

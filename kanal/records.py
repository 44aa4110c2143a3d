"""What handlers share: the request's storage, embedded customers, checkout logic.

Checks the spec cannot state (an order that must exist) are made here, once,
and reported in the same 422 shape as the spec's own rules.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kanal import automations, checks, formats
from kanal.auth import current_store
from kanal.errors import ValidationFailed, not_found
from kanal.formats import current_region
from kanal.render import checkout_response
from kanal.storage import ABANDONED, RECOVERED, AsyncStorage, current, customer_fields

Body = dict[str, Any]
Response = tuple[Body, int]


def storage() -> AsyncStorage:
    """The storage of the application serving this request."""
    return current.get()


def phone(value: str) -> str | None:
    """A phone number in E.164, read in the current store's region (None if invalid)."""
    return formats.e164(value, current_region.get())


def customer_columns(customer: Body) -> Body:
    """The columns of a record that embeds a customer (phone normalised, unknown keys
    dropped)."""
    normalised = phone(customer["phone"])
    return {
        "customer": {
            **{key: customer[key] for key in customer_fields() if key in customer},
            "phone": normalised,
        },
        "customer_external_id": customer.get("external_id"),
        "customer_phone": normalised,
    }


def basket_columns(body: Body) -> Body:
    """The columns orders, checkouts and carts share: amount, customer, items, tags."""
    return {
        "total_price": formats.money(body["total_price"]),
        "currency": body.get("currency"),
        **customer_columns(body["customer"]),
        "line_items": body.get("line_items"),
        "tags": body.get("tags") or [],
        "metadata": body.get("metadata"),
    }


def changes(body: Body) -> Body:
    """A PATCH body as column changes (the spec admits only mutable fields)."""
    out = dict(body)
    if "tags" in out and out["tags"] is None:
        out["tags"] = []
    return out


async def upsert_linked(
    table: str, store_id: int, record: Body, key: Body | None = None
) -> tuple[Body, bool]:
    """Upsert a record that carries a phone, refresh its contact and attribute the
    recovery of an abandoned checkout or cart, whichever side arrives last: an order
    recovers one written before it, a checkout or cart is recovered by an order written
    before it (``follow_arrival``). One transaction."""
    store, shop = storage(), current_store.get()
    confirms = automations.settings(shop)["order_confirmation"]
    if table == "orders" and not (confirms and record["financial_status"] == "paid"):
        # Most orders set nothing off: written by themselves (one round trip on
        # PostgreSQL), unless the phone has an open abandoned checkout or cart.
        written = await store.upsert_unless_open(table, store_id, record, key=key)
        if written is not None:
            return written
    async with store.transaction():
        # The upsert, the contact and (for an order) whether its phone has an open
        # abandoned checkout or cart: one storage call (one round trip on PostgreSQL).
        row, created, has_open = await store.upsert_and_touch(
            table, store_id, record, key=key, open_check=table == "orders"
        )
        if table in ABANDONED:
            row = await follow_arrival(store, table, row)
            await automations.sync_recovery(store, shop, table, row)
        # What ``sets_off`` decides for it: an open abandoned one, or a paid order
        # when the store confirms orders.
        if table == "orders" and (has_open or (confirms and row["financial_status"] == "paid")):
            await follow_order(store, shop, row)
    return row, created


def window_start(moment: str, days: int | None = None) -> str:
    """The start of the attribution window that ends at ``moment``."""
    days = current_store.get()["attribution_days"] if days is None else days
    parsed = datetime.fromisoformat(moment)
    try:
        return (parsed - timedelta(days=days)).isoformat()
    except OverflowError:  # found by Schemathesis: placed_at 0001-01-01
        return datetime.min.replace(tzinfo=UTC).isoformat()


def window_end(moment: str, days: int | None = None) -> str:
    """The end of the attribution window that starts at ``moment`` (an ``abandoned_at``)."""
    days = current_store.get()["attribution_days"] if days is None else days
    parsed = datetime.fromisoformat(moment)
    try:
        return (parsed + timedelta(days=days)).isoformat()
    except OverflowError:  # abandoned_at 9999-12-31: the window runs to the end of time
        return datetime.max.replace(tzinfo=UTC).isoformat()


async def follow_arrival(store: AsyncStorage, table: str, row: Body) -> Body:
    """A checkout or cart just POSTed, recovered by the order that completes it when
    that order came first (``Storage.attribute_arrival``); the row as it now stands.
    A replaying POST keeps the status and recovery it has: it never undoes one."""
    if await store.attribute_arrival(table, row, window_end(row["abandoned_at"])) is None:
        return row
    return await store.get_by_id(table, row["id"])


#: The columns of an order ``follow_order`` reads (``follow_orders`` reads no others).
FOLLOWED = (
    "id",
    "store_id",
    "external_id",
    "placed_at",
    "financial_status",
    "total_price",
    "currency",
    "customer",
    "customer_phone",
)


async def follow_order(store: AsyncStorage, shop: Body, order: Body) -> None:
    """What writing an order sets off: the recovery of the abandoned checkout or cart
    it completes (attribution), and the order confirmation."""
    await _attribute(store, shop, order)
    await automations.sync_order(store, shop, order)


async def _attribute(store: AsyncStorage, shop: Body, order: Body) -> None:
    """The attribution half of ``follow_order``."""
    start = window_start(order["placed_at"])
    recovered = await store.attribute(order["store_id"], order, start)
    if recovered is not None:
        row = await store.get_by_id(recovered["table"], recovered["id"])
        await automations.sync_recovery(store, shop, recovered["table"], row)


#: The columns of an order that ``sets_off`` and ``follow_orders`` are given (they read
#: the others from the database, for the orders that set something off).
SETTING_OFF = ("external_id", "customer_phone", "financial_status")


async def sets_off(store: AsyncStorage, shop: Body, records: list[Body]) -> list[Body]:
    """Of orders just written, those ``follow_order`` may act on: a phone with an open
    abandoned checkout or cart, or a paid order when the store confirms orders.
    (For the others it would find nothing to do.)"""
    return (await _setting_off(store, shop, records))[0]


async def _setting_off(
    store: AsyncStorage, shop: Body, records: list[Body]
) -> tuple[list[Body], set[str]]:
    """``sets_off``, and the phones among them with an open abandoned checkout or cart."""
    confirms = automations.settings(shop)["order_confirmation"]
    open_phones = await store.phones_with_open_abandoned(
        shop["id"], {r["customer_phone"] for r in records if r["customer_phone"]}
    )
    chosen = [
        r
        for r in records
        if r["customer_phone"] in open_phones or (confirms and r["financial_status"] == "paid")
    ]
    return chosen, open_phones


async def follow_orders(store: AsyncStorage, shop: Body, records: list[Body]) -> None:
    """``follow_order`` for each of the orders just written as one set (an external_id
    once), as if one after the other, with set queries: one for the phones with an
    open abandoned checkout or cart, one for the rows of the orders that set anything
    off, the attribution of each of those with such a phone (they take the checkouts
    in turn), then their confirmations in one statement. (Attributions schedule
    nothing and confirmations recover nothing: neither order of the two changes what
    the other does.) ``records``: at least each order's ``SETTING_OFF`` columns."""
    chosen, open_phones = await _setting_off(store, shop, records)
    if not chosen:
        return
    orders = await store.get_many(
        "orders", shop["id"], [r["external_id"] for r in chosen], FOLLOWED
    )
    for order in orders:
        if order["customer_phone"] in open_phones:
            await _attribute(store, shop, order)
    await automations.sync_orders(store, shop, orders)


async def require_order(store_id: int, external_id: str) -> Body:
    """The order a shipment points to; a 422 on ``order_external_id`` if missing."""
    order = await storage().get("orders", store_id, external_id)
    if order is None:
        raise ValidationFailed({"order_external_id": [checks.ORDER_MISSING]})
    return order


async def upsert_abandoned(table: str, store_id: int, body: Body) -> Response:
    """POST /checkouts and /carts: replace everything but the lifecycle status."""
    row, created = await upsert_linked(
        table,
        store_id,
        {
            "external_id": body["external_id"],
            "abandoned_at": formats.utc_timestamp(body["abandoned_at"]),
            "recovery_url": body.get("recovery_url"),
            **basket_columns(body),
        },
    )
    return checkout_response(row), 201 if created else 200


async def update_abandoned(
    table: str, label: str, store_id: int, external_id: str, body: Body
) -> Response:
    """PATCH /checkouts/{id} and /carts/{id}, following the spec's ``CheckoutStatus``
    table: entering ``recovered`` or ``completed`` stamps ``recovered_at`` once (moving
    between the two keeps it, and the order that recovered it); ``active``, ``abandoned``
    or ``expired`` clear ``recovered_at`` and ``recovered_order_external_id``: not
    recovered. A PATCH never attributes: its status is the shop's word."""
    status = body.get("status")
    columns, unless_set = changes(body), None
    if status in RECOVERED:
        unless_set = {"recovered_at": formats.now()}
    elif status is not None:
        columns.update(recovered_at=None, recovered_order_external_id=None)
    store = storage()
    async with store.transaction():
        row = await store.patch(table, store_id, external_id, columns, unless_set)
        if row is None:
            raise not_found(label)
        await automations.sync_recovery(store, current_store.get(), table, row)
    return checkout_response(row), 200

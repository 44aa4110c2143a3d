"""Reads: retrieve, list (filters and cursor pages, as Shopify does), count;
contacts with their totals; the recovery lifecycle and its figures.

Every read is scoped to the request's store. The recovery status of a checkout
or cart is computed in SQL at read time from the store's attribution window,
so retrieve, list filters and counts always agree.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kanal import formats
from kanal.errors import error, not_found
from kanal.records import Body, storage, window_start
from kanal.render import (
    checkout_record,
    customer_record,
    import_error_record,
    import_record,
    message_record,
    order_record,
    shipment_record,
)
from kanal.storage import ABANDONED, RECOVERED, AsyncStorage, Condition, Where, in_lists

Render = Callable[[Body], Body]
NO_CURRENCY = "XXX"  # ISO 4217: "no currency"


def recovery_cutoff() -> str:
    """Where ``recovery_status`` turns ``not_recovered`` for the current store, now: the
    start of the attribution window that ends now (``Storage.RECOVERY_STATUS``)."""
    return window_start(formats.now())


def totals(pairs: list[tuple[str | None, str]]) -> dict[str, str]:
    """Exact sums of money strings per currency."""
    sums: dict[str, Decimal] = {}
    for currency, amount in pairs:
        key = currency or NO_CURRENCY
        sums[key] = sums.get(key, Decimal(0)) + Decimal(amount)
    return {currency: str(total.quantize(formats.CENT)) for currency, total in sorted(sums.items())}


async def contact_records(store: AsyncStorage, store_id: int, rows: list[Body]) -> list[Body]:
    """Contacts with their linked customers and per-currency totals (four queries a page)."""
    phones = [row["phone"] for row in rows]
    if not phones:
        return []
    customers = await store.customer_ids(store_id, phones)
    money = {t: await store.totals(t, store_id, phones) for t in ("orders", *ABANDONED)}
    return [
        {
            "id": row["id"],
            "store_id": row["store_id"],
            "phone": row["phone"],
            "first_name": row["first_name"],
            "last_name": row["last_name"],
            "locale": row["locale"],
            "customer_external_ids": customers[row["phone"]],
            "orders_count": len(money["orders"][row["phone"]]),
            "orders_total": totals(money["orders"][row["phone"]]),
            "checkouts_count": len(money["checkouts"][row["phone"]]),
            "checkouts_total": totals(money["checkouts"][row["phone"]]),
            "carts_count": len(money["carts"][row["phone"]]),
            "carts_total": totals(money["carts"][row["phone"]]),
            "opted_out": bool(row["opted_out"]),
            "last_activity_at": row["last_activity_at"],
            "created_at": row["inserted_at"],
            "updated_at": row["updated_at"],
        }
        for row in rows
    ]


@dataclass(frozen=True)
class Resource:
    """How one resource is read: its table, what created_at means, the columns its
    filters (query parameters of the same name) compare with."""

    name: str
    table: str
    label: str
    created: str
    filters: tuple[str, ...] = ()
    recovery: bool = False
    render: Render | None = None
    #: The key of a page's records in the list's body (default: ``name``).
    key: str | None = None

    def cutoff(self) -> str | None:
        return recovery_cutoff() if self.recovery else None

    def where(self, filters: dict[str, Any]) -> list[Condition]:
        """The conditions of a list's or count's query parameters (bounds inclusive)."""
        bounds = {
            "created_at_min": (self.created, ">="),
            "created_at_max": (self.created, "<="),
            "updated_at_min": ("updated_at", ">="),
            "updated_at_max": ("updated_at", "<="),
            "since_id": ("id", ">"),
            **{name: (name, "=") for name in self.filters},
        }
        where = []
        for name, value in filters.items():
            if name.endswith(("_min", "_max")):
                value = formats.utc_timestamp(value)
            column, operator = bounds[name]
            where.append((column, operator, value))
        return where

    async def rows(
        self, store: AsyncStorage, store_id: int, where: Where, **page: Any
    ) -> list[Body]:
        rows = await store.select(self.table, store_id, where, cutoff=self.cutoff(), **page)
        return await self.rendered(store, store_id, rows)

    async def rendered(self, store: AsyncStorage, store_id: int, rows: list[Body]) -> list[Body]:
        """Rows of the table as the API reads them."""
        if self.name == "contacts":
            return await contact_records(store, store_id, rows)
        if self.recovery:
            sent = await store.notification_state(self.table, [row["id"] for row in rows])
            rows = [{**row, "notifications": sent[row["id"]]} for row in rows]
        assert self.render is not None
        return [self.render(row) for row in rows]


RESOURCES = {
    "orders": Resource(
        "orders",
        "orders",
        "Order",
        "placed_at",
        ("financial_status", "fulfillment_status"),
        render=order_record,
    ),
    "checkouts": Resource(
        "checkouts",
        "checkouts",
        "Checkout",
        "abandoned_at",
        ("status", "recovery_status"),
        recovery=True,
        render=checkout_record,
    ),
    "carts": Resource(
        "carts",
        "carts",
        "Cart",
        "abandoned_at",
        ("status", "recovery_status"),
        recovery=True,
        render=checkout_record,
    ),
    "customers": Resource(
        "customers",
        "customers",
        "Customer",
        "inserted_at",
        render=customer_record,
    ),
    "shipments": Resource(
        "shipments",
        "shipments",
        "Shipment",
        "inserted_at",
        ("status",),
        render=shipment_record,
    ),
    "contacts": Resource("contacts", "contacts", "Contact", "inserted_at"),
    "messages": Resource(
        "messages",
        "messages",
        "Message",
        "inserted_at",
        ("state", "trigger"),
        render=message_record,
    ),
    "imports": Resource(
        "imports",
        "imports",
        "Import",
        "inserted_at",
        ("state", "resource"),
        render=import_record,
    ),
    # An import's invalid records: a list of one import (``scope``), in upload order.
    "import_errors": Resource(
        "import_errors",
        "import_errors",
        "Import",
        "id",
        ("import_id",),
        render=import_error_record,
        key="errors",
    ),
}


# -- cursors ---------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def encode_cursor(store: AsyncStorage, payload: dict[str, Any]) -> str:
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    signature = hmac.new(await store.secret(), data, hashlib.sha256).digest()[:16]
    return f"{_b64(data)}.{_b64(signature)}"


async def decode_cursor(
    store: AsyncStorage, token: str, resource: str, store_id: int
) -> dict[str, Any]:
    """A cursor this server signed for this resource and store, or a 400."""
    invalid = error(400, "Invalid page_info: use the cursors of the Link header as they are.")
    try:
        data_part, signature_part = token.split(".")
        data, signature = _unb64(data_part), _unb64(signature_part)
    except (ValueError, binascii.Error):
        raise invalid from None
    expected = hmac.new(await store.secret(), data, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(signature, expected):
        raise invalid
    cursor = json.loads(data)
    if cursor.get("r") != resource or cursor.get("s") != store_id:
        raise invalid
    return cursor


# -- operations -------------------------------------------------------------


async def retrieve(name: str, store_id: int, *alternatives: Where) -> Body:
    """The first record of the store matching one of ``alternatives``, in order, or
    a 404."""
    resource = RESOURCES[name]
    for where in alternatives:
        found = await resource.rows(storage(), store_id, where, limit=1)
        if found:
            return found[0]
    raise not_found(resource.label)


async def by_external_id(name: str, store_id: int, external_id: str) -> Body:
    return await retrieve(name, store_id, [("external_id", "=", external_id)])


async def listing(
    name: str,
    store_id: int,
    params: dict[str, Any],
    *,
    scope: dict[str, Any] | None = None,
    path: str | None = None,
) -> tuple[Body, int, dict[str, str]]:
    """One page of a list, with Shopify's Link header for the neighbouring pages.
    ``scope``: filters the path fixes (an import's errors: its ``import_id``), kept in
    the cursors, which serve that path (``path``, default ``name``) alone."""
    resource, store = RESOURCES[name], storage()
    limit = params.pop("limit", None) or 50
    token = params.pop("page_info", None)
    filters = {key: value for key, value in params.items() if value is not None}
    direction, boundary = "next", None
    if token is not None:
        if filters:
            raise error(400, "page_info cannot be combined with filters; only limit may change.")
        cursor = await decode_cursor(store, token, name, store_id)
        filters, direction, boundary = cursor["f"], cursor["d"], cursor["b"]
        if any(filters.get(key) != value for key, value in (scope or {}).items()):
            raise error(400, "Invalid page_info: use the cursors of the Link header as they are.")
    else:
        filters.update(scope or {})
    where = resource.where(filters)
    page = {"after": boundary} if direction == "next" else {"before": boundary}
    rows = await store.select(
        resource.table, store_id, where, cutoff=resource.cutoff(), limit=limit, **page
    )
    records = await resource.rendered(store, store_id, rows)
    links = []
    if rows:
        first, last = rows[0]["id"], rows[-1]["id"]
        for rel, key, edge in (("previous", "before", first), ("next", "after", last)):
            more = await store.select(
                resource.table, store_id, where, cutoff=resource.cutoff(), limit=1, **{key: edge}
            )
            if more:
                token = await encode_cursor(
                    store,
                    {
                        "r": name,
                        "s": store_id,
                        "f": filters,
                        "d": "prev" if key == "before" else "next",
                        "b": edge,
                    },
                )
                links.append(
                    f"</api/v1/stores/{store_id}/{path or name}?limit={limit}"
                    f'&page_info={token}>; rel="{rel}"'
                )
    headers = {"Link": ", ".join(links)} if links else {}
    return {resource.key or name: records}, 200, headers


async def counting(name: str, store_id: int, params: dict[str, Any]) -> Body:
    resource = RESOURCES[name]
    filters = {key: value for key, value in params.items() if value is not None}
    count = await storage().count(
        resource.table, store_id, resource.where(filters), cutoff=resource.cutoff()
    )
    return {"count": count}


async def recovery_stats(store_id: int, start: str, end: str) -> Body:
    """The figures of the checkouts and carts abandoned in [start, end]: those that were
    abandoned (every status but ``active``), of them the recovered ones (``recovered``,
    ``completed``); the revenue of the orders that recovered them (each order once, in
    its currency) and the recovered ones' own totals."""
    lo, hi = formats.utc_timestamp(start), formats.utc_timestamp(end)  # to < from: empty period
    where = [("abandoned_at", ">=", lo), ("abandoned_at", "<=", hi), ("status", "!=", "active")]
    store = storage()
    rows = [row for table in ABANDONED for row in await store.select(table, store_id, where)]
    recovered = [row for row in rows if row["status"] in RECOVERED]
    orders = sorted({r["recovered_order_external_id"] for r in recovered} - {None})
    revenue = [
        (order["currency"], order["total_price"])
        for chunk, _ in in_lists(orders)
        for order in await store.select("orders", store_id, [("external_id", "in", chunk)])
    ]
    return {
        "from": lo,
        "to": hi,
        "abandoned": len(rows),
        "recovered": len(recovered),
        "recovery_rate": round(len(recovered) / len(rows), 4) if rows else 0,
        "recovered_revenue": totals(revenue),
        "recovered_checkout_value": totals([(r["currency"], r["total_price"]) for r in recovered]),
    }

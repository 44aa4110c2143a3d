"""How records read in the API: one renderer per resource, and the write responses
(the seed pages' shapes) as subsets of them, so a field is mapped in one place."""

from __future__ import annotations

from typing import Any

Body = dict[str, Any]


def order_record(row: Body) -> Body:
    return {
        "id": row["id"],
        "external_id": row["external_id"],
        "store_id": row["store_id"],
        "total_price": row["total_price"],
        "currency": row["currency"],
        "financial_status": row["financial_status"],
        "fulfillment_status": row["fulfillment_status"],
        "customer": row["customer"],
        "line_items": row["line_items"],
        "tags": row["tags"] or [],
        "metadata": row["metadata"],
        "created_at": row["placed_at"],
        "updated_at": row["updated_at"],
    }


def checkout_fields(row: Body) -> Body:
    """What a checkout or cart row holds, as the API names it."""
    return {
        "id": row["id"],
        "external_id": row["external_id"],
        "store_id": row["store_id"],
        "status": row["status"],
        "total_price": row["total_price"],
        "currency": row["currency"],
        "recovery_url": row["recovery_url"],
        "customer": row["customer"],
        "line_items": row["line_items"],
        "tags": row["tags"] or [],
        "metadata": row["metadata"],
        "created_at": row["abandoned_at"],
        "updated_at": row["updated_at"],
    }


def checkout_record(row: Body) -> Body:
    """A checkout or cart as read: its fields, recovery state and notifications."""
    return {
        **checkout_fields(row),
        "recovery_status": row["recovery_status"],
        "recovered_at": row["recovered_at"],
        "recovered_order_external_id": row["recovered_order_external_id"],
        "notifications_enabled": bool(row["notifications_enabled"]),
        **notification_fields(row["notifications"]),
    }


def notification_fields(messages: list[Body]) -> Body:
    """SureCart's notification fields, from the record's recovery messages."""
    states = {message["state"] for message in messages}
    status = (
        "sent"
        if "sent" in states
        else "scheduled"
        if states & {"scheduled", "sending"}
        else "not_scheduled"
    )
    return {
        "notification_status": status,
        "notifications_scheduled_at": [message["scheduled_at"] for message in messages],
    }


def message_record(row: Body) -> Body:
    return {
        "id": row["id"],
        "store_id": row["store_id"],
        "trigger": row["trigger"],
        "step": row["step"],
        "record_type": row["record_table"],
        "record_external_id": row["record_external_id"],
        "contact_phone": row["contact_phone"],
        "template": row["template"],
        "language": row["language"],
        "parameters": row["parameters"],
        "sender": row["sender"],
        "state": row["state"],
        "scheduled_at": row["scheduled_at"],
        "next_attempt_at": row["next_attempt_at"],
        "attempts": row["attempts"],
        "last_error": row["last_error"],
        "provider_id": row["provider_id"],
        "sent_at": row["sent_at"],
        "cancelled_reason": row["cancelled_reason"],
        "created_at": row["inserted_at"],
        "updated_at": row["updated_at"],
    }


def customer_record(row: Body) -> Body:
    return {
        "id": row["id"],
        "external_id": row["external_id"],
        "store_id": row["store_id"],
        "phone": row["phone"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "email": row["email"],
        "locale": row["locale"],
        "tags": row["tags"] or [],
        "lifetime_value": row["lifetime_value"],
        "orders_count": row["orders_count"],
        "created_at": row["inserted_at"],
        "updated_at": row["updated_at"],
    }


def shipment_record(row: Body) -> Body:
    return {
        "id": row["id"],
        "external_id": row["external_id"],
        "store_id": row["store_id"],
        "order_id": row["order_id"],
        "order_external_id": row["order_external_id"],
        "tracking_number": row["tracking_number"],
        "tracking_url": row["tracking_url"],
        "carrier": row["carrier"],
        "status": row["status"],
        "metadata": row["metadata"],
        "created_at": row["inserted_at"],
        "updated_at": row["updated_at"],
    }


def _pick(body: Body, keys: tuple[str, ...]) -> Body:
    return {key: body[key] for key in keys}


def order_response(row: Body) -> Body:
    """The write response of orders (seeds/002)."""
    return _pick(
        order_record(row),
        (
            "external_id",
            "store_id",
            "total_price",
            "currency",
            "financial_status",
            "fulfillment_status",
            "tags",
            "created_at",
        ),
    )


def checkout_response(row: Body) -> Body:
    """The write response of checkouts and carts (seeds/000)."""
    return _pick(
        checkout_fields(row),
        (
            "external_id",
            "store_id",
            "status",
            "total_price",
            "currency",
            "recovery_url",
            "tags",
            "created_at",
        ),
    )


def customer_response(row: Body) -> Body:
    """The write response of customers (kanal-reference.md: no phone)."""
    return _pick(
        customer_record(row),
        (
            "external_id",
            "store_id",
            "first_name",
            "last_name",
            "email",
            "locale",
            "tags",
            "lifetime_value",
            "orders_count",
        ),
    )


def shipment_response(row: Body) -> Body:
    """The write response of shipments (kanal-reference.md)."""
    return _pick(
        shipment_record(row),
        (
            "external_id",
            "store_id",
            "order_id",
            "tracking_number",
            "tracking_url",
            "carrier",
            "status",
        ),
    )


def import_record(row: Body) -> Body:
    return {
        "id": row["id"],
        "store_id": row["store_id"],
        "resource": row["resource"],
        "state": row["state"],
        "total": row["total"],
        "processed": row["processed"],
        "created": row["created"],
        "updated": row["updated"],
        "invalid": row["invalid"],
        "failure": row["failure"],
        "created_at": row["inserted_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "updated_at": row["updated_at"],
    }


def import_error_record(row: Body) -> Body:
    return {"line": row["line"], "errors": row["errors"]}

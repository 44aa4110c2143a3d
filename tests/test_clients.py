"""Clients generated from openapi.yaml work first time, with no hand edit.

Python: openapi-python-client, zero warnings, drives the live server along the
seed recipe with typed results. TypeScript: openapi-typescript types, a short
openapi-fetch example that type-checks with `tsc --noEmit`, and a call with a
wrong field type that must not compile.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, Server

VENV_BIN = Path(sys.executable).parent
NODE_BIN = ROOT / "node_modules" / ".bin"


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def python_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    out = tmp_path_factory.mktemp("python-client") / "kanal-client"
    result = run(
        VENV_BIN / "openapi-python-client",
        "generate",
        "--path",
        "openapi.yaml",
        "--config",
        "clients/python/config.yaml",
        "--custom-template-path",
        "clients/python/templates",
        "--output-path",
        out,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("kanal_client")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m.startswith("kanal_client")]:
            del sys.modules[name]


def test_generated_python_client_drives_the_recipe(
    python_client: Any, server: Server, keys: dict[str, Any]
) -> None:
    from kanal_client import AuthenticatedClient
    from kanal_client.api.carts import update_cart, upsert_cart
    from kanal_client.api.checkouts import update_checkout, upsert_checkout
    from kanal_client.api.customers import delete_customer, upsert_customer
    from kanal_client.api.health import get_health
    from kanal_client.api.orders import update_order, upsert_order
    from kanal_client.api.shipments import upsert_shipment
    from kanal_client.models import (
        Checkout,
        CheckoutInput,
        CheckoutPatch,
        CheckoutStatus,
        Customer,
        CustomerInput,
        LineItem,
        Metadata,
        Order,
        OrderInput,
        OrderPatch,
        Shipment,
        ShipmentInput,
        ShipmentStatus,
        ValidationError,
    )

    client = AuthenticatedClient(
        base_url=server.url, token=keys["store"], raise_on_unexpected_status=True
    )
    assert get_health.sync(client=client).status.value == "ok"
    marie = CustomerInput(
        phone="+33612345678",
        external_id="CUST-42",
        first_name="Marie",
        last_name="Durand",
        email="marie.durand@example.com",
        locale="fr",
        tags=["vip"],
        lifetime_value=1299,
        orders_count=7,
    )
    placed = OrderInput.from_dict(
        {
            "external_id": "ORDER-1001",
            "placed_at": "2026-05-18T10:00:00Z",
            "total_price": 49.90,
            "currency": "EUR",
            "financial_status": "pending",
            "fulfillment_status": "unfulfilled",
            "customer": marie.to_dict(),
            "line_items": [LineItem(title="T-shirt Bordeaux", quantity=2, price=24.95).to_dict()],
            "tags": ["web"],
            "metadata": Metadata.from_dict({"source": "custom-checkout"}).to_dict(),
        }
    )
    created = upsert_order.sync_detailed(store_id=123, client=client, body=placed)
    assert created.status_code == 201
    order = created.parsed
    assert isinstance(order, Order)
    assert order.total_price == "49.90"
    assert order.created_at == datetime(2026, 5, 18, 10, tzinfo=UTC)  # typed, not a string

    paid = update_order.sync(
        store_id=123,
        external_id="ORDER-1001",
        client=client,
        body=OrderPatch(financial_status="paid"),
    )
    assert isinstance(paid, Order) and paid.financial_status == "paid"
    assert paid.fulfillment_status == "unfulfilled"

    shipped = upsert_shipment.sync_detailed(
        store_id=123,
        client=client,
        body=ShipmentInput(
            external_id="SHIP-9001",
            order_external_id="ORDER-1001",
            tracking_number="1Z999AA10123456784",
            carrier="Colissimo",
            status=ShipmentStatus.IN_TRANSIT,
        ),
    )
    assert shipped.status_code == 201
    assert isinstance(shipped.parsed, Shipment)
    assert shipped.parsed.status is ShipmentStatus.IN_TRANSIT
    assert isinstance(shipped.parsed.order_id, int)
    unstated = upsert_shipment.sync(
        store_id=123,
        client=client,
        body=ShipmentInput(external_id="SHIP-9002", order_external_id="ORDER-1001"),
    )
    assert isinstance(unstated, Shipment) and unstated.status is None

    abandoned = {
        "abandoned_at": "2026-05-18T09:40:00Z",
        "total_price": 49.90,
        "currency": "EUR",
        "customer": {"phone": "+33612345678", "first_name": "Marie"},
    }
    checkout = upsert_checkout.sync(
        store_id=123,
        client=client,
        body=CheckoutInput.from_dict(
            {
                **abandoned,
                "external_id": "CHECKOUT-7700",
                "recovery_url": "https://shop.example.com/checkout/recover/7700",
            }
        ),
    )
    # ORDER-1001 (placed after it was abandoned, same phone) recovers it as it arrives.
    assert isinstance(checkout, Checkout) and checkout.status is CheckoutStatus.RECOVERED
    cart = upsert_cart.sync(
        store_id=123,
        client=client,
        body=CheckoutInput.from_dict({**abandoned, "external_id": "CART-7700"}),
    )
    assert isinstance(cart, Checkout) and cart.recovery_url is None
    recovered = update_checkout.sync(
        store_id=123,
        external_id="CHECKOUT-7700",
        client=client,
        body=CheckoutPatch(status=CheckoutStatus.RECOVERED),
    )
    assert isinstance(recovered, Checkout) and recovered.status is CheckoutStatus.RECOVERED
    expired = update_cart.sync(
        store_id=123,
        external_id="CART-7700",
        client=client,
        body=CheckoutPatch(status=CheckoutStatus.EXPIRED),
    )
    assert isinstance(expired, Checkout) and expired.status is CheckoutStatus.EXPIRED

    customer = upsert_customer.sync(store_id=123, client=client, body=marie)
    assert isinstance(customer, Customer)
    assert (customer.external_id, customer.tags, customer.lifetime_value) == (
        "CUST-42",
        ["vip"],
        1299,
    )
    erased = delete_customer.sync_detailed(store_id=123, external_id="CUST-42", client=client)
    assert erased.status_code == 204

    invalid = upsert_customer.sync(
        store_id=123, client=client, body=CustomerInput(phone="not a phone")
    )
    assert isinstance(invalid, ValidationError)
    assert invalid.errors.additional_properties == {
        "phone": ["The phone field must be a valid phone number."]
    }


def test_generated_python_client_starts_follows_and_cancels_an_import(
    python_client: Any, server: Server, keys: dict[str, Any]
) -> None:
    """POST /imports takes two media types; the generated client sends the JSON array.
    (The server here runs no worker: the job waits, queued, until it is cancelled.)"""
    from kanal_client import AuthenticatedClient
    from kanal_client.api.imports import (
        cancel_import,
        create_import,
        get_import,
        list_import_errors,
        list_imports,
    )
    from kanal_client.models import Error, Import, ImportResource, ImportState

    client = AuthenticatedClient(
        base_url=server.url, token=keys["store"], raise_on_unexpected_status=True
    )
    records = [
        {
            "external_id": f"ORDER-{n}",
            "placed_at": "2026-05-18T10:00:00Z",
            "total_price": 10 + n,
            "customer": {"phone": "+33612345678"},
        }
        for n in range(3)
    ]
    started = create_import.sync_detailed(
        store_id=123, client=client, body=records, resource=ImportResource.ORDERS
    )
    assert started.status_code == 202
    job = started.parsed
    assert isinstance(job, Import) and job.state is ImportState.QUEUED and job.total == 3
    assert started.headers["location"] == f"/api/v1/stores/123/imports/{job.id}"
    assert job.started_at is None and job.created_at.tzinfo is not None  # typed
    found = get_import.sync(store_id=123, import_id=job.id, client=client)
    assert isinstance(found, Import) and found.id == job.id
    listed = list_imports.sync(store_id=123, client=client, state=ImportState.QUEUED)
    assert [item.id for item in listed.imports] == [job.id]
    cancelled = cancel_import.sync(store_id=123, import_id=job.id, client=client)
    assert isinstance(cancelled, Import) and cancelled.state is ImportState.CANCELLED
    again = cancel_import.sync_detailed(store_id=123, import_id=job.id, client=client)
    assert again.status_code == 409 and isinstance(again.parsed, Error)
    errors = list_import_errors.sync(store_id=123, import_id=job.id, client=client)
    assert errors.errors == []


TS_FILES = ROOT / "clients" / "typescript"


@pytest.fixture(scope="module")
def typescript(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("typescript")
    for source in TS_FILES.iterdir():
        if source.suffix in (".ts", ".json"):
            shutil.copy(source, work / source.name)
    (work / "node_modules").symlink_to(ROOT / "node_modules")
    result = run(NODE_BIN / "openapi-typescript", ROOT / "openapi.yaml", "-o", work / "schema.d.ts")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warn" not in (result.stdout + result.stderr).lower(), result.stderr
    return work


def tsc(work: Path) -> subprocess.CompletedProcess[str]:
    return run(NODE_BIN / "tsc", "--noEmit", "-p", work / "tsconfig.json", cwd=work)


def test_typescript_example_type_checks(typescript: Path) -> None:
    result = tsc(typescript)
    assert result.returncode == 0, result.stdout + result.stderr


def test_typescript_wrong_field_type_does_not_compile(typescript: Path) -> None:
    config = (typescript / "tsconfig.json").read_text()
    (typescript / "tsconfig.json").write_text(config.replace('"example.ts"', '"wrong-type.ts"'))
    try:
        result = tsc(typescript)
    finally:
        (typescript / "tsconfig.json").write_text(config)
    assert result.returncode != 0
    lines = (TS_FILES / "wrong-type.ts").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "total_price:" in text)
    assert result.stdout.strip().splitlines() == [
        f"wrong-type.ts({line},5): error TS2322: Type 'string' is not assignable to type 'number'."
    ]

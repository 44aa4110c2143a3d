"""A lifecycle that never contradicts itself (issue 12).

The state machine of a checkout's or cart's ``status`` and what follows from it
(``recovered_at``, ``recovered_order_external_id``, ``recovery_status``, recovery
messages, the figures), the attribution of a checkout or cart written after the
order that completes it, the tie rule between candidates, and the recovered revenue.
The rules are written in openapi.yaml (``CheckoutStatus``, ``RecoveryStats``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kanal.storage import Storage

from .conftest import STORE, Api
from .test_recovery import PHONE, abandon, iso, place

OTHER_PHONE = "+33699999999"
T0 = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
STATUSES = ("active", "abandoned", "recovered", "completed", "expired")
#: status -> (recovery_status inside the window, recovered_at set, recovery messages pending)
MACHINE = {
    "abandoned": ("abandoned", False, True),
    "active": ("not_recovered", False, False),
    "recovered": ("recovered", True, False),
    "completed": ("recovered", True, False),
    "expired": ("not_recovered", False, False),
}


def patch(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = api.patch(path, body)
    assert response.status_code == 200, response.text
    return response.json()


def read(api: Api, path: str) -> dict[str, Any]:
    response = api.client.get(api.url(path), headers=api.headers())
    assert response.status_code == 200, response.text
    return response.json()


def pending(api: Api, resource: str, name: str) -> list[str]:
    """The recovery steps still scheduled for a checkout or cart."""
    listed = read(api, "messages?trigger=recovery&state=scheduled&limit=250")["messages"]
    return [
        m["step"] for m in listed if (m["record_type"], m["record_external_id"]) == (resource, name)
    ]


def lifecycle(api: Api, resource: str, name: str) -> tuple[Any, ...]:
    record = read(api, f"{resource}/{name}")
    return (
        record["status"],
        record["recovery_status"],
        record["recovered_at"],
        record["recovered_order_external_id"],
    )


# -- 1. the state machine ---------------------------------------------------


@pytest.mark.parametrize("resource", ["checkouts", "carts"])
@pytest.mark.parametrize("before", STATUSES)
@pytest.mark.parametrize("after", STATUSES)
def test_every_transition_follows_the_state_machine(
    api: Api, resource: str, before: str, after: str
) -> None:
    """Any status may follow any other, and recovered_at, recovery_status and the
    recovery messages always agree with the status reached."""
    now = datetime.now(UTC)
    abandon(api, resource, "X", now - timedelta(minutes=5), expect=201)  # steps still ahead
    patch(api, f"{resource}/X", {"status": before})
    stamp = read(api, f"{resource}/X")["recovered_at"]
    answered = patch(api, f"{resource}/X", {"status": after})
    assert answered["status"] == after
    status, recovery_status, recovered_at, order = lifecycle(api, resource, "X")
    expected_recovery, recovered, messages = MACHINE[after]
    assert (status, recovery_status, order) == (after, expected_recovery, None)
    assert (recovered_at is not None) == recovered
    if recovered and MACHINE[before][1]:
        assert recovered_at == stamp  # stamped once: kept between recovered and completed
    assert bool(pending(api, resource, "X")) == messages


@pytest.mark.parametrize("resource", ["checkouts", "carts"])
def test_completed_then_abandoned_is_not_recovered(api: Api, resource: str) -> None:
    """The issue's case: it read status abandoned with recovery_status recovered."""
    abandon(api, resource, "X", T0)
    patch(api, f"{resource}/X", {"status": "completed"})
    assert lifecycle(api, resource, "X")[:2] == ("completed", "recovered")
    patch(api, f"{resource}/X", {"status": "abandoned"})
    assert lifecycle(api, resource, "X") == ("abandoned", "not_recovered", None, None)
    patch(api, f"{resource}/X", {"status": "recovered"})
    assert lifecycle(api, resource, "X")[:2] == ("recovered", "recovered")


def test_expired_reads_not_recovered_even_inside_the_window(api: Api) -> None:
    abandon(api, "checkouts", "X", datetime.now(UTC) - timedelta(hours=1))
    assert lifecycle(api, "checkouts", "X")[:2] == ("abandoned", "abandoned")
    patch(api, "checkouts/X", {"status": "expired"})
    assert lifecycle(api, "checkouts", "X")[:2] == ("expired", "not_recovered")
    assert read(api, "checkouts/count?recovery_status=abandoned") == {"count": 0}
    assert read(api, "checkouts/count?recovery_status=not_recovered") == {"count": 1}


def test_active_is_not_awaiting_recovery(api: Api) -> None:
    """active: no messages, no attribution, recovery_status not_recovered, not counted."""
    now = datetime.now(UTC)
    abandon(api, "checkouts", "X", now - timedelta(minutes=30))
    assert pending(api, "checkouts", "X") == ["recovery_1", "recovery_2"]
    patch(api, "checkouts/X", {"status": "active"})
    assert pending(api, "checkouts", "X") == []
    place(api, "ORDER-1", now - timedelta(minutes=1))
    assert lifecycle(api, "checkouts", "X") == ("active", "not_recovered", None, None)


def test_an_order_recovery_undone_by_patch_frees_the_order(api: Api) -> None:
    """PATCH back to abandoned clears recovered_at and the order; the order, having
    recovered nothing now, recovers a cart written after."""
    abandon(api, "checkouts", "CHK-1", T0)
    place(api, "ORDER-1", T0 + timedelta(hours=2))
    assert lifecycle(api, "checkouts", "CHK-1")[3] == "ORDER-1"
    patch(api, "checkouts/CHK-1", {"status": "abandoned"})
    assert lifecycle(api, "checkouts", "CHK-1") == ("abandoned", "not_recovered", None, None)
    late = abandon(api, "carts", "CART-1", T0 + timedelta(hours=1))
    assert late["status"] == "recovered"
    assert lifecycle(api, "carts", "CART-1")[3] == "ORDER-1"


def test_patching_back_to_abandoned_schedules_the_steps_still_ahead(api: Api) -> None:
    now = datetime.now(UTC)
    abandon(api, "carts", "X", now - timedelta(minutes=90))  # step 1 is past, step 2 ahead
    patch(api, "carts/X", {"status": "recovered"})
    assert pending(api, "carts", "X") == []
    patch(api, "carts/X", {"status": "abandoned"})
    assert pending(api, "carts", "X") == ["recovery_2"]


def test_stats_count_only_checkouts_and_carts_that_were_abandoned(api: Api) -> None:
    for name, status in [
        ("A", "abandoned"),
        ("B", "active"),
        ("C", "recovered"),
        ("D", "completed"),
        ("E", "expired"),
    ]:
        abandon(api, "checkouts", name, T0)
        patch(api, f"checkouts/{name}", {"status": status})
    abandon(api, "carts", "F", T0)
    patch(api, "carts/F", {"status": "active"})
    stats = read(api, "stats/recovery?from=2026-05-01T00:00:00Z&to=2026-05-31T23:59:59Z")
    assert (stats["abandoned"], stats["recovered"], stats["recovery_rate"]) == (4, 2, 0.5)
    assert stats["recovered_revenue"] == {}  # recovered by PATCH: no order
    assert stats["recovered_checkout_value"] == {"EUR": "99.80"}


# -- 2. a checkout or cart written after the order that completes it ----------


@pytest.mark.parametrize("resource", ["checkouts", "carts"])
def test_a_checkout_written_after_its_order_is_recovered_as_it_arrives(
    api: Api, resource: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    placed = now - timedelta(minutes=2)
    place(api, "ORDER-1", placed)
    written = abandon(api, resource, "LATE", now - timedelta(minutes=10), expect=201)
    assert written["status"] == "recovered"
    assert lifecycle(api, resource, "LATE") == (
        "recovered",
        "recovered",
        placed.isoformat(),
        "ORDER-1",
    )
    assert pending(api, resource, "LATE") == []  # nothing to someone who already bought
    assert read(api, "messages/count?trigger=recovery") == {"count": 0}


@pytest.mark.parametrize(
    "delay, recovered",
    [
        (timedelta(hours=2), True),  # inside the window
        (timedelta(days=7), True),  # at its very end: still inside
        (timedelta(days=7, seconds=1), False),  # one second too late
        (timedelta(seconds=0), False),  # placed at the same moment: not after
        (-timedelta(hours=1), False),  # placed before the abandonment
    ],
)
def test_late_arrival_uses_the_same_window_as_an_order(
    api: Api, delay: timedelta, recovered: bool
) -> None:
    place(api, "ORDER-1", T0 + delay)
    written = abandon(api, "checkouts", "LATE", T0)
    status, _, recovered_at, order = lifecycle(api, "checkouts", "LATE")
    if recovered:
        assert (status, recovered_at, order) == ("recovered", (T0 + delay).isoformat(), "ORDER-1")
    else:
        assert (status, recovered_at, order) == ("abandoned", None, None)
    assert written["status"] == status


def test_late_arrival_respects_the_store_window(api: Api, storage: Storage) -> None:
    storage.update_store(STORE, {"attribution_days": 1})
    place(api, "ORDER-1", T0 + timedelta(days=2))
    assert abandon(api, "checkouts", "LATE", T0)["status"] == "abandoned"


def test_late_arrival_needs_the_same_contact(api: Api) -> None:
    place(api, "ORDER-1", T0 + timedelta(hours=1), phone=OTHER_PHONE)
    assert abandon(api, "checkouts", "LATE", T0)["status"] == "abandoned"


def test_late_arrival_keeps_once_per_order(api: Api) -> None:
    """An order that already recovered another does not recover the late one."""
    abandon(api, "checkouts", "EARLY", T0)
    place(api, "ORDER-1", T0 + timedelta(hours=2))
    assert lifecycle(api, "checkouts", "EARLY")[3] == "ORDER-1"
    late = abandon(api, "carts", "LATE", T0 + timedelta(hours=1))
    assert late["status"] == "abandoned"
    assert lifecycle(api, "carts", "LATE") == ("abandoned", "not_recovered", None, None)


def test_late_arrival_takes_the_first_order_that_recovered_nothing(api: Api) -> None:
    abandon(api, "checkouts", "EARLY", T0)
    place(api, "ORDER-1", T0 + timedelta(hours=1))  # recovers EARLY
    place(api, "ORDER-3", T0 + timedelta(hours=3))
    place(api, "ORDER-2", T0 + timedelta(hours=2))  # written later, placed earlier
    abandon(api, "carts", "LATE-1", T0 + timedelta(minutes=30))
    abandon(api, "carts", "LATE-2", T0 + timedelta(minutes=40))
    assert lifecycle(api, "carts", "LATE-1")[3] == "ORDER-2"  # earliest placed_at
    assert lifecycle(api, "carts", "LATE-2")[3] == "ORDER-3"
    assert abandon(api, "carts", "LATE-3", T0 + timedelta(minutes=50))["status"] == "abandoned"


@pytest.mark.parametrize("how", ["late", "order", "patch"])
def test_replaying_the_post_never_undoes_a_recovery(api: Api, how: str) -> None:
    if how == "late":
        place(api, "ORDER-1", T0 + timedelta(hours=1))
        abandon(api, "checkouts", "X", T0)
    elif how == "order":
        abandon(api, "checkouts", "X", T0)
        place(api, "ORDER-1", T0 + timedelta(hours=1))
    else:
        abandon(api, "checkouts", "X", T0)
        patch(api, "checkouts/X", {"status": "completed"})
    before = lifecycle(api, "checkouts", "X")
    assert before[:2] in (("recovered", "recovered"), ("completed", "recovered"))
    for _ in range(2):
        replayed = abandon(api, "checkouts", "X", T0, expect=200)
        assert replayed["status"] == before[0]
        assert lifecycle(api, "checkouts", "X") == before
    place(api, "ORDER-1", T0 + timedelta(hours=1))  # the order replayed too
    assert lifecycle(api, "checkouts", "X") == before


@pytest.mark.parametrize(
    "abandoned_at, placed_at",
    [
        ("0001-01-01T00:00:00Z", "0001-01-01T01:00:00Z"),
        ("9999-12-31T22:59:59Z", "9999-12-31T23:59:59Z"),  # its window ends past 9999
    ],
)
def test_late_arrival_at_the_ends_of_time(api: Api, abandoned_at: str, placed_at: str) -> None:
    place(api, "ORDER-1", datetime.fromisoformat(placed_at))
    at = datetime.fromisoformat(abandoned_at)
    assert abandon(api, "checkouts", "SAME", datetime.fromisoformat(placed_at))["status"] == (
        "abandoned"  # abandoned when the order was placed: not after
    )
    assert abandon(api, "carts", "LATE", at)["status"] == "recovered"


def test_import_recovers_late_checkouts_as_the_api_does(
    tmp_path: Path, api: Api, db: str, storage: Storage
) -> None:
    """``kanal import`` of checkouts after their orders gives what POSTs give."""
    import json

    from kanal.bulk import import_file

    place(api, "ORDER-1", T0 + timedelta(hours=1))
    place(api, "ORDER-2", T0 + timedelta(hours=2), phone=OTHER_PHONE)
    source = tmp_path / "checkouts.jsonl"
    lines = [
        {
            "external_id": f"CHK-{n}",
            "abandoned_at": iso(T0 + timedelta(minutes=n)),
            "total_price": 10 + n,
            "customer": {"phone": PHONE if n % 2 else OTHER_PHONE},
        }
        for n in range(4)
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = import_file(str(source), STORE, "checkouts", db, batch=2, jobs=0)
    assert report.created == 4
    recovered = {
        row["external_id"]: row["recovered_order_external_id"]
        for row in storage.select("checkouts", STORE)
    }
    assert recovered == {"CHK-0": "ORDER-2", "CHK-1": "ORDER-1", "CHK-2": None, "CHK-3": None}


# -- 3. which candidate an order recovers ---------------------------------------


@pytest.mark.parametrize("first", ["checkouts", "carts"])
def test_on_the_same_abandoned_at_the_checkout_is_recovered_before_the_cart(
    api: Api, first: str
) -> None:
    """Whichever was written first (whatever the ids of the two tables)."""
    second = "carts" if first == "checkouts" else "checkouts"
    for n in range(2):  # the cart's id is the higher one either way
        abandon(api, "carts", f"FILLER-{n}", T0, phone=OTHER_PHONE)
    abandon(api, first, "SAME", T0)
    abandon(api, second, "SAME", T0)
    place(api, "ORDER-1", T0 + timedelta(hours=1))
    assert lifecycle(api, "checkouts", "SAME")[3] == "ORDER-1"
    assert lifecycle(api, "carts", "SAME")[3] is None
    place(api, "ORDER-2", T0 + timedelta(hours=2))
    assert lifecycle(api, "carts", "SAME")[3] == "ORDER-2"


def test_on_the_same_abandoned_at_in_one_table_the_first_written_is_recovered(
    api: Api,
) -> None:
    abandon(api, "carts", "CART-A", T0)
    abandon(api, "carts", "CART-B", T0)
    place(api, "ORDER-1", T0 + timedelta(hours=1))
    assert lifecycle(api, "carts", "CART-A")[3] == "ORDER-1"
    assert lifecycle(api, "carts", "CART-B")[3] is None


def test_the_most_recent_abandoned_at_comes_before_the_funnel(api: Api) -> None:
    abandon(api, "checkouts", "CHK", T0)
    abandon(api, "carts", "CART", T0 + timedelta(seconds=1))
    place(api, "ORDER-1", T0 + timedelta(hours=1))
    assert lifecycle(api, "carts", "CART")[3] == "ORDER-1"
    assert lifecycle(api, "checkouts", "CHK")[3] is None


# -- 4. recovered revenue ------------------------------------------------------------


def test_recovered_revenue_is_the_money_of_the_recovering_orders(api: Api) -> None:
    abandon(api, "checkouts", "CHK-1", T0, total_price=49.9)
    place(api, "ORDER-1", T0 + timedelta(hours=1), total_price=120)  # recovers CHK-1
    abandon(api, "carts", "CART-1", T0 + timedelta(days=1), total_price=20, currency="GBP")
    place(api, "ORDER-2", T0 + timedelta(days=1, hours=1), total_price=25.5, currency="USD")
    abandon(api, "carts", "CART-2", T0 + timedelta(days=2), total_price=30, currency="USD")
    patch(api, "carts/CART-2", {"status": "completed"})  # a PATCH: no order, no revenue
    place(api, "ORDER-3", T0 + timedelta(days=3), phone=OTHER_PHONE)  # recovers nothing
    place(api, "ORDER-2", T0 + timedelta(days=1, hours=1), total_price=26, currency="USD")
    stats = read(api, "stats/recovery?from=2026-05-01T00:00:00Z&to=2026-05-31T23:59:59Z")
    assert stats == {
        "from": "2026-05-01T00:00:00+00:00",
        "to": "2026-05-31T23:59:59+00:00",
        "abandoned": 3,
        "recovered": 3,
        "recovery_rate": 1.0,
        # the orders' own totals, in their currency, as they stand now (ORDER-2 re-sent)
        "recovered_revenue": {"EUR": "120.00", "USD": "26.00"},
        "recovered_checkout_value": {"EUR": "49.90", "GBP": "20.00", "USD": "30.00"},
    }

"""Versioned migrations: a database made by an older kanal upgrades in place and
keeps every row; migrating twice changes nothing; processes starting at once on
an empty database take turns."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from starlette.testclient import TestClient

from kanal.app import create_app
from kanal.cli import main
from kanal.storage import MIGRATIONS

from .conftest import ROOT

#: Made by kanal as it was before versions were recorded (commit 3730a52): store 123,
#: key below, a customer, a customer erased by the soft delete of that time, three
#: orders with line items, tags and metadata, a checkout, a cart, a shipment and its
#: message, three contacts.
BEFORE = ROOT / "tests" / "data" / "before-issue-13.db"
KEY = "0ldK3yF0rTh3M1grat10nT5t"
LATEST = MIGRATIONS[-1][0]


def rows(db: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM [{t}]"), key=repr) for t in tables}
    finally:
        conn.close()


def test_a_database_made_before_versions_upgrades_in_place_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    db = tmp_path / "old.db"
    shutil.copy(BEFORE, db)
    before = rows(db)
    result = CliRunner().invoke(main, ["migrate", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{db}: schema at version {LATEST} (upgraded from version 0)\n"
    after = rows(db)
    for table, old_rows in before.items():
        if table == "customers":  # the soft-deleted one is deleted: its erasure finished
            kept = [r for r in old_rows if "CUST-GONE" not in r]
            assert len(kept) == len(old_rows) - 1
            assert [r[: len(kept[0])] for r in after[table]] == kept
            continue
        width = len(old_rows[0]) if old_rows else 0  # columns added later come after
        assert [r[:width] for r in after[table]] == old_rows, table
    # The API reads the old rows as it reads its own.
    headers = {"Authorization": f"Bearer {KEY}"}
    with TestClient(create_app(str(db), validate_responses=True)) as client:
        base = "/api/v1/stores/123"
        orders = client.get(f"{base}/orders", headers=headers).json()["orders"]
        assert [o["external_id"] for o in orders] == ["ORDER-1", "ORDER-2", "ORDER-3"]
        assert orders[0]["total_price"] == "50.90" and orders[0]["metadata"] == {"source": "old"}
        assert client.get(f"{base}/customers/CUST-1", headers=headers).json()["first_name"] == (
            "Marie"
        )
        assert client.get(f"{base}/customers/CUST-GONE", headers=headers).status_code == 404
        assert client.get(f"{base}/contacts/count", headers=headers).json() == {"count": 3}
        shipment = client.get(f"{base}/shipments/SHIP-1", headers=headers).json()
        assert shipment["status"] == "in_transit"
        written = client.post(
            f"{base}/orders",
            json={
                "external_id": "ORDER-4",
                "placed_at": "2026-05-19T10:00:00Z",
                "total_price": 1,
                "customer": {"phone": "+33612345678"},
            },
            headers=headers,
        )
        assert written.status_code == 201
        # Import jobs (version 5): their tables are there.
        started = client.post(
            f"{base}/imports?resource=orders",
            content=b'{"external_id": "ORDER-5"}\n',
            headers={**headers, "Content-Type": "application/x-ndjson"},
        )
        assert started.status_code == 202 and started.json()["total"] == 1
    assert {"imports", "import_payloads", "import_errors"} <= set(rows(db))


def test_migrating_again_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    shutil.copy(BEFORE, db)
    CliRunner().invoke(main, ["migrate", "--db", str(db)])
    once = rows(db)
    result = CliRunner().invoke(main, ["migrate", "--db", str(db)])
    assert result.output == f"{db}: schema at version {LATEST} (up to date)\n"
    assert rows(db) == once


def test_processes_migrating_an_empty_database_at_once_take_turns(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    command = [sys.executable, "-m", "kanal", "migrate", "--db", str(db)]
    procs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    created = [o for o in outputs if o.endswith("(created)\n")]
    assert len(created) == 1, outputs  # one created it; the others found it up to date
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    conn.close()

"""`kanal import`: the API's rules and messages, in bulk, streamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from kanal.cli import main
from kanal.storage import Storage

ORDER = {
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": {"phone": "+33612345678", "first_name": "Marie"},
}


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_jsonl_import_reports_bad_lines_and_keeps_the_good(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    lines = [json.dumps({**ORDER, "external_id": f"ORDER-{n}"}) for n in range(1, 6)]
    lines.insert(2, json.dumps({**ORDER, "external_id": "", "customer": {}}))
    lines.insert(4, "{not json")
    lines.insert(5, "")
    lines.append(json.dumps({**ORDER, "external_id": "ORDER-1", "total_price": 10}))
    source = tmp_path / "orders.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run(
        "import", str(source), "--store", "123", "--resource", "orders", "--db", db, "--batch", "2"
    )
    assert result.exit_code == 1
    assert "line 3: The external_id field is required. [external_id]" in result.output
    assert "line 3: The customer.phone field is required. [customer.phone]" in result.output
    assert "line 5: Malformed JSON: Expecting property name enclosed in double quotes" in (
        result.output
    )
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("6 imported (5 created, 1 updated), 2 invalid, in ")
    )
    storage = Storage(db)
    stored = storage.get("orders", 123, "ORDER-1")
    assert stored is not None and stored["total_price"] == "10.00"  # the later line won
    assert storage.conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 5
    assert storage.conn.execute("SELECT count(*) FROM contacts").fetchone()[0] == 1
    storage.close()


def test_json_array_import_and_semantic_checks(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    source = tmp_path / "orders.json"
    source.write_text(json.dumps([{**ORDER, "external_id": "ORDER-1"}]))
    assert (
        run("import", str(source), "--store", "123", "--resource", "orders", "--db", db).exit_code
        == 0
    )
    shipments = tmp_path / "shipments.json"
    shipments.write_text(
        json.dumps(
            [
                {"external_id": "S1", "order_external_id": "ORDER-1", "status": "delivered"},
                {"external_id": "S2", "order_external_id": "ORDER-404"},
            ]
        )
    )
    result = run("import", str(shipments), "--store", "123", "--resource", "shipments", "--db", db)
    assert result.exit_code == 1
    assert "line 2: The selected order_external_id is invalid. [order_external_id]" in result.output
    storage = Storage(db)
    assert storage.get("shipments", 123, "S1") is not None  # a bad record undoes only itself
    assert storage.get("shipments", 123, "S2") is None
    storage.close()


def test_unknown_store_is_an_error(tmp_path: Path, db: str, keys: dict[str, Any]) -> None:
    source = tmp_path / "o.jsonl"
    source.write_text(json.dumps({**ORDER, "external_id": "O"}) + "\n")
    result = run("import", str(source), "--store", "999", "--resource", "orders", "--db", db)
    assert result.exit_code == 1 and "no store 999" in result.output

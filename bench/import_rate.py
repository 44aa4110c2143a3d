"""``kanal import`` against the clock: a generated file of orders into a fresh database.

    .venv/bin/python -m bench.import_rate [--orders 50000] [--phones 20000] [--jobs N] [--batch N]
    .venv/bin/python -m bench.import_rate --db postgres   # into a throwaway PostgreSQL

The orders are the seed recipe's, each with its own external_id and one of
``--phones`` customers' phones (each phone is parsed and checked once per process,
as in real data with repeat customers). Runs the import twice (every record
created, then every record updated) and prints kanal's own summary lines;
``--rounds N`` does it N times, each round into a fresh database. ``--paid``: every
order paid, and the store sends order confirmations (each order sets a message off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import prepare
from kanal.storage import connect
from kanal.throwaway import ThrowawayPostgres, fresh_database
from tests.conftest import ROOT


def order(n: int, phones: int, paid: bool = False) -> dict[str, object]:
    return {
        "external_id": f"ORDER-{n}",
        "placed_at": f"2026-05-{1 + n % 28:02d}T{n % 24:02d}:00:00Z",
        "total_price": 49.90 + n % 100,
        "currency": "EUR",
        "financial_status": "paid" if paid else "pending",
        "fulfillment_status": "unfulfilled",
        "customer": {
            "external_id": f"CUST-{n % phones}",
            "phone": f"+336{12000000 + n % phones:08d}",
            "first_name": "Marie",
            "last_name": "Durand",
            "email": "marie.durand@example.com",
            "locale": "fr",
            "tags": ["vip"],
            "lifetime_value": 1299,
            "orders_count": 7,
        },
        "line_items": [{"title": "T-shirt Bordeaux", "quantity": 2, "price": 24.95}],
        "tags": ["web"],
        "metadata": {"source": "custom-checkout"},
    }


def confirm(db: str) -> None:
    """Store 123 sends order confirmations."""
    storage = connect(db)
    try:
        storage.update_store(123, {"automations": json.dumps({"order_confirmation": True})})
    finally:
        storage.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=50_000)
    parser.add_argument("--phones", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument(
        "--batch", type=int, default=None, help="records per transaction (default: kanal's)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--paid", action="store_true", help="paid orders, confirmations on")
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="a fresh SQLite file, or a fresh database of a throwaway PostgreSQL server "
        "(durable: fsync on), each round",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kanal-import-"))
    try:
        source = work / "orders.jsonl"
        with source.open("w") as out:
            for n in range(args.orders):
                out.write(json.dumps(order(n, args.phones, args.paid)) + "\n")
        size = source.stat().st_size / 2**20
        paid = ", paid, confirmations on" if args.paid else ""
        print(f"{args.orders} orders ({size:.1f} MiB), {args.phones} phones{paid}, {args.db}")
        with contextlib.ExitStack() as cluster:
            server = None
            if args.db == "postgres":
                server = cluster.enter_context(ThrowawayPostgres(durable=True)).url
            for number in range(1, args.rounds + 1):
                with contextlib.ExitStack() as fresh:
                    db = str(work / f"bench-{number}.db")
                    if server is not None:
                        db = fresh.enter_context(fresh_database(server, "kanal_import"))
                    prepare(db)
                    if args.paid:
                        confirm(db)
                    command = [sys.executable, "-m", "kanal", "import", str(source)]
                    command += ["--store", "123", "--resource", "orders", "--db", db]
                    if args.jobs is not None:
                        command += ["--jobs", str(args.jobs)]
                    if args.batch is not None:
                        command += ["--batch", str(args.batch)]
                    for label in ("created", "updated"):
                        done = subprocess.run(
                            command, cwd=ROOT, capture_output=True, text=True, check=True
                        )
                        print(f"  round {number}, {label}: {done.stdout.strip()}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

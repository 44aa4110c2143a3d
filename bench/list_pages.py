"""How fast a list of 100,000 records pages: first page, any later page, counts.

    .venv/bin/python -m bench.list_pages [--records 100000] [--repeat 50]

Fills a fresh database with orders of store 123 (straight through the storage
layer, one transaction), starts ``kanal serve`` on a free loopback port, and
times each request (server round trip, measured by the client) over --repeat
runs: the median and the worst are printed, with SQLite's query plan.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.run import prepare
from kanal.reads import encode_cursor
from kanal.storage import Storage
from tests.conftest import Server


def fill(db: str, records: int) -> str:
    key = prepare(db)
    storage = Storage(db)
    stamp = "2026-05-18T10:00:00+00:00"
    customer = json.dumps({"phone": "+33612345678", "first_name": "Marie"})
    with storage.transaction() as conn:
        conn.executemany(
            "INSERT INTO orders (store_id, external_id, placed_at, total_price, currency, "
            "financial_status, customer, customer_phone, tags, inserted_at, updated_at) "
            "VALUES (123, ?, ?, '49.90', 'EUR', ?, ?, '+33612345678', '[]', ?, ?)",
            (
                (
                    f"ORDER-{n}",
                    stamp,
                    "refunded" if n % 1000 == 0 else "paid",
                    customer,
                    stamp,
                    stamp,
                )
                for n in range(1, records + 1)
            ),
        )
    storage.close()
    return key


def timed(client: httpx.Client, url: str, repeat: int) -> tuple[float, float, httpx.Response]:
    samples, response = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    assert response is not None
    return statistics.median(samples), max(samples), response


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kanal-bench-"))
    db = str(work / "kanal.db")
    started = time.perf_counter()
    key = fill(db, args.records)
    print(f"filled {args.records} orders in {time.perf_counter() - started:.1f}s")
    storage = Storage(db)
    middle = encode_cursor(
        storage, {"r": "orders", "s": 123, "f": {}, "d": "next", "b": args.records // 2}
    )
    last = encode_cursor(
        storage, {"r": "orders", "s": 123, "f": {}, "d": "prev", "b": args.records + 1}
    )
    sql, params = storage.select_sql("orders", 123, after=args.records // 2, limit=50)
    plan = storage.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    print("query plan:", "; ".join(row[3] for row in plan))
    storage.close()
    server = Server(db)
    server.env = {"KANAL_VALIDATE_RESPONSES": "0"}
    server.start()
    base = f"{server.url}/api/v1/stores/123/orders"
    cases = [
        ("first page, limit 50", f"{base}?limit=50"),
        ("first page, limit 250", f"{base}?limit=250"),
        (f"page after id {args.records // 2} (cursor)", f"{base}?limit=50&page_info={middle}"),
        ("last page (cursor)", f"{base}?limit=50&page_info={last}"),
        ("since_id near the end", f"{base}?limit=50&since_id={args.records - 10}"),
        ("filtered: 1 in 1000 matches", f"{base}?limit=50&financial_status=refunded"),
        ("count, all", f"{base}/count"),
        ("count, filtered", f"{base}/count?financial_status=refunded"),
        ("retrieve one", f"{base}/ORDER-{args.records // 3}"),
    ]
    try:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            print(f"{'request':<38} {'median ms':>10} {'worst ms':>9}  result")
            for label, url in cases:
                median, worst, response = timed(client, url, args.repeat)
                body = response.json()
                result = body.get(
                    "count",
                    len(next(iter(body.values()))) if "orders" in body else body.get("external_id"),
                )
                print(f"{label:<38} {median:>10.2f} {worst:>9.2f}  {result}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

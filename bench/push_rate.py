"""``kanal push`` against the clock: orders sent over HTTP, as import jobs, to a real server.

    .venv/bin/python -m bench.push_rate [--orders 100000] [--phones 20000] [--db sqlite|postgres]
                                        [--rounds 3]

The orders are bench.import_rate's (the seed recipe's, each with its own external_id
and one of ``--phones`` customers' phones). A fresh database (a SQLite file, or with
``--db postgres`` a database of a throwaway PostgreSQL server, fsync on) gets store
123 and a key; ``kanal serve --with-worker`` serves it on a free loopback port, and
``kanal push`` sends the file twice (every record created, then every record
updated). For each push it prints push's own summary, whose time runs from the first
byte sent to the last job ``done`` (the jobs' records per second), and the server's
view: the jobs, and the span from the first job's upload to the last one's end. With
``--rounds N`` it does it all N times (a fresh database and server each time) and ends
with the median round's figures (the machine's other load comes and goes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.import_rate import order
from bench.run import prepare
from kanal.throwaway import ThrowawayPostgres, fresh_database
from tests.conftest import ROOT, free_port


def serve(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kanal", "serve", "--with-worker", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "KANAL_DB": db}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"kanal serve did not start:\n{log.read_text()}")


def server_view(url: str, key: str, since: int) -> str:
    """The jobs after ``since`` as the server saw them: how many, their records, and the
    span from the first one's upload to the last one's end."""
    jobs = httpx.get(
        f"{url}/api/v1/stores/123/imports?limit=250&since_id={since}",
        headers={"Authorization": f"Bearer {key}"},
    ).json()["imports"]
    first = min(datetime.fromisoformat(job["created_at"]) for job in jobs)
    last = max(datetime.fromisoformat(job["finished_at"]) for job in jobs)
    records = sum(job["processed"] for job in jobs)
    span = (last - first).total_seconds()
    states = sorted({job["state"] for job in jobs})
    return (
        f"server: {len(jobs)} jobs ({', '.join(states)}), {records} records, first upload to "
        f"last done {span:.2f}s ({records / span:,.0f} records/s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--phones", type=int, default=20_000)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kanal-push-"))
    try:
        source = work / "orders.jsonl"
        with source.open("w") as out:
            for n in range(args.orders):
                out.write(json.dumps(order(n, args.phones)) + "\n")
        size = source.stat().st_size / 2**20
        print(f"{args.orders} orders ({size:.1f} MiB), {args.phones} phones, {args.db}")
        rates: dict[str, list[float]] = {"created": [], "updated": []}
        with contextlib.ExitStack() as stack:
            cluster = None
            if args.db == "postgres":
                cluster = stack.enter_context(ThrowawayPostgres(durable=True)).url
            for number in range(1, args.rounds + 1):
                print(f"round {number}:")
                with contextlib.ExitStack() as fresh:
                    db = str(work / f"bench-{number}.db")
                    if cluster is not None:
                        db = fresh.enter_context(fresh_database(cluster, "kanal_push"))
                    for label, rate in run(args, work, source, db).items():
                        rates[label].append(rate)
        if args.rounds > 1:
            medians = {label: sorted(found)[len(found) // 2] for label, found in rates.items()}
            print(
                f"median of {args.rounds} rounds: created {medians['created']:,.0f} records/s, "
                f"updated {medians['updated']:,.0f} records/s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, work: Path, source: Path, db: str) -> dict[str, float]:
    """Push the file twice into a fresh server over ``db``; records/s of each push."""
    key = prepare(db)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve(db, port, work / "server.log")
    rates = {}
    try:
        since = 0
        for label in ("created", "updated"):
            command = [sys.executable, "-m", "kanal", "push", str(source), "--url", url,
                       "--key", key, "--store", "123", "--resource", "orders"]  # fmt: skip
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"kanal push failed ({done.returncode}):\n{done.stderr}")
            print(f"  {label}: {done.stdout.strip()}", flush=True)
            rates[label] = float(done.stdout.rsplit("(", 1)[1].split()[0].replace(",", ""))
            print(f"  {' ' * len(label)}  {server_view(url, key, since)}", flush=True)
            since += (args.orders + 9_999) // 10_000
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rates


if __name__ == "__main__":
    sys.exit(main())

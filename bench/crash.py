"""The crash test, longer: rounds of writers, a server killed with SIGKILL, a restart.

    .venv/bin/python -m bench.crash [--rounds 10] [--writers 16] [--workers 2]

Each round starts ``kanal serve`` (its own process group, so the kill reaches
every worker), lets ``--writers`` clients POST unique orders, kills the whole
group with SIGKILL at a random moment 1 to 4 s in, restarts the server and reads
back every order acknowledged with a 201 in any round so far: it must be there
with the content that was acknowledged. Prints each round and the totals; exits
1 if anything acknowledged was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from kanal.throwaway import ThrowawayPostgres
from tests.conftest import STORE, Server, make_accounts
from tests.test_crash import writer


def round_of_writes(
    db: str, key: str, number: int, writers: int, workers: int
) -> dict[str, dict[str, Any]]:
    """One round: writers until the kill; what was acknowledged."""
    server = Server(db, workers=workers)
    server.new_session = True
    server.start()
    assert server.proc is not None
    url = f"{server.url}/api/v1/stores/{STORE}/orders"
    acknowledged: dict[str, dict[str, Any]] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=writer, args=(url, key, f"r{number}w{i}", acknowledged, stop))
        for i in range(writers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(random.uniform(1.0, 4.0))
    os.killpg(os.getpgid(server.proc.pid), signal.SIGKILL)  # no shutdown, no flush
    server.proc.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    return dict(acknowledged)


def lost(db: str, key: str, acknowledged: dict[str, dict[str, Any]]) -> list[str]:
    """Acknowledged orders missing or different after a restart."""
    server = Server(db).start()
    missing = []
    try:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
            for external_id, written in acknowledged.items():
                response = client.get(f"/api/v1/stores/{STORE}/orders/{external_id}")
                stored = response.json() if response.status_code == 200 else {}
                if {k: stored.get(k) for k in written} != written:
                    missing.append(external_id)
    finally:
        server.stop()
    return missing


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="a SQLite file, or a throwaway PostgreSQL server (fsync on)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kanal-crash-"))
    engine = contextlib.ExitStack()
    try:
        db = str(work / "crash.db")
        if args.db == "postgres":
            db = engine.enter_context(ThrowawayPostgres(durable=True)).url
        key = make_accounts(db)["store"]
        everything: dict[str, dict[str, Any]] = {}
        total_lost = 0
        for number in range(1, args.rounds + 1):
            acknowledged = round_of_writes(db, key, number, args.writers, args.workers)
            everything.update(acknowledged)
            missing = lost(db, key, everything)
            total_lost += len(missing)
            print(
                f"round {number}: {len(acknowledged)} acknowledged, "
                f"{len(everything)} so far, {len(missing)} lost",
                flush=True,
            )
        print(
            f"{args.rounds} SIGKILLs of `kanal serve --workers {args.workers}` under "
            f"{args.writers} writers: {len(everything)} acknowledged writes, {total_lost} lost"
        )
    finally:
        engine.close()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if total_lost else 0


if __name__ == "__main__":
    sys.exit(main())

"""Load and limits under two worker processes, with wrk.

    .venv/bin/python -m bench.load [--seconds 60] [--connections 64] [--limit 6000]

1. Concurrency: 64 connections writing for a minute against `kanal serve
   --workers 2`: counts every non-2xx answer and socket error, and searches the
   server's log for "database is locked" (none may reach a client).
2. Rate limit: the store allows --limit requests a minute; 64 connections for
   20 s (inside one window) across the two workers: how many were accepted.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import prepare, start, wrk
from kanal.storage import Storage
from tests.conftest import free_port


def serve(db: str, log: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "kanal", "serve", "--workers", "2", "--port", str(port)]
    return start(command, db, port, log)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--limit", type=int, default=6000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kanal-load-"))
    try:
        db = str(work / "load.db")
        key = prepare(db)
        port = free_port()
        proc = serve(db, work / "server.log", port)
        try:
            result = wrk(port, key, args.seconds, args.connections)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(
            f"concurrency: {args.connections} connections, 2 workers, {args.seconds}s: "
            f"{result['requests']} requests, {result['rps']:.0f} req/s, "
            f"p99 {result['p99_ms']:.1f} ms, non-2xx {result['non2xx']}, "
            f"socket errors {result['socket_errors']}, 'database is locked' in the log: "
            f"{(work / 'server.log').read_text().count('database is locked')}"
        )
        db = str(work / "limit.db")
        key = prepare(db)
        storage = Storage(db)
        storage.update_store(123, {"rate_limit": args.limit})
        storage.close()
        port = free_port()
        proc = serve(db, work / "server2.log", port)
        try:
            result = wrk(port, key, 20, args.connections)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        accepted = result["requests"] - result["non2xx"]
        print(
            f"rate limit {args.limit}/min, 2 workers, 20s: {result['requests']} requests, "
            f"{accepted} accepted ({accepted / args.limit * 100:.2f}% of the limit), "
            f"{result['non2xx']} refused"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

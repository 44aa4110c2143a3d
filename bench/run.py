"""kanal against the bare stack, side by side, under wrk.

    .venv/bin/python -m bench.run [--seconds 15] [--connections 32] [--workers 1]

Needs wrk (Debian: ``apt-get install wrk``). Each server gets a fresh database
(store 123, a key, no rate limit to speak of), one warm-up run, then the
measured run: POST of the seed recipe's full order, rotating over 5,000
external_ids. Prints requests/s, p50 and p99 for both and kanal's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from kanal.cli import create_key
from kanal.storage import Storage
from tests.conftest import ROOT, free_port

LUA = Path(__file__).with_name("post.lua")


def prepare(db: str) -> str:
    storage = Storage(db)
    storage.create_store(
        {
            "id": 123,
            "name": "Bench",
            "team_id": None,
            "region": "FR",
            "rate_limit": 10**9,
            "paused": 0,
        }
    )
    key = create_key(storage, name="bench", store_id=123)
    storage.close()
    return key


def start(
    command: list[str], db: str, port: int, log: Path | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KANAL_DB": db}
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {command}")


def wrk(port: int, key: str, seconds: int, connections: int) -> dict[str, Any]:
    env = {**os.environ, "BENCH_KEY": key}
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{port}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    return json.loads(line[5:])


def measure(label: str, command: list[str], args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kanal-bench-"))
    db = str(work / "bench.db")
    key = prepare(db)
    port = free_port()
    proc = start([*command, "--port", str(port)], db, port)
    try:
        wrk(port, key, 3, args.connections)  # warm-up: first inserts, caches
        result = wrk(port, key, args.seconds, args.connections)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{label:<28} {result['rps']:>9.0f} {result['p50_ms']:>8.2f} {result['p99_ms']:>8.2f}"
        f" {result['non2xx']:>7} {result['socket_errors']:>7}",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    python = sys.executable
    print(f"POST full seed order, {args.connections} connections, {args.seconds}s per run")
    print(f"{'server':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7} {'sockerr':>7}")
    base = measure(
        "bare Starlette + SQLite",
        [
            python,
            "-m",
            "uvicorn",
            "--factory",
            "bench.baseline:create_app",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        args,
    )
    for workers in args.workers:
        result = measure(
            f"kanal, {workers} worker{'s' if workers > 1 else ''}",
            [python, "-m", "kanal", "serve", "--workers", str(workers)],
            args,
        )
        print(f"  ratio to bare: {result['rps'] / base['rps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

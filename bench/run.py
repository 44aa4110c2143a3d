"""kanal against the bare stack, side by side, under wrk.

    .venv/bin/python -m bench.run [--seconds 10] [--rounds 3] [--connections 32] [--workers 1 2]
    .venv/bin/python -m bench.run --db postgres   # every server on a throwaway PostgreSQL

Needs wrk (Debian: ``apt-get install wrk``). Each server gets a fresh database
(store 123, a key, no rate limit to speak of), one warm-up run, then the
measured run: POST of the seed recipe's full order, rotating over 5,000
external_ids. The servers take turns, round after round (a machine's other load
comes and goes: taking turns spreads it over all of them), and the table gives
each one's median round: requests/s, p50 and p99, and kanal's ratio to the bare
baseline.
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
from pathlib import Path
from typing import Any

import httpx

from kanal.cli import create_key
from kanal.storage import connect
from kanal.throwaway import ThrowawayPostgres, fresh_database
from tests.conftest import ROOT, free_port

LUA = Path(__file__).with_name("post.lua")


def prepare(db: str) -> str:
    storage = connect(db)
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


def measure(command: list[str], args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kanal-bench-"))
    with contextlib.ExitStack() as fresh:
        db = str(work / "bench.db")
        if args.postgres is not None:  # a fresh database of the run's server
            db = fresh.enter_context(fresh_database(args.postgres, "kanal_bench"))
        return _measure(command, args, work, db)


def _measure(command: list[str], args: argparse.Namespace, work: Path, db: str) -> dict[str, Any]:
    key = prepare(db)
    port = free_port()
    proc = start([*command, "--port", str(port)], db, port)
    try:
        wrk(port, key, 3, args.connections)  # warm-up: first inserts, caches
        return wrk(port, key, args.seconds, args.connections)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


def median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (its latencies with it)."""
    return sorted(results, key=lambda result: result["rps"])[len(results) // 2]


def row(label: str, result: dict[str, Any], ratio: str = "") -> str:
    return (
        f"{label:<26} {result['rps']:>8.0f} {result['p50_ms']:>7.2f} {result['p99_ms']:>7.2f}"
        f" {result['non2xx']:>7} {result['socket_errors']:>7} {ratio:>6}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the engine of every server: a fresh SQLite file each, or a fresh database "
        "each on one throwaway PostgreSQL server (durable: fsync on)",
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as cluster:
        args.postgres = None
        if args.db == "postgres":
            args.postgres = cluster.enter_context(ThrowawayPostgres(durable=True)).url
        return run(args)


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    python = sys.executable
    bare = f"bare Starlette + {'PostgreSQL' if args.postgres else 'SQLite'}"
    servers = {
        bare: [
            python,
            "-m",
            "uvicorn",
            "--factory",
            "bench.baseline:create_app",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        **{
            f"kanal, {n} worker{'s' if n > 1 else ''}": [
                python,
                "-m",
                "kanal",
                "serve",
                "--workers",
                str(n),
            ]
            for n in args.workers
        },
    }
    print(
        f"POST full seed order, {args.connections} connections, {args.seconds}s per run, "
        f"{args.rounds} rounds (median round shown)"
    )
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in servers}
    for number in range(1, args.rounds + 1):
        for label, command in servers.items():
            result = measure(command, args)
            results[label].append(result)
            print(f"  round {number}: {row(label, result)}", flush=True)
    header = ("server", "req/s", "p50 ms", "p99 ms", "non-2xx", "sockerr", "ratio")
    print("{:<26} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6}".format(*header))
    base = median_round(results[bare])
    for label in servers:
        result = median_round(results[label])
        ratio = "" if label.startswith("bare") else f"{result['rps'] / base['rps']:.2f}"
        print(row(label, result, ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())

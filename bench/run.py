"""kanal against the reference servers, side by side, under wrk.

    .venv/bin/python -m bench.run [--seconds 10] [--rounds 3] [--connections 32] [--workers 1 2]
    .venv/bin/python -m bench.run --db postgres   # every server on a throwaway PostgreSQL
    .venv/bin/python -m bench.run --servers peer kanal1   # some of them only

The servers (``--servers``, all by default):

- ``plain``: the plain stack, Starlette on uvicorn, ``json.loads``, one
  ``INSERT ... ON CONFLICT`` of the order as one JSON row (bench/plain.py);
- ``peer``: the code-first peer, FastAPI on uvicorn with a Pydantic v2 model of the
  order (openapi.yaml's field rules), a bearer-key check, the same one-row upsert
  (bench/peer.py);
- ``baseline``: bare Starlette, ``json.loads`` and kanal's own ``Storage.upsert``
  (bench/baseline.py);
- ``kanal1``, ``kanal2``: ``kanal serve`` with 1 and 2 worker processes (``--workers``).

Needs wrk (Debian: ``apt-get install wrk``). Each server gets a fresh database
(store 123, a key, no rate limit to speak of), one warm-up run, then the
measured run: POST of the seed recipe's full order, rotating over 5,000
external_ids. The servers take turns, round after round (a machine's other load
comes and goes: taking turns spreads it over all of them), and the table gives
each one's median round: requests/s, p50 and p99, and each server's ratio to the
plain stack, the peer and the baseline; then kanal with more workers against one (the
medians' ratio, each round's, and the median of those).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
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


def wrk(port: int, key: str, seconds: int, connections: int, phones: int = 1) -> dict[str, Any]:
    env = {**os.environ, "BENCH_KEY": key, "BENCH_PHONES": str(phones)}
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
        wrk(port, key, 3, args.connections, args.phones)  # warm-up: first inserts, caches
        return wrk(port, key, args.seconds, args.connections, args.phones)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


def median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (its latencies with it)."""
    return sorted(results, key=lambda result: result["rps"])[len(results) // 2]


LABEL = 34


def row(label: str, result: dict[str, Any], ratios: tuple[str, ...] = ()) -> str:
    return (
        f"{label:<{LABEL}} {result['rps']:>8.0f} {result['p50_ms']:>7.2f} "
        f"{result['p99_ms']:>7.2f} {result['non2xx']:>7} {result['socket_errors']:>7}"
        + "".join(f" {ratio:>8}" for ratio in ratios)
    )


def uvicorn(factory: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def servers(args: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    """Every server bench.run knows: name -> (label, command without --port)."""
    engine = "PostgreSQL" if args.postgres else "SQLite"
    known = {
        "plain": (f"plain Starlette + one-row {engine}", uvicorn("bench.plain:create_app")),
        "peer": (f"FastAPI peer + one-row {engine}", uvicorn("bench.peer:create_app")),
        "baseline": (
            "baseline: Starlette + kanal upsert",
            uvicorn("bench.baseline:create_app"),
        ),
    }
    for n in args.workers:
        known[f"kanal{n}"] = (
            f"kanal, {n} worker{'s' if n > 1 else ''}",
            [sys.executable, "-m", "kanal", "serve", "--workers", str(n), *args.kanal_args],
        )
    return known


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--servers",
        nargs="+",
        default=None,
        help="which servers take turns (plain, peer, baseline, kanal1, kanal2...; all by default)",
    )
    parser.add_argument(
        "--phones",
        type=int,
        default=1,
        help="customers' phones the orders are spread over (default 1: the seed order's, "
        "on every order, the benchmark's workload)",
    )
    parser.add_argument(
        "--kanal-args",
        nargs="*",
        default=[],
        help="extra options for kanal serve (compare two settings in one run: see README)",
    )
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
    known = servers(args)
    chosen = args.servers or list(known)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"unknown servers {unknown}: choose among {list(known)}")
    phones = "the seed's phone" if args.phones <= 1 else f"{args.phones:,} phones"
    print(
        f"POST full seed order ({phones}), {args.connections} connections, "
        f"{args.seconds}s per run, {args.rounds} rounds (median round shown)"
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for number in range(1, args.rounds + 1):
        for name in chosen:
            label, command = known[name]
            result = measure(command, args)
            results[name].append(result)
            print(f"  round {number}: {row(label, result)}", flush=True)
    references = [name for name in ("plain", "peer", "baseline") if name in chosen]
    header = ["server", "req/s", "p50 ms", "p99 ms", "non-2xx", "sockerr"]
    header += [f"/{name}" for name in references]
    print(f"{header[0]:<{LABEL}} " + " ".join(f"{h:>7}" for h in header[1:6]), end="")
    print("".join(f" {h:>8}" for h in header[6:]))
    medians = {name: median_round(results[name]) for name in chosen}
    for name in chosen:
        result = medians[name]
        ratios = tuple(f"{result['rps'] / medians[r]['rps']:.2f}" for r in references)
        print(row(known[name][0], result, ratios))
    for name in chosen:  # more workers against one: the medians' ratio, and each round's
        if name.startswith("kanal") and name != "kanal1" and "kanal1" in chosen:
            paired = [
                more["rps"] / one["rps"]
                for more, one in zip(results[name], results["kanal1"], strict=True)
            ]  # a round's two runs are back to back: the machine's speed moves less between them
            print(
                f"{known[name][0]} / {known['kanal1'][0]}: "
                f"{medians[name]['rps'] / medians['kanal1']['rps']:.2f} (the medians); each "
                f"round's {', '.join(f'{ratio:.2f}' for ratio in paired)}, their median "
                f"{statistics.median(paired):.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

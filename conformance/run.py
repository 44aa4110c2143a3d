"""Boot the real server on a fresh database and fuzz it against openapi.yaml.

    python -m conformance.run              # CI depth: fixed seed, a few minutes
    python -m conformance.run --deep       # release depth: hundreds of examples, no time cap

The runner creates a fresh SQLite database with store 123 (region FR, a rate
limit high enough for fuzzing) and a key, starts ``kanal serve`` on a free
loopback port with response validation on, waits for ``/healthz``, runs
Schemathesis with every check and every phase (conformance/schemathesis.toml),
stops the server and leaves a JUnit XML report (conformance/reports/junit.xml).
It exits with Schemathesis's status.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "conformance"
CI_EXAMPLES = 25
DEEP_EXAMPLES = 300
CI_SEED = 20261124


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kanal(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "kanal", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def start_server(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KANAL_VALIDATE_RESPONSES": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kanal", "serve", "--db", db, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"kanal serve did not come up; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deep", action="store_true", help="release depth: no time cap")
    parser.add_argument("--max-examples", type=int, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, help="random seed (CI depth: fixed)")
    parser.add_argument("--reports", default=str(HERE / "reports"), help="report directory")
    args, extra = parser.parse_known_args(argv)

    examples = args.max_examples or (DEEP_EXAMPLES if args.deep else CI_EXAMPLES)
    seed = args.seed if args.seed is not None else (None if args.deep else CI_SEED)
    reports = Path(args.reports)
    reports.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kanal-conformance-"))
    db = str(work / "kanal.db")
    kanal(
        "stores",
        "create",
        "--id",
        "123",
        "--name",
        "Conformance shop",
        "--region",
        "FR",
        "--rate-limit",
        "1000000000",
        "--db",
        db,
    )
    key = kanal("keys", "create", "--store", "123", "--name", "conformance", "--db", db)
    key = key.strip().splitlines()[-1]
    port = free_port()
    log = reports / "server.log"
    server = start_server(db, port, log)
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        str(ROOT / "openapi.yaml"),
        "--url",
        f"http://127.0.0.1:{port}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(examples),
        "--report",
        "junit,ndjson",
        "--report-junit-path",
        str(reports / "junit.xml"),
        "--report-ndjson-path",
        str(reports / "events.ndjson"),
        *(["--seed", str(seed)] if seed is not None else []),
        *extra,
    ]
    env = {**os.environ, "KANAL_KEY": key, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    try:
        status = subprocess.run(command, cwd=ROOT, env=env).returncode
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    cases, failed = summarize(reports / "events.ndjson")
    for phase, count in cases.items():
        print(f"  {phase:<9} {count:>6} test cases, {failed.get(phase, 0)} failed scenarios")
    print(
        f"Schemathesis exit {status} in {elapsed:.0f}s ({examples} examples per operation, "
        f"seed {seed}); JUnit report: {reports / 'junit.xml'}"
    )
    total_failed = sum(failed.values()) or (1 if status else 0)
    print(f"conformance: {sum(cases.values())} passed, {total_failed} failed")
    return status


def summarize(events: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Test cases generated and failed scenarios per phase, from the NDJSON event log."""
    cases: dict[str, int] = {}
    failed: dict[str, int] = {}
    if not events.exists():
        return cases, failed
    for line in events.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if event is None:
            continue
        phase = event["phase"]
        cases[phase] = cases.get(phase, 0) + len(event["recorder"].get("cases", {}))
        if event["status"] in ("failure", "error"):
            failed[phase] = failed.get(phase, 0) + 1
    return cases, failed


if __name__ == "__main__":
    sys.exit(main())

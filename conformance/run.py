"""Fuzz a kanal against openapi.yaml with Schemathesis: a fresh local one, or one running elsewhere.

    python -m conformance.run              # CI depth: fixed seed, a few minutes
    python -m conformance.run --deep       # release depth: hundreds of examples, no time cap
    python -m conformance.run --db postgres # the same on a throwaway PostgreSQL server
    python -m conformance.run --url https://staging.example --key KEY --store 42

Locally, the runner creates a fresh SQLite database with store 123 (region FR, a
rate limit high enough for fuzzing) and a key, starts ``kanal serve --with-worker``
on a free loopback port with response validation on (``--db postgres``: on a fresh database
of a throwaway PostgreSQL server instead), waits for ``/healthz``, runs
Schemathesis with every check and every phase (conformance/schemathesis.toml),
stops the server and leaves a JUnit XML report (conformance/reports/junit.xml).

With ``--url``, it runs the same checks and phases against a kanal already
running there (a staging deployment's CI), with that store and key (``--key`` or
``$KANAL_KEY``); it creates no database and starts no server.

Everything it writes (reports, the server log, Schemathesis's and Hypothesis's
caches) goes under conformance/reports/: ``--reports`` and the report paths passed
through to ``st run`` are taken relative to it, and one outside it is refused.
It exits with Schemathesis's status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "conformance"
REPORTS = HERE / "reports"
CI_EXAMPLES = 25
DEEP_EXAMPLES = 300
CI_SEED = 20261124

#: What every run checks, beside the config file. Every check is on through the file
#: ([checks] enabled = true), not through `--checks all`: a command-line override, it
#: would switch back on the checks the file turns off for named operations, each with
#: its reason there (tests/test_conformance_config.py reads what each operation runs).
RUN_OPTIONS = ("--phases", "examples,coverage,fuzzing,stateful")
#: The report formats the runner reads back (its summary) and CI keeps.
FORMATS = ("junit", "ndjson")
#: ``st run`` options that name a file or directory it writes.
WRITES = re.compile(r"^--report-(dir|[a-z]+-path)$")


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


def within_reports(value: str, what: str) -> Path:
    """``value`` as a path under conformance/reports/ (a relative one is taken from
    there); anything that would land outside it is refused."""
    path = Path(value).expanduser()
    resolved = (path if path.is_absolute() else REPORTS / path).resolve()
    if resolved != REPORTS.resolve() and REPORTS.resolve() not in resolved.parents:
        raise SystemExit(
            f"conformance.run: {what} {value!r} is outside conformance/reports/; the runner "
            "writes only there (give a name, taken relative to conformance/reports/)"
        )
    return resolved


def passed_through(extra: list[str], reports: Path) -> tuple[list[str], list[str]]:
    """The extra ``st run`` arguments with their output paths kept under ``reports``,
    and the report formats they ask for (merged with the runner's own)."""
    kept: list[str] = []
    formats: list[str] = []
    items = iter(extra)
    for item in items:
        option, equals, value = item.partition("=")
        if option == "--report" or WRITES.match(option):
            if not equals:
                value = next(items, "")
            if not value:
                raise SystemExit(f"conformance.run: {option} needs a value")
            if option == "--report":
                formats += [name.strip() for name in value.split(",") if name.strip()]
                continue
            if option == "--report-dir":
                raise SystemExit(
                    "conformance.run: reports go to --reports (under conformance/reports/), "
                    "not --report-dir"
                )
            path = value if Path(value).is_absolute() else str(reports / value)
            kept += [option, str(within_reports(path, option))]
            continue
        kept.append(item)
    return kept, formats


def start_server(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KANAL_VALIDATE_RESPONSES": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            # With its worker, so that the import jobs the run starts are run too.
            [
                sys.executable,
                "-m",
                "kanal",
                "serve",
                "--db",
                db,
                "--port",
                str(port),
                "--with-worker",
            ],
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
    proc.wait()
    said = log.read_text(errors="replace").strip()[-4000:]
    raise SystemExit(f"kanal serve did not come up; see {log}" + (f":\n{said}" if said else ""))


def local_kanal(work: Path, db: str | None = None) -> tuple[str, str]:
    """A fresh database (``db``, else a SQLite file in ``work``) with store 123 and a
    key: the key, and the database."""
    db = db or str(work / "kanal.db")
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
    return key.strip().splitlines()[-1], db


def check_remote(url: str, key: str, store: int) -> None:
    """Stop early, with the reason, when the kanal at ``url`` cannot be fuzzed."""
    try:
        health = httpx.get(f"{url}/healthz", timeout=10)
        listing = httpx.get(
            f"{url}/api/v1/stores/{store}/orders",
            params={"limit": 1},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise SystemExit(f"conformance.run: cannot reach {url}: {exc}") from None
    if health.status_code != 200:
        raise SystemExit(f"conformance.run: {url}/healthz answers {health.status_code}")
    if listing.status_code != 200:
        raise SystemExit(
            f"conformance.run: store {store} at {url} answers {listing.status_code} "
            f"{listing.text[:200]} with that key"
        )


def remote_contract(reports: Path, store: int) -> Path:
    """openapi.yaml as the runner gives it to Schemathesis: unchanged when the store
    under test is the contract's example store (123, the local one); else a copy in
    the reports directory whose ``store_id`` example is that store. (Binding the
    parameter in schemathesis.toml instead would also replace the invalid store ids
    the negative phases send, and fail their checks.)"""
    contract = ROOT / "openapi.yaml"
    spec = yaml.safe_load(contract.read_text())
    parameters = [
        node
        for node in _mappings(spec)
        if node.get("name") == "store_id" and node.get("in") == "path"
    ]
    if all(parameter.get("example") == store for parameter in parameters):
        return contract
    for parameter in parameters:
        parameter.pop("examples", None)
        parameter["example"] = store
    copy = reports / "openapi-remote.json"
    copy.write_text(json.dumps(spec))
    return copy


def _mappings(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _mappings(value)


def parser() -> argparse.ArgumentParser:
    # No abbreviations: `--report ndjson` (for `st run`) is not `--reports ndjson`.
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        allow_abbrev=False,
        epilog="Other arguments go to `st run`.",
    )
    parser.add_argument("--deep", action="store_true", help="release depth: no time cap")
    parser.add_argument("--max-examples", type=int, help="test cases per operation and phase")
    parser.add_argument("--seed", type=int, help="random seed (CI depth: fixed)")
    parser.add_argument(
        "--db",
        help="the engine of the local kanal: `postgres` for a throwaway PostgreSQL server "
        "(or a fresh database on $KANAL_TEST_POSTGRES_URL's), a postgresql:// URL of an "
        "empty database; default a fresh SQLite file",
    )
    parser.add_argument(
        "--reports",
        default=".",
        help="report directory, under conformance/reports/ (default: that directory)",
    )
    remote = parser.add_argument_group("a kanal running elsewhere (nothing is started)")
    remote.add_argument("--url", help="its base URL, e.g. https://staging.example.com")
    remote.add_argument("--key", help="an API key of the store (default: $KANAL_KEY)")
    remote.add_argument("--store", type=int, help="the store's id")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = parser()
    args, extra = options.parse_known_args(argv)
    if args.url is None and (args.key or args.store is not None):
        options.error("--key and --store go with --url (locally, the runner makes its own)")
    if args.url is not None:
        args.key = args.key or os.environ.get("KANAL_KEY")
        if not args.key or args.store is None:
            options.error("--url needs --key (or $KANAL_KEY) and --store")
        args.url = args.url.rstrip("/")

    examples = args.max_examples or (DEEP_EXAMPLES if args.deep else CI_EXAMPLES)
    seed = args.seed if args.seed is not None else (None if args.deep else CI_SEED)
    reports = within_reports(args.reports, "--reports")
    reports.mkdir(parents=True, exist_ok=True)
    extra, formats = passed_through(extra, reports)
    for stale in ("junit.xml", "events.ndjson"):
        (reports / stale).unlink(missing_ok=True)

    server, work, engine = None, None, contextlib.ExitStack()
    if args.url is None and args.db == "postgres":
        from kanal.throwaway import fresh_database
        from kanal.throwaway import server as postgres

        args.db = engine.enter_context(fresh_database(engine.enter_context(postgres())))
    if args.url is not None:
        check_remote(args.url, args.key, args.store)
        url, key, contract = args.url, args.key, remote_contract(reports, args.store)
    else:
        work = Path(tempfile.mkdtemp(prefix="kanal-conformance-"))
        key, db = local_kanal(work, args.db)
        port = free_port()
        server = start_server(db, port, reports / "server.log")
        url, contract = f"http://127.0.0.1:{port}", ROOT / "openapi.yaml"
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        str(contract),
        "--url",
        url,
        *RUN_OPTIONS,
        "--max-examples",
        str(examples),
        "--report",
        ",".join(dict.fromkeys([*FORMATS, *formats])),
        "--report-dir",
        str(reports),
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
        # From the reports directory: what Schemathesis and Hypothesis write by
        # default in the current directory (.schemathesis/, .hypothesis/) lands there.
        status = subprocess.run(command, cwd=reports, env=env).returncode
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        engine.close()
    elapsed = time.monotonic() - started
    cases, failed = summarize(reports / "events.ndjson")
    for phase, count in cases.items():
        print(f"  {phase:<9} {count:>6} test cases, {failed.get(phase, 0)} failed scenarios")
    print(
        f"Schemathesis exit {status} in {elapsed:.0f}s against {url} ({examples} examples "
        f"per operation, seed {seed}); JUnit report: {reports / 'junit.xml'}"
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

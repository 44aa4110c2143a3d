"""The ``kanal`` command: stores, keys, and the server."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import sys
from typing import Any

import click
import phonenumbers
import psycopg

from kanal import affinity, auth
from kanal.app import DEFAULT_DB
from kanal.storage import RESOURCES, Storage, connect, is_postgres

DEMO_STORE = 123
#: The key of the seed pages' curl examples, so they work as written on a demo.
DEMO_TOKEN = "8fK2pX9mWq4Ld7Vb3Nc6Ts1Z"


def _check_contract(outcome: str, *, handlers: bool = True) -> None:
    """Stop with exit status 1 and every problem of openapi.yaml (and, with ``handlers``,
    of the handlers it routes to), before anything else runs (kanal.contract)."""
    from kanal import contract

    problems = contract.check(handlers=handlers)
    if problems:
        raise click.ClickException(contract.report(problems, outcome))


db_option = click.option(
    "--db",
    "db_path",
    envvar="KANAL_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="SQLite database file, or a postgresql://user:pw@host:port/db URL (env KANAL_DB).",
)


@click.group()
@click.version_option(package_name="kanal")
def main() -> None:
    """kanal: commerce ingestion for WhatsApp marketing."""


@main.group()
def stores() -> None:
    """Create, change and list stores."""


@stores.command("create")
@click.option("--id", "store_id", type=click.IntRange(1, auth.MAX_STORE_ID), required=True)
@click.option("--name", required=True, help="The shop's name.")
@click.option("--team", "team_id", type=click.IntRange(1), help="The team that owns the store.")
@click.option(
    "--region",
    callback=lambda _ctx, _param, value: _region(value),
    help="ISO 3166 region for phone numbers without a country code "
    "(default: none, numbers must start with +).",
)
@click.option(
    "--rate-limit",
    type=click.IntRange(1),
    default=60,
    show_default=True,
    help="Requests per minute.",
)
@click.option(
    "--attribution-days",
    type=click.IntRange(1, 365),
    default=7,
    show_default=True,
    help="Days after abandonment in which an order recovers a checkout or cart.",
)
@click.option("--paused", is_flag=True, help="Create the store paused (it answers 404).")
@db_option
def stores_create(
    store_id: int,
    name: str,
    team_id: int | None,
    region: str | None,
    rate_limit: int,
    attribution_days: int,
    paused: bool,
    db_path: str,
) -> None:
    """Create a store."""
    storage = connect(db_path)
    try:
        store = storage.create_store(
            {
                "id": store_id,
                "name": name,
                "team_id": team_id,
                "region": region,
                "rate_limit": rate_limit,
                "attribution_days": attribution_days,
                "paused": int(paused),
            }
        )
    except (sqlite3.IntegrityError, psycopg.IntegrityError):
        raise click.ClickException(f"store {store_id} exists already") from None
    click.echo(_describe_store(store))


@stores.command("update")
@click.argument("store_id", type=int)
@click.option("--name")
@click.option(
    "--region",
    callback=lambda _ctx, _param, value: _region(value),
    help="ISO 3166 region for phone numbers without a country code.",
)
@click.option("--rate-limit", type=click.IntRange(1), help="Requests per minute.")
@click.option("--paused/--active", default=None, help="Pause or resume the store.")
@click.option(
    "--attribution-days",
    type=click.IntRange(1, 365),
    help="Days after abandonment in which an order recovers a checkout or cart.",
)
@click.option(
    "--sender",
    type=click.Choice(["log", "whatsapp", "webhook"]),
    help="How messages leave: log (no network), whatsapp, webhook.",
)
@click.option("--whatsapp-url", help="WhatsApp Cloud API base URL (with its version).")
@click.option("--whatsapp-phone-number-id", help="The sending phone number's id.")
@click.option("--whatsapp-token", help="The access token.")
@click.option("--webhook-url", help="Where the webhook sender POSTs messages.")
@click.option("--webhook-secret", help="The HMAC-SHA256 key that signs webhook bodies.")
@click.option("--recovery-steps", help="Minutes after abandonment, comma-separated (60,1440).")
@click.option("--shipping-statuses", help="Shipment statuses that notify, comma-separated.")
@click.option(
    "--order-confirmation/--no-order-confirmation",
    default=None,
    help="Send a confirmation when an order is paid.",
)
@click.option("--language", help="Template language when the customer has no locale.")
@click.option(
    "--template",
    "templates",
    multiple=True,
    metavar="AUTOMATION=NAME",
    help="Template name per automation (recovery, shipping, order_confirmation).",
)
@db_option
def stores_update(
    store_id: int,
    name: str | None,
    region: str | None,
    rate_limit: int | None,
    paused: bool | None,
    attribution_days: int | None,
    db_path: str,
    **automation: Any,
) -> None:
    """Change a store: name, pause, region, rate limit, attribution window, automations."""
    storage = connect(db_path)
    current = storage.get_store(store_id)
    if current is None:
        raise click.ClickException(f"no store {store_id}")
    changes: dict[str, Any] = {
        "name": name,
        "region": region,
        "rate_limit": rate_limit,
        "attribution_days": attribution_days,
        "paused": None if paused is None else int(paused),
        "automations": _automations(current, automation),
    }
    store = storage.update_store(store_id, {k: v for k, v in changes.items() if v is not None})
    assert store is not None
    click.echo(_describe_store(store))


def _csv(value: str, kind: type = str) -> list[Any]:
    try:
        return [kind(part.strip()) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of {kind.__name__}"
        ) from None


def _automations(store: dict[str, Any], options: dict[str, Any]) -> str | None:
    """The store's automation settings with the given options applied (JSON), or None."""
    from kanal.automations import DEFAULTS
    from kanal.spec import load_spec

    own = json.loads(store.get("automations") or "{}")
    before = json.dumps(own, sort_keys=True)
    nested = {
        "whatsapp_url": ("whatsapp", "base_url"),
        "whatsapp_phone_number_id": ("whatsapp", "phone_number_id"),
        "whatsapp_token": ("whatsapp", "access_token"),
        "webhook_url": ("webhook", "url"),
        "webhook_secret": ("webhook", "secret"),
    }
    for option, (group, key) in nested.items():
        if options[option] is not None:
            own.setdefault(group, {})[key] = options[option]
    for option in ("sender", "order_confirmation", "language"):
        if options[option] is not None:
            own[option] = options[option]
    if options["recovery_steps"] is not None:
        steps = _csv(options["recovery_steps"], int)
        if any(step <= 0 for step in steps):
            raise click.BadParameter("recovery steps are minutes after abandonment, above 0")
        own["recovery_steps"] = steps
    if options["shipping_statuses"] is not None:
        statuses = _csv(options["shipping_statuses"])
        known = set(load_spec()["components"]["schemas"]["ShipmentStatus"]["enum"])
        if not set(statuses) <= known:
            raise click.BadParameter(f"shipping statuses are among {', '.join(sorted(known))}")
        own["shipping_statuses"] = statuses
    for pair in options["templates"]:
        automation, _, template = pair.partition("=")
        if automation not in DEFAULTS["templates"] or not template:
            raise click.BadParameter(f"--template takes AUTOMATION=NAME, not {pair!r}")
        own.setdefault("templates", {})[automation] = template
    return json.dumps(own) if json.dumps(own, sort_keys=True) != before else None


@stores.command("list")
@db_option
def stores_list(db_path: str) -> None:
    """List stores."""
    for store in connect(db_path).list_stores():
        click.echo(_describe_store(store))


def _region(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise click.BadParameter(f"{value!r} is not a region phone numbers know (e.g. FR, US)")
    return value.upper()


def _describe_store(store: dict[str, Any]) -> str:
    from kanal.automations import settings

    sender = settings(store)["sender"]
    return (
        f"store {store['id']} {store['name']!r} team={store['team_id']} "
        f"region={store['region']} rate_limit={store['rate_limit']}/min "
        f"attribution={store['attribution_days']}d sender={sender} "
        f"{'paused' if store['paused'] else 'active'}"
    )


@main.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--store", "store_id", type=int, help="Restrict the key to this store.")
@click.option(
    "--team", "team_id", type=int, help="Make the key valid for every store of this team."
)
@click.option("--name", default="default", show_default=True, help="A label for the key.")
@click.option("--token", help="Import an existing 24-character key instead of drawing one.")
@db_option
def keys_create(
    store_id: int | None, team_id: int | None, name: str, token: str | None, db_path: str
) -> None:
    """Create a key; it is printed once, alone on the last line."""
    if (store_id is None) == (team_id is None):
        raise click.UsageError("give exactly one of --store or --team")
    storage = connect(db_path)
    if store_id is not None and storage.get_store(store_id) is None:
        raise click.ClickException(f"no store {store_id}")
    if team_id is not None and not storage.team_exists(team_id):
        raise click.ClickException(f"no team {team_id} (create a store with --team first)")
    token = create_key(storage, name=name, store_id=store_id, team_id=team_id, token=token)
    scope = f"store {store_id}" if store_id is not None else f"team {team_id}"
    click.echo(f"Created key {name!r} for {scope}. It is shown once; keep it secret:", err=False)
    click.echo(token)


def create_key(
    storage: Storage,
    *,
    name: str,
    store_id: int | None = None,
    team_id: int | None = None,
    token: str | None = None,
) -> str:
    """Store a key (drawn, or the given token) and return its token."""
    token = token or auth.new_token()
    if not auth.TOKEN_PATTERN.fullmatch(token):
        raise click.ClickException("a key is 24 letters and digits")
    try:
        storage.create_key(
            {
                "name": name,
                "token_hash": auth.hash_token(token),
                "prefix": token[:4],
                "store_id": store_id,
                "team_id": team_id,
            }
        )
    except (sqlite3.IntegrityError, psycopg.IntegrityError):
        raise click.ClickException("that key exists already") from None
    return token


@keys.command("list")
@db_option
def keys_list(db_path: str) -> None:
    """List keys (never their tokens)."""
    for key in connect(db_path).list_keys():
        scope = (
            f"store={key['store_id']}" if key["store_id"] is not None else f"team={key['team_id']}"
        )
        click.echo(f"{key['id']}\t{key['name']}\t{key['prefix']}…\t{scope}\t{key['created_at']}")


@keys.command("revoke")
@click.argument("key_id", type=int)
@db_option
def keys_revoke(key_id: int, db_path: str) -> None:
    """Delete a key; it stops working at once."""
    if not connect(db_path).delete_key(key_id):
        raise click.ClickException(f"no key {key_id}")
    click.echo(f"Revoked key {key_id}.")


def cpu_affinity_option(help: str) -> Any:
    """``--cpu-affinity auto|off`` (``kanal.affinity``), with what it does for a command."""
    return click.option(
        "--cpu-affinity",
        type=click.Choice(affinity.SETTINGS),
        default="auto",
        show_default=True,
        help=help,
    )


server_options = [
    click.option("--host", default="127.0.0.1", show_default=True),
    click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True),
    click.option(
        "--workers", type=click.IntRange(1), default=1, show_default=True, help="Worker processes."
    ),
    click.option(
        "--server",
        type=click.Choice(["granian", "uvicorn"]),
        default="granian",
        show_default=True,
        help="The HTTP server: granian (Rust; the faster on the benchmark) or uvicorn.",
    ),
    cpu_affinity_option(
        "auto: on SQLite, with two workers or more and no more workers than CPUs "
        "(Linux), each worker process runs on a CPU of its own; off (and auto on "
        "PostgreSQL): wherever the kernel puts it."
    ),
]


pool_size_option = click.option(
    "--pool-size",
    type=click.IntRange(1, 200),
    default=None,
    help="PostgreSQL connections per process (default 8: a request holds one for its "
    "transaction only); SQLite has one.",
)


def _with_server_options(func: Any) -> Any:
    for option in reversed(server_options):
        func = option(func)
    return db_option(func)


@main.command()
@_with_server_options
@click.option(
    "--with-worker", is_flag=True, help="Also deliver messages and run import jobs, in threads."
)
@pool_size_option
def serve(
    host: str,
    port: int,
    workers: int,
    server: str,
    cpu_affinity: str,
    db_path: str,
    with_worker: bool,
    pool_size: int | None,
) -> None:
    """Run the API server."""
    _check_contract("kanal serve did not start")
    if with_worker:
        _start_worker_thread(db_path, pool_size)
    run_server(db_path, host, port, workers, pool_size, server, cpu_affinity)


@main.command()
@db_option
@click.option(
    "--interval",
    type=click.FloatRange(0.05),
    default=1.0,
    show_default=True,
    help="Seconds to wait when nothing is due.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Messages claimed at a time.",
)
@click.option(
    "--lease",
    type=click.FloatRange(1),
    default=60.0,
    show_default=True,
    help="Seconds a claimed message or import job stays this worker's before others may "
    "take it over.",
)
@click.option(
    "--once",
    is_flag=True,
    help="Deliver what is due now and run the waiting import jobs, then exit.",
)
@pool_size_option
def worker(
    db_path: str, interval: float, batch: int, lease: float, once: bool, pool_size: int | None
) -> None:
    """Deliver due WhatsApp messages from the outbox and run import jobs (several may run
    at once, on any hosts)."""
    _check_contract("kanal worker did not start")
    import logging
    import signal
    import threading

    from kanal.jobs import IDLE, ImportRunner
    from kanal.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    storage, imports_storage = connect(db_path, pool_size), connect(db_path, pool_size)
    delivery = Worker(storage, lease_seconds=lease, batch=batch)
    imports = ImportRunner(imports_storage, lease_seconds=lease)
    try:
        if once:
            total, jobs = 0, 0
            while handled := delivery.run_once():
                total += handled
            while imports.run_once():
                jobs += 1
            click.echo(f"handled {total} messages, {jobs} import jobs")
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        click.echo(f"worker delivering and importing from {db_path}; Ctrl-C to stop")
        runner = threading.Thread(
            target=imports.run, args=(min(interval, IDLE), stop), name="kanal-imports", daemon=True
        )
        runner.start()
        with contextlib.suppress(KeyboardInterrupt):
            delivery.run(interval, stop)
        stop.set()
        runner.join(timeout=30)
    finally:
        imports.close()
        # On PostgreSQL: the pools' connections, their loops and threads.
        storage.close()
        imports_storage.close()


def _start_worker_thread(db_path: str, pool_size: int | None = None) -> None:
    import threading

    from kanal.jobs import ImportRunner
    from kanal.worker import Worker

    delivery = Worker(connect(db_path, pool_size))
    threading.Thread(target=delivery.run, name="kanal-worker", daemon=True).start()
    imports = ImportRunner(connect(db_path, pool_size))
    threading.Thread(target=imports.run, name="kanal-imports", daemon=True).start()


@main.command()
@_with_server_options
def demo(host: str, port: int, workers: int, server: str, cpu_affinity: str, db_path: str) -> None:
    """Serve demo store 123 and the documented key, set up in a new or empty database.

    Any other database (stores or keys that demo did not create) is refused, and a
    revoked demo key is never created again.
    """
    _check_contract("kanal demo did not start")
    storage = connect(db_path)
    try:
        key_kept = _set_up_demo(storage, db_path)
    finally:
        storage.close()
    if key_kept:
        click.echo(f"Demo store {DEMO_STORE} is ready at http://{host}:{port}; its key:")
        click.echo(DEMO_TOKEN)
    else:
        click.echo(
            f"Demo store {DEMO_STORE} is ready at http://{host}:{port}, but the demo key was "
            f"revoked; use a key from `kanal keys create --store {DEMO_STORE} --db {db_path}`."
        )
    run_server(db_path, host, port, workers, None, server, cpu_affinity)


#: The ``settings`` entry that marks a database as one ``kanal demo`` set up.
DEMO_MARKER = "demo_database"
DEMO_STORE_NAME = "Demo shop"


def _set_up_demo(storage: Storage, db_path: str) -> bool:
    """Create the demo store, key and marker in an empty database, accept a database
    demo set up before, refuse any other; in one transaction, so two demos starting at
    once create them once. Returns whether the demo key is there (False: revoked)."""
    from kanal import formats

    token_hash = auth.hash_token(DEMO_TOKEN)
    with storage.transaction():
        storage.lock_accounts()
        if storage.setting(DEMO_MARKER) is None:
            stores, keys = storage.list_stores(), storage.list_keys()
            if not stores and not keys:
                storage.create_store(
                    {
                        "id": DEMO_STORE,
                        "name": DEMO_STORE_NAME,
                        "team_id": None,
                        "region": "FR",
                        "rate_limit": 60,
                        "paused": 0,
                    }
                )
                create_key(storage, name="demo", store_id=DEMO_STORE, token=DEMO_TOKEN)
            elif not _made_by_unmarked_demo(stores, keys, token_hash):
                raise click.ClickException(
                    f"{db_path} is not a demo database: it holds stores or keys that "
                    f"`kanal demo` did not create, and demo adds its store {DEMO_STORE} and "
                    "public key only to a new or empty database. Try the demo on a new file "
                    "(`kanal demo --db demo.db`), or serve this database with "
                    f"`kanal serve --db {db_path}`."
                )
            storage.set_setting(DEMO_MARKER, formats.now())
        return storage.find_key(token_hash) is not None


def _made_by_unmarked_demo(
    stores: list[dict[str, Any]], keys: list[dict[str, Any]], token_hash: str
) -> bool:
    """Whether the accounts are what ``kanal demo`` created before it marked its
    databases: store 123 "Demo shop" and the demo key, nothing else."""
    return (
        len(stores) == 1
        and len(keys) == 1
        and stores[0]["id"] == DEMO_STORE
        and stores[0]["name"] == DEMO_STORE_NAME
        and stores[0]["team_id"] is None
        and keys[0]["token_hash"] == token_hash
        and keys[0]["store_id"] == DEMO_STORE
    )


def run_server(
    db_path: str,
    host: str,
    port: int,
    workers: int,
    pool_size: int | None = None,
    server: str = "granian",
    cpu_affinity: str = "auto",
) -> None:
    connect(db_path).close()  # create or migrate the schema once, before workers start
    os.environ["KANAL_DB"] = db_path if is_postgres(db_path) else os.path.abspath(db_path)
    if pool_size is not None:
        os.environ["KANAL_POOL_SIZE"] = str(pool_size)
    # The application runs in worker processes of the server's (granian's always,
    # uvicorn's from two on): they end with it, even when it is killed.
    if server == "granian" or workers > 1:
        os.environ["KANAL_WORKER_PROCESS"] = "1"
    # Each worker claims a CPU of its own as it starts (when they are bound).
    with affinity.worker_slots(cpu_affinity, workers, is_postgres(db_path)):
        _serve(host, port, workers, server)


def _serve(host: str, port: int, workers: int, server: str) -> None:
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            "kanal.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
        return
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        "kanal.app:app_from_env",
        factory=True,
        address=host,
        port=port,
        workers=workers,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        log_level=LogLevels.warning,
        log_access=False,
    ).serve()


@main.command()
@click.option(
    "--check",
    is_flag=True,
    help="Write nothing; exit 1 if any handler is missing or does not fit its operation.",
)
def stubs(check: bool) -> None:
    """Write a 501 handler stub for every operation of openapi.yaml that has none.

    The contract is checked first (nothing is written if it has a problem); then
    every existing handler against what Connexion passes it: a handler that does
    not fit is named, with the parameter, and left as it is (exit status 1).
    """
    from kanal import contract
    from kanal import stubs as stubs_module
    from kanal.app import ROOT
    from kanal.spec import SPEC, load_spec

    # The handlers are not looked at yet: writing the missing ones is what stubs is for.
    _check_contract("no handler was looked at, nothing was written", handlers=False)
    try:
        missing = stubs_module.missing(ROOT, SPEC)
    except ValueError as exc:  # a handler module that is not valid Python
        raise click.ClickException(f"{exc}; nothing was written") from None
    if check:
        for stub in missing:
            click.echo(f"missing: {stub.label}")
    else:
        for stub, path in zip(missing, stubs_module.write(ROOT, missing), strict=True):
            click.echo(f"wrote {stub.label} to {path.relative_to(ROOT)}")
    # Stubs written just now fit by construction; missing ones (--check) are named above.
    mismatches = contract.handler_problems(load_spec(), skip=tuple(missing) if check else ())
    for problem in mismatches:
        click.echo(f"does not fit: {problem}")
    if mismatches or (check and missing):
        raise SystemExit(1)
    if check:
        click.echo("Every operation has a handler that takes what Connexion passes it.")
    elif not missing:
        click.echo("Every operation has a handler; nothing to write.")


@main.command()
@db_option
def migrate(db_path: str) -> None:
    """Create or upgrade the database's schema, then exit (serve and worker also do
    it at start). Versioned and idempotent: every row is kept."""
    storage = connect(db_path)  # opening a database migrates it, in one transaction
    before, after = storage.migrated
    storage.close()
    was = (
        " (created)"
        if before < 0
        else f" (upgraded from version {before})"
        if before != after
        else " (up to date)"
    )
    click.echo(f"{db_path}: schema at version {after}{was}")


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--store", "store_id", type=int, required=True, help="The store to import into.")
@click.option(
    "--resource",
    type=click.Choice(RESOURCES),
    required=True,
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Records per transaction (default: 1000 on SQLite, 2500 on PostgreSQL).",
)
@click.option(
    "--jobs",
    type=click.IntRange(0, 64),
    default=None,
    help="Processes that parse and validate (default: one per CPU but one for files "
    "over 4 MiB, else 0: in the importing process).",
)
@cpu_affinity_option(
    "auto: on PostgreSQL, on Linux, when there is a CPU for each checking process and one "
    "more, each process of the import (the writer, every checking process) runs on a CPU "
    "of its own; off: wherever the kernel puts them."
)
@db_option
def import_(
    file: str,
    store_id: int,
    resource: str,
    batch: int | None,
    jobs: int | None,
    cpu_affinity: str,
    db_path: str,
) -> None:
    """Upsert records from JSON Lines (or a JSON array) with the API's own validation."""
    from concurrent.futures.process import BrokenProcessPool

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    from kanal.bulk import import_file

    # What is loaded so far lives as long as the command: the collector need not look
    # at it again (nor need the checking processes forked from this one).
    gc.freeze()
    size = os.path.getsize(file)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
        # Drawn at each chunk, not by a thread of its own: with no other thread, the
        # checking processes are forked from this one, which has the code imported.
        auto_refresh=False,
    ) as bar:
        task = bar.add_task(f"importing {resource}", total=size)
        try:
            report = import_file(
                file,
                store_id,
                resource,
                db_path,
                batch=batch,
                jobs=jobs,
                progress=lambda done, _: bar.update(task, completed=done, refresh=True),
                cpu_affinity=cpu_affinity,
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenProcessPool:
            raise click.ClickException(
                "a checking process died; the chunks written before it are committed "
                "(a transaction each) and an import upserts, so running it again is safe"
            ) from None
    for number, errors in report.invalid:
        for path, messages in errors.items():
            for message in messages:
                click.echo(f"line {number}: {message}" + (f" [{path}]" if path else ""), err=True)
    rate = report.valid / report.seconds if report.seconds else 0.0
    click.echo(
        f"{report.valid} imported ({report.created} created, {report.updated} updated), "
        f"{len(report.invalid)} invalid, in {report.seconds:.2f}s ({rate:,.0f} records/s)"
    )
    if report.invalid:
        raise SystemExit(1)


class PushFailed(click.ClickException):
    """``kanal push`` could not go on (bad input, the server, the key): exit status 2."""

    exit_code = 2


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--url", envvar="KANAL_URL", required=True, help="The kanal (env KANAL_URL).")
@click.option(
    "--key", envvar="KANAL_KEY", required=True, help="A key of the store (env KANAL_KEY)."
)
@click.option(
    "--store",
    "store_id",
    type=click.IntRange(1, auth.MAX_STORE_ID),
    required=True,
    help="The store to import into.",
)
@click.option(
    "--resource",
    type=click.Choice(RESOURCES),
    required=True,
)
@click.option(
    "--job-size",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Records per import job (default: the most a job takes, 10,000).",
)
def push(file: str, url: str, key: str, store_id: int, resource: str, job_size: int | None) -> None:
    """Send a file of records (JSON Lines or a JSON array) to a kanal over HTTP, as import
    jobs; follow them, and list the records that were not written.

    Exit status: 0 when every record was written; 1 when some were invalid (listed with
    their line) or a job did not end done; 2 when the push could not go on (the file,
    the URL, the key, the store), saying what was sent."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from kanal.push import Pusher, PushError

    try:
        with open(file, "rb") as stream:
            stream.read(1)
    except OSError as exc:
        raise PushFailed(f"cannot read {file}: {exc.strerror or exc}") from None
    # The bar, on a terminal only (on stderr: stdout keeps the summary alone).
    bar = (
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
            console=Console(stderr=True),
        )
        if sys.stderr.isatty()
        else None
    )
    with bar or contextlib.nullcontext():
        task = bar.add_task(f"pushing {resource}", total=None) if bar else None

        def progress(done: int, known: int, read_all: bool) -> None:
            if bar is not None and task is not None:
                bar.update(task, completed=done, total=known if read_all else max(known, 1))

        pusher: Pusher | None = None
        try:
            pusher = Pusher(url, key, store_id, resource, job_size=job_size, progress=progress)
            outcome = pusher.run(file)
        except PushError as exc:
            raise PushFailed(str(exc)) from None
        except KeyboardInterrupt:
            sent = pusher.sent() if pusher is not None else "nothing was sent"
            raise PushFailed(f"interrupted; {sent}") from None
    for number, errors in outcome.invalid:
        for path, messages in errors.items():
            for message in messages:
                click.echo(f"line {number}: {message}" + (f" [{path}]" if path else ""), err=True)
    for problem in outcome.problems:
        click.echo(problem, err=True)
    written = outcome.count("created") + outcome.count("updated")
    rate = outcome.records / outcome.seconds if outcome.seconds else 0.0
    click.echo(
        f"{outcome.records} records in {len(outcome.jobs)} jobs: {written} imported "
        f"({outcome.count('created')} created, {outcome.count('updated')} updated), "
        f"{len(outcome.invalid)} invalid, in {outcome.seconds:.2f}s ({rate:,.0f} records/s)"
    )
    if outcome.invalid or outcome.problems:
        raise SystemExit(1)

"""A throwaway PostgreSQL server: a fresh cluster in a temporary directory, on a
free loopback port, stopped and deleted at the end.

The tests, the conformance run and the benchmarks use it when no server is given
(``KANAL_TEST_POSTGRES_URL`` names an existing one instead). It needs Debian's
``postgresql`` package (``initdb`` and ``pg_ctl`` under /usr/lib/postgresql/N/bin),
which ``make test`` installs when it is missing. PostgreSQL refuses to run as root,
so when this process is root the cluster belongs to the ``postgres`` user.

    python -m kanal.throwaway    # start one, print its URL, stop on Ctrl-C
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Where Debian installs the server binaries, one directory per major version.
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
_numbers = itertools.count()


class Unavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def binaries() -> Path:
    """The bin directory of the newest PostgreSQL installed."""
    found = sorted(
        (p for p in DEBIAN_BINARIES.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise Unavailable(
        "PostgreSQL's server is not installed: `apt-get install postgresql` "
        "(make test does it), or set KANAL_TEST_POSTGRES_URL to a server of yours."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayPostgres:
    """``start()`` a cluster, use ``url``, ``stop()`` it (or use it as a context manager)."""

    def __init__(self, *, durable: bool = False) -> None:
        #: durable=False turns fsync off: fast, and nothing is lost unless the machine
        #: itself crashes (the tests kill kanal, never PostgreSQL).
        self.durable = durable
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kanal-pg-"))
        self.data = self.dir / "data"
        self.url = f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/postgres"
        self._as_server_user = os.geteuid() == 0
        self._started = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(binaries() / args[0]), *args[1:]]
        if self._as_server_user:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    def start(self) -> ThrowawayPostgres:
        if self._as_server_user:
            shutil.chown(self.dir, SERVER_USER)
        done = self._run(
            "initdb", "-D", str(self.data), "-U", SERVER_USER, "-A", "trust", "-E", "UTF8",
            "--locale", "C", "--no-sync",
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
            "-c max_connections=200 -c shared_buffers=128MB"
            + ("" if self.durable else " -c fsync=off -c full_page_writes=off")
        )
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip
        if done.returncode:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}{done.stderr}{log}")
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server(url: str | None = None) -> Iterator[str]:
    """The URL of a server: ``url`` (or ``$KANAL_TEST_POSTGRES_URL``) as it is, else a
    throwaway one for the duration of the block."""
    url = url or os.environ.get("KANAL_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with ThrowawayPostgres() as cluster:
        yield cluster.url


@contextlib.contextmanager
def fresh_database(url: str, prefix: str = "kanal", template: str | None = None) -> Iterator[str]:
    """A new database on the server of ``url`` (its URL), dropped afterwards: empty, or
    a copy of the database named ``template`` (which nobody may be connected to)."""
    from urllib.parse import urlsplit

    import psycopg

    name = f"{prefix}_{os.getpid()}_{next(_numbers)}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    with ThrowawayPostgres() as cluster:
        print(cluster.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()

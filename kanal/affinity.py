"""A CPU of its own for each worker process of ``kanal serve --workers N``, and for each
process of ``kanal import`` (Linux).

``kanal serve`` names a set of CPU slots (``KANAL_CPU_SLOTS``: a name of its own and
the CPUs it may use) before its server starts the workers. Each worker, as it loads
the application, claims the first free slot, by binding a Unix socket to the slot's
address in Linux's abstract namespace: the kernel lets one socket hold an address and
frees it when the socket's last holder ends, however it ends (a worker that dies frees
its CPU for the one started in its place; nothing is left on disk). The worker then
binds every thread it has to that CPU, and the threads it starts afterwards (the
server's I/O threads, the event loop's) inherit the binding, so a worker's work stays
on one CPU and its caches. A worker that finds no free slot (more workers than CPUs) is left
unbound. On SQLite only (see ``wanted``). Measured: README, Benchmarks.

``kanal import`` on PostgreSQL binds the same way while it runs (``bound_import``):
the importing process (the writer) and each checking process claim a CPU each from a
set of their own; the database server's processes are left where they are.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: ``--cpu-affinity``'s values: bind where it helps, or never.
SETTINGS = ("auto", "off")
#: The environment variable naming the workers' slots.
SLOTS_ENV = "KANAL_CPU_SLOTS"
#: The sockets holding this process's claims (closing one frees its CPU).
_claimed: list[socket.socket] = []


def available() -> bool:
    """Whether this platform binds threads to CPUs (``os.sched_setaffinity``) and has
    the abstract socket namespace the claims use: Linux."""
    return sys.platform.startswith("linux") and hasattr(os, "sched_setaffinity")


def wanted(setting: str, workers: int, postgres: bool) -> bool:
    """Whether ``kanal serve`` binds its workers: ``auto`` with two workers or more, no
    more workers than CPUs this process may use, on SQLite, on Linux; never with
    ``off``. Not on PostgreSQL: its server's processes may share these CPUs, and bound
    workers cannot make way for them (measured slower: README, Benchmarks)."""
    return (
        setting == "auto"
        and not postgres
        and available()
        and 1 < workers <= len(os.sched_getaffinity(0))
    )


def import_wanted(setting: str, jobs: int, postgres: bool) -> bool:
    """Whether ``kanal import`` binds its processes: ``auto`` on PostgreSQL, on Linux,
    with checking processes (``jobs``), a CPU for each of them and one for the writer.
    On SQLite it made no difference (measured: README, Bulk import)."""
    return (
        setting == "auto" and postgres and available() and 0 < jobs < len(os.sched_getaffinity(0))
    )


def make_slots() -> str:
    """A new set of slots: a name of its own and the CPUs this process may use now (the
    processes that claim them may be narrower by then: bound, or started by one that
    is), as ``name:cpu,cpu,...``."""
    cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))
    return f"kanal-cpus-{os.getpid()}-{secrets.token_hex(6)}:{cpus}"


def claim(slots: str) -> int | None:
    """Claim the first free CPU of ``slots`` and hold it until this process ends (or
    ``bound_import`` lets it go); the CPU, or None when every one is claimed."""
    name, _, cpus = slots.partition(":")
    for cpu in (int(cpu) for cpu in cpus.split(",") if cpu):
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            holder.bind(f"\0{name}-{cpu}")  # abstract: no file, gone with its holders
        except OSError:  # claimed by another process
            holder.close()
            continue
        _claimed.append(holder)
        return cpu
    return None


def bind(slots: str | None) -> int | None:
    """Bind this thread (and the threads it starts afterwards: they inherit it) to a CPU
    it claims from ``slots``. The CPU, or None (no slots, every CPU claimed)."""
    if not slots or not available():
        return None
    cpu = claim(slots)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return cpu


@contextmanager
def worker_slots(setting: str, workers: int, postgres: bool) -> Iterator[str | None]:
    """While ``kanal serve`` runs: the slots its workers claim from (exported to them as
    ``KANAL_CPU_SLOTS``), or None when they are not to be bound."""
    if not wanted(setting, workers, postgres):
        os.environ.pop(SLOTS_ENV, None)
        yield None
        return
    os.environ[SLOTS_ENV] = slots = make_slots()
    try:
        yield slots
    finally:
        os.environ.pop(SLOTS_ENV, None)


def bind_worker() -> int | None:
    """In a worker process, as it loads the application: bind it to a CPU of its own
    when ``kanal serve`` asked for it (``KANAL_CPU_SLOTS``): this thread, the threads
    it starts afterwards (granian starts its own then) and those running already
    (uvicorn's supervisor's ping thread). The CPU, or None."""
    cpu = bind(os.environ.get(SLOTS_ENV))
    if cpu is not None:
        for thread in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.sched_setaffinity(int(thread), {cpu})
    return cpu


@contextmanager
def bound_import(setting: str, jobs: int, postgres: bool) -> Iterator[str | None]:
    """While an import runs: this process (the writer, and the threads it starts) bound
    to a CPU it claims, and the slots from which each checking process claims another
    (``bind``); None when nothing is bound. Afterwards this thread may run anywhere it
    could before, and the claim is released."""
    if not import_wanted(setting, jobs, postgres):
        yield None
        return
    before = os.sched_getaffinity(0)
    slots = make_slots()
    held = len(_claimed)
    try:
        bind(slots)
        yield slots
    finally:
        os.sched_setaffinity(0, before)
        for holder in _claimed[held:]:
            holder.close()
        del _claimed[held:]

"""A CPU of its own for each worker process of ``kanal serve --workers N`` (Linux).

``kanal serve`` makes a directory of CPU slots (``KANAL_CPU_SLOTS``) before its
server starts the workers. Each worker, as it loads the application, claims the first
free slot of the CPUs it may run on (an ``flock`` on the slot's file, held for the
process's life: a worker that dies frees its CPU for the one started in its place)
and binds its main thread to that CPU; the threads it starts afterwards (the server's
I/O threads, the event loop's) inherit the binding, so a worker's work stays on one
CPU and its caches. A worker that finds no free slot (more workers than CPUs) is left
unbound. On SQLite only (see ``wanted``). Measured: README, Benchmarks.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

#: The environment variable naming the slots' directory, for the workers.
SLOTS_ENV = "KANAL_CPU_SLOTS"
#: The open slot files of this process (kept open: closing one would free the claim).
_claimed: list[int] = []


def available() -> bool:
    """Whether this platform binds threads to CPUs (``os.sched_setaffinity``)."""
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


@contextmanager
def slots(setting: str, workers: int, postgres: bool) -> Iterator[str | None]:
    """The slots' directory while the server runs (exported as ``KANAL_CPU_SLOTS``
    to its workers), or None when the workers are not to be bound; removed after."""
    if not wanted(setting, workers, postgres):
        os.environ.pop(SLOTS_ENV, None)
        yield None
        return
    directory = tempfile.mkdtemp(prefix="kanal-cpus-")
    os.environ[SLOTS_ENV] = directory
    try:
        yield directory
    finally:
        os.environ.pop(SLOTS_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


def claim(directory: str) -> int | None:
    """Claim the first free CPU among those this process may use, and hold it until the
    process ends; the CPU, or None when every one is claimed."""
    for cpu in sorted(os.sched_getaffinity(0)):
        descriptor = os.open(os.path.join(directory, f"cpu-{cpu}"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        _claimed.append(descriptor)
        return cpu
    return None


def bind_worker() -> int | None:
    """In a worker process, as it starts (before it starts threads): bind it to a CPU
    of its own when ``kanal serve`` asked for it (``KANAL_CPU_SLOTS``). The CPU, or None."""
    directory = os.environ.get(SLOTS_ENV)
    if not directory or not available() or not os.path.isdir(directory):
        return None
    cpu = claim(directory)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # this thread; the threads it starts inherit it
    return cpu

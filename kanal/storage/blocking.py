"""A synchronous face over an async engine, for the command line, the worker, the
import and the tests: what ``Storage`` is over SQLite, ``Blocking`` is over
PostgreSQL.

The engine lives on an event loop of its own, in a thread, and one task there runs
every call in turn. A transaction entered through this face therefore holds its
pooled connection for the calls that follow until it is left (the engine keeps it
in a ContextVar, which belongs to that one task).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

Call = Callable[[], Awaitable[Any]]


class Blocking:
    """Every coroutine method of ``engine`` as a plain method; ``transaction`` and
    ``savepoint`` as plain context managers."""

    def __init__(self, opener: Call) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kanal-storage", daemon=True
        )
        self._thread.start()
        self._calls: asyncio.Queue[tuple[Call | None, concurrent.futures.Future[Any]]] = (
            asyncio.Queue()
        )
        self._runner = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        try:
            self.engine = self.call(opener)
        except BaseException:
            self._stop()
            raise

    async def _serve(self) -> None:
        """The one task that runs the calls, in order."""
        while True:
            function, future = await self._calls.get()
            if function is None:
                future.set_result(None)
                return
            try:
                future.set_result(await function())
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)

    def call(self, function: Call) -> Any:
        """Run ``function()`` (a coroutine) in the engine's task; its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._calls.put_nowait, (function, future))
        return future.result()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.engine, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self.call(lambda: attribute(*args, **kwargs))

        blocking.__name__ = name
        return blocking

    @contextmanager
    def _entered(self, manager: AbstractAsyncContextManager[Any]) -> Iterator[Any]:
        value = self.call(manager.__aenter__)
        try:
            yield value
        except BaseException as exc:
            leave = functools.partial(manager.__aexit__, type(exc), exc, exc.__traceback__)
            if not self.call(leave):
                raise
        else:
            self.call(lambda: manager.__aexit__(None, None, None))

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction: every call made inside it is part of it."""
        with self._entered(self.engine.transaction()) as connection:
            yield connection

    @contextmanager
    def savepoint(self) -> Iterator[Any]:
        """Inside a transaction: a part that undoes itself alone when it fails."""
        with self._entered(self.engine.savepoint()) as connection:
            yield connection

    def close(self) -> None:
        """Close the engine, then stop its loop and thread."""
        try:
            self.call(self.engine.close)
        finally:
            self._stop()

    def _stop(self) -> None:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._calls.put_nowait, (None, future))
        future.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

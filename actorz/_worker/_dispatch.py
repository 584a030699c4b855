"""Dispatcher base: what both actor dispatchers share.

``submit`` and ``cancel`` are called from the client's receive path, under the client's
lock: they only enqueue, never run user code there.
"""

from __future__ import annotations

import inspect
from typing import Any

from actorz._client import Client

SYNC, CORO, AGEN = 0, 1, 2


class Dispatcher:
    """Runs calls on one actor instance; subclasses decide where (event loop, threads)."""

    def __init__(self, client: Client, max_concurrency: int, class_name: str) -> None:
        self.client = client
        self.max_concurrency = max_concurrency
        self.class_name = class_name
        self.instance: Any = None
        self._methods: dict[str, tuple[Any, int]] = {}

    def start(self, instance: Any) -> None:
        self.instance = instance

    def submit(self, src: bytes, call_id: int, payload: Any, bufs: Any) -> None:
        raise NotImplementedError

    def cancel(self, src: bytes, call_id: int) -> None:
        raise NotImplementedError

    def in_flight(self) -> int:
        """Calls this actor holds, running or waiting (for ``actorz status``)."""
        raise NotImplementedError

    def lookup(self, name: str) -> tuple[Any, int]:
        """The bound method and its kind; cached, because every call needs it."""
        entry = self._methods.get(name)
        if entry is None:
            if name.startswith("__") and name.endswith("__"):
                raise AttributeError(f"'{self.class_name}' actor has no method '{name}'")
            try:
                method = getattr(self.instance, name)
            except AttributeError:
                raise AttributeError(
                    f"'{self.class_name}' actor has no method '{name}'"
                ) from None
            if not callable(method):
                raise TypeError(f"'{self.class_name}.{name}' is not a method")
            fn = getattr(method, "__func__", method)
            if inspect.iscoroutinefunction(fn):
                kind = CORO
            elif inspect.isasyncgenfunction(fn):
                kind = AGEN
            else:
                kind = SYNC
            entry = self._methods[name] = (method, kind)
        return entry


async def collect_async_gen(agen: Any) -> list[Any]:
    """An async generator method's call returns the list of what it yielded."""
    return [item async for item in agen]

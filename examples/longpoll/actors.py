"""The actors of the long-polling example, after the design pattern "Concurrent
operations with async actor": a data store, and two actors that poll it in a loop."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import actorz


@actorz.remote
class DataStore:
    """Produces an item every ``interval`` seconds; ``fetch`` waits for the next one."""

    def __init__(self, interval: float, backlog: int = 100) -> None:
        self._interval = interval
        # Bounded: with nobody fetching, production pauses instead of piling up.
        self._items: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=backlog)
        self._producer: asyncio.Task[None] | None = None

    async def fetch(self, timeout: float) -> dict[str, Any] | None:
        """The next item, or ``None`` if none comes within ``timeout`` seconds."""
        if self._producer is None:  # started here, where the actor's event loop runs
            self._producer = asyncio.get_running_loop().create_task(self._produce())
        try:
            return await asyncio.wait_for(self._items.get(), timeout)
        except TimeoutError:
            return None

    async def _produce(self) -> None:
        for n in itertools.count(1):
            await asyncio.sleep(self._interval)
            await self._items.put({"id": n})


@actorz.remote
class LongPollingActorAsync:
    """Long-polls the data store in ``run`` and still answers ``other_task`` and ``stats``."""

    def __init__(self, data_store: actorz.ActorHandle[DataStore]) -> None:
        self.data_store = data_store
        self.processed = 0
        self.other_task_calls = 0

    async def run(self) -> None:
        """Fetch and process items forever, until cancelled with ``actorz.cancel``."""
        while True:
            # Awaiting hands this actor's event loop to its other calls (other_task,
            # stats) until the data store answers: that is the whole pattern.
            ref = self.data_store.fetch.remote(timeout=1.0)
            try:
                item = await ref
            except asyncio.CancelledError:
                # Cancelling run() does not cancel the fetch it awaits; without this,
                # that fetch would take the next item and hand it to nobody.
                actorz.cancel(ref)
                raise
            if item is not None:
                self._process(item)

    def _process(self, item: dict[str, Any]) -> None:
        self.processed += 1
        print(f"processed item {item['id']}")

    async def other_task(self) -> bool:
        self.other_task_calls += 1
        return True

    async def stats(self) -> dict[str, int]:
        return {"processed": self.processed, "other_task_calls": self.other_task_calls}


@actorz.remote
class LongPollingActor:
    """The same loop in a threaded actor: ``run`` keeps the actor's only thread forever,
    so ``other_task`` waits behind it, forever."""

    def __init__(self, data_store: actorz.ActorHandle[DataStore]) -> None:
        self.data_store = data_store

    def run(self) -> None:
        while True:
            item = actorz.get(self.data_store.fetch.remote(timeout=1.0))
            if item is not None:
                print(f"processed item {item['id']}")

    def other_task(self) -> bool:
        return True

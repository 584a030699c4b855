"""Async dispatcher: one event loop runs every method; at most max_concurrency at once.

Calls start in arrival order. Plain ``def`` methods run on the loop too (no thread, no
race): inline when nothing started earlier in the same turn is still waiting for its
first step, otherwise as a task, so that start order is arrival order.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any

from actorz import _serialization as S
from actorz._client import Client
from actorz._pending import current_call
from actorz._worker._dispatch import AGEN, CORO, Dispatcher, collect_async_gen

_get_running_loop = asyncio._get_running_loop


async def _run_sync(fn: Any, args: Any, kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class AsyncDispatcher(Dispatcher):
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, max_concurrency: int,
                 class_name: str) -> None:
        super().__init__(client, max_concurrency, class_name)
        self.loop = loop
        self._queue: deque[tuple[bytes, int, Any, Any]] = deque()
        self._running = 0
        self._scheduled = False
        self._inline = False
        self._tasks: dict[tuple[bytes, int], asyncio.Task[Any]] = {}
        #: Cancelled calls whose _invoke already answered (the rest never started).
        self._cancel_answered: set[tuple[bytes, int]] = set()

    def start(self, instance: Any) -> None:
        super().start(instance)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            if _get_running_loop() is self.loop:
                self.loop.call_soon(self._run)
            else:
                self.loop.call_soon_threadsafe(self._run)

    def submit(self, src: bytes, call_id: int, payload: Any, bufs: Any) -> None:
        self._queue.append((src, call_id, payload, bufs))
        if self.instance is None or self._scheduled:
            return
        if self.client._deferring and _get_running_loop() is self.loop:
            self._inline = True  # the reader callback runs us when its drain is done
        else:
            self._schedule()

    def in_flight(self) -> int:
        return self._running + len(self._queue)

    def drained(self) -> None:
        """``Client.on_drained``: start what the drain just delivered, in the same turn."""
        if self._inline:
            self._inline = False
            self._run()

    def cancel(self, src: bytes, call_id: int) -> None:
        if _get_running_loop() is self.loop:
            self._cancel(src, call_id)
        else:
            self.loop.call_soon_threadsafe(self._cancel, src, call_id)

    def _cancel(self, src: bytes, call_id: int) -> None:
        task = self._tasks.get((src, call_id))
        if task is not None:
            self.client.cancelled_calls.add((src, call_id))
            task.cancel()
            return
        for i, (s, c, _, _) in enumerate(self._queue):
            if s == src and c == call_id:
                del self._queue[i]
                self.client.reply_fail(src, call_id, "TaskCancelledError",
                                       "the call was cancelled before it started")
                return

    def fail_queued(self, error_type: str, message: str) -> None:
        while self._queue:
            src, call_id, _, _ = self._queue.popleft()
            self.client.reply_fail(src, call_id, error_type, message)

    def _run(self) -> None:
        self._scheduled = False
        queue = self._queue
        client = self.client
        loop = self.loop
        started = False
        while queue and self._running < self.max_concurrency:
            src, call_id, payload, bufs = queue.popleft()
            name = "?"
            try:
                name, args, kwargs = S.loads(payload, bufs)
                method, kind = self.lookup(name)
                if kind == CORO:
                    coro = method(*args, **kwargs) if kwargs else method(*args)
                elif kind == AGEN:
                    coro = collect_async_gen(method(*args, **(kwargs or {})))
                elif not started:
                    result = method(*args, **kwargs) if kwargs else method(*args)
                    client.reply(src, call_id, result)
                    continue
                else:
                    coro = _run_sync(method, args, kwargs or {})
            except Exception as exc:
                client.reply_error(src, call_id, exc, f"{self.class_name}.{name}")
                continue
            started = True
            key = (src, call_id)
            token = current_call.set(key)  # copied into the task's context
            task = loop.create_task(self._invoke(key, name, coro))
            current_call.reset(token)
            self._running += 1
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._done, key, name))

    async def _invoke(self, key: tuple[bytes, int], name: str, coro: Any) -> None:
        # Replies from inside the task's own step: the reply goes out one loop turn
        # sooner than from a done callback (which asyncio runs on the next turn).
        src, call_id = key
        try:
            result = await coro
        except asyncio.CancelledError:
            self._cancel_answered.add(key)
            self.client.reply_fail(src, call_id, "TaskCancelledError",
                                   f"{self.class_name}.{name} was cancelled")
            raise
        except Exception as exc:
            self.client.reply_error(src, call_id, exc, f"{self.class_name}.{name}")
        else:
            self.client.reply(src, call_id, result)

    def _done(self, key: tuple[bytes, int], name: str, task: asyncio.Task[Any]) -> None:
        self._running -= 1
        self._tasks.pop(key, None)
        self.client.cancelled_calls.discard(key)
        if task.cancelled():
            if key in self._cancel_answered:
                self._cancel_answered.discard(key)
            else:  # cancelled before its first step: _invoke never ran to answer
                self.client.reply_fail(key[0], key[1], "TaskCancelledError",
                                       f"{self.class_name}.{name} was cancelled")
        if self._queue:
            self._schedule()

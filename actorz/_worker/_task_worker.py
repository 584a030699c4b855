"""Task worker: runs remote functions pulled from the broker's task queue.

The broker hands a worker at most ``WORKER_CREDIT`` tasks at a time and counts its
results as returned credit (the load-balancing pattern). Synchronous functions run one
at a time on the worker's event loop (and may block on ``actorz.get``); ``async def``
functions run concurrently on it. While a synchronous function runs, the thread has no
running loop, so it may call ``asyncio.run()`` (the reference documents' wrapper pattern).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any

from actorz import _protocol as P
from actorz import _serialization as S
from actorz._client import Client
from actorz._logging import current_task
from actorz._pending import current_call

_get_running_loop = asyncio._get_running_loop
_set_running_loop = asyncio._set_running_loop


class TaskWorker:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self._fns: dict[bytes, tuple[Any, str, bool]] = {}
        self._queue: deque[tuple[bytes, int, Any, Any]] = deque()
        self._scheduled = False
        self._inline = False
        self._tasks: dict[tuple[bytes, int], asyncio.Task[Any]] = {}

    def submit(self, src: bytes, call_id: int, payload: Any, bufs: Any) -> None:
        self._queue.append((src, call_id, payload, bufs))
        if self._scheduled:
            return
        if self.client._deferring and _get_running_loop() is self.loop:
            self._inline = True  # the reader callback runs us when its drain is done
        else:
            self._scheduled = True
            if _get_running_loop() is self.loop:
                self.loop.call_soon(self._run)
            else:
                self.loop.call_soon_threadsafe(self._run)

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
                                       "the task was cancelled before it started")
                return

    def drained(self) -> None:
        """``Client.on_drained``: run what the drain just delivered, in the same turn."""
        if self._inline:
            self._inline = False
            self._run()

    def _function(self, fn_id: bytes, definition: Any) -> tuple[Any, str, bool]:
        entry = self._fns.get(fn_id)
        if entry is None:
            fn, name = S.loads(definition)
            entry = self._fns[fn_id] = (fn, name, asyncio.iscoroutinefunction(fn))
        return entry

    def _run(self) -> None:
        self._scheduled = False
        client = self.client
        queue = self._queue
        while queue:
            if client._unflushed:
                # A quick task's result must not wait for a long one queued behind it on
                # this worker: the watcher thread sends it while the next task runs (at
                # once if that task waits on I/O, within the GIL's 5 ms switch interval if
                # it computes). Flushing here instead, per task, cost 60% of the
                # throughput of bursts of small tasks (61k -> 24k/s).
                client.flush_soon()
            src, call_id, payload, bufs = queue.popleft()
            name = "task"
            token = None
            try:
                fn_id, definition, data = P.decode_task(payload)
                fn, name, is_async = self._function(fn_id, definition)
                args, kwargs = S.loads(data, bufs)
                token = current_task.set((src.hex(), name))
                if is_async:
                    key = (src, call_id)
                    call_token = current_call.set(key)  # copied into the task's context
                    task = self.loop.create_task(fn(*args, **(kwargs or {})))
                    current_call.reset(call_token)
                    self._tasks[key] = task
                    task.add_done_callback(functools.partial(self._done, key, name))
                    continue
                # A synchronous function runs as if no loop were running, as it would in
                # a plain process: it may call asyncio.run() (the documents' wrapper
                # pattern) or block on actorz.get. It owns the worker meanwhile.
                _set_running_loop(None)
                try:
                    result = fn(*args, **kwargs) if kwargs else fn(*args)
                finally:
                    _set_running_loop(self.loop)
            except Exception as exc:
                client.reply_error(src, call_id, exc, name)
            else:
                client.reply(src, call_id, result)
            finally:
                if token is not None:
                    current_task.reset(token)

    def _done(self, key: tuple[bytes, int], name: str, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(key, None)
        self.client.cancelled_calls.discard(key)
        src, call_id = key
        if task.cancelled():
            self.client.reply_fail(src, call_id, "TaskCancelledError", f"{name} was cancelled")
            return
        exc = task.exception()
        if exc is not None:
            self.client.reply_error(src, call_id, exc, name)
        else:
            self.client.reply(src, call_id, task.result())

"""Threaded dispatcher: calls run in a pool of max_concurrency threads, in arrival order.

The socket is drained by the client's I/O thread, which only enqueues here. A pool
thread sends its replies itself when it runs out of work (no hop to the I/O thread);
while more calls wait, it leaves the send to the I/O thread, which batches replies.

With one thread (the default), the idle pool thread receives on the socket itself, as a
thread blocked in ``actorz.get`` does, and runs what it receives: no hop between the I/O
thread and the pool on the way in either.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from actorz import _serialization as S
from actorz._client import Client
from actorz._worker._dispatch import SYNC, Dispatcher


class ThreadDispatcher(Dispatcher):
    def __init__(self, client: Client, max_concurrency: int, class_name: str) -> None:
        super().__init__(client, max_concurrency, class_name)
        self._queue: deque[tuple[bytes, int, Any, Any]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._single = max_concurrency == 1
        self._busy = 0  # calls running in the pool
        self._tid = 0
        self._waker: Any = None

    def start(self, instance: Any) -> None:
        super().start(instance)
        for i in range(self.max_concurrency):
            t = threading.Thread(target=self._work, name=f"actorz-call-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, src: bytes, call_id: int, payload: Any, bufs: Any) -> None:
        with self._cond:
            self._queue.append((src, call_id, payload, bufs))
            self._cond.notify()
        waker = self._waker
        if waker is not None and threading.get_ident() != self._tid:
            waker.signal()  # the single pool thread may be waiting on the socket

    def cancel(self, src: bytes, call_id: int) -> None:
        with self._cond:
            for i, (s, c, _, _) in enumerate(self._queue):
                if s == src and c == call_id:
                    del self._queue[i]
                    break
            else:
                return  # running (threads cannot be interrupted) or already done
        self.client.reply_fail(src, call_id, "TaskCancelledError",
                               "the call was cancelled before it started")

    def in_flight(self) -> int:
        return self._busy + len(self._queue)

    def _has_work(self) -> bool:
        return bool(self._queue)

    def fail_queued(self, error_type: str, message: str) -> None:
        with self._cond:
            items = list(self._queue)
            self._queue.clear()
        for src, call_id, _, _ in items:
            self.client.reply_fail(src, call_id, error_type, message)

    def _work(self) -> None:
        client = self.client
        queue = self._queue
        cond = self._cond
        single = self._single
        if single:
            self._tid = threading.get_ident()
            self._waker = client._waker()
        while True:
            with cond:
                if not single:
                    while not queue:
                        cond.wait()
                item = queue.popleft() if queue else None
                more = bool(queue)
                if item is not None:
                    self._busy += 1
            if item is None:
                try:
                    client.wait(self._has_work, None)
                except Exception:  # the client is closed: the process is ending
                    return
                continue
            src, call_id, payload, bufs = item
            name = "?"
            try:
                name, args, kwargs = S.loads(payload, bufs)
                method, kind = self.lookup(name)
                if kind != SYNC:
                    raise TypeError(f"{self.class_name}.{name} is async in a threaded actor")
                result = method(*args, **kwargs) if kwargs else method(*args)
            except Exception as exc:
                client.reply_error(src, call_id, exc, f"{self.class_name}.{name}",
                                   schedule=more)
            else:
                client.reply(src, call_id, result, schedule=more)
            with cond:
                self._busy -= 1
            if not more:
                client.flush()

"""The actors of the load-balancer example: backends, the load balancer, the CPU task.

This module runs in actor and task-worker processes, so it imports nothing from the web
layer: the load balancer answers ``(HTTP status, JSON body)`` pairs, as a reverse proxy
decides its status codes, and the aiohttp server only sends them on.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import actorz
from actorz.exceptions import ActorDiedError, TaskError


@dataclass(frozen=True)
class Work:
    """One request for a backend.

    ``kind="io"`` waits ``delay_ms`` (standing in for a call to a database or another
    service); ``kind="cpu"`` computes a pure-Python sum over ``n`` numbers. ``fail``
    injects a fault: ``"error"`` makes the backend raise, ``"crash"`` ends its process.
    """

    kind: str = "io"
    delay_ms: int = 5
    n: int = 200_000
    fail: str | None = None


@actorz.remote
def sum_of_squares(n: int) -> tuple[int, int]:
    """CPU-bound: holds the GIL from start to end, so it runs in a task-worker process."""
    return sum(i * i for i in range(n)), os.getpid()


@actorz.remote
class Backend:
    """One service instance: an async actor, so the requests it waits on overlap.

    At most ``max_concurrency`` (an actor option) run at once; later ones wait in the
    actor's mailbox in arrival order.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = os.getpid()

    async def info(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid}

    async def handle(self, work: Work) -> dict[str, Any]:
        started = time.perf_counter()
        if work.fail == "error":
            raise RuntimeError(f"{self.name} failed on purpose (fail=error)")
        if work.fail == "crash":
            print(f"{self.name} exits on purpose (fail=crash)")
            os._exit(1)
        answer: dict[str, Any] = {"backend": self.name, "pid": self.pid, "kind": work.kind}
        if work.kind == "io":
            await asyncio.sleep(work.delay_ms / 1000)
            answer["delay_ms"] = work.delay_ms
        else:
            # The offload pattern of the blog post: summing here would stall every other
            # request of this backend for the whole computation; awaiting the task's ref
            # leaves the event loop free while another process computes.
            total, worker_pid = await sum_of_squares.remote(work.n)
            answer.update(n=work.n, sum_of_squares=total, worker_pid=worker_pid)
        answer["backend_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return answer


@dataclass
class _Slot:
    name: str
    handle: Any
    pid: int
    alive: bool = True
    in_flight: int = 0
    requests: int = 0
    errors: int = 0


@actorz.remote
class LoadBalancer:
    """Routes each request to the least busy live backend and awaits its answer.

    Many ``proxy_request`` calls run at once on this actor's event loop; each spends its
    life awaiting a backend, which costs the loop nothing.

    Backpressure: each backend runs at most ``max_concurrency`` requests and up to
    ``queue_limit`` more may wait (spread over the backends' mailboxes). Past that,
    ``proxy_request`` answers 503 at once rather than letting the queue grow.
    """

    def __init__(self, backends: list[tuple[str, Any, int]], max_concurrency: int,
                 queue_limit: int) -> None:
        self._slots = [_Slot(name, handle, pid) for name, handle, pid in backends]
        self._max_concurrency = max_concurrency
        self._queue_limit = queue_limit
        self._in_flight = 0
        self._rejected = 0
        self._turn = 0

    async def proxy_request(self, work: Work) -> tuple[int, dict[str, Any]]:
        """``(status, body)``: 200 with the backend's answer; 502 if the backend raised;
        503 if it died, if no backend is alive, or if every backend is full."""
        live = [s for s in self._slots if s.alive]
        if not live:
            return 503, {"error": "no live backend: every backend has died"}
        if self._in_flight >= len(live) * self._max_concurrency + self._queue_limit:
            self._rejected += 1
            return 503, {"error": f"overloaded: {self._in_flight} requests in flight ("
                                  f"{len(live)} backends x {self._max_concurrency} running "
                                  f"+ {self._queue_limit} waiting); retry later"}
        slot = self._pick(live)
        slot.in_flight += 1
        self._in_flight += 1
        try:
            body = await _await_or_cancel(slot.handle.handle.remote(work))
        except TaskError as exc:  # the backend's own code raised: it is still alive
            slot.errors += 1
            return 502, {"error": f"{slot.name} raised {exc.cause_type_name}: {exc.args[0]}",
                         "backend": slot.name}
        except ActorDiedError as exc:
            if slot.alive:
                slot.alive = False
                others = sum(s.alive for s in self._slots)
                print(f"{slot.name} (pid {slot.pid}) died, routing to the {others} others: "
                      f"{exc}")
            return 503, {"error": f"{slot.name} died while handling the request",
                         "backend": slot.name}
        finally:
            slot.in_flight -= 1
            self._in_flight -= 1
        slot.requests += 1
        return 200, body

    def _pick(self, live: list[_Slot]) -> _Slot:
        # Least busy wins. The scan starts one further each time, so that idle backends
        # take turns instead of the first one getting every request under light load.
        self._turn += 1
        start = self._turn % len(live)
        return min(live[start:] + live[:start], key=lambda s: s.in_flight)

    def stats(self) -> dict[str, Any]:
        """Per-backend counters (``requests`` answered, ``errors`` raised, ``in_flight``)."""
        return {
            "load_balancer_pid": os.getpid(),
            "in_flight": self._in_flight,
            "rejected": self._rejected,
            "max_concurrency": self._max_concurrency,
            "queue_limit": self._queue_limit,
            "backends": [
                {"name": s.name, "pid": s.pid, "alive": s.alive, "in_flight": s.in_flight,
                 "requests": s.requests, "errors": s.errors}
                for s in self._slots
            ],
        }


async def _await_or_cancel(ref: actorz.ObjectRef[Any]) -> Any:
    try:
        return await ref
    except asyncio.CancelledError:
        # Our own caller gave up (a timeout): cancelling a coroutine does not cancel the
        # remote call it awaits, so stop the backend from working for nobody.
        actorz.cancel(ref)
        raise

"""Async actors: one event loop runs every method, at most max_concurrency calls at once.

Concurrency is proven from inside the actor (counters of calls running at once, events
that only a later call sets), never by timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from helpers import TIMEOUT, Gate

import actorz
from actorz.exceptions import TaskCancelledError


@actorz.remote
class LoopProbe:
    """Reports where its methods run."""

    async def where_async(self) -> tuple[int, int, str]:
        loop = asyncio.get_running_loop()
        return threading.get_ident(), id(loop), type(loop).__module__

    def where_sync(self) -> tuple[int, int, str]:
        loop = asyncio.get_running_loop()
        return threading.get_ident(), id(loop), type(loop).__module__

    def threads(self) -> int:
        return threading.active_count()


@actorz.remote
class AsyncInit:
    async def __init__(self, value: int) -> None:
        await asyncio.sleep(0)
        self.value = value
        self.loop_id = id(asyncio.get_running_loop())

    async def get(self) -> tuple[int, bool]:
        return self.value, self.loop_id == id(asyncio.get_running_loop())


@actorz.remote
class Batcher:
    """Calls hold until ``batch`` of them run at once; then that batch finishes.

    Records the order calls start in and the most calls seen running at once.
    """

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.event = asyncio.Event()

    async def run(self, i: int) -> int:
        self.started.append(i)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.running >= self.batch:
                self.event.set()
            else:
                await self.event.wait()
            return i
        finally:
            self.running -= 1
            if self.running == 0:
                self.event.clear()

    def stats(self) -> tuple[list[int], int]:
        return self.started, self.peak


@actorz.remote
class Blocker:
    """Calls that try to block the event loop, and one that observes cancellation."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.saw_cancel = False
        self.served = 0
        self.inside = 0

    async def get_inside(self, ref: list[actorz.ObjectRef]) -> float:
        start = time.monotonic()
        try:
            actorz.get(ref[0], timeout=TIMEOUT)
        finally:
            self.elapsed = time.monotonic() - start
        return self.elapsed

    async def wait_inside(self, ref: list[actorz.ObjectRef]) -> None:
        actorz.wait(ref, timeout=TIMEOUT)

    def get_inside_sync(self, ref: list[actorz.ObjectRef]) -> None:
        actorz.get(ref[0], timeout=TIMEOUT)

    async def last_elapsed(self) -> float:
        return self.elapsed

    async def await_inside(self, ref: list[actorz.ObjectRef]) -> Any:
        self.inside += 1
        try:
            return await ref[0]
        finally:
            self.inside -= 1

    async def hold(self, gate: actorz.ActorHandle) -> Any:
        """Runs until the gate opens; the gate counting this call proves it is running."""
        self.inside += 1
        try:
            return await gate.wait_open.remote("opened")
        finally:
            self.inside -= 1

    async def wait_for_cancel(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.saw_cancel = True
            self.cancelled.set()
            raise

    async def forward(self, other: actorz.ActorHandle) -> None:
        await other.wait_for_cancel.remote()

    async def wait_started(self) -> bool:
        await self.started.wait()
        return True

    async def report(self) -> bool:
        return self.saw_cancel

    async def wait_cancelled(self) -> bool:
        await self.cancelled.wait()
        return self.saw_cancel

    async def serve(self) -> int:
        self.served += 1
        return self.served

    async def serve_alone(self) -> bool:
        """True when no ``hold`` call is running alongside this one."""
        return self.inside == 0


def test_every_method_runs_on_one_event_loop_thread(cluster: None) -> None:
    probe = LoopProbe.remote()
    refs = [probe.where_async.remote() for _ in range(5)] + [
        probe.where_sync.remote() for _ in range(5)
    ]
    places = set(actorz.get(refs, timeout=TIMEOUT))
    assert len(places) == 1, f"methods ran in more than one thread or loop: {places}"


def test_the_event_loop_is_uvloop(cluster: None) -> None:
    pytest.importorskip("uvloop")
    probe = LoopProbe.remote()
    _, _, module = actorz.get(probe.where_async.remote(), timeout=TIMEOUT)
    assert module.startswith("uvloop")


def test_async_init_is_awaited_on_the_actors_loop(cluster: None) -> None:
    actor = AsyncInit.remote(7)
    assert actorz.get(actor.get.remote(), timeout=TIMEOUT) == (7, True)


def test_the_default_max_concurrency_is_1000(cluster: None) -> None:
    # 1001 calls; each holds until 1000 run at once. If more than 1000 could run, the
    # 1001st would start while the first 1000 wait and the peak would be 1001.
    actor = Batcher.remote(1000)
    refs = [actor.run.remote(i) for i in range(1001)]
    actorz.wait(refs, num_returns=1000, timeout=TIMEOUT)
    started, peak = actorz.get(actor.stats.remote(), timeout=TIMEOUT)
    assert peak == 1000
    # The 1001st call is alone in its batch until the test releases it: do that.
    actorz.get(refs[:1000], timeout=TIMEOUT)
    assert started[:1000] == list(range(1000))


def test_max_concurrency_runs_calls_in_batches_that_start_in_arrival_order(
    cluster: None,
) -> None:
    actor = Batcher.options(max_concurrency=3).remote(3)
    refs = [actor.run.remote(i) for i in range(12)]
    assert actorz.get(refs, timeout=TIMEOUT) == list(range(12))
    started, peak = actorz.get(actor.stats.remote(), timeout=TIMEOUT)
    assert peak == 3
    assert started == list(range(12))


def test_calls_beyond_max_concurrency_wait_until_a_running_call_finishes(cluster: None) -> None:
    gate = Gate.remote()
    actor = Blocker.options(max_concurrency=1).remote()
    held = actor.hold.remote(gate)
    waiting = actor.serve_alone.remote()
    assert actorz.get(gate.wait_waiters.remote(1), timeout=TIMEOUT) == 1
    gate.open.remote()
    # serve_alone arrived while hold was running; it started only after.
    assert actorz.get([held, waiting], timeout=TIMEOUT) == ["opened", True]


def test_blocking_get_on_the_actors_event_loop_raises_at_once(cluster: None) -> None:
    gate = Gate.remote()  # never opened: a blocking get would wait for TIMEOUT
    actor = Blocker.remote()
    never = [gate.wait_open.remote()]
    with pytest.raises(RuntimeError, match="await"):
        actorz.get(actor.get_inside.remote(never), timeout=TIMEOUT)
    assert actorz.get(actor.last_elapsed.remote(), timeout=TIMEOUT) < 1.0
    with pytest.raises(RuntimeError, match="await"):
        actorz.get(actor.wait_inside.remote(never), timeout=TIMEOUT)
    # A plain method of an async actor runs on the loop too: same rule.
    with pytest.raises(RuntimeError, match="await"):
        actorz.get(actor.get_inside_sync.remote(never), timeout=TIMEOUT)
    assert actorz.get(actor.serve.remote(), timeout=TIMEOUT) == 1


def test_awaiting_a_ref_inside_an_async_actor_works(cluster: None) -> None:
    other = LoopProbe.remote()
    actor = Blocker.remote()
    where = actorz.get(actor.await_inside.remote([other.where_async.remote()]), timeout=TIMEOUT)
    assert len(where) == 3


def test_cancelling_a_running_call_cancels_its_coroutine_and_the_actor_keeps_serving(
    cluster: None,
) -> None:
    actor = Blocker.remote()
    ref = actor.wait_for_cancel.remote()
    assert actorz.get(actor.wait_started.remote(), timeout=TIMEOUT) is True
    actorz.cancel(ref)
    with pytest.raises(TaskCancelledError):
        actorz.get(ref, timeout=TIMEOUT)
    assert actorz.get(actor.report.remote(), timeout=TIMEOUT) is True
    assert actorz.get(actor.serve.remote(), timeout=TIMEOUT) == 1


def test_cancelling_a_queued_call_drops_only_that_call(cluster: None) -> None:
    gate = Gate.remote()
    actor = Blocker.options(max_concurrency=1).remote()
    held = actor.hold.remote(gate)
    queued = [actor.serve.remote() for _ in range(3)]
    assert actorz.get(gate.wait_waiters.remote(1), timeout=TIMEOUT) == 1
    actorz.cancel(queued[1])
    gate.open.remote()
    assert actorz.get(held, timeout=TIMEOUT) == "opened"
    assert actorz.get(queued[0], timeout=TIMEOUT) == 1
    with pytest.raises(TaskCancelledError):
        actorz.get(queued[1], timeout=TIMEOUT)
    assert actorz.get(queued[2], timeout=TIMEOUT) == 2


def test_cancelling_a_call_also_cancels_the_call_it_awaits_as_in_ray(cluster: None) -> None:
    # actorz.cancel(ref, recursive=True) is the default, as in Ray.
    inner = Blocker.remote()
    outer = Blocker.remote()
    ref = outer.forward.remote(inner)
    assert actorz.get(inner.wait_started.remote(), timeout=TIMEOUT) is True
    actorz.cancel(ref)
    with pytest.raises(TaskCancelledError):
        actorz.get(ref, timeout=TIMEOUT)
    assert actorz.get(inner.wait_cancelled.remote(), timeout=TIMEOUT) is True
    assert actorz.get(outer.serve.remote(), timeout=TIMEOUT) == 1

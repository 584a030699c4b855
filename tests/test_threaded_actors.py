"""Threaded actors: a pool of max_concurrency threads (default 1) runs the calls.

Parallelism is proven with a ``threading.Barrier`` inside the actor (it only opens when
that many calls are in it at once); the limit with a counter of calls running at once.
"""

from __future__ import annotations

import threading

import pytest
from helpers import TIMEOUT, Gate

import actorz
from actorz.exceptions import TaskError


@actorz.remote
class Pool:
    def __init__(self, parties: int = 1, barrier_timeout: float = TIMEOUT) -> None:
        self.barrier = threading.Barrier(parties, timeout=barrier_timeout)
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.order: list[int] = []

    def meet(self) -> str:
        self.barrier.wait()
        return threading.current_thread().name

    def step(self, i: int, gate: actorz.ActorHandle | None = None) -> int:
        with self.lock:
            self.order.append(i)
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            if gate is not None:
                actorz.get(gate.wait_open.remote(), timeout=TIMEOUT)
            return i
        finally:
            with self.lock:
                self.running -= 1

    def stats(self) -> tuple[list[int], int]:
        return self.order, self.peak


def test_max_concurrency_threads_run_calls_in_parallel(cluster: None) -> None:
    actor = Pool.options(max_concurrency=4).remote(4)
    # The barrier opens only with 4 calls inside it at once; a smaller pool would time
    # out in the actor (BrokenBarrierError) instead of hanging the test.
    names = actorz.get([actor.meet.remote() for _ in range(4)], timeout=TIMEOUT)
    assert len(set(names)) == 4


def test_a_threaded_actor_never_runs_more_than_max_concurrency_calls(cluster: None) -> None:
    gate = Gate.remote()
    actor = Pool.options(max_concurrency=3).remote()
    refs = [actor.step.remote(i, gate) for i in range(7)]
    assert actorz.get(gate.wait_waiters.remote(3), timeout=TIMEOUT) == 3
    gate.open.remote()
    assert actorz.get(refs, timeout=TIMEOUT) == list(range(7))
    order, peak = actorz.get(actor.stats.remote(), timeout=TIMEOUT)
    assert peak == 3
    assert sorted(order) == list(range(7))


def test_by_default_calls_run_one_at_a_time_in_submission_order(cluster: None) -> None:
    gate = Gate.remote()
    actor = Pool.remote()
    first = actor.step.remote(0, gate)
    rest = [actor.step.remote(i) for i in range(1, 100)]
    assert actorz.get(gate.wait_waiters.remote(1), timeout=TIMEOUT) == 1
    gate.open.remote()
    assert actorz.get([first, *rest], timeout=TIMEOUT) == list(range(100))
    order, peak = actorz.get(actor.stats.remote(), timeout=TIMEOUT)
    assert order == list(range(100))
    assert peak == 1


def test_a_barrier_larger_than_the_default_pool_fails_instead_of_meeting(
    cluster: None,
) -> None:
    # With one thread, two calls can never be inside the barrier together: the first
    # call's wait runs out (after 0.5s) and breaks the barrier, then the second finds
    # it broken. Both calls were sent at once, so a second thread would have met it.
    actor = Pool.remote(2, 0.5)
    refs = [actor.meet.remote(), actor.meet.remote()]
    for ref in refs:
        with pytest.raises(threading.BrokenBarrierError) as info:
            actorz.get(ref, timeout=TIMEOUT)
        assert isinstance(info.value, TaskError)

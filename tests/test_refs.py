"""ObjectRef: get, wait, await, asyncio interop, ref.future(), refs as arguments."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

import pytest
from helpers import TIMEOUT, Gate

import actorz
from actorz.exceptions import ActorzError, GetTimeoutError, TaskError


@actorz.remote
def some_task() -> int:
    return 1


@actorz.remote
def add(a: int, b: int = 0) -> int:
    return a + b


@actorz.remote
def fail(message: str) -> None:
    raise ValueError(message)


@actorz.remote
class AsyncHolder:
    async def echo(self, value: Any) -> Any:
        return value

    async def resolve_nested(self, box: list[actorz.ObjectRef]) -> list[Any]:
        assert all(isinstance(r, actorz.ObjectRef) for r in box)
        return list(await asyncio.gather(*box))

    async def fail(self, message: str) -> None:
        raise ValueError(message)


@actorz.remote
class ThreadedHolder:
    def echo(self, value: Any) -> Any:
        return value

    def resolve_nested(self, box: list[actorz.ObjectRef]) -> list[Any]:
        assert all(isinstance(r, actorz.ObjectRef) for r in box)
        return actorz.get(box, timeout=TIMEOUT)

    def fail(self, message: str) -> None:
        raise ValueError(message)


def holder(dispatcher: str) -> actorz.ActorHandle:
    return (AsyncHolder if dispatcher == "async" else ThreadedHolder).remote()


# --- get -------------------------------------------------------------------------


def test_get_returns_one_value_or_a_list_of_values_in_order(cluster: None) -> None:
    refs = [add.remote(i, 100) for i in range(20)]
    assert actorz.get(refs[3], timeout=TIMEOUT) == 103
    assert actorz.get(refs, timeout=TIMEOUT) == [i + 100 for i in range(20)]
    assert actorz.get(tuple(refs[:2]), timeout=TIMEOUT) == [100, 101]
    assert actorz.get([], timeout=TIMEOUT) == []


def test_get_accepts_the_same_ref_twice(cluster: None) -> None:
    ref = some_task.remote()
    assert actorz.get([ref, ref], timeout=TIMEOUT) == [1, 1]


def test_get_refuses_what_is_not_a_ref(cluster: None) -> None:
    with pytest.raises(TypeError, match="ObjectRef"):
        actorz.get(1)
    with pytest.raises(TypeError, match="ObjectRef"):
        actorz.get([some_task.remote(), "x"])


def test_get_refuses_a_negative_timeout(cluster: None) -> None:
    with pytest.raises(ValueError, match="timeout"):
        actorz.get(some_task.remote(), timeout=-1)


def test_get_timeout_raises_get_timeout_error_and_does_not_cancel_the_call(
    cluster: None,
) -> None:
    gate = Gate.remote()
    ref = gate.wait_open.remote("late")
    with pytest.raises(GetTimeoutError) as info:
        actorz.get(ref, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    with pytest.raises(GetTimeoutError):
        actorz.get([some_task.remote(), ref], timeout=0)
    gate.open.remote()
    assert actorz.get(ref, timeout=TIMEOUT) == "late"


def test_get_of_a_list_raises_as_soon_as_any_element_fails(cluster: None) -> None:
    gate = Gate.remote()  # never opened: the first ref never finishes
    never = gate.wait_open.remote()
    start = time.monotonic()
    with pytest.raises(ValueError, match="second fails"):
        actorz.get([never, fail.remote("second fails")], timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT / 2


def test_get_raises_the_remote_error_of_a_single_ref(cluster: None, dispatcher: str) -> None:
    with pytest.raises(ValueError, match="from the actor"):
        actorz.get(holder(dispatcher).fail.remote("from the actor"), timeout=TIMEOUT)


# --- wait --------------------------------------------------------------------------


def test_wait_returns_ready_and_not_ready_refs_in_input_order(cluster: None) -> None:
    gate = Gate.remote()
    blocked = [gate.wait_open.remote(i) for i in range(2)]
    done = [add.remote(i) for i in range(3)]
    refs = [blocked[0], done[0], done[1], blocked[1], done[2]]
    actorz.get(done, timeout=TIMEOUT)
    ready, not_ready = actorz.wait(refs, num_returns=3, timeout=TIMEOUT)
    assert ready == done
    assert not_ready == blocked
    ready, not_ready = actorz.wait(refs, num_returns=2, timeout=TIMEOUT)
    assert ready == done[:2]
    assert not_ready == [blocked[0], blocked[1], done[2]]
    gate.open.remote()


def test_wait_with_a_timeout_returns_what_is_ready_by_then(cluster: None) -> None:
    gate = Gate.remote()
    blocked = gate.wait_open.remote()
    ready_ref = some_task.remote()
    actorz.get(ready_ref, timeout=TIMEOUT)
    ready, not_ready = actorz.wait([blocked, ready_ref], num_returns=2, timeout=0.2)
    assert (ready, not_ready) == ([ready_ref], [blocked])
    gate.open.remote()
    ready, not_ready = actorz.wait([blocked, ready_ref], num_returns=2, timeout=TIMEOUT)
    assert (ready, not_ready) == ([blocked, ready_ref], [])


def test_wait_counts_a_failed_call_as_ready(cluster: None) -> None:
    bad = fail.remote("boom")
    ready, not_ready = actorz.wait([bad], timeout=TIMEOUT)
    assert (ready, not_ready) == ([bad], [])
    with pytest.raises(ValueError, match="boom"):
        actorz.get(ready[0], timeout=TIMEOUT)


def test_wait_checks_its_arguments_as_ray_does(cluster: None) -> None:
    ref = some_task.remote()
    other = some_task.remote()
    with pytest.raises(ValueError, match="unique"):
        actorz.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns"):
        actorz.wait([ref, other], num_returns=3)
    with pytest.raises(ValueError, match="timeout"):
        actorz.wait([ref], timeout=-0.5)
    with pytest.raises(TypeError, match="ObjectRef"):
        actorz.wait([ref, 42])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list"):
        actorz.wait(ref)  # type: ignore[arg-type]
    assert actorz.wait([ref, other], num_returns=2, timeout=TIMEOUT)[1] == []


# --- asyncio -----------------------------------------------------------------------


def test_a_ref_can_be_awaited_in_any_event_loop(cluster: None) -> None:
    async def main() -> int:
        return await add.remote(2, 3)

    assert asyncio.run(main()) == 5
    assert asyncio.run(main()) == 5  # a second, new loop

    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(main())))
    thread.start()
    thread.join(TIMEOUT)
    assert result == [5]


@pytest.mark.asyncio
async def test_a_ref_can_be_awaited_in_a_pytest_asyncio_test(cluster: None) -> None:
    assert await add.remote(1, 1) == 2
    assert await asyncio.gather(add.remote(1), add.remote(2)) == [1, 2]


def test_refs_work_with_asyncio_gather_wait_and_wait_for(cluster: None) -> None:
    async def main() -> None:
        refs = [add.remote(i) for i in range(10)]
        assert await asyncio.gather(*refs) == list(range(10))
        done, pending = await asyncio.wait([add.remote(1), add.remote(2)], timeout=TIMEOUT)
        assert pending == set()
        assert sorted(d.result() for d in done) == [1, 2]
        assert await asyncio.wait_for(add.remote(7), timeout=TIMEOUT) == 7

    asyncio.run(main())


def test_asyncio_wait_for_times_out_on_a_slow_ref_and_the_call_goes_on(cluster: None) -> None:
    gate = Gate.remote()
    ref = gate.wait_open.remote("finished")

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ref, timeout=0.2)
        done, pending = await asyncio.wait([ref], timeout=0.2)
        assert (done, pending) == (set(), {ref})

    asyncio.run(main())
    gate.open.remote()
    assert actorz.get(ref, timeout=TIMEOUT) == "finished"


def test_awaiting_a_failed_ref_raises_its_error(cluster: None) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="awaited"):
            await fail.remote("awaited")
        results = await asyncio.gather(fail.remote("g"), some_task.remote(),
                                       return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] == 1

    asyncio.run(main())


def test_ref_future_works_with_as_completed(cluster: None) -> None:
    refs = [add.remote(i) for i in range(8)]
    futs = [ref.future() for ref in refs]
    assert all(isinstance(f, concurrent.futures.Future) for f in futs)
    results = []
    for fut in concurrent.futures.as_completed(futs, timeout=TIMEOUT):
        assert fut.done()
        results.append(fut.result())
    assert sorted(results) == list(range(8))


def test_ref_future_can_be_wrapped_for_asyncio(cluster: None) -> None:
    async def main() -> int:
        fut: asyncio.Future[int] = asyncio.wrap_future(add.remote(20, 22).future())
        return await fut

    assert asyncio.run(main()) == 42


def test_ref_future_carries_the_remote_error(cluster: None) -> None:
    fut = fail.remote("via future").future()
    with pytest.raises(ValueError, match="via future"):
        fut.result(timeout=TIMEOUT)


# --- refs as arguments ----------------------------------------------------------------


def test_top_level_ref_arguments_are_resolved_to_their_values(
    cluster: None, dispatcher: str
) -> None:
    actor = holder(dispatcher)
    assert actorz.get(actor.echo.remote(add.remote(1, 2)), timeout=TIMEOUT) == 3
    assert actorz.get(add.remote(add.remote(1), b=add.remote(2)), timeout=TIMEOUT) == 3
    chained = some_task.remote()
    for _ in range(5):
        chained = add.remote(chained, 1)
    assert actorz.get(chained, timeout=TIMEOUT) == 6


def test_refs_nested_in_arguments_arrive_as_refs(cluster: None, dispatcher: str) -> None:
    actor = holder(dispatcher)
    box = [add.remote(1), add.remote(2)]
    assert actorz.get(actor.resolve_nested.remote(box), timeout=TIMEOUT) == [1, 2]


def test_a_ref_from_an_actor_can_be_passed_to_a_task_and_another_actor(
    cluster: None, dispatcher: str
) -> None:
    first = holder(dispatcher)
    second = holder("async" if dispatcher == "threaded" else "threaded")
    ref = first.echo.remote(40)
    assert actorz.get(add.remote(ref, 2), timeout=TIMEOUT) == 42
    assert actorz.get(second.echo.remote(ref), timeout=TIMEOUT) == 40


def test_a_failed_upstream_ref_fails_the_call_with_the_upstream_error(
    cluster: None, dispatcher: str
) -> None:
    actor = holder(dispatcher)
    bad = fail.remote("upstream broke")
    downstream = actor.echo.remote(bad)
    task_downstream = add.remote(bad, 1)
    for ref in (downstream, task_downstream):
        with pytest.raises(ValueError, match="upstream broke") as info:
            actorz.get(ref, timeout=TIMEOUT)
        assert isinstance(info.value, TaskError)
    # The actor never saw the failed call and keeps serving.
    assert actorz.get(actor.echo.remote("still here"), timeout=TIMEOUT) == "still here"


def test_a_ref_is_hashable_and_equal_to_itself_only(cluster: None) -> None:
    a, b = some_task.remote(), some_task.remote()
    assert a == a and a != b
    assert len({a, b, a}) == 2
    assert a.hex() != b.hex()
    actorz.get([a, b], timeout=TIMEOUT)


def test_a_pending_ref_of_a_shut_down_session_raises_a_clear_error(cluster: None) -> None:
    ref = Gate.remote().wait_open.remote()  # never opened: pending at shutdown
    actorz.shutdown()
    with pytest.raises(ActorzError, match="shut down"):
        actorz.get(ref, timeout=TIMEOUT)
    # get() may have started a fresh cluster; the fixture's teardown shuts it down.
    actorz.init(num_workers=2, ignore_reinit_error=True)

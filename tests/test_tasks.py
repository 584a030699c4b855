"""Remote functions: a pool of task-worker processes; ``async def`` functions too.

The ``cluster`` fixture starts two task workers (``num_workers=2``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import TIMEOUT, Gate, Rendezvous

import actorz
from actorz.exceptions import TaskCancelledError


@actorz.remote
def pid_task() -> int:
    return os.getpid()


@actorz.remote
def meet(rendezvous: actorz.ActorHandle) -> int:
    # A synchronous task may block on actorz.get: it only returns once every task
    # meeting at the rendezvous is running at the same time.
    actorz.get(rendezvous.arrive.remote(), timeout=TIMEOUT)
    return os.getpid()


@actorz.remote
async def ameet(rendezvous: actorz.ActorHandle) -> int:
    await rendezvous.arrive.remote()
    return os.getpid()


@actorz.remote
async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@actorz.remote
async def wait_for_cancel(gate: actorz.ActorHandle) -> str:
    await gate.wait_open.remote()
    return "opened"


async def f() -> str:
    await asyncio.sleep(0)
    return "ran f"


@actorz.remote
def wrapper() -> str:
    return asyncio.run(f())


@actorz.remote
def nested(x: int) -> int:
    return actorz.get(double.remote(x), timeout=TIMEOUT) + 1


@actorz.remote
def uses_kwargs(a: int, *, b: int = 2, **rest: int) -> tuple[int, int, dict[str, int]]:
    return a, b, rest


def test_remote_functions_run_in_task_worker_processes(cluster: None) -> None:
    pids = set(actorz.get([pid_task.remote() for _ in range(10)], timeout=TIMEOUT))
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_tasks_run_in_parallel_across_the_worker_pool(cluster: None) -> None:
    # Two synchronous tasks that each block until the other one runs: they can only
    # finish if two worker processes run them at the same time.
    rendezvous = Rendezvous.remote(2)
    pids = actorz.get([meet.remote(rendezvous) for _ in range(2)], timeout=TIMEOUT)
    assert len(set(pids)) == 2


def test_async_remote_functions_run_concurrently_on_a_workers_event_loop(cluster: None) -> None:
    # Ten async tasks meeting at once on two workers: at least one worker's event loop
    # runs several of them at the same time.
    rendezvous = Rendezvous.remote(10)
    pids = actorz.get([ameet.remote(rendezvous) for _ in range(10)], timeout=TIMEOUT)
    assert os.getpid() not in pids


def test_an_async_remote_function_returns_its_value(cluster: None) -> None:
    assert actorz.get([double.remote(i) for i in range(5)], timeout=TIMEOUT) == [0, 2, 4, 6, 8]


def test_the_docs_asyncio_run_wrapper_pattern_works(cluster: None) -> None:
    assert actorz.get(wrapper.remote(), timeout=TIMEOUT) == "ran f"


def test_a_task_can_wait_for_another_task(cluster: None) -> None:
    assert actorz.get(nested.remote(20), timeout=TIMEOUT) == 41


def test_task_arguments_and_keyword_arguments_arrive_as_passed(cluster: None) -> None:
    assert actorz.get(uses_kwargs.remote(1, b=3, c=4), timeout=TIMEOUT) == (1, 3, {"c": 4})


def test_calling_a_remote_function_directly_raises_type_error() -> None:
    with pytest.raises(TypeError, match=r"pid_task\.remote\(\)"):
        pid_task()


def test_options_on_a_remote_function_return_a_usable_copy(cluster: None) -> None:
    assert actorz.get(double.options(num_cpus=1).remote(4), timeout=TIMEOUT) == 8


def test_a_lambda_or_local_function_can_be_made_remote(cluster: None) -> None:
    def local(x: int) -> int:
        return x * 3

    assert actorz.get(actorz.remote(local).remote(3), timeout=TIMEOUT) == 9
    assert actorz.get(actorz.remote(lambda: "lambda").remote(), timeout=TIMEOUT) == "lambda"


def test_cancelling_a_running_async_task_raises_task_cancelled_error(cluster: None) -> None:
    gate = Gate.remote()
    ref = wait_for_cancel.remote(gate)
    assert actorz.get(gate.wait_waiters.remote(1), timeout=TIMEOUT) == 1
    actorz.cancel(ref)
    with pytest.raises(TaskCancelledError):
        actorz.get(ref, timeout=TIMEOUT)
    assert actorz.get(double.remote(1), timeout=TIMEOUT) == 2


def test_many_small_tasks_complete(cluster: None) -> None:
    assert sum(actorz.get([double.remote(1) for _ in range(2000)], timeout=TIMEOUT)) == 4000


@actorz.remote
def quick(x: int) -> int:
    return x


@actorz.remote
def read_fifo(path: str) -> str:
    with open(path) as f:  # blocks, outside actorz, until the test opens it for writing
        return f.read()


def test_a_quick_tasks_result_is_not_held_back_by_a_task_queued_behind_it(
        no_cluster: None, tmp_path: Path) -> None:
    actorz.init(num_workers=1)  # one worker: both tasks queue on it, the quick one first
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    actorz.get(quick.remote(0), timeout=TIMEOUT)
    # Submitted in one event-loop tick they travel as one message to the one worker,
    # which runs the quick task and then blocks in the second; the first result must
    # arrive all the same.

    async def submit_together() -> list[actorz.ObjectRef[Any]]:
        return [quick.remote(1), read_fifo.remote(str(fifo))]

    refs = asyncio.run(submit_together())
    assert actorz.get(refs[0], timeout=TIMEOUT) == 1
    assert not refs[1].done()
    with open(fifo, "w") as f:
        f.write("released")
    assert actorz.get(refs[1], timeout=TIMEOUT) == "released"

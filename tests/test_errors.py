"""Remote exceptions reach the caller as themselves; bad input gets a clear error.

After each bad input the cluster must keep working: every test ends with a good call.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import TIMEOUT

import actorz
from actorz.exceptions import (
    ActorDiedError,
    ActorzError,
    GetTimeoutError,
    TaskCancelledError,
    TaskError,
    WorkerCrashedError,
)


class InventoryError(Exception):
    """A user-defined exception class, importable by the actor processes."""


class TwoArgError(Exception):
    """Cannot be rebuilt by pickle: ``__init__`` takes two required arguments."""

    def __init__(self, item: str, count: int) -> None:
        super().__init__(f"{item} is out of stock ({count} left)")
        self.item = item
        self.count = count


class _Raiser:
    def raise_value_error(self, text: str) -> None:
        raise ValueError(text)

    def raise_custom(self) -> None:
        raise InventoryError("no widgets")

    def raise_two_arg(self) -> None:
        raise TwoArgError("widget", 0)

    def raise_with_unpicklable_attribute(self) -> None:
        exc = RuntimeError("holds a lock")
        exc.lock = threading.Lock()  # type: ignore[attr-defined]
        raise exc

    def return_unpicklable(self) -> Any:
        return threading.Lock()

    def echo(self, value: Any) -> Any:
        return value

    def ok(self) -> str:
        return "ok"


@actorz.remote
class AsyncRaiser(_Raiser):
    async def call_other(self, other: actorz.ActorHandle) -> None:
        await other.raise_custom.remote()


@actorz.remote
class ThreadedRaiser(_Raiser):
    def call_other(self, other: actorz.ActorHandle) -> None:
        actorz.get(other.raise_custom.remote(), timeout=TIMEOUT)


@actorz.remote
def task_raises(text: str) -> None:
    raise KeyError(text)


@actorz.remote
def task_ok() -> str:
    return "ok"


def raiser(dispatcher: str) -> actorz.ActorHandle:
    return (AsyncRaiser if dispatcher == "async" else ThreadedRaiser).remote()


def test_every_public_error_is_an_actorz_error_and_get_timeout_is_a_timeout_error() -> None:
    for cls in (ActorDiedError, GetTimeoutError, TaskCancelledError, TaskError,
                WorkerCrashedError):
        assert issubclass(cls, ActorzError)
    assert issubclass(GetTimeoutError, TimeoutError)
    assert set(actorz.exceptions.__all__) >= {
        "ActorzError", "TaskError", "ActorDiedError", "GetTimeoutError", "TaskCancelledError"}


def test_a_remote_exception_is_an_instance_of_its_original_class(
    cluster: None, dispatcher: str
) -> None:
    actor = raiser(dispatcher)
    with pytest.raises(ValueError, match="bad input 42") as info:
        actorz.get(actor.raise_value_error.remote("bad input 42"), timeout=TIMEOUT)
    err = info.value
    assert isinstance(err, TaskError) and isinstance(err, ActorzError)
    assert type(err.cause) is ValueError
    assert str(err.cause) == "bad input 42"
    assert "raise_value_error" in err.remote_traceback
    assert 'raise ValueError(text)' in err.remote_traceback
    assert "raise_value_error" in str(err)
    assert actorz.get(actor.ok.remote(), timeout=TIMEOUT) == "ok"


def test_a_user_defined_exception_class_can_be_caught_by_its_class(
    cluster: None, dispatcher: str
) -> None:
    actor = raiser(dispatcher)
    try:
        actorz.get(actor.raise_custom.remote(), timeout=TIMEOUT)
    except InventoryError as exc:
        assert isinstance(exc.cause, InventoryError)
        assert "no widgets" in str(exc)
    else:
        pytest.fail("InventoryError was not raised")


def test_an_exception_whose_init_takes_two_arguments_arrives_with_its_name_and_message(
    cluster: None, dispatcher: str
) -> None:
    actor = raiser(dispatcher)
    with pytest.raises(TaskError) as info:
        actorz.get(actor.raise_two_arg.remote(), timeout=TIMEOUT)
    err = info.value
    assert "TwoArgError" in str(err)
    assert "widget is out of stock (0 left)" in str(err)
    assert "TwoArgError" in err.remote_traceback
    assert err.cause is not None
    assert isinstance(err, TwoArgError)
    assert actorz.get(actor.ok.remote(), timeout=TIMEOUT) == "ok"


def test_an_exception_that_cannot_be_pickled_arrives_with_its_name_and_message(
    cluster: None, dispatcher: str
) -> None:
    actor = raiser(dispatcher)
    with pytest.raises(RuntimeError, match="holds a lock") as info:
        actorz.get(actor.raise_with_unpicklable_attribute.remote(), timeout=TIMEOUT)
    assert isinstance(info.value, TaskError)
    assert "RuntimeError" in info.value.remote_traceback


def test_a_remote_exception_keeps_its_class_across_nested_calls(
    cluster: None, dispatcher: str
) -> None:
    inner = raiser("threaded")
    outer = raiser(dispatcher)
    with pytest.raises(InventoryError, match="no widgets") as info:
        actorz.get(outer.call_other.remote(inner), timeout=TIMEOUT)
    assert "raise_custom" in info.value.remote_traceback


def test_a_task_exception_is_an_instance_of_its_original_class(cluster: None) -> None:
    with pytest.raises(KeyError) as info:
        actorz.get(task_raises.remote("missing"), timeout=TIMEOUT)
    assert isinstance(info.value, TaskError)
    assert "task_raises" in info.value.remote_traceback
    assert actorz.get(task_ok.remote(), timeout=TIMEOUT) == "ok"


def test_unpicklable_arguments_raise_type_error_and_the_cluster_keeps_working(
    cluster: None, dispatcher: str
) -> None:
    actor = raiser(dispatcher)
    with pytest.raises(TypeError, match="lock"):
        actorz.get(actor.echo.remote(threading.Lock()), timeout=TIMEOUT)
    with pytest.raises(TypeError, match="lock"):
        actorz.get(task_ok.remote(threading.Lock()), timeout=TIMEOUT)
    assert actorz.get(actor.echo.remote("fine"), timeout=TIMEOUT) == "fine"
    assert actorz.get(task_ok.remote(), timeout=TIMEOUT) == "ok"


def test_an_unpicklable_return_value_raises_type_error_and_the_actor_keeps_serving(
    cluster: None, dispatcher: str
) -> None:
    actor = raiser(dispatcher)
    with pytest.raises(TypeError, match="serialize"):
        actorz.get(actor.return_unpicklable.remote(), timeout=TIMEOUT)
    assert actorz.get(actor.ok.remote(), timeout=TIMEOUT) == "ok"


def test_an_actor_handle_used_after_shutdown_raises_a_clear_error(cluster: None) -> None:
    actor = AsyncRaiser.remote()
    assert actorz.get(actor.ok.remote(), timeout=TIMEOUT) == "ok"
    actorz.shutdown()
    with pytest.raises(ActorzError, match="shut down"):
        actor.ok.remote()
    actorz.init(num_workers=2)  # the fixture's teardown shuts this one down
    with pytest.raises(ActorzError, match="shut down"):
        actor.ok.remote()
    with pytest.raises(ActorzError, match="shut down"):
        actorz.kill(actor)
    fresh = AsyncRaiser.remote()
    assert actorz.get(fresh.ok.remote(), timeout=TIMEOUT) == "ok"


def test_a_second_init_raises_unless_told_to_ignore_it(cluster: None) -> None:
    with pytest.raises(RuntimeError, match="ignore_reinit_error"):
        actorz.init()
    actorz.init(ignore_reinit_error=True)
    assert actorz.get(task_ok.remote(), timeout=TIMEOUT) == "ok"

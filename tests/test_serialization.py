"""Serialization: pure tests of actorz/_serialization.py, then large values end to end.

Large values (a 64 MiB ``bytes``, a numpy array) must travel as pickle-5 out-of-band
buffers: the pickle stream stays tiny and the buffer is the caller's own memory.
"""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest
from helpers import TIMEOUT

import actorz
from actorz import _serialization as S
from actorz.exceptions import TaskError

MIB = 1024 * 1024


class TwoArgError(Exception):
    """An exception pickle cannot rebuild: its __init__ needs two arguments, args holds one."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


# --- pure -------------------------------------------------------------------------


def test_small_values_round_trip_in_band() -> None:
    value = {"a": [1, 2.5, "x", None], "b": (b"bytes", {3})}
    data, bufs = S.dumps(value)
    assert bufs == []
    assert S.loads(data, bufs) == value


def test_a_large_bytes_travels_out_of_band_without_a_copy() -> None:
    payload = b"\x01" * (S.LARGE_BYTES + 1)
    data, bufs = S.dumps(S.wrap_large(payload))
    assert len(bufs) == 1
    assert len(data) < 200, "the bytes went into the pickle stream"
    assert bufs[0].raw().obj is payload, "the out-of-band buffer is a copy"
    assert S.loads(data, bufs) == payload


def test_small_bytes_stay_in_the_pickle_stream() -> None:
    payload = b"x" * (S.LARGE_BYTES - 1)
    assert S.wrap_large(payload) is payload
    _, bufs = S.dumps(S.wrap_large(payload))
    assert bufs == []


def test_a_numpy_array_travels_out_of_band_and_is_rebuilt_on_the_received_buffer() -> None:
    arr = np.arange(MIB, dtype=np.float64).reshape(1024, 1024)
    data, bufs = S.dumps(arr)
    assert len(bufs) == 1
    assert len(data) < 500, "the array went into the pickle stream"
    out = S.loads(data, bufs)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    received = np.frombuffer(bufs[0], dtype=np.uint8)
    assert np.shares_memory(out, received), "loading copied the received buffer"


def test_a_writable_array_is_fixed_when_the_call_is_made() -> None:
    # The send happens later than .remote() returns: changing the array meanwhile must
    # not change the call's argument (one snapshot copy, as Ray's put at call time).
    arr = np.zeros(100_000)
    data, bufs = S.dumps(arr)
    arr[:] = 1.0
    assert S.loads(data, bufs).sum() == 0.0


def test_a_class_defined_in_a_function_is_sent_by_value() -> None:
    class Local:
        def __init__(self, x: int) -> None:
            self.x = x

    data, bufs = S.dumps(Local(3))
    assert S.loads(data, bufs).x == 3


def test_unpicklable_values_raise() -> None:
    with pytest.raises(TypeError):
        S.dumps(threading.Lock())


def test_a_captured_error_is_rebuilt_as_task_error_and_its_original_class() -> None:
    exc = _raise(ValueError("bad value"))
    err = S.loads_error(S.dumps_error(exc, "Cls.method"))
    assert isinstance(err, TaskError) and isinstance(err, ValueError)
    assert type(err.cause) is ValueError and str(err.cause) == "bad value"
    assert "raise exc" in err.remote_traceback
    assert "ValueError: bad value" in err.remote_traceback
    assert err.function_name == "Cls.method"
    assert "ValueError in Cls.method: bad value" in str(err)


def test_an_error_with_two_required_init_arguments_keeps_its_type_name_and_message() -> None:
    exc = _raise(TwoArgError(7, "disk on fire"))
    err = S.loads_error(S.dumps_error(exc, "f"))
    assert isinstance(err, TaskError) and isinstance(err, TwoArgError)
    assert err.cause_type_name == "TwoArgError"
    assert "code 7: disk on fire" in str(err)
    assert "TwoArgError" in err.remote_traceback


def test_a_task_error_survives_being_pickled_again() -> None:
    err = S.loads_error(S.dumps_error(_raise(KeyError("k")), "f"))
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, KeyError) and isinstance(again, TaskError)
    assert again.remote_traceback == err.remote_traceback


def test_an_error_rethrown_from_a_nested_call_keeps_the_original_cause() -> None:
    inner = S.loads_error(S.dumps_error(_raise(ZeroDivisionError("inner")), "inner_fn"))
    outer = S.loads_error(S.dumps_error(inner, "outer_fn"))
    assert isinstance(outer, ZeroDivisionError)
    assert str(outer.cause) == "inner"


# --- end to end -------------------------------------------------------------------


@actorz.remote
class AsyncStore:
    async def echo(self, value: object) -> object:
        return value

    async def describe(self, arr: np.ndarray) -> tuple[str, tuple[int, ...], float]:
        return str(arr.dtype), arr.shape, float(arr.sum())


@actorz.remote
class ThreadedStore:
    def echo(self, value: object) -> object:
        return value

    def describe(self, arr: np.ndarray) -> tuple[str, tuple[int, ...], float]:
        return str(arr.dtype), arr.shape, float(arr.sum())


@actorz.remote
def echo_task(value: object) -> object:
    return value


def _store(dispatcher: str) -> actorz.ActorHandle:
    return (AsyncStore if dispatcher == "async" else ThreadedStore).remote()


def test_a_64_mib_bytes_round_trips_through_an_actor(cluster: None, dispatcher: str) -> None:
    payload = bytes(range(256)) * (64 * MIB // 256)
    store = _store(dispatcher)
    back = actorz.get(store.echo.remote(payload), timeout=TIMEOUT)
    assert type(back) is bytes and len(back) == 64 * MIB
    assert back == payload


def test_a_64_mib_bytes_round_trips_through_a_task(cluster: None) -> None:
    payload = b"\xab" * (64 * MIB)
    back = actorz.get(echo_task.remote(payload), timeout=TIMEOUT)
    assert back == payload


def test_a_numpy_array_round_trips_through_an_actor(cluster: None, dispatcher: str) -> None:
    arr = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    store = _store(dispatcher)
    dtype, shape, total = actorz.get(store.describe.remote(arr), timeout=TIMEOUT)
    assert (dtype, shape) == ("float32", (512, 1024))
    assert total == pytest.approx(float(arr.sum()), rel=1e-4)
    back = actorz.get(store.echo.remote(arr), timeout=TIMEOUT)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, arr)


def test_large_values_nested_in_containers_round_trip(cluster: None) -> None:
    value = {"blob": b"\x07" * (2 * MIB), "arr": np.ones(300_000), "small": b"s"}
    back = actorz.get(echo_task.remote(value), timeout=TIMEOUT)
    assert back["blob"] == value["blob"] and back["small"] == b"s"
    np.testing.assert_array_equal(back["arr"], value["arr"])

"""Large buffers through /dev/shm inside an embedded cluster (actorz/_shm.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import actorz
from actorz import _context, _shm

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm here")

BIG = 4 * _shm.SHM_MIN  # over the threshold: travels through shared memory


@actorz.remote
class Echo:
    def echo(self, value: object) -> object:
        return value

    def total(self, arr: np.ndarray) -> float:
        return float(arr.sum())


@pytest.fixture
def shm_dir() -> str:
    directory = _shm.make_directory()
    assert directory is not None
    yield directory
    _shm.remove_directory(directory)
    assert not os.path.exists(directory)


def test_a_buffer_put_is_taken_once_and_its_file_is_gone(shm_dir: str) -> None:
    data = os.urandom(BIG)
    name = _shm.put(shm_dir, data)
    assert os.listdir(shm_dir) == [os.path.basename(name.decode())]
    view = _shm.take(name)
    assert bytes(view) == data
    assert os.listdir(shm_dir) == []  # unlinked on receipt; the mapping outlives the name


def test_take_refuses_a_name_outside_actorz_directories(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="refusing"):
        _shm.take(b"/etc/passwd")
    with pytest.raises(ValueError, match="refusing"):
        _shm.take(b"/dev/shm/actorz-x/../../etc/passwd")


def test_large_values_cross_the_cluster_by_shared_memory_and_leave_nothing(
        cluster: None) -> None:
    directory = _context.current().shm_dir
    assert directory is not None and os.path.isdir(directory)
    a = Echo.remote()
    data = os.urandom(BIG)
    assert actorz.get(a.echo.remote(data), timeout=60) == data
    arr = np.arange(BIG // 8, dtype=np.float64)
    assert actorz.get(a.total.remote(arr), timeout=60) == float(arr.sum())
    back = actorz.get(a.echo.remote(arr), timeout=60)
    assert np.array_equal(back, arr)
    assert os.listdir(directory) == []  # every buffer was taken and unlinked
    actorz.shutdown()
    assert not os.path.exists(directory)


def test_a_large_value_queued_behind_a_call_waiting_for_its_ref_arrives_intact(
        cluster: None) -> None:
    from helpers import TIMEOUT, Gate

    gate = Gate.remote()
    a = Echo.remote()
    first = a.echo.remote(gate.wait_open.remote("first"))  # waits for its ref argument
    data = os.urandom(BIG)
    second = a.echo.remote(data)  # queued behind it, in order, already in shared memory
    actorz.get(gate.open.remote(), timeout=TIMEOUT)
    assert actorz.get(first, timeout=TIMEOUT) == "first"
    assert actorz.get(second, timeout=TIMEOUT) == data

"""Shared fixtures: a real embedded cluster per test, and a leak check after it.

Every test that uses ``cluster`` gets a fresh broker, node agent and task workers on a
private ipc path; at teardown every process that the test's cluster started must be
gone once ``actorz.shutdown()`` returns (within a bounded wait), or the test fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil
import pytest

import actorz

#: How long processes may take to disappear after shutdown() before it is a leak.
EXIT_GRACE_S = 10.0


def descendants() -> list[psutil.Process]:
    try:
        return psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return []


def assert_no_leaks(procs: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(procs, timeout=EXIT_GRACE_S)
    alive = [p for p in alive if _is_live(p)]
    assert not alive, f"processes outlived actorz.shutdown(): {[p.pid for p in alive]}"


def _is_live(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def leak_checked() -> Iterator[None]:
    """Start with no cluster; at the end shut down whatever runs and check nothing is left."""
    if actorz.is_initialized():
        actorz.shutdown()
    try:
        yield
    finally:
        procs = descendants()
        actorz.shutdown()
        assert_no_leaks(procs)


@pytest.fixture
def cluster() -> Iterator[None]:
    """A fresh embedded cluster with two task workers; leak-checked at teardown."""
    with leak_checked():
        actorz.init(num_workers=2)
        yield


@pytest.fixture(params=["async", "threaded"])
def dispatcher(request: pytest.FixtureRequest) -> str:
    """Run a test once per dispatcher kind; the test builds its class for that kind."""
    return str(request.param)


@pytest.fixture
def no_cluster() -> Iterator[None]:
    """No cluster at the start; whatever the test starts is shut down and leak-checked."""
    with leak_checked():
        yield

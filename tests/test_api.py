"""init / shutdown / is_initialized: the embedded cluster's life, and nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import EXIT_GRACE_S, descendants
from helpers import TIMEOUT, Gate, run_driver

import actorz
from actorz import _api
from actorz.exceptions import ActorzError


@actorz.remote
class Pid:
    def pid(self) -> int:
        return os.getpid()


@actorz.remote
def task_pid() -> int:
    return os.getpid()


def embedded_socket_dir() -> Path:
    """The directory of the embedded broker's ipc socket, as ``ps`` shows it."""
    for proc in descendants():
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        m = re.search(r"--bind ipc://(\S+)", cmdline)
        if m:
            return Path(m.group(1)).parent
    pytest.fail("no embedded cluster process binds an ipc:// address")


def wait_gone(pids: list[int]) -> list[int]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=EXIT_GRACE_S)
    return [p.pid for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_init_starts_an_embedded_cluster_that_shutdown_stops_entirely(no_cluster: None) -> None:
    assert not actorz.is_initialized()
    actorz.init(num_workers=1)
    assert actorz.is_initialized()
    actor_pid = actorz.get(Pid.remote().pid.remote(), timeout=TIMEOUT)
    worker_pid = actorz.get(task_pid.remote(), timeout=TIMEOUT)
    procs = descendants()
    pids = {p.pid for p in procs}
    assert {actor_pid, worker_pid} <= pids
    directory = embedded_socket_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    actorz.shutdown()
    assert not actorz.is_initialized()
    assert wait_gone(list(pids)) == []
    assert not directory.exists(), "shutdown() left the ipc directory behind"


def test_any_api_call_first_initialises_the_embedded_cluster(no_cluster: None) -> None:
    assert not actorz.is_initialized()
    actor = Pid.remote()
    assert actorz.is_initialized()
    assert actorz.get(actor.pid.remote(), timeout=TIMEOUT) != os.getpid()


def test_a_remote_function_call_first_initialises_the_embedded_cluster(no_cluster: None) -> None:
    assert actorz.get(task_pid.remote(), timeout=TIMEOUT) != os.getpid()
    assert actorz.is_initialized()


def test_shutdown_twice_is_safe_and_init_works_again(no_cluster: None) -> None:
    actorz.init(num_workers=1)
    actorz.shutdown()
    actorz.shutdown()
    actorz.init(num_workers=1)
    assert actorz.get(task_pid.remote(), timeout=TIMEOUT) != os.getpid()


def test_shutdown_fails_calls_pending_in_other_threads(no_cluster: None) -> None:
    actorz.init(num_workers=1)
    ref = Gate.remote().wait_open.remote()  # never opened
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            actorz.get(ref, timeout=TIMEOUT)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    actorz.shutdown()
    waiter.join(TIMEOUT)
    assert not waiter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ActorzError)
    assert "shut down" in str(errors[0])


def test_init_rejects_bad_arguments(no_cluster: None) -> None:
    with pytest.raises(ValueError, match="num_workers"):
        actorz.init(num_workers=-1)
    with pytest.raises(ValueError):
        actorz.init("http://example.com")
    assert not actorz.is_initialized()


DRIVER_THAT_REPORTS_ITS_PROCESSES = """
    import os, sys, psutil
    import actorz

    @actorz.remote
    class A:
        def pid(self):
            return os.getpid()

    actorz.init(num_workers=1)
    actorz.get(A.remote().pid.remote(), timeout=60)
    kids = psutil.Process().children(recursive=True)
    print("PIDS", *[p.pid for p in kids], flush=True)
    {ending}
"""


def driver_pids(stdout: str) -> list[int]:
    m = re.search(r"^PIDS (.*)$", stdout, re.MULTILINE)
    assert m, stdout
    return [int(p) for p in m.group(1).split()]


def test_interpreter_exit_without_shutdown_stops_every_process(tmp_path: Path) -> None:
    result = run_driver(DRIVER_THAT_REPORTS_ITS_PROCESSES.format(ending="pass"), tmp_path)
    assert result.returncode == 0, result.stderr
    pids = driver_pids(result.stdout)
    assert len(pids) >= 3  # cluster, node's children: actor, task worker
    assert wait_gone(pids) == []


def test_a_driver_killed_with_sigkill_leaves_no_process_behind(tmp_path: Path) -> None:
    result = run_driver(DRIVER_THAT_REPORTS_ITS_PROCESSES.format(
        ending="os.kill(os.getpid(), 9)"), tmp_path)
    assert result.returncode == -signal.SIGKILL
    pids = driver_pids(result.stdout)
    assert wait_gone(pids) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_init_at_an_address_nobody_listens_on_fails_fast_and_clearly(no_cluster: None) -> None:
    start = time.monotonic()
    with pytest.raises(ActorzError, match="connection refused"):
        actorz.init(f"tcp://127.0.0.1:{_free_port()}")
    assert time.monotonic() - start < 20  # a bounded retry, not the full handshake wait
    assert not actorz.is_initialized()


def test_init_at_a_server_that_is_not_actorz_fails_instead_of_hanging(
        no_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # A TCP server answering like a web server: ZeroMQ delivers its bytes as a one-frame
    # message, which once made init() block forever in a recv.
    monkeypatch.setattr(_api, "CONNECT_TIMEOUT_S", 3.0)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(ActorzError, match="no actorz broker answered"):
            actorz.init(f"tcp://127.0.0.1:{port}")
        assert time.monotonic() - start < 20
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_status_counts_the_calls_each_actor_holds(cluster: None) -> None:
    from actorz import _context
    from actorz.cli import fetch_status

    gate = Gate.remote()
    held = [gate.wait_open.remote(i) for i in range(3)]
    assert actorz.get(gate.wait_waiters.remote(3), timeout=TIMEOUT) == 3
    address = _context.current().address

    def inflight() -> object:
        actors = fetch_status(address)["actors"]
        return next(a["inflight"] for a in actors if a["id"] == gate._actorz_id.hex())

    assert inflight() == 3  # the three held calls, running on the actor's loop
    actorz.get(gate.open.remote(), timeout=TIMEOUT)
    assert actorz.get(held, timeout=TIMEOUT) == [0, 1, 2]
    assert inflight() == 0

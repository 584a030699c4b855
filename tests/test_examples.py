"""The examples, run as a user runs them: ``python -m examples.NAME`` from the repo root.

Each test starts the example in a subprocess, talks to it as a user would (HTTP with an
aiohttp client on 127.0.0.1, or reading its output), stops it with a signal, and checks
that it exits within a few seconds and that no process it started survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
#: How long an example may take to come up (a fresh cluster on a busy CI machine).
START_TIMEOUT_S = 60.0
#: "Exits within a few seconds" of SIGINT or SIGTERM.
EXIT_TIMEOUT_S = 10.0
#: How long the processes an example started may take to disappear after it exited.
REAP_TIMEOUT_S = 5.0
#: The environment variable that marks every process an example started (see _leftovers).
MARK = "ACTORZ_EXAMPLE_TEST_MARK"


class Example:
    """``python -m MODULE ARGS`` started from the repo root, its output read by a thread."""

    def __init__(self, module: str, *args: str) -> None:
        self.mark = uuid.uuid4().hex
        env = dict(os.environ, **{MARK: self.mark})
        env.pop("ACTORZ_ADDRESS", None)  # an embedded cluster, unless --address says otherwise
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=REPO, env=env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: list[str] = []
        self._ended = False
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._seen: dict[int, psutil.Process] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def next_line(self, deadline: float) -> str | None:
        """The next line of output; None at its end. Fails at the deadline."""
        if self._ended:
            return None
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no output for too long; so far:\n{self.output}")
        if line is None:
            self._ended = True
        else:
            self.lines.append(line)
            self.remember_processes()
        return line

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        while (line := self.next_line(deadline)) is not None:
            if re.search(pattern, line):
                return line
        pytest.fail(f"the output ended without a line matching {pattern!r}:\n{self.output}")

    def read_to_end(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while self.next_line(deadline) is not None:
            pass
        return self.output

    def remember_processes(self) -> None:
        """Snapshot the example's descendants: each one must be gone once it exits."""
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self._seen[p.pid] = p
        except psutil.Error:
            pass

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send ``sig``; return the exit code once the example and its processes are gone."""
        self.remember_processes()
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not exit within {timeout:g} s; output:\n{self.output}")
        self.assert_no_leftovers()  # first: a leftover would keep the output open
        self.read_to_end(timeout)
        return code

    def assert_no_leftovers(self) -> None:
        _, alive = psutil.wait_procs(list(self._seen.values()), timeout=REAP_TIMEOUT_S)
        alive = [p for p in alive if _is_live(p)] + _leftovers(self.mark)
        assert not alive, f"processes outlived the example: {alive}\n{self.output}"

    def kill(self) -> None:
        """Last-resort cleanup after a failed test: the example and what it started."""
        self.remember_processes()
        for p in [*self._seen.values(), *_leftovers(self.mark)]:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(EXIT_TIMEOUT_S)


def _is_live(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _leftovers(mark: str) -> list[psutil.Process]:
    """Live processes that inherited the example's mark, even if they left its tree."""
    deadline = time.monotonic() + REAP_TIMEOUT_S
    while True:
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.environ().get(MARK) == mark and _is_live(p):
                    found.append(p)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)  # bounded by the deadline: processes still on their way out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the load balancer ---------------------------------------------------------------


async def wait_until_healthy(http: Any, example: Example) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if example.proc.poll() is not None:
            pytest.fail(f"exited with {example.proc.returncode}:\n{example.read_to_end(5)}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get("/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    pytest.fail(f"/healthz did not answer 200 within {START_TIMEOUT_S:g} s")


@contextlib.asynccontextmanager
async def loadbalancer(*args: str, port: int | None = None,
                       stop_signal: int = signal.SIGINT) -> AsyncIterator[Any]:
    """The server started with ``args``; yields an aiohttp session on its URL.

    On the way out: stopped with ``stop_signal``; must exit 0 and leave no process.
    """
    port = port or free_port()
    example = Example("examples.loadbalancer", "--port", str(port), *args)
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", timeout=timeout) as http:
            await wait_until_healthy(http, example)
            yield http
        assert example.stop(stop_signal) == 0, example.output
    finally:
        if example.proc.poll() is None:
            example.kill()


async def get(http: Any, path: str) -> tuple[int, Any]:
    async with http.get(path) as resp:
        assert resp.content_type == "application/json", f"{path}: {await resp.text()}"
        return resp.status, await resp.json()


async def stats(http: Any) -> dict[str, Any]:
    status, body = await get(http, "/stats")
    assert status == 200, body
    return dict(body)


@pytest.mark.asyncio
async def test_every_backend_answers_in_turn_and_stats_counts_its_requests() -> None:
    async with loadbalancer("--backends", "4") as http:
        before = await stats(http)
        pids = {b["name"]: b["pid"] for b in before["backends"]}
        assert len(pids) == 4
        answered: dict[str, int] = {}
        for _ in range(8):
            status, body = await get(http, "/")
            assert status == 200, body
            assert body["pid"] == pids[body["backend"]]
            answered[body["backend"]] = answered.get(body["backend"], 0) + 1
        assert set(answered) == set(pids)  # one at a time, idle backends take turns
        after = await stats(http)
        assert {b["name"]: b["requests"] for b in after["backends"]} == answered
        assert after["in_flight"] == 0 and after["rejected"] == 0


@pytest.mark.asyncio
async def test_cpu_work_runs_in_a_task_worker_not_in_the_backend() -> None:
    async with loadbalancer("--backends", "2") as http:
        status, body = await get(http, "/work?kind=cpu&n=1000")
        assert status == 200, body
        assert body["sum_of_squares"] == sum(i * i for i in range(1000))
        assert body["worker_pid"] != body["pid"]
        status, body = await get(http, "/work?kind=io&delay_ms=1")
        assert status == 200 and body["delay_ms"] == 1, body


@pytest.mark.asyncio
async def test_bad_requests_get_a_json_4xx_that_says_what_is_wrong() -> None:
    cases = [
        ("GET", "/nope", 404, "no such endpoint"),
        ("POST", "/work", 405, "use GET"),
        ("GET", "/work?delay_ms=abc", 400, "delay_ms must be an integer"),
        ("GET", "/work?delay_ms=-1", 400, "delay_ms must be an integer"),
        ("GET", "/work?kind=cpu&n=99999999999", 400, "n must be an integer"),
        ("GET", "/work?kind=gpu", 400, "kind must be 'io' or 'cpu'"),
        ("GET", "/work?kind=io&kind=cpu", 400, "more than once"),
        ("GET", "/work?size=1", 400, "unknown query parameter 'size'"),
        ("GET", "/work?kind=cpu&delay_ms=5", 400, "delay_ms applies to kind=io only"),
        ("GET", "/work?fail=error", 403, "--allow-faults"),
    ]
    async with loadbalancer("--backends", "1") as http:
        for method, path, expected, words in cases:
            async with http.request(method, path) as resp:
                assert resp.content_type == "application/json", (path, await resp.text())
                body = await resp.json()
                assert (resp.status, words in body["error"]) == (expected, True), (path, body)
        assert (await stats(http))["backends"][0]["requests"] == 0  # none reached a backend


@pytest.mark.asyncio
async def test_a_backend_that_raises_gets_a_502_with_the_error_and_keeps_serving() -> None:
    async with loadbalancer("--backends", "2", "--allow-faults") as http:
        status, body = await get(http, "/work?fail=error")
        assert status == 502, body
        assert f"{body['backend']} raised RuntimeError" in body["error"]
        assert "failed on purpose" in body["error"]
        for _ in range(4):
            status, body = await get(http, "/")
            assert status == 200, body
        info = await stats(http)
        assert all(b["alive"] for b in info["backends"])
        assert sum(b["errors"] for b in info["backends"]) == 1


@pytest.mark.asyncio
async def test_a_backend_that_dies_gets_a_503_and_no_more_requests() -> None:
    async with loadbalancer("--backends", "2", "--allow-faults") as http:
        status, body = await get(http, "/work?fail=crash")
        assert status == 503 and "died" in body["error"], body
        dead = body["backend"]
        for _ in range(6):
            status, body = await get(http, "/")
            assert status == 200 and body["backend"] != dead, body
        info = await stats(http)
        assert [b["name"] for b in info["backends"] if not b["alive"]] == [dead]
        status, body = await get(http, "/healthz")
        assert (status, body["live_backends"]) == (200, 1), body

        status, body = await get(http, "/work?fail=crash")  # the last one
        assert status == 503, body
        status, body = await get(http, "/")
        assert status == 503 and "no live backend" in body["error"], body
        status, body = await get(http, "/healthz")
        assert (status, body["live_backends"]) == (503, 0), body


@pytest.mark.asyncio
async def test_past_the_queue_limit_requests_get_a_503_at_once() -> None:
    delay = 2.0
    args = ("--backends", "1", "--max-concurrency", "1", "--queue-limit", "1")
    async with loadbalancer(*args) as http:
        started = time.monotonic()
        slow = [asyncio.create_task(get(http, f"/work?delay_ms={int(delay * 1000)}"))
                for _ in range(2)]  # one runs, one waits in the backend's mailbox
        deadline = started + 10 * delay
        while (await stats(http))["in_flight"] < 2:
            assert time.monotonic() < deadline, "the two slow requests never got in"
            await asyncio.sleep(0.01)
        quick = time.monotonic()
        status, body = await get(http, "/work?delay_ms=0")
        answered_in = time.monotonic() - quick
        assert status == 503 and "overloaded" in body["error"], body
        # "At once": while the admitted requests still hold every place, well before
        # the running one could end and make room.
        assert not any(task.done() for task in slow)
        assert answered_in < delay / 2, answered_in
        results = await asyncio.wait_for(asyncio.gather(*slow), 10 * delay)
        assert [status for status, _ in results] == [200, 200], results
        # max_concurrency=1: the second request waited for the first (a lower bound,
        # which a slow machine cannot break).
        assert time.monotonic() - started >= 2 * delay
        assert (await stats(http))["rejected"] == 1


@pytest.mark.asyncio
async def test_a_request_past_the_timeout_gets_a_504_and_is_cancelled() -> None:
    async with loadbalancer("--backends", "1", "--request-timeout", "0.5") as http:
        status, body = await get(http, "/work?delay_ms=10000")
        assert status == 504 and "no answer within 0.5 s" in body["error"], body
        # Cancelled, not abandoned: its place is free long before the 10 s are up.
        deadline = time.monotonic() + 5
        while (await stats(http))["in_flight"]:
            assert time.monotonic() < deadline, "the timed-out request is still in flight"
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_sigterm_stops_the_server_as_cleanly_as_ctrl_c() -> None:
    async with loadbalancer("--backends", "2", stop_signal=signal.SIGTERM) as http:
        status, _ = await get(http, "/")
        assert status == 200


@pytest.mark.asyncio
async def test_the_load_test_reports_that_every_request_succeeded_on_every_backend() -> None:
    port = free_port()
    async with loadbalancer("--backends", "3", port=port):
        cmd = [sys.executable, "-m", "examples.loadbalancer.loadtest", "--url",
               f"http://127.0.0.1:{port}", "--requests", "300", "--concurrency", "16", "--json"]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, (out, err)
        result = json.loads(out)
        assert result["succeeded"] == 300 and result["failed"] == 0, result
        assert sorted(result["backends"]) == ["backend-0", "backend-1", "backend-2"]
        assert result["requests_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"]


def test_a_port_in_use_is_a_clear_error_and_leaves_no_process() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        example = Example("examples.loadbalancer", "--port", str(busy.getsockname()[1]))
        try:
            example.wait_for_line("LoadBalancer pid=")  # the actors are up, then it binds
            assert example.wait(START_TIMEOUT_S) == 1
            assert "error: cannot listen on 127.0.0.1" in example.output
        finally:
            if example.proc.poll() is None:
                example.kill()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--backends", "0"], 2, "must be from 1 to 256"),
        (["--port", "http"], 2, "expected an integer"),
        (["--request-timeout", "-1"], 2, "must be more than 0"),
        (["--address", "localhost:6380"], 1, "unsupported broker address"),
    ],
)
def test_bad_command_line_arguments_are_refused_with_a_clear_message(
        args: list[str], code: int, words: str) -> None:
    example = Example("examples.loadbalancer", *args)
    try:
        assert example.wait(START_TIMEOUT_S) == code
        assert words in example.output
    finally:
        if example.proc.poll() is None:
            example.kill()


def test_joins_a_running_broker_with_address_and_its_actors_end_with_it() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    broker = Example("actorz", "up", "--bind", address)
    try:
        async def run() -> list[psutil.Process]:
            async with loadbalancer("--backends", "2", "--address", address) as http:
                status, body = await get(http, "/work?kind=cpu&n=100")
                assert status == 200, body
                info = await stats(http)
                pids = {info["load_balancer_pid"], *(b["pid"] for b in info["backends"])}
                # The actors run on the cluster's node, not under the example.
                cluster = psutil.Process(broker.proc.pid).children(recursive=True)
                assert pids <= {p.pid for p in cluster}
                return [psutil.Process(pid) for pid in pids]

        actors = asyncio.run(run())
        _, alive = psutil.wait_procs(actors, timeout=EXIT_TIMEOUT_S)
        assert not [p for p in alive if _is_live(p)], "the example's actors outlived it"
        assert broker.stop() == 0, broker.output
    finally:
        if broker.proc.poll() is None:
            broker.kill()


# --- long polling --------------------------------------------------------------------


def test_longpoll_processes_items_while_other_task_answers_then_exits() -> None:
    example = Example("examples.longpoll")
    try:
        out = example.read_to_end(START_TIMEOUT_S)
        assert example.wait() == 0, out
    finally:
        if example.proc.poll() is None:
            example.kill()
    async_part, _, threaded_part = out.partition("== Threaded actor")
    lines = async_part.splitlines()
    assert any(re.fullmatch(r"\(LongPollingActorAsync pid=\d+\) processed item 1", x)
               for x in lines), out
    answered = [x for x in lines
                if re.fullmatch(r"other_task answered in [\d.]+ ms while run\(\) was looping", x)]
    assert len(answered) >= 2, out
    assert "run() stopped by actorz.cancel()" in lines
    assert any(re.fullmatch(r"\(LongPollingActor pid=\d+\) processed item \d+", x)
               for x in threaded_part.splitlines()), out
    assert "other_task did not answer within 1.5 s" in threaded_part
    assert out.rstrip().endswith("Done.")


def test_longpoll_stops_at_ctrl_c_and_leaves_no_process() -> None:
    example = Example("examples.longpoll", "--duration", "600")
    try:
        example.wait_for_line(r"^\(LongPollingActorAsync pid=\d+\) processed item 1$")
        assert example.stop(signal.SIGINT) == 130
        assert "Interrupted: stopping the actors" in example.output
    finally:
        if example.proc.poll() is None:
            example.kill()

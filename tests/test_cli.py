"""The ``actorz`` command as a user runs it: subprocesses, real output, exit codes, signals.

Every process a test starts carries a mark in its environment; at teardown each one
(and every process that inherited the mark, orphans included) must be gone, or the test
fails after killing them. Brokers bind ``tcp://127.0.0.1:*`` and the test reads the port
they print, so concurrent runs never race for a port. The helpers here are shared with
``test_multinode.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from actorz.cli import fetch_status

REPO = Path(__file__).resolve().parent.parent
#: Bound on one wait: output, an exit, a cluster state. Generous for a loaded 2-core box.
WAIT_S = 30.0
#: How long processes may take to disappear once their parent is gone.
REAP_S = 10.0
MARK = "ACTORZ_TEST_MARK"


# --- helpers (shared with test_multinode.py) ------------------------------------------------


def actorz_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "actorz", *args]


def proc_env(mark: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ACTORZ_ADDRESS", None)
    env[MARK] = mark
    env.update(extra)
    return env


class Processes:
    """Every process a test starts, for signals, output, and the leak check at the end."""

    def __init__(self) -> None:
        self.mark = uuid.uuid4().hex
        self.started: list[Proc] = []

    def start(self, argv: list[str], *, prefix: tuple[str, ...] = (), **env: str) -> Proc:
        proc = Proc([*prefix, *argv], proc_env(self.mark, **env))
        self.started.append(proc)
        return proc

    def run(self, argv: list[str], *, timeout: float = WAIT_S, prefix: tuple[str, ...] = (),
            **env: str) -> subprocess.CompletedProcess[str]:
        """Run a command to its end; stdout and stderr apart."""
        try:
            return subprocess.run([*prefix, *argv], capture_output=True, text=True,
                                  timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL,
                                  env=proc_env(self.mark, **env), start_new_session=True,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{argv} did not finish within {timeout:g}s; output: {exc.output!r}")

    def driver(self, address: str, code: str, *, timeout: float = WAIT_S,
               prefix: tuple[str, ...] = (), **env: str) -> tuple[Any, str]:
        """Run a driver script joined to ``address``; return (its RESULT json, its output)."""
        done = self.run([sys.executable, "-c", textwrap.dedent(code)], timeout=timeout,
                        prefix=prefix, ACTORZ_ADDRESS=address, **env)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"driver failed ({done.returncode}):\n{out}"
        return result_of(out), out

    def leftovers(self) -> list[psutil.Process]:
        """Live processes that carry this test's mark (orphans of killed parents included)."""
        found = []
        me = os.getpid()
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.pid != me and p.environ().get(MARK) == self.mark and _is_live(p):
                    found.append(p)
        return found

    def stop_all_and_check(self) -> None:
        for proc in self.started:
            proc.remember()
        for proc in self.started:
            proc.kill_group()
        seen = {p.pid: p for proc in self.started for p in proc.seen.values()}
        _, alive = psutil.wait_procs(list(seen.values()), timeout=REAP_S)
        alive = [p for p in alive if _is_live(p)]
        deadline = time.monotonic() + REAP_S
        while (rest := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        leaked = {p.pid: p for p in [*alive, *rest]}
        for p in leaked.values():
            with contextlib.suppress(psutil.Error):
                p.kill()
        for proc in self.started:
            proc.close()
        assert not leaked, f"processes outlived the test: {sorted(leaked)}"


class Proc:
    """A command in a process group of its own; stdout and stderr read line by line."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, text=True, cwd=REPO, env=env,
                                      start_new_session=True)
        self.lines: list[str] = []
        self.seen: dict[int, psutil.Process] = {}
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.remember()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> re.Match[str]:
        """The first output line matching ``pattern``; fails at the deadline or at EOF."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if m := regex.search(line):
                        return m
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "its output ended" if self._eof else f"nothing within {timeout:g}s"
                    pytest.fail(f"{self.argv[-6:]}: no line matching {pattern!r} ({why}):\n"
                                + "\n".join(self.lines))
                self._cond.wait(remaining)

    def remember(self) -> None:
        """Snapshot this process and its descendants: each must be gone at the end."""
        with contextlib.suppress(psutil.Error):
            me = psutil.Process(self.popen.pid)
            self.seen[me.pid] = me
            for p in me.children(recursive=True):
                self.seen[p.pid] = p

    def signal(self, sig: int) -> None:
        self.remember()
        self.popen.send_signal(sig)

    def wait(self, timeout: float = WAIT_S) -> int:
        """The exit code; fails if the process is still running at the deadline."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.argv[-6:]} did not exit within {timeout:g}s:\n{self.output}")
        self._reader.join(timeout)
        return code

    def assert_gone_with_children(self) -> None:
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=REAP_S)
        alive = [p for p in alive if _is_live(p)]
        assert not alive, f"outlived {self.argv[-6:]}: {alive}\n{self.output}"

    def kill_group(self) -> None:
        if self.popen.poll() is None:
            self.remember()
            with contextlib.suppress(OSError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(REAP_S)

    def close(self) -> None:
        self._reader.join(REAP_S)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def _is_live(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def result_of(output: str) -> Any:
    """The JSON after the last ``RESULT `` a driver printed."""
    for line in reversed(output.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    pytest.fail(f"the driver printed no RESULT line:\n{output}")


def status(address: str) -> dict[str, Any]:
    return fetch_status(address, timeout=10.0)


def wait_status(address: str, predicate: Callable[[dict[str, Any]], bool], what: str,
                timeout: float = WAIT_S) -> dict[str, Any]:
    """Poll the broker's status until ``predicate`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        s = status(address)
        if predicate(s):
            return s
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g}s; last status:\n"
                        f"{json.dumps(s, indent=1)}")
        time.sleep(0.1)  # a poll interval, not a wait for something to happen


def start_broker(procs: Processes, *args: str, prefix: tuple[str, ...] = (),
                 bind: str = "tcp://127.0.0.1:*") -> tuple[Proc, str]:
    """``actorz broker`` on a free port; returns it and the address it printed."""
    broker = procs.start(actorz_cmd("broker", "--bind", bind, *args), prefix=prefix)
    m = broker.wait_for(r"listening on (\S+)")
    address = m.group(1).rstrip(",")
    return broker, address


def start_node(procs: Processes, address: str, name: str, *args: str,
               prefix: tuple[str, ...] = (), wait: bool = True) -> Proc:
    """``actorz node`` with one task worker; with ``wait``, until the broker lists it."""
    node = procs.start(actorz_cmd("node", "--address", address, "--name", name,
                                  "--num-workers", "1", *args), prefix=prefix)
    if wait:
        node.wait_for(rf"node {re.escape(name)} joined")
        if not prefix:
            wait_status(address, lambda s: any(n["name"] == name and n["workers"] == 1
                                               for n in s["nodes"]), f"node {name} ready")
        node.remember()
    return node


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all_and_check()


# --- arguments and errors ---------------------------------------------------------------------


def test_help_lists_every_command_and_python_m_is_the_same_command(procs: Processes) -> None:
    done = procs.run(actorz_cmd("--help"))
    assert done.returncode == 0
    for command in ("broker", "node", "up", "status", "bench"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), done.stdout
    script = Path(sys.executable).parent / "actorz"
    if script.exists():  # the console script of pyproject.toml, when installed
        installed = procs.run([str(script), "--help"])
        assert installed.returncode == 0 and installed.stdout == done.stdout


def test_no_command_prints_usage_and_exits_2(procs: Processes) -> None:
    done = procs.run(actorz_cmd())
    assert done.returncode == 2
    assert "usage: actorz" in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["broker", "--bind", "localhost:6380"], "unsupported broker address"),
    (["broker", "--bind", "tcp://127.0.0.1"], "needs a host and a port"),
    (["broker", "--log-level", "loud"], "invalid choice"),
    (["node", "--address", "tcp://127.0.0.1:1", "--resources", "{gpu: 1}"], "not valid JSON"),
    (["node", "--address", "tcp://127.0.0.1:1", "--resources", '{"gpu": -1}'],
     "non-negative number"),
    (["node", "--address", "tcp://127.0.0.1:1", "--num-workers", "-2"],
     "non-negative integer"),
    (["node"], "--address is required"),
    (["status", "--address", "tcp://127.0.0.1:1", "--timeout", "0"], "positive number"),
    (["frobnicate"], "invalid choice"),
])
def test_malformed_arguments_exit_2_naming_the_problem(procs: Processes, args: list[str],
                                                       message: str) -> None:
    done = procs.run(actorz_cmd(*args))
    assert done.returncode == 2, done
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_non_loopback_bind_is_refused_without_insecure(procs: Processes) -> None:
    done = procs.run(actorz_cmd("broker", "--bind", "tcp://0.0.0.0:*"))
    assert done.returncode == 1
    assert "refusing to listen on tcp://0.0.0.0:*" in done.stderr
    assert "--insecure" in done.stderr
    done = procs.run(actorz_cmd("up", "--bind", "ipc:///tmp/x.sock", "--bind",
                                "tcp://10.1.2.3:6380"))
    assert done.returncode == 1 and "refusing to listen on tcp://10.1.2.3:6380" in done.stderr


def test_insecure_binds_anywhere_with_a_loud_warning(procs: Processes) -> None:
    # In a network namespace of its own (nothing but a loopback that is down), so the
    # open port is reachable from nowhere.
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to listen on 0.0.0.0 inside a private network namespace")
    probe = procs.run(["unshare", "--net", "true"])
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    broker = procs.start(actorz_cmd("broker", "--bind", "tcp://0.0.0.0:*", "--insecure"),
                         prefix=("unshare", "--net"))
    broker.wait_for(r"INSECURE: listening on tcp://0\.0\.0\.0:\d+ WITHOUT AUTHENTICATION")
    broker.wait_for(r"Anyone who can reach this port can run arbitrary code")
    broker.signal(signal.SIGTERM)
    assert broker.wait() == 0


def test_a_second_broker_on_the_same_address_exits_1(procs: Processes) -> None:
    _, address = start_broker(procs)
    done = procs.run(actorz_cmd("broker", "--bind", address))
    assert done.returncode == 1
    assert f"cannot bind the broker to {address}: the address is already in use" in done.stderr
    assert "Traceback" not in done.stderr
    with tempfile.TemporaryDirectory(prefix="actorz-test-") as tmp:
        ipc = f"ipc://{tmp}/broker.sock"
        start_broker(procs, bind=ipc)
        done = procs.run(actorz_cmd("up", "--bind", ipc, "--num-workers", "0"))
        assert done.returncode == 1
        assert "already in use" in done.stderr, done.stderr


def test_status_of_an_unreachable_broker_fails_after_the_timeout(procs: Processes) -> None:
    broker, address = start_broker(procs)
    port = address.rsplit(":", 1)[1]
    broker.signal(signal.SIGTERM)
    assert broker.wait() == 0
    started = time.monotonic()
    done = procs.run(actorz_cmd("status", "--address", f"tcp://127.0.0.1:{port}",
                                "--timeout", "1"))
    assert done.returncode == 1
    assert "no actorz broker answered at" in done.stderr and "within 1s" in done.stderr
    assert time.monotonic() - started < 15


def test_a_node_without_a_broker_gives_up_after_its_connect_timeout(procs: Processes) -> None:
    broker, address = start_broker(procs)
    broker.signal(signal.SIGTERM)
    assert broker.wait() == 0
    node = start_node(procs, address, "lonely", "--connect-timeout", "1", wait=False)
    assert node.wait() == 1
    assert "no actorz broker answered" in node.output
    node.assert_gone_with_children()


def test_bench_is_delegated_and_a_missing_suite_is_a_clear_error(procs: Processes) -> None:
    code = ("import sys; sys.modules['actorz.bench'] = None\n"
            "from actorz.cli import main; sys.exit(main(['bench', '--quick']))")
    done = procs.run([sys.executable, "-c", code])
    assert done.returncode == 1
    assert "benchmark suite (actorz/bench.py) is not part of this installation" in done.stderr
    try:
        import actorz.bench  # noqa: F401
    except ImportError:
        return
    done = procs.run(actorz_cmd("bench", "--help"))
    assert done.returncode == 0 and "usage: actorz bench" in done.stdout, done


# --- running clusters -------------------------------------------------------------------------


def test_up_prints_the_address_and_status_shows_the_cluster(procs: Processes) -> None:
    up = procs.start(actorz_cmd("up", "--bind", "tcp://127.0.0.1:*", "--num-workers", "1",
                                "--name", "solo", "--resources", '{"gpu": 2}'))
    address = up.wait_for(r"listening on (tcp://127\.0\.0\.1:\d+)").group(1)
    up.wait_for(rf'actorz\.init\(address="{re.escape(address)}"\)')
    up.wait_for(rf"actorz node --address {re.escape(address)}")
    wait_status(address, lambda s: [n["workers"] for n in s["nodes"]] == [1], "node ready")
    _, out = procs.driver(address, """
        import json, actorz
        actorz.init()
        @actorz.remote
        class Counter:
            def __init__(self): self.n = 0
            def add(self): self.n += 1; return self.n
        c = Counter.options(name="counter", lifetime="detached", resources={"gpu": 1}).remote()
        print("RESULT", json.dumps(actorz.get(c.add.remote(), timeout=30)))
    """)
    assert result_of(out) == 1

    text = procs.run(actorz_cmd("status", "--address", address))
    assert text.returncode == 0, text.stderr
    assert re.search(r"^NODES \(1\)$", text.stdout, re.MULTILINE)
    assert re.search(r"^\s+solo\s+\S+\s+\S+\s+\d+\s+CPU \d+/\d+, gpu 1/2\s+1\s+1\s",
                     text.stdout, re.MULTILINE), text.stdout
    assert re.search(r"^\s+[0-9a-f]{18}\s+Counter\s+default/counter\s+solo\s+\d+\s+alive",
                     text.stdout, re.MULTILINE), text.stdout
    assert "TASKS    queued at the broker: 0" in text.stdout
    assert re.search(r"^DRIVERS \(0\)$", text.stdout, re.MULTILINE)  # the driver above has left

    js = procs.run(actorz_cmd("status", "--json"), ACTORZ_ADDRESS=address)
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["broker"]["binds"] == [address]
    assert [(a["class_name"], a["name"], a["detached"]) for a in data["actors"]] == [
        ("Counter", "counter", True)]
    assert data["nodes"][0]["resources"] == {"CPU": float(os.cpu_count() or 1), "gpu": 2.0}
    assert data["task_queue"] == 0 and data["drivers"] == []

    up.signal(signal.SIGINT)
    assert up.wait() == 0, up.output
    assert "Traceback" not in up.output
    up.assert_gone_with_children()


def test_sigint_stops_a_node_and_its_actors_and_the_broker_drops_it_at_once(
        procs: Processes) -> None:
    broker, address = start_broker(procs)
    keep = start_node(procs, address, "keep")
    node = start_node(procs, address, "leaving", "--resources", '{"here": 1}')
    result, _ = procs.driver(address, """
        import json, os, actorz
        actorz.init()
        @actorz.remote
        class Pid:
            def pid(self): return os.getpid()
        a = Pid.options(name="leaver", lifetime="detached", resources={"here": 1}).remote()
        print("RESULT", json.dumps(actorz.get(a.pid.remote(), timeout=30)))
    """)
    actor = psutil.Process(result)
    node.signal(signal.SIGINT)
    assert node.wait() == 0, node.output
    node.assert_gone_with_children()
    assert not _is_live(actor)
    # The node said goodbye: the broker knows at once, not after a heartbeat timeout.
    s = status(address)
    assert [n["name"] for n in s["nodes"]] == ["keep"]
    assert s["actors"] == []

    # SIGTERM on the broker stops it and the nodes it still has, each with code 0.
    broker.signal(signal.SIGTERM)
    assert broker.wait() == 0, broker.output
    assert keep.wait() == 0, keep.output
    assert "the broker asked it to stop" in keep.output
    keep.assert_gone_with_children()


def test_a_node_that_loses_its_broker_exits_1_and_kills_its_children(procs: Processes) -> None:
    broker, address = start_broker(procs)
    node = start_node(procs, address, "orphan")
    result, _ = procs.driver(address, """
        import json, os, actorz
        actorz.init()
        @actorz.remote
        class Pid:
            def pid(self): return os.getpid()
        a = Pid.options(lifetime="detached").remote()
        print("RESULT", json.dumps(actorz.get(a.pid.remote(), timeout=30)))
    """)
    node.remember()
    assert result in node.seen  # the actor is the node's grandchild (through the template)
    broker.kill_group()  # no goodbye: the node has to notice the silence
    assert node.wait(timeout=20) == 1, node.output
    assert "lost the broker" in node.output
    node.assert_gone_with_children()


def test_a_driver_whose_broker_restarted_fails_its_calls_with_a_clear_error(
        procs: Processes) -> None:
    broker, address = start_broker(procs)
    start_node(procs, address, "n")
    driver = procs.start([sys.executable, "-c", textwrap.dedent("""
        import asyncio, json, actorz
        actorz.init()
        @actorz.remote
        class Stuck:
            async def forever(self):
                await asyncio.Event().wait()
            async def ready(self):
                return True
        a = Stuck.options(lifetime="detached").remote()
        actorz.get(a.ready.remote(), timeout=30)
        ref = a.forever.remote()
        print("READY", flush=True)
        out = {}
        try:
            actorz.get(ref, timeout=60)
        except actorz.exceptions.ActorzError as exc:
            out["pending"] = f"{type(exc).__name__}: {exc}"
        import time
        start = time.monotonic()
        try:
            actorz.get(a.ready.remote(), timeout=30)
        except actorz.exceptions.ActorzError as exc:
            out["later"] = f"{type(exc).__name__}: {exc}"
        out["later_s"] = time.monotonic() - start
        print("RESULT", json.dumps(out), flush=True)
    """)], ACTORZ_ADDRESS=address)
    driver.wait_for("READY")
    broker.kill_group()
    broker.wait()
    start_broker(procs, bind=address)  # a new broker, same address, empty registry
    driver.wait_for("RESULT", timeout=30)
    assert driver.wait() == 0, driver.output
    result = result_of(driver.output)
    assert "no longer knows this program" in result["pending"] or "lost" in result["pending"]
    assert result["later"].startswith("ActorzError"), result
    assert result["later_s"] < 5, result  # the session is over: no waiting for an answer

"""What actors and tasks print reaches the driver's real stdout/stderr, prefixed.

Each test runs a driver program as a subprocess (``python driver.py``) with pipes for
its output, as a user or CI would, and checks what it actually wrote.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import prefixed, run_driver

from actorz._logging import TaggedStream, current_task, parse_line

PREFIX = re.compile(r"^\((\w+) pid=(\d+)\) (.*)$")


def lines_of(output: str, name: str) -> list[tuple[int, str]]:
    """(pid, text) of each line prefixed ``(name pid=N) ``."""
    out = []
    for line in output.splitlines():
        m = PREFIX.match(line)
        if m and m.group(1) == name:
            out.append((int(m.group(2)), m.group(3)))
    return out


# --- pure: the worker side of the log pipe ---------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


def read_lines(fd: int) -> list[tuple[int, str | None, str | None, str]]:
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return []
    assert data.endswith(b"\n")
    return [parse_line(raw) for raw in data.split(b"\n")[:-1]]


def test_a_worker_stream_writes_whole_lines_only(pipe: tuple[int, int]) -> None:
    r, w = pipe
    out = TaggedStream(w, 1)
    out.write("hello ")
    assert read_lines(r) == []
    out.write("world\nsecond\npartial")
    assert read_lines(r) == [(1, None, None, "hello world"), (1, None, None, "second")]
    out.flush()
    assert read_lines(r) == [(1, None, None, "partial")]
    assert not out.isatty()


def test_a_worker_stream_tags_lines_with_their_stream_and_task(pipe: tuple[int, int]) -> None:
    r, w = pipe
    err = TaggedStream(w, 2)
    token = current_task.set(("d0caller", "my_task"))
    try:
        err.write("from a task\n")
    finally:
        current_task.reset(token)
    err.write("outside\n")
    assert read_lines(r) == [(2, "d0caller", "my_task", "from a task"),
                             (2, None, None, "outside")]


def test_an_untagged_line_is_read_as_stderr() -> None:
    # Written below Python (a C extension, a fatal error report): no tag.
    assert parse_line(b"Fatal Python error: Segmentation fault") == (
        2, None, None, "Fatal Python error: Segmentation fault")


# --- end to end: real driver programs --------------------------------------------------


def test_actor_output_is_prefixed_with_its_class_name_and_pid(tmp_path: Path) -> None:
    result = run_driver("""
        import asyncio, os, sys
        import actorz

        @actorz.remote
        class AsyncActor:
            def __init__(self, n):
                self.n = n
                self.count = 0
                self.event = asyncio.Event()

            async def run_task(self):
                print("Started task")
                self.count += 1
                if self.count == self.n:
                    self.event.set()
                else:
                    await self.event.wait()
                print("Finished task")

            async def pid(self):
                return os.getpid()

        actor = AsyncActor.remote(5)
        actorz.get([actor.run_task.remote() for _ in range(5)], timeout=60)
        print("ACTOR_PID", actorz.get(actor.pid.remote(), timeout=60))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    pid = int(re.search(r"ACTOR_PID (\d+)", result.stdout).group(1))
    assert lines_of(result.stdout, "AsyncActor") == (
        [(pid, "Started task")] * 5 + [(pid, "Finished task")] * 5
    ), result.stdout


def test_stderr_of_an_actor_goes_to_the_drivers_stderr(tmp_path: Path) -> None:
    result = run_driver("""
        import sys
        import actorz

        @actorz.remote
        class Noisy:
            def shout(self):
                print("to stdout")
                print("to stderr", file=sys.stderr)
                print("two\\nlines", file=sys.stderr)

        actorz.get(Noisy.remote().shout.remote(), timeout=60)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert prefixed(result.stdout, "Noisy") == ["to stdout"]
    assert prefixed(result.stderr, "Noisy") == ["to stderr", "two", "lines"]


def test_task_output_is_prefixed_with_the_function_name(tmp_path: Path) -> None:
    result = run_driver("""
        import os
        import actorz

        @actorz.remote
        def crunch(i):
            print(f"crunching {i}")
            return os.getpid()

        pids = actorz.get([crunch.remote(i) for i in range(3)], timeout=60)
        print("TASK_PIDS", *pids)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    pids = {int(p) for p in re.search(r"TASK_PIDS (.*)", result.stdout).group(1).split()}
    got = lines_of(result.stdout, "crunch")
    assert sorted(text for _, text in got) == ["crunching 0", "crunching 1", "crunching 2"]
    assert {pid for pid, _ in got} == pids


def test_output_has_no_colour_codes_when_the_stream_is_not_a_terminal(tmp_path: Path) -> None:
    result = run_driver("""
        import sys
        import actorz

        @actorz.remote
        class Plain:
            def talk(self):
                print("out line")
                print("err line", file=sys.stderr)

        @actorz.remote
        def talk():
            print("task line")

        actorz.get([Plain.remote().talk.remote(), talk.remote()], timeout=60)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert prefixed(result.stdout, "Plain") == ["out line"]
    assert prefixed(result.stderr, "Plain") == ["err line"]
    assert prefixed(result.stdout, "talk") == ["task line"]
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr


def test_a_line_printed_right_before_the_process_exits_is_not_lost(tmp_path: Path) -> None:
    result = run_driver("""
        import os, sys
        import actorz
        from actorz.exceptions import ActorDiedError, WorkerCrashedError

        @actorz.remote
        class Dying:
            def last_words(self):
                print("goodbye from the actor")
                print("and from its stderr", file=sys.stderr)
                os._exit(1)

        @actorz.remote
        def dying_task():
            print("goodbye from the task")
            os._exit(1)

        try:
            actorz.get(Dying.remote().last_words.remote(), timeout=60)
        except ActorDiedError:
            print("ACTOR_DIED")
        try:
            actorz.get(dying_task.remote(), timeout=60)
        except WorkerCrashedError:
            print("WORKER_CRASHED")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ACTOR_DIED" in result.stdout and "WORKER_CRASHED" in result.stdout
    assert prefixed(result.stdout, "Dying") == ["goodbye from the actor"]
    assert prefixed(result.stderr, "Dying") == ["and from its stderr"]
    assert prefixed(result.stdout, "dying_task") == ["goodbye from the task"]


def test_output_of_the_last_calls_before_the_driver_exits_is_printed(tmp_path: Path) -> None:
    # The documents' scripts end right after ray.get(); their expected output shows
    # every line the actor printed. The driver exits at once here, without shutdown().
    result = run_driver("""
        import actorz

        @actorz.remote
        class Last:
            def talk(self, i):
                print(f"line {i}")

        a = Last.remote()
        actorz.get([a.talk.remote(i) for i in range(20)], timeout=60)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert prefixed(result.stdout, "Last") == [f"line {i}" for i in range(20)]


def test_log_to_driver_false_turns_the_output_off(tmp_path: Path) -> None:
    result = run_driver("""
        import sys
        import actorz
        actorz.init(log_to_driver=False)

        @actorz.remote
        class Quiet:
            def talk(self):
                print("SECRET actor stdout")
                print("SECRET actor stderr", file=sys.stderr)

        @actorz.remote
        def talk():
            print("SECRET task stdout")
            print("SECRET task stderr", file=sys.stderr)

        actorz.get([Quiet.remote().talk.remote(), talk.remote()], timeout=60)
        actorz.shutdown()
        print("DONE")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "DONE" in result.stdout
    assert "SECRET" not in result.stdout + result.stderr


def test_output_of_an_actor_created_by_an_actor_reaches_the_driver(tmp_path: Path) -> None:
    result = run_driver("""
        import actorz

        @actorz.remote
        class Child:
            def talk(self):
                print("from the child")

        @actorz.remote
        class Parent:
            async def spawn(self):
                child = Child.remote()
                await child.talk.remote()

        actorz.get(Parent.remote().spawn.remote(), timeout=60)
        actorz.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert prefixed(result.stdout, "Child") == ["from the child"]


def test_output_of_a_task_called_by_an_actor_reaches_the_driver(tmp_path: Path) -> None:
    # The blog's offload pattern: an async actor hands compute-heavy work to a task.
    result = run_driver("""
        import actorz

        @actorz.remote
        def offloaded():
            print("from a task an actor called")

        @actorz.remote
        class Offloader:
            async def offload(self):
                await offloaded.remote()

        actorz.get(Offloader.remote().offload.remote(), timeout=60)
        actorz.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert prefixed(result.stdout, "offloaded") == ["from a task an actor called"]


def test_output_of_a_driver_script_is_not_mixed_into_one_line(tmp_path: Path) -> None:
    result = run_driver("""
        import actorz

        @actorz.remote
        class Chatty:
            def __init__(self, tag):
                self.tag = tag

            def talk(self):
                for i in range(50):
                    print(f"{self.tag} {i}")

        actors = [Chatty.remote(t) for t in "ab"]
        actorz.get([a.talk.remote() for a in actors], timeout=60)
        actorz.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    got = prefixed(result.stdout, "Chatty")
    for tag in "ab":
        assert [line for line in got if line.startswith(tag)] == [f"{tag} {i}" for i in range(50)]
    assert len(got) == 100

"""Process entry point of actors and task workers (runs in a fork of the template)."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import threading
import traceback
from typing import Any

import cloudpickle  # noqa: F401  (preloaded by the template)
import zmq

from actorz import _context
from actorz import _protocol as P
from actorz import _serialization as S
from actorz._client import Client
from actorz._logging import install_worker_streams
from actorz._pending import PENDING
from actorz._worker._async_dispatch import AsyncDispatcher
from actorz._worker._task_worker import TaskWorker
from actorz._worker._thread_dispatch import ThreadDispatcher

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
    uvloop = None  # type: ignore[assignment]  # the module, or None where it did not build


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def _keep_large_blocks() -> None:
    """Let glibc reuse large freed blocks instead of unmapping them.

    Every large value a worker receives is a fresh allocation; by default glibc serves
    anything over 32 MiB with a new mmap, so each 64 MiB value paid ~16k page faults
    (a 64 MiB copy: 36 ms; 9 ms once the heap keeps the block). Up to 256 MiB of freed
    heap stays with the process; larger blocks are mmap'ed as before. Worker processes
    only: a user's own program keeps its allocator settings.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 256 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):
        pass


def run(role: str, identity: bytes, address: str, info: dict[str, Any]) -> None:
    install_worker_streams()
    _keep_large_blocks()
    ctx = zmq.Context()
    client = Client(ctx, address, identity)
    # Set by an embedded cluster, whose processes all share this host (see _shm.py).
    client.shm_dir = os.environ.get("ACTORZ_SHM_DIR") or None
    _context.set_client(client)
    if role == "worker":
        _run_task_worker(client, info)
    else:
        _run_actor(client)


def _attach(client: Client, loop: asyncio.AbstractEventLoop) -> None:
    client.forbidden_loop = loop
    client._loops[loop] = True
    loop.add_reader(client.fd, client._on_readable)


def _run_task_worker(client: Client, info: dict[str, Any]) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    _attach(client, loop)
    worker = TaskWorker(client, loop)
    client.start_watcher(watch_socket=False)  # sends results while a long task runs
    client.on_task = worker.submit
    client.on_cancel = worker.cancel
    client.on_drained = worker.drained
    client.namespace = "default"
    client.send_item(P.BROKER, P.item(P.CONTROL, 0, P.encode_json(
        {"op": "hello", "role": "worker", "pid": os.getpid(), "node": info.get("node")})),
        flush=True)
    loop.run_forever()


def _load_instance_parts(meta: dict[str, Any], bufs: Any) -> tuple[type[Any], tuple[Any, ...],
                                                                     dict[str, Any]]:
    for p in reversed(meta.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    definition, args, kwargs = S.loads(bufs[0], bufs[1:])
    cls = S.loads(definition)
    return cls, args, kwargs or {}


def _init_failed(client: Client, class_name: str, exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (f"actor {class_name} failed in __init__ and is dead: {type(exc).__name__}: {exc}\n"
            f"{tb}")


def _run_actor(client: Client) -> None:
    # Calls queued at the broker arrive right behind the answer to hello, before the
    # dispatcher exists: hold them, in order, and hand them over once it does.
    early: list[tuple[bytes, int, Any, Any]] = []
    client.on_call = lambda *call: early.append(call)
    client.on_cancel = lambda src, call_id: _cancel_early(client, early, src, call_id)
    hello = client.request("hello", role="actor", pid=os.getpid())
    client.wait(lambda: hello.state != PENDING, None)
    bufs = hello.bufs  # before result(), which lets go of the raw frames
    meta = hello.result()
    client.namespace = meta.get("namespace", "default")
    class_name = meta.get("class_name", "Actor")
    max_concurrency = int(meta.get("max_concurrency") or 1)
    if meta.get("is_async"):
        _run_async_actor(client, meta, bufs, class_name, max_concurrency, early)
    else:
        _run_threaded_actor(client, meta, bufs, class_name, max_concurrency, early)


def _cancel_early(client: Client, early: list[tuple[bytes, int, Any, Any]], src: bytes,
                  call_id: int) -> None:
    for i, call in enumerate(early):
        if call[0] == src and call[1] == call_id:
            del early[i]
            client.reply_fail(src, call_id, "TaskCancelledError",
                              "the call was cancelled before it started")
            return


def _take_over(client: Client, dispatcher: Any, early: list[tuple[bytes, int, Any, Any]]) -> None:
    with client._lock:
        for call in early:
            dispatcher.submit(*call)
        early.clear()
        client.on_call = dispatcher.submit
        client.on_cancel = dispatcher.cancel
        client.on_control = lambda msg: _on_control(client, dispatcher, msg)


def _on_control(client: Client, dispatcher: Any, msg: dict[str, Any]) -> None:
    if msg.get("op") == "stats":  # actorz status asks how many calls this actor holds
        client.send_item(P.BROKER, P.control("stats_reply", token=msg.get("token"),
                                             inflight=dispatcher.in_flight()))


def _report_init_failure(client: Client, dispatcher: Any, reason: str) -> None:
    print(reason, file=sys.stderr, end="")
    client.send_item(P.BROKER, P.control("actor_failed", reason=reason))
    dispatcher.fail_queued("ActorDiedError", reason)
    client.flush()


def _run_async_actor(client: Client, meta: dict[str, Any], bufs: Any, class_name: str,
                     max_concurrency: int, early: list[tuple[bytes, int, Any, Any]]) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    dispatcher = AsyncDispatcher(client, loop, max_concurrency, class_name)
    _take_over(client, dispatcher, early)
    client.on_drained = dispatcher.drained
    _attach(client, loop)

    async def boot() -> None:
        cls: Any  # as type[Any], mypy resolves cls.__new__ to type.__new__
        cls, args, kwargs = _load_instance_parts(meta, bufs)
        instance = cls.__new__(cls)
        result = cls.__init__(instance, *args, **kwargs)
        if inspect.isawaitable(result):
            await result
        dispatcher.start(instance)

    try:
        loop.run_until_complete(boot())
    except Exception as exc:
        _report_init_failure(client, dispatcher, _init_failed(client, class_name, exc))
        _linger_and_exit(client, 1)
    loop.run_forever()


def _run_threaded_actor(client: Client, meta: dict[str, Any], bufs: Any, class_name: str,
                        max_concurrency: int, early: list[tuple[bytes, int, Any, Any]]) -> None:
    dispatcher = ThreadDispatcher(client, max_concurrency, class_name)
    _take_over(client, dispatcher, early)
    client.start_watcher()
    try:
        cls, args, kwargs = _load_instance_parts(meta, bufs)
        instance = cls(*args, **kwargs)
    except Exception as exc:
        _report_init_failure(client, dispatcher, _init_failed(client, class_name, exc))
        _linger_and_exit(client, 1)
    dispatcher.start(instance)
    threading.Event().wait()


def _linger_and_exit(client: Client, code: int) -> None:
    client.flush()
    sock = client.sock
    client.closed = "exiting"
    sock.close(linger=2000)
    client.ctx.term()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

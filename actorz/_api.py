"""The public functions: init, shutdown, get, wait, cancel, kill, get_actor."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any, TypeVar

import cloudpickle
import zmq

from actorz import _context, _shm
from actorz import _protocol as P
from actorz._client import Client
from actorz._logging import DriverLogSink
from actorz._pending import PENDING
from actorz._refs import ActorHandle, ObjectRef
from actorz._transport import check_address, private_ipc_address, wait_reachable
from actorz.exceptions import ActorzError, GetTimeoutError

T = TypeVar("T")

#: How long ``init`` waits for a broker (and, embedded, its first node) to answer.
CONNECT_TIMEOUT_S = 30.0
#: How long a refused connection or a missing ipc path may last before ``init`` gives up.
REACHABLE_TIMEOUT_S = 5.0
#: How long ``shutdown`` waits for the output still on its way from the nodes.
LOG_FLUSH_TIMEOUT_S = 2.0

_init_lock = threading.RLock()
_cluster: _EmbeddedCluster | None = None


class _EmbeddedCluster:
    """A broker and a local node agent in one child process, on a private ipc path."""

    def __init__(self, num_workers: int | None) -> None:
        self.address, self.directory = private_ipc_address()
        # Every process of this cluster shares the host: large values go through here.
        self.shm_dir = _shm.make_directory()
        env = dict(os.environ)
        env["ACTORZ_SYS_PATH"] = json.dumps([p for p in sys.path if p])
        if self.shm_dir:
            env["ACTORZ_SHM_DIR"] = self.shm_dir
        else:
            env.pop("ACTORZ_SHM_DIR", None)
        cmd = [sys.executable, "-m", "actorz._cluster", "--bind", self.address, "--embedded"]
        if num_workers is not None:
            cmd += ["--num-workers", str(num_workers)]
        # stdin is the lifeline: the cluster stops when this process dies and the pipe
        # closes, whichever thread started it (PDEATHSIG would follow the thread).
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env,
                                     start_new_session=True)

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, 9)
            except OSError:
                proc.kill()
            proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
        _shm.remove_directory(self.shm_dir)


def init(
    address: str | None = None,
    *,
    log_to_driver: bool = True,
    num_workers: int | None = None,
    num_cpus: int | None = None,
    namespace: str | None = None,
    pickle_by_value: Sequence[ModuleType] = (),
    ignore_reinit_error: bool = False,
) -> None:
    """Connect this program to an actorz cluster.

    With no ``address`` (and no ``ACTORZ_ADDRESS`` in the environment) an embedded cluster
    is started: a broker and a local node agent bound to a private ``ipc://`` path in a
    0700 temporary directory, stopped at ``shutdown()`` or interpreter exit. With an
    address (``tcp://host:port`` or ``ipc:///path``) this program joins a running broker
    (``actorz broker`` / ``actorz up``).

    Args:
        log_to_driver: print what actors and tasks print, prefixed ``(Class pid=N)``.
        num_workers: task-worker processes of the embedded cluster (default: CPU count).
        num_cpus: accepted for Ray compatibility; used as ``num_workers`` if that is unset.
        namespace: where this program's named actors live (default ``"default"``).
        pickle_by_value: modules of this program to ship by value (cloudpickle) with the
            classes and functions defined in them, for nodes where they are not installed.
        ignore_reinit_error: make a second ``init()`` a no-op instead of an error.
    """
    global _cluster
    with _init_lock:
        if _context.client is not None:
            if ignore_reinit_error:
                return
            raise RuntimeError(
                "actorz.init() was already called in this process; call actorz.shutdown() "
                "first, or pass ignore_reinit_error=True"
            )
        if num_workers is None and num_cpus is not None:
            num_workers = int(num_cpus)
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise ValueError(f"namespace must be a non-empty string, got {namespace!r}")
        by_value = _check_modules(pickle_by_value)
        address = address or os.environ.get("ACTORZ_ADDRESS") or None
        cluster = None
        if address is None:
            cluster = _EmbeddedCluster(num_workers)
            address = cluster.address
        else:
            address = check_address(address)
            why = wait_reachable(address, REACHABLE_TIMEOUT_S)
            if why is not None:
                raise ActorzError(
                    f"no actorz broker at {address}: {why}; start one with 'actorz up' (or "
                    "'actorz broker'), or call actorz.init() with no address for an "
                    "embedded cluster"
                )
        _register_by_value(by_value)
        ctx = zmq.Context()
        client = Client(ctx, address, P.new_id(P.DRIVER))
        client.shm_dir = cluster.shm_dir if cluster is not None else None
        client.namespace = namespace or "default"
        client.log_to_driver = log_to_driver
        if log_to_driver:
            client.on_log = DriverLogSink()
        try:
            p = client.request("hello", role="driver", pid=os.getpid(),
                               host=socket.gethostname(), wait_nodes=1 if cluster else 0,
                               namespace=client.namespace)
            if not client.wait(lambda: p.state != PENDING, CONNECT_TIMEOUT_S):
                raise ActorzError(
                    f"no actorz broker answered at {address} within {CONNECT_TIMEOUT_S:.0f}s; "
                    "start one with 'actorz up' (or 'actorz broker'), or call actorz.init() "
                    "with no address for an embedded cluster"
                )
            p.result()
        except BaseException:
            client.close("init failed")
            ctx.term()
            if cluster is not None:
                cluster.stop()
            _unregister_by_value()
            raise
        client.start_watcher(heartbeat=True)
        _cluster = cluster
        _context.set_client(client)


def _auto_init() -> Client:
    with _init_lock:
        if _context.client is None:
            init()
        assert _context.client is not None
        return _context.client


_context.auto_init = _auto_init


def is_initialized() -> bool:
    """True between ``init()`` (explicit or automatic) and ``shutdown()``."""
    return _context.client is not None


def shutdown() -> None:
    """Disconnect; stop the embedded cluster and every process it started.

    Pending calls fail with ``ActorzError``. Handles and refs of this session stop
    working. Safe to call twice, and called at interpreter exit.
    """
    global _cluster
    with _init_lock:
        client = _context.client
        if client is None:
            return
        _context.set_client(None)
        cluster, _cluster = _cluster, None
        with contextlib.suppress(ActorzError):  # the broker is gone: nothing to wait for
            # Lines printed before the last replies arrived are still on their way
            # (through the nodes): wait for them, briefly, before saying goodbye.
            flushed = client.request("flush_logs")
            client.wait(lambda: flushed.state != PENDING, LOG_FLUSH_TIMEOUT_S)
        try:
            client.send_item(P.BROKER, P.control("bye"), flush=True)
        except Exception:
            pass
        client.close("actorz.shutdown() was called")
        client.ctx.term()
        if cluster is not None:
            cluster.stop()
        _unregister_by_value()


_by_value: list[str] = []


def _check_modules(modules: Sequence[ModuleType]) -> list[ModuleType]:
    if isinstance(modules, ModuleType):
        modules = [modules]
    mods = list(modules or ())
    for m in mods:
        if not isinstance(m, ModuleType):
            raise TypeError(
                f"pickle_by_value takes imported modules, e.g. pickle_by_value=[mymodule]; got "
                f"{type(m).__name__}: {m!r}")
    return mods


def _register_by_value(modules: list[ModuleType]) -> None:
    # Registered for this session only; already registered modules are left as they are.
    known = cloudpickle.list_registry_pickle_by_value()
    for m in modules:
        if m.__name__ not in known:
            cloudpickle.register_pickle_by_value(m)
            _by_value.append(m.__name__)


def _unregister_by_value() -> None:
    while _by_value:
        name = _by_value.pop()
        if name in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.unregister_pickle_by_value(ModuleType(name))


atexit.register(shutdown)


def _check_blocking(client: Client, what: str) -> None:
    loop = client.forbidden_loop
    if loop is not None and asyncio._get_running_loop() is loop:
        raise RuntimeError(
            f"actorz.{what}() would block this async actor's event loop (and every call it "
            f"is running). Inside async code, await the ref instead: 'value = await ref', "
            f"or 'values = await asyncio.gather(*refs)'."
        )


def get(refs: Any, *, timeout: float | None = None) -> Any:
    """Block until the value of a ref (or of each ref in a list) is ready and return it.

    Raises the call's error as soon as any of the refs fails: a remote exception as a
    ``TaskError`` that is also an instance of the original class. With ``timeout`` (in
    seconds), raises ``GetTimeoutError`` when it runs out; the calls go on.
    """
    client = _context.current()
    if type(refs) is ObjectRef:  # one ref: the synchronous call path, kept short
        if timeout is not None:
            _check_timeout(timeout)
        if client.forbidden_loop is not None:
            _check_blocking(client, "get")
        p = refs._pending()
        if p.state == PENDING and not client.wait(lambda: p.state != PENDING, timeout):
            raise GetTimeoutError(
                f"actorz.get() timed out after {timeout}s; the call goes on"
            )
        return p.result()
    if isinstance(refs, ObjectRef):
        single = True
        ref_list = [refs]
    elif isinstance(refs, list | tuple):
        single = False
        ref_list = list(refs)
        for r in ref_list:
            if not isinstance(r, ObjectRef):
                raise TypeError(
                    f"actorz.get() takes an ObjectRef or a list of ObjectRefs; the list holds "
                    f"a {type(r).__name__}: {r!r}"
                )
    else:
        raise TypeError(
            f"actorz.get() takes an ObjectRef or a list of ObjectRefs, got "
            f"{type(refs).__name__}: {refs!r}"
        )
    _check_timeout(timeout)
    _check_blocking(client, "get")
    pendings = [r._pending() for r in ref_list]
    n = len(pendings)
    cursor = 0
    seen_errors = -1

    def ready() -> bool:
        nonlocal cursor, seen_errors
        while cursor < n and pendings[cursor].state != PENDING:
            if pendings[cursor].state != 1:
                return True
            cursor += 1
        if cursor == n:
            return True
        if client.error_count != seen_errors:  # some call failed: is it one of ours?
            seen_errors = client.error_count
            return any(p.state == 2 for p in pendings)
        return False

    if not ready() and not client.wait(ready, timeout):
        raise GetTimeoutError(
            f"actorz.get() timed out after {timeout}s with {n - cursor} of {n} value(s) "
            "not ready; the calls go on"
        )
    for p in pendings:  # fail fast: the first failed ref in list order, finished or not
        if p.state == 2:
            raise p.exception()
    values = [p.result() for p in pendings]
    return values[0] if single else values


def wait(refs: list[ObjectRef[Any]], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef[Any]], list[ObjectRef[Any]]]:
    """Wait until ``num_returns`` of ``refs`` are ready (or the timeout passes).

    Returns ``(ready, not_ready)``, each in the order of ``refs``; ``ready`` holds at most
    ``num_returns`` refs. A failed call counts as ready (``get`` raises its error).
    """
    if isinstance(refs, ObjectRef):
        raise TypeError(
            "actorz.wait() takes a list of ObjectRefs, got a single ObjectRef; "
            "use actorz.wait([ref])"
        )
    if not isinstance(refs, list | tuple):
        raise TypeError(f"actorz.wait() takes a list of ObjectRefs, got {type(refs).__name__}")
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(
                f"actorz.wait() takes a list of ObjectRefs; the list holds a "
                f"{type(r).__name__}: {r!r}"
            )
    _check_timeout(timeout)
    if not refs:
        return [], []
    if len(set(refs)) != len(refs):
        raise ValueError("actorz.wait() requires a list of unique refs; this one has duplicates")
    if not isinstance(num_returns, int) or isinstance(num_returns, bool) or num_returns <= 0:
        raise ValueError(f"num_returns must be a positive integer, got {num_returns!r}")
    if num_returns > len(refs):
        raise ValueError(
            f"num_returns ({num_returns}) cannot be greater than the number of refs "
            f"({len(refs)}) passed to actorz.wait()"
        )
    refs = list(refs)
    client = _context.current()
    _check_blocking(client, "wait")
    pendings = [r._pending() for r in refs]

    def ready() -> bool:
        return sum(1 for p in pendings if p.state != PENDING) >= num_returns

    if not ready():
        client.wait(ready, timeout)
    ready_list: list[ObjectRef[Any]] = []
    rest: list[ObjectRef[Any]] = []
    for r, p in zip(refs, pendings, strict=True):
        if p.state != PENDING and len(ready_list) < num_returns:
            ready_list.append(r)
        else:
            rest.append(r)
    return ready_list, rest


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be non-negative, got {timeout}")


def cancel(ref: ObjectRef[Any], *, force: bool = False, recursive: bool = True) -> None:
    """Cancel a call: a queued call is dropped; a running async call sees ``CancelledError``.

    The caller then gets ``TaskCancelledError`` from the ref. A call that already finished
    keeps its result. A running call of a threaded actor or a synchronous task cannot be
    interrupted and runs to the end. Cancelling is recursive, as in Ray: a ref that the
    cancelled coroutine (or a task it spawned) is awaiting is cancelled too. ``force`` is
    accepted for Ray compatibility and refused for actor calls, as in Ray.
    """
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"actorz.cancel() takes an ObjectRef, got {type(ref).__name__}")
    p = ref._pending()
    if force and p.dest != P.BROKER:
        raise ValueError("force=True is not supported for actor calls")
    ref._get_client().cancel(p)


def kill(actor: ActorHandle[Any], *, no_restart: bool = True) -> None:
    """End the actor's process at once. Its pending and later calls raise ``ActorDiedError``."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"actorz.kill() takes an actor handle, got {type(actor).__name__}")
    client = actor._actorz_rebind()
    p = client.request("kill_actor", actor=actor._actorz_id.hex())
    client.wait(lambda: p.state != PENDING, 10)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle[Any]:
    """The handle of the named actor; ``ValueError`` if there is none by that name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty actor name, got {name!r}")
    client = _context.current()
    ns = namespace or getattr(client, "namespace", "default")
    p = client.request("get_actor", name=name, namespace=ns)
    client.wait(lambda: p.state != PENDING, CONNECT_TIMEOUT_S)
    info = p.result()
    return ActorHandle(bytes.fromhex(info["actor"]), info["class_name"],
                       tuple(info["methods"]), _context.session)

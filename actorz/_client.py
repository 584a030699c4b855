"""The calling side, in every process: pending calls, outbox, socket access, ref resolution.

One DEALER socket per process, shared by its threads and event loops under one lock.
Nobody blocks while holding the lock, and every critical section ends by draining the
socket until it is empty (ZeroMQ's FD is edge-triggered: an operation that consumes its
signal must also consume the messages behind it). A thread blocked in ``get`` polls the
socket's FD itself and receives its own reply: no thread hop on the synchronous path.
Event loops register the FD as a reader. A background *watcher* thread (drivers and
threaded actors) drains when nobody else does: logs, death notices, ``ref.future()``.

Sends are coalesced: ``.remote()`` appends an item to the outbox of its destination;
the outbox is flushed when the calling thread waits, at the end of the current event
loop tick, or by the watcher. Calls submitted together travel as one message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, cast

import zmq

from actorz import _protocol as P
from actorz import _serialization as S
from actorz import _shm
from actorz._pending import ERR, OK, PENDING, Deferred, Pending
from actorz._transport import dealer
from actorz._watcher import Watcher
from actorz.exceptions import ActorzError, TaskCancelledError

log = logging.getLogger("actorz")

_get_running_loop = asyncio._get_running_loop
_monotonic = time.monotonic
_pack_header = P.HEADER.pack
_unpack_header = P.HEADER.unpack_from
_HSIZE = P.HEADER_SIZE
_VERSION = P.VERSION
_REPLY, _ERROR, _FAIL, _CONTROL = P.REPLY, P.ERROR, P.FAIL, P.CONTROL
_FLAG_SHM = P.FLAG_SHM
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS, _POLLIN, _SNDMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.SNDMORE)
# The Cython method, unwrapped: pyzmq's getsockopt turns EVENTS into an enum.Flag (2x).
_get_option = cast("Callable[[zmq.Socket[Any], int], int]", zmq.backend.Socket.get)
#: Frames at least this large are received without a copy.
_ZERO_COPY_MIN = 64 * 1024

#: Messages drained per turn before giving others (the event loop) a chance.
_DRAIN_BATCH = 512
#: An outbox this large (bytes) is sent at once instead of at the next flush point.
_FLUSH_BYTES = 1 << 20
#: A plain thread's call goes out at once when nothing was sent for this long.
_IDLE_SEND_S = 50e-6

class _Waker:
    """Per-thread: a pipe other threads write to when they complete calls for us."""

    def __init__(self, sock_fd: int) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.flag = False
        self.poller = select.poll()
        self.poller.register(sock_fd, select.POLLIN)
        self.poller.register(self.r, select.POLLIN)

    def signal(self) -> None:
        if not self.flag:
            self.flag = True
            try:
                os.write(self.w, b"\0")
            except (BlockingIOError, OSError):
                pass

    def clear(self) -> None:
        self.flag = False
        try:
            while os.read(self.r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class Client:
    """One process's connection to the broker and its calls in flight."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], address: str, identity: bytes) -> None:
        self.ctx = ctx
        self.address = address
        self.identity = identity
        self.sock = dealer(ctx, address, identity)
        self.fd = self.sock.fileno()
        # Re-entrant: a handler running inside the drain may queue a reply.
        self._lock = threading.RLock()
        self._outbox: dict[bytes, tuple[list[bytes], list[Any]]] = {}
        self._outbox_bytes = 0
        self._unflushed = False
        self._last_flush = 0.0
        #: Set while a loop callback that flushes at its end is running (no scheduling).
        self._deferring = False
        self._more = False
        #: True after a drain emptied the socket, until a send or an FD wake-up: no new
        #: message can be behind an armed FD, so another drain would find nothing.
        self.clean = False
        #: Where this process's named actors live, and whether it prints actors' output.
        self.namespace = "default"
        self.log_to_driver = False
        #: Where large buffers go on this host (embedded clusters); None: through sockets.
        self.shm_dir: str | None = None
        self._pending: dict[int, Pending] = {}
        self._escaped: dict[int, Pending] = {}
        # Weak: a borrowed value lives as long as some ObjectRef in this process holds it.
        self._borrowed: weakref.WeakValueDictionary[tuple[bytes, int], Pending] = (
            weakref.WeakValueDictionary()
        )
        self._blocked: dict[Any, deque[Deferred]] = {}
        self._next_id = itertools.count(1).__next__
        self._waiters: set[_Waker] = set()
        self._local = threading.local()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, bool] = (
            weakref.WeakKeyDictionary()
        )
        self.error_count = 0
        self.closed: str | None = None  # why, once closed
        self.dead_actors: dict[bytes, str] = {}
        #: Calls being cancelled (``actorz.cancel``, recursive): refs they await are too.
        self.cancelled_calls: set[tuple[bytes, int]] = set()
        # Set by the process runtime hosting this client:
        self.on_call: Callable[[bytes, int, Any, Any], None] | None = None
        self.on_task: Callable[[bytes, int, Any, Any], None] | None = None
        self.on_cancel: Callable[[bytes, int], None] | None = None
        self.on_control: Callable[[dict[str, Any]], None] | None = None
        self.on_log: Callable[[dict[str, Any]], None] | None = None
        #: Called in the loop's reader callback after a drain (runs received calls inline).
        self.on_drained: Callable[[], None] | None = None
        #: Blocking get/wait on this loop raise (an async actor's or task worker's loop).
        self.forbidden_loop: asyncio.AbstractEventLoop | None = None
        self._watcher: Watcher | None = None
        #: When the broker was last heard from, and whether it said it forgot us.
        self.last_broker = _monotonic()
        self.broker_forgot = False
        self._warned_malformed = False
        self._shut = False
        self._wakers_created: list[_Waker] = []

    # --- sending ---------------------------------------------------------------

    def new_pending(self, dest: bytes, name: str) -> Pending:
        return Pending(self._next_id(), dest, name)

    def send_call(self, p: Pending, kind: int, payload: bytes, bufs: list[Any]) -> None:
        """Queue a call item for ``p.dest`` and track ``p`` until its result arrives."""
        flags = 0
        if bufs:
            bufs, flags = self._offload(bufs)
        hdr = _pack_header(_VERSION, kind, flags, len(bufs), len(payload), p.call_id)
        dest = p.dest
        with self._lock:
            if self.closed:
                p.set_error(ActorzError(f"actorz is shut down ({self.closed})"))
                return
            self._pending[p.call_id] = p
            if dest in self._blocked:  # keep submission order behind a deferred call
                self._blocked[dest].append(
                    Deferred(p, kind, lambda: (payload, bufs), (), {}, [], flags))
                return
            self._append_locked(dest, hdr, payload, bufs)
            if self._unflushed:  # a flush is already due: ride along with it
                if self._outbox_bytes < _FLUSH_BYTES:
                    return
                done, n = self._pump_locked()
            elif (_get_running_loop() is None
                  and _monotonic() - self._last_flush > _IDLE_SEND_S):
                # A plain thread on an idle socket: send now. Latency first for one-at-a-
                # time calls; a burst coalesces from its second call on.
                self._unflushed = True
                done, n = self._pump_locked()
            else:
                self._unflushed = True
                done = None
        if done is None:
            self._schedule_flush()
        elif n:
            self._notify(done, n)

    def send_deferred(self, p: Pending, kind: int, key: Any, build: Callable[..., Any],
                      args: tuple[Any, ...], kwargs: dict[str, Any], deps: list[Pending]) -> None:
        """Queue a call whose top-level ref arguments must be resolved first.

        ``key`` orders deferred calls: calls to one actor wait behind each other;
        tasks pass a unique key and go as soon as their own arguments are ready.
        """
        d = Deferred(p, kind, build, args, kwargs, deps)
        with self._lock:
            if self.closed:
                p.set_error(ActorzError(f"actorz is shut down ({self.closed})"))
                return
            self._pending[p.call_id] = p
            self._blocked.setdefault(key, deque()).append(d)
        for dep in deps:
            self.add_callback(dep, lambda _p: self._unblock(key))
        self._unblock(key)

    def _unblock(self, key: Any) -> None:
        failed: list[Pending] = []
        with self._lock:
            queue = self._blocked.get(key)
            while queue and queue[0].ready():
                d = queue.popleft()
                p = d.pending
                if p.state != PENDING:  # cancelled while waiting
                    continue
                try:
                    payload, bufs = d.build(*d.args, **d.kwargs)
                except BaseException as exc:  # an upstream error, or unpicklable values
                    self._pending.pop(p.call_id, None)
                    p.set_error(exc)
                    failed.append(p)
                    continue
                flags = d.flags
                if bufs and not flags & _FLAG_SHM:
                    bufs, flags = self._offload(bufs)
                hdr = _pack_header(_VERSION, d.kind, flags, len(bufs), len(payload), p.call_id)
                self._append_locked(p.dest, hdr, payload, bufs)
                self._unflushed = True
            if queue is not None and not queue:
                del self._blocked[key]
        if failed:
            self._notify(failed, len(failed))
        self._schedule_flush()

    def send_item(self, dest: bytes, item: bytes, bufs: list[Any] | tuple[()] = (),
                  flush: bool = False) -> None:
        """Queue a ready-made item (replies, control messages)."""
        with self._lock:
            if self.closed:
                return
            self._append_locked(dest, item, b"", bufs)
            schedule = not self._unflushed
            self._unflushed = True
        if flush:
            self.flush()
        elif schedule:
            self._schedule_flush()

    def reply(self, dest: bytes, call_id: int, value: Any, schedule: bool = True) -> None:
        try:
            data, bufs = S.dumps(S.wrap_large(value))
        except Exception as exc:
            err = TypeError(f"could not serialize the return value ({type(value).__name__}): {exc}")
            self.reply_error(dest, call_id, err, "")
            return
        flags = 0
        if bufs:
            bufs, flags = self._offload(bufs)
        hdr = _pack_header(_VERSION, _REPLY, flags, len(bufs), len(data), call_id)
        with self._lock:
            if self.closed:
                return
            self._append_locked(dest, hdr, data, bufs)
            first = not self._unflushed
            self._unflushed = True
        if schedule and first:
            self._schedule_flush()

    def reply_error(self, dest: bytes, call_id: int, exc: BaseException, name: str,
                    schedule: bool = True) -> None:
        if isinstance(exc, asyncio.CancelledError):
            payload = P.fail_payload("TaskCancelledError", f"{name or 'the call'} was cancelled")
            item = P.item(_FAIL, call_id, payload)
        else:
            item = P.item(_ERROR, call_id, S.dumps_error(exc, name))
        with self._lock:
            if self.closed:
                return
            self._append_locked(dest, item, b"", ())
            first = not self._unflushed
            self._unflushed = True
        if schedule and first:
            self._schedule_flush()

    def reply_fail(self, dest: bytes, call_id: int, error_type: str, message: str) -> None:
        self.send_item(dest, P.item(_FAIL, call_id, P.fail_payload(error_type, message)))

    def request(self, op: str, **fields: Any) -> Pending:
        """A control request to the broker; the returned pending completes with its answer."""
        p = self.new_pending(P.BROKER, op)
        fields["op"] = op
        self.send_call(p, _CONTROL, P.encode_json(fields), [])
        return p

    def _offload(self, bufs: Any) -> tuple[Any, int]:
        """Large out-of-band buffers to shared memory on this host; returns (bufs, flags)."""
        directory = self.shm_dir
        if directory is None:
            return bufs, 0
        if sum(len(b.raw()) if hasattr(b, "raw") else len(b) for b in bufs) < _shm.SHM_MIN:
            return bufs, 0
        return [_shm.put(directory, b) for b in bufs], _FLAG_SHM

    def _append_locked(self, dest: bytes, hdr: bytes, payload: bytes, bufs: Any) -> None:
        box = self._outbox.get(dest)
        if box is None:
            box = self._outbox[dest] = ([], [])
        chunks = box[0]
        chunks.append(hdr)
        if payload:
            chunks.append(payload)
            self._outbox_bytes += len(payload)
        if bufs:
            box[1].extend(bufs)
            self._outbox_bytes += sum(len(b.raw()) if hasattr(b, "raw") else len(b) for b in bufs)

    def _schedule_flush(self) -> None:
        if self._deferring:
            return
        loop = _get_running_loop()
        if loop is not None:
            loop.call_soon(self.flush)
        elif self._watcher is not None:
            self._watcher.wake()
        else:
            self.flush()

    def flush(self) -> None:
        """Send the outbox now (and take in whatever has arrived)."""
        with self._lock:
            done, n = self._pump_locked()
        if n:
            self._notify(done, n)

    def _pump_locked(self) -> tuple[list[Pending], int]:
        """Send, then receive until empty; again while receiving queued more to send."""
        self._flush_locked()
        if self.clean:
            # Nothing was sent or signalled since a drain found the socket empty: its FD
            # is armed, so skip the EVENTS check (libzmq: a poll(0) and a getpid(), ~3 us).
            return [], 0
        done, n = self._drain_locked()
        while self._unflushed and not self._more and not self.closed:
            self._flush_locked()
            more_done, more_n = self._drain_locked()
            done += more_done
            n += more_n
        return done, n

    def _flush_locked(self) -> None:
        if not self._unflushed:
            return
        self._unflushed = False
        self._last_flush = _monotonic()
        box = self._outbox
        if not box:
            return
        self._outbox = {}
        self._outbox_bytes = 0
        self.clean = False  # a send may take the FD's signal: drain after it
        # Frame by frame: send_multipart costs 2-3x more per message in pyzmq (measured
        # 27 vs 72 us of CPU per round trip through a minimal forwarder).
        send = self.sock.send
        for dest, (chunks, bufs) in box.items():
            blob = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            try:
                send(dest, _SNDMORE)
                if bufs:
                    send(blob, _SNDMORE)
                    last = len(bufs) - 1
                    for i, buf in enumerate(bufs):
                        send(buf, 0 if i == last else _SNDMORE, copy=False)
                else:
                    send(blob)
            except zmq.ZMQError as exc:
                if self.closed:
                    return
                log.error("actorz: send to %s failed: %s", dest.hex(), exc)

    # --- receiving -------------------------------------------------------------

    def _drain_locked(self) -> tuple[list[Pending], int]:
        """Receive until the socket is empty (or a batch is done); dispatch every item."""
        done: list[Pending] = []
        completed = 0
        sock = self.sock
        recv = sock.recv
        pending = self._pending
        bufs: list[memoryview] | tuple[()]
        ibufs: list[memoryview] | tuple[memoryview, ...]
        for _ in range(_DRAIN_BATCH):
            # Asking EVENTS instead of letting recv raise zmq.Again (~3-10 us in pyzmq).
            try:
                if not _get_option(sock, _EVENTS) & _POLLIN:
                    self._more = False
                    self.clean = True
                    return done, completed
                # Frame by frame: small frames as bytes (cheaper than Frame objects),
                # large ones zero-copy. NOBLOCK on the first: EVENTS has been seen to say
                # POLLIN with nothing to read (a non-ZeroMQ server at the address), and a
                # blocking recv then hung init() forever.
                src = recv(_NOBLOCK)
                if not _get_option(sock, _RCVMORE):  # no payload: not from an actorz broker
                    self._malformed(src)
                    continue
                frame = recv(copy=False)
                blob = frame.bytes if len(frame) < _ZERO_COPY_MIN else frame.buffer
                if frame.more:
                    bufs = []
                    while True:  # not `while frame.more`: mypy narrows that to always-true
                        frame = recv(copy=False)
                        bufs.append(frame.buffer)
                        if not frame.more:
                            break
                else:
                    bufs = ()
            except zmq.ZMQError:
                self._more = False
                return done, completed
            size = len(blob)
            off = 0
            bi = 0
            while off < size:
                version, kind, flags, nbufs, length, call_id = _unpack_header(blob, off)
                if version != _VERSION:
                    log.error("actorz: dropped a message with protocol version %d", version)
                    break
                off += _HSIZE
                payload = blob[off : off + length]
                off += length
                if nbufs:
                    ibufs = bufs[bi : bi + nbufs]
                    bi += nbufs
                    if flags & _FLAG_SHM:
                        try:
                            ibufs = [_shm.take(b) for b in ibufs]
                        except (OSError, ValueError) as exc:
                            if not self._shm_failed(src, kind, call_id, exc):
                                continue
                            kind, ibufs = _FAIL, ()
                            payload = P.fail_payload(
                                "ActorzError", f"a large value was lost in shared memory: {exc}")
                else:
                    ibufs = ()
                if kind <= _FAIL and kind >= _REPLY:  # REPLY, ERROR, FAIL
                    p = pending.pop(call_id, None)
                    if p is None:
                        continue
                    p.kind = kind
                    p.data = payload
                    p.bufs = ibufs
                    if kind == _REPLY:
                        p.state = OK
                    else:
                        p.state = ERR
                        self.error_count += 1
                    completed += 1
                    if p.callbacks:
                        done.append(p)
                else:
                    completed += self._dispatch_other(src, kind, flags, call_id, payload, ibufs,
                                                      done)
        self._more = True
        return done, completed

    def _dispatch_other(self, src: bytes, kind: int, flags: int, call_id: int, payload: Any,
                        bufs: Any, done: list[Pending]) -> int:
        """Handle an item that is not a call's result; returns how many calls it finished."""
        if kind == P.CALL:
            if self.on_call is not None:
                self.on_call(src, call_id, payload, bufs)
            else:
                self._reply_no_actor(src, call_id)
        elif kind == P.TASK:
            if self.on_task is not None:
                self.on_task(src, call_id, payload, bufs)
            else:
                self._reply_no_actor(src, call_id)
        elif kind == _CONTROL:
            self.last_broker = _monotonic()
            if call_id:
                p = self._pending.pop(call_id, None)
                if p is not None:
                    p.kind = _CONTROL
                    p.data = bytes(payload)
                    p.bufs = bufs
                    p.state = OK
                    if p.callbacks:
                        done.append(p)
                    return 1
                return 0
            return self._on_control_locked(P.decode_json(payload), done)
        elif kind == P.CANCEL:
            if self.on_cancel is not None:
                self.on_cancel(src, call_id)
        elif kind == P.FETCH:
            self._on_fetch_locked(src, call_id, payload)
        elif kind == P.LOG:
            if self.on_log is not None:
                try:
                    self.on_log(P.decode_json(payload))
                except Exception:
                    log.exception("actorz: could not print a log message")
        else:
            log.error("actorz: dropped an item of unknown kind %d", kind)
        return 0

    def _malformed(self, first: bytes) -> None:
        if not self._warned_malformed:
            self._warned_malformed = True
            log.error("actorz: dropping messages that are not actorz protocol from %s (is "
                      "an actorz broker listening there?): %r", self.address, first[:40])

    def _shm_failed(self, src: bytes, kind: int, call_id: int, exc: BaseException) -> bool:
        """A shared-memory buffer could not be mapped. True: fail the item as a result
        here; False: it was a call, its caller has been answered with the error."""
        if kind in (_REPLY, _ERROR, _FAIL):
            return True
        log.error("actorz: dropped a call whose large argument could not be mapped: %s", exc)
        if call_id and kind != _CONTROL:
            msg = P.fail_payload("ActorzError", f"a large argument was lost on the way: {exc}")
            self._append_locked(src, P.item(_FAIL, call_id, msg), b"", ())
            self._unflushed = True
        return False

    def _reply_no_actor(self, src: bytes, call_id: int) -> None:
        item = P.item(_FAIL, call_id, P.fail_payload("ActorzError", "this endpoint runs no actor"))
        self._append_locked(src, item, b"", ())
        self._unflushed = True

    def _on_control_locked(self, msg: dict[str, Any], done: list[Pending]) -> int:
        op = msg.get("op")
        if op == "pong":
            return 0
        if op == "unknown_driver":
            # The broker restarted (or gave us up for lost): what we knew is gone. The
            # watcher's next heartbeat declares the broker lost and fails pending calls.
            self.broker_forgot = True
            return 0
        if op == "actor_died":
            actor = bytes.fromhex(msg["actor"])
            reason = msg.get("reason", "the actor died")
            self.dead_actors[actor] = reason
            payload = P.fail_payload("ActorDiedError", reason)
            n = 0
            for call_id, p in list(self._pending.items()):
                if p.dest == actor:
                    del self._pending[call_id]
                    p.kind = _FAIL
                    p.data = payload
                    p.state = ERR
                    self.error_count += 1
                    n += 1
                    if p.callbacks:
                        done.append(p)
            queue = self._blocked.pop(actor, None)
            for d in queue or ():
                self._pending.pop(d.pending.call_id, None)
                d.pending.kind = _FAIL
                d.pending.data = payload
                d.pending.state = ERR
                self.error_count += 1
                n += 1
                if d.pending.callbacks:
                    done.append(d.pending)
            return n
        if self.on_control is not None:
            self.on_control(msg)
        return 0

    def _on_fetch_locked(self, src: bytes, call_id: int, payload: Any) -> None:
        (owner_call,) = _unpack_fetch(payload)
        p = self._escaped.get(owner_call)
        if p is None:
            msg = P.fail_payload("ActorzError", "the value of this ref is gone: its owner freed it")
            self._append_locked(src, P.item(_FAIL, call_id, msg), b"", ())
            self._unflushed = True
            return
        if p.state == PENDING:
            cbs = p.callbacks
            if cbs is None:
                cbs = p.callbacks = []
            cbs.append(lambda p: self._answer_fetch(src, call_id, p))
            return
        self._answer_fetch_locked(src, call_id, p)

    def _answer_fetch(self, src: bytes, call_id: int, p: Pending) -> None:
        with self._lock:
            self._answer_fetch_locked(src, call_id, p)
            self._unflushed = True
        self._schedule_flush()

    def _answer_fetch_locked(self, src: bytes, call_id: int, p: Pending) -> None:
        if p.data is not None and p.kind in (_REPLY, _ERROR, _FAIL):
            payload, bufs, kind = bytes(p.data), list(p.bufs), p.kind
        elif p.state == OK:
            payload, bufs = S.dumps(S.wrap_large(p.value))
            kind = _REPLY
        else:
            exc = p.exception()
            payload, bufs, kind = S.dumps_error(exc, p.name), [], _ERROR
        flags = 0
        if bufs:
            bufs, flags = self._offload(bufs)
        hdr = _pack_header(_VERSION, kind, flags, len(bufs), len(payload), call_id)
        self._append_locked(src, hdr, payload, bufs)
        self._unflushed = True

    # --- completion and waiting -------------------------------------------------

    def add_callback(self, p: Pending, cb: Callable[[Pending], None]) -> None:
        """Run ``cb(p)`` once ``p`` is done (at once, here, if it already is)."""
        with self._lock:
            if p.state == PENDING:
                if p.callbacks is None:
                    p.callbacks = [cb]
                else:
                    p.callbacks.append(cb)
                return
        cb(p)

    def _notify(self, done: list[Pending], completed: int) -> None:
        for p in done:
            cbs = p.callbacks
            if cbs:
                p.callbacks = None
                for cb in cbs:
                    try:
                        cb(p)
                    except Exception:
                        log.exception("actorz: a completion callback failed")
        if completed and self._waiters:
            mine = getattr(self._local, "waker", None)
            for w in list(self._waiters):
                if w is not mine:
                    w.signal()

    def _waker(self) -> _Waker:
        w: _Waker | None = getattr(self._local, "waker", None)
        if w is None:
            w = self._local.waker = _Waker(self.fd)
            self._wakers_created.append(w)
        return w

    def wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Block this thread until ``ready()`` or the timeout; receives on the socket itself."""
        deadline = None if timeout is None else _monotonic() + timeout
        waker = self._waker()
        self._waiters.add(waker)
        try:
            while True:
                with self._lock:
                    done, n = self._pump_locked()
                    more = self._more
                if n:
                    self._notify(done, n)
                if ready():
                    return True
                if self.closed:
                    raise ActorzError(f"actorz is shut down ({self.closed})")
                if more:
                    continue
                if deadline is None:
                    ms = 1000
                else:
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        return False
                    ms = min(1000, int(remaining * 1000) + 1)
                waker.poller.poll(ms)
                self.clean = False
                if waker.flag:
                    waker.clear()
        finally:
            self._waiters.discard(waker)

    async def wait_async(self, p: Pending) -> None:
        """Wait in the running event loop until ``p`` is done."""
        loop = asyncio.get_running_loop()
        self.ensure_reader(loop)
        fut = loop.create_future()

        def wake(_p: Pending) -> None:
            if _get_running_loop() is loop:
                if not fut.done():
                    fut.set_result(None)
            else:
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # loop closed
                    pass

        self.add_callback(p, wake)
        if not fut.done():
            self.flush()  # sends this loop's outbox now and catches replies already here
        await fut

    def ensure_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``loop`` receive on this client's socket (once per loop)."""
        if loop not in self._loops and not self.closed:
            self._loops[loop] = True
            loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        # One loop turn: receive, let the runtime run what arrived (on_drained), then
        # send what that produced, without extra turns of the loop in between.
        self._deferring = True
        self.clean = False
        try:
            with self._lock:
                done, n = self._pump_locked()
                more = self._more
            if n:
                self._notify(done, n)
            if self.on_drained is not None:
                self.on_drained()
        finally:
            self._deferring = False
        if self._unflushed:
            with self._lock:
                done, n = self._pump_locked()
                more = more or self._more
            if n:
                self._notify(done, n)
        if more:
            loop = _get_running_loop()
            if loop is not None:
                loop.call_soon(self._on_readable)

    def future(self, p: Pending) -> Future[Any]:
        fut: Future[Any] = Future()

        def done(p: Pending) -> None:
            try:
                fut.set_result(p.result())
            except BaseException as exc:
                fut.set_exception(exc)

        self.add_callback(p, done)
        if self._watcher is None and not fut.done():
            self.start_watcher()
        self.flush()
        return fut

    # --- refs owned elsewhere ------------------------------------------------------

    def escape(self, p: Pending) -> None:
        """``p``'s ref is leaving this process: keep its value for borrowers' fetches.

        Values of escaped refs live as long as this process (no distributed refcount).
        """
        p.escaped = True
        self._escaped[p.call_id] = p

    def borrow(self, owner: bytes, call_id: int) -> Pending:
        """The local stand-in for a ref owned by another process; fetched on first use."""
        if owner == self.identity:
            p = self._escaped.get(call_id)
            if p is not None:
                return p
        key = (owner, call_id)
        with self._lock:
            p = self._borrowed.get(key)
            if p is not None:
                return p
            p = self._borrowed[key] = self.new_pending(owner, "fetch")
        if owner == self.identity:
            p.set_error(ActorzError("the value of this ref is gone: this process freed it"))
            return p
        self.send_call(p, P.FETCH, _pack_fetch(call_id), [])
        return p

    # --- failures ---------------------------------------------------------------

    def cancel(self, p: Pending) -> None:
        with self._lock:
            if p.state != PENDING:
                return
            for queue in self._blocked.values():
                for d in queue:
                    if d.pending is p:
                        queue.remove(d)
                        self._pending.pop(p.call_id, None)
                        p.set_error(TaskCancelledError(f"{p.name} was cancelled"))
                        self.error_count += 1
                        break
                else:
                    continue
                break
            else:
                hdr = _pack_header(_VERSION, P.CANCEL, 0, 0, 0, p.call_id)
                self._append_locked(p.dest, hdr, b"", ())
                self._unflushed = True
                p = None  # type: ignore[assignment]
        if p is not None:
            self._notify([p] if p.callbacks else [], 1)
        self.flush()

    def close(self, reason: str) -> None:
        """Fail every pending call with ``reason`` and close the socket."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
            self.closed = self.closed or reason
            pending = list(self._pending.values())
            self._pending.clear()
            self._blocked.clear()
        for p in pending:
            p.set_error(ActorzError(f"actorz is shut down ({reason})"))
            self.error_count += 1
        self._notify([p for p in pending if p.callbacks], len(pending) or 1)
        for w in list(self._waiters):
            w.signal()
        if self._watcher is not None:
            self._watcher.stop()
        for loop in list(self._loops.keys()):
            try:
                if _get_running_loop() is loop:
                    loop.remove_reader(self.fd)
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(loop.remove_reader, self.fd)
            except Exception:
                pass
        self._loops.clear()
        with self._lock:
            self.sock.close(0)
        for w in self._wakers_created:
            w.close()

    def start_watcher(self, heartbeat: bool = False, watch_socket: bool = True) -> None:
        """Start the background thread that drains when no other thread does.

        ``watch_socket=False``: it only flushes when woken (``flush_soon``), for processes
        whose event loop receives on the socket.
        """
        if self._watcher is None:
            self._watcher = Watcher(self, heartbeat, watch_socket)

    def flush_soon(self) -> None:
        """Have the watcher send the outbox while this thread goes on (else send now)."""
        if self._watcher is not None:
            self._watcher.wake()
        else:
            self.flush()

    def lost(self, reason: str) -> None:
        """The broker is gone: this session is over. Calls fail now and from now on."""
        with self._lock:
            self.closed = reason
            pending = list(self._pending.values())
            self._pending.clear()
            self._blocked.clear()
        for p in pending:
            p.set_error(ActorzError(reason))
            self.error_count += 1
        self._notify([p for p in pending if p.callbacks], len(pending) or 1)
        if self.on_control is not None:
            self.on_control({"op": "broker_lost", "reason": reason})


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


def _pack_fetch(call_id: int) -> bytes:
    return call_id.to_bytes(8, "little")


def _unpack_fetch(payload: Any) -> tuple[int]:
    return (int.from_bytes(bytes(payload), "little"),)

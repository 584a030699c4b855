"""The broker: one ROUTER socket, one thread; routes calls, keeps the registry, queues tasks.

Forwarding is a swap of the first two frames (``[src, dest, ...]`` in, ``[dest, src, ...]``
out). Payloads are never unpickled; item headers are parsed only for messages addressed
to the broker itself, for task-worker results (credits) and for bounces.

Sends never block: ``ROUTER_MANDATORY`` makes an unknown peer raise instead of dropping
the message, and ``NOBLOCK`` turns a peer at its high-water mark into a per-peer backlog
(retried every few milliseconds) instead of a stall of every other peer.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict, deque
from typing import Any

import zmq

from actorz import _protocol as P
from actorz._transport import router

log = logging.getLogger("actorz.broker")

#: Tasks a worker may hold at once (running and queued in its process).
WORKER_CREDIT = 32
#: A node or driver silent this long is gone (they ping every second).
PEER_TIMEOUT_S = 5.0
#: Messages kept for one slow peer before new ones are refused.
MAX_BACKLOG = 100_000
#: Dead actors remembered (to answer late calls with the reason they died).
MAX_DEAD = 10_000

PENDING, ALIVE, DEAD = "pending", "alive", "dead"
_RESULT_KINDS = P.RESULT_KINDS
_unpack = P.HEADER.unpack_from
_HSIZE = P.HEADER_SIZE


class ActorRecord:
    __slots__ = ("id", "class_name", "methods", "name", "namespace", "owner", "node", "state",
                 "reason", "spec", "meta", "buffered", "peers", "pid", "detached", "resources",
                 "created")

    def __init__(self, actor_id: bytes, owner: bytes, meta: dict[str, Any], spec: list[Any]) -> None:
        self.id = actor_id
        self.owner = owner
        self.meta = meta
        self.class_name: str = meta.get("class_name", "?")
        self.methods: list[str] = meta.get("methods", [])
        self.name: str | None = meta.get("name")
        self.namespace: str = meta.get("namespace") or "default"
        self.detached: bool = bool(meta.get("detached"))
        self.resources: dict[str, float] = meta.get("resources") or {}
        self.node: bytes | None = None
        self.state = PENDING
        self.reason = ""
        self.spec: list[Any] | None = spec
        self.buffered: list[list[Any]] = []
        self.peers: set[bytes] = {owner}
        self.pid = 0
        self.created = time.time()


class NodeRecord:
    __slots__ = ("id", "name", "host", "pid", "resources", "available", "actors", "workers",
                 "last_seen", "num_workers")

    def __init__(self, node_id: bytes, msg: dict[str, Any]) -> None:
        self.id = node_id
        self.name: str = msg.get("name") or node_id.hex()[:8]
        self.host: str = msg.get("host", "?")
        self.pid: int = msg.get("pid", 0)
        self.resources: dict[str, float] = dict(msg.get("resources") or {})
        self.available = dict(self.resources)
        self.actors: set[bytes] = set()
        self.workers: set[bytes] = set()
        self.num_workers: int = msg.get("num_workers", 0)
        self.last_seen = time.monotonic()


class WorkerRecord:
    __slots__ = ("id", "node", "pid", "credit", "inflight")

    def __init__(self, worker_id: bytes, node: bytes | None, pid: int) -> None:
        self.id = worker_id
        self.node = node
        self.pid = pid
        self.credit = WORKER_CREDIT
        self.inflight: dict[tuple[bytes, int], bool] = {}


class Broker:
    """Routes messages between endpoints; see the module docstring."""

    def __init__(self, ctx: zmq.Context, binds: list[str], *, embedded: bool = False) -> None:
        self.sock = router(ctx, binds)
        self.binds = binds
        self.embedded = embedded
        self.actors: dict[bytes, ActorRecord] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self.nodes: dict[bytes, NodeRecord] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.drivers: dict[bytes, dict[str, Any]] = {}
        self.tasks: deque[tuple[bytes, bytes, list[Any]]] = deque()
        self.backlog: dict[bytes, deque[list[Any]]] = {}
        self.dead: OrderedDict[bytes, str] = OrderedDict()
        self.hello_waiters: list[tuple[bytes, int]] = []
        self.running = True
        self.started = time.time()

    # --- main loop -----------------------------------------------------------------

    def run(self, stop_fd: int | None = None) -> None:
        """Serve until ``stop()``, a ``shutdown`` request (embedded), or EOF on ``stop_fd``."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if stop_fd is not None:
            poller.register(stop_fd, zmq.POLLIN)
        next_check = time.monotonic() + 0.5
        while self.running:
            events = dict(poller.poll(2 if self.backlog else 250))
            if stop_fd is not None and stop_fd in events:
                try:
                    data = os.read(stop_fd, 4096)
                except OSError:
                    data = b""
                if not data:
                    break
            if self.sock in events:
                self._drain()
            if self.backlog:
                self._retry_backlog()
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                self._check_liveness(now)
        self._stop_nodes()

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        self.sock.close(0)

    def _drain(self) -> None:
        recv = self.sock.recv_multipart
        actors = self.actors
        workers = self.workers
        for _ in range(1000):
            try:
                frames = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) < 3:
                log.warning("dropped a malformed message of %d frames", len(frames))
                continue
            src = frames[0].bytes
            dest = frames[1].bytes
            if not dest:
                try:
                    self._to_broker(src, frames)
                except Exception:
                    log.exception("broker: failed to handle a message from %s", src.hex())
                continue
            w = workers.get(src)
            if w is not None:
                self._count_results(w, dest, frames[2])
            rec = actors.get(dest)
            if rec is not None:
                state = rec.state
                if state is ALIVE:
                    rec.peers.add(src)
                elif state is PENDING:
                    rec.peers.add(src)
                    rec.buffered.append(frames)
                    continue
            elif dest in self.dead:
                self._bounce(src, frames[2], "ActorDiedError", self.dead[dest])
                continue
            self._forward(dest, frames)
            if w is not None and self.tasks:
                self._dispatch_tasks()

    def _forward(self, dest: bytes, frames: list[Any]) -> None:
        """Send ``[src, dest, ...]`` to dest as ``[dest, src, ...]``."""
        frames[0], frames[1] = frames[1], frames[0]
        q = self.backlog.get(dest)
        if q is not None:
            if len(q) >= MAX_BACKLOG:
                self._bounce(frames[1].bytes, frames[2], "ActorzError",
                             f"endpoint {dest.hex()} is not keeping up ({len(q)} messages "
                             "queued at the broker); the call was refused")
            else:
                q.append(frames)
            return
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.backlog[dest] = deque([frames])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._unreachable(frames[1].bytes, dest, frames[2])

    def _send(self, dest: bytes, blob: bytes, bufs: list[Any] | tuple[()] = (),
              src: bytes = P.BROKER) -> None:
        """Send a message the broker made (``src`` defaults to the broker itself)."""
        frames: list[Any] = [dest, src, blob, *bufs]
        q = self.backlog.get(dest)
        if q is not None:
            q.append(frames)
            return
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.backlog[dest] = deque([frames])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            # A peer that left: nothing to tell it.

    def _retry_backlog(self) -> None:
        send = self.sock.send_multipart
        for dest in list(self.backlog):
            q = self.backlog[dest]
            while q:
                try:
                    send(q[0], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    frames = q.popleft()
                    src = frames[1].bytes if hasattr(frames[1], "bytes") else frames[1]
                    if src:
                        self._bounce(src, frames[2], "ActorzError",
                                     f"endpoint {dest.hex()} disconnected")
                    continue
                q.popleft()
            if not q:
                del self.backlog[dest]

    def _reply(self, dest: bytes, call_id: int, **fields: Any) -> None:
        if call_id:
            self._send(dest, P.item(P.CONTROL, call_id, P.encode_json(fields)))

    def _reply_fail(self, dest: bytes, call_id: int, error_type: str, message: str) -> None:
        if call_id:
            self._send(dest, P.item(P.FAIL, call_id, P.fail_payload(error_type, message)))

    def _notify(self, dest: bytes, op: str, **fields: Any) -> None:
        self._send(dest, P.control(op, **fields))

    # --- failures ----------------------------------------------------------------------

    def _bounce(self, src: bytes, blob_frame: Any, error_type: str, message: str) -> None:
        """Answer every call in an undeliverable message with a FAIL item."""
        blob = blob_frame.buffer if hasattr(blob_frame, "buffer") else blob_frame
        out = []
        try:
            for kind, _, _, call_id, _, _, _ in P.iter_items(blob):
                if call_id and kind in (P.CALL, P.TASK, P.FETCH, P.CONTROL):
                    out.append(P.item(P.FAIL, call_id, P.fail_payload(error_type, message)))
        except P.ProtocolError:
            return
        if out and src:
            self._send(src, b"".join(out))

    def _unreachable(self, src: bytes, dest: bytes, blob_frame: Any) -> None:
        rec = self.actors.get(dest)
        if rec is not None:
            self._bounce(src, blob_frame, "ActorDiedError",
                         f"actor {rec.class_name} ({dest.hex()}) is not connected: "
                         "its process is gone")
        else:
            self._bounce(src, blob_frame, "ActorzError",
                         f"no endpoint {dest.hex()} is connected to the broker: it exited, "
                         "or the ref or handle came from another cluster")

    def _actor_dead(self, rec: ActorRecord, reason: str, kill: bool = False) -> None:
        if rec.state is DEAD:
            return
        rec.state = DEAD
        rec.reason = reason
        self.actors.pop(rec.id, None)
        self.dead[rec.id] = reason
        while len(self.dead) > MAX_DEAD:
            self.dead.popitem(last=False)
        if rec.name is not None and self.names.get((rec.namespace, rec.name)) == rec.id:
            del self.names[(rec.namespace, rec.name)]
        node = self.nodes.get(rec.node) if rec.node else None
        if node is not None:
            node.actors.discard(rec.id)
            for k, v in rec.resources.items():
                node.available[k] = node.available.get(k, 0) + v
            if kill:
                self._notify(node.id, "kill_actor", actor=rec.id.hex())
        for frames in rec.buffered:
            self._bounce(frames[0].bytes, frames[2], "ActorDiedError", reason)
        rec.buffered = []
        rec.spec = None
        for peer in rec.peers:
            self._notify(peer, "actor_died", actor=rec.id.hex(), reason=reason)

    def _worker_dead(self, wid: bytes, reason: str) -> None:
        w = self.workers.pop(wid, None)
        if w is None:
            return
        node = self.nodes.get(w.node) if w.node else None
        if node is not None:
            node.workers.discard(wid)
        for caller, call_id in w.inflight:
            self._reply_fail(caller, call_id, "WorkerCrashedError",
                             f"the task-worker process (pid {w.pid}) running this task died: "
                             f"{reason}")
        if self.tasks:
            self._dispatch_tasks()

    def _node_dead(self, node: NodeRecord, reason: str) -> None:
        self.nodes.pop(node.id, None)
        for aid in list(node.actors):
            rec = self.actors.get(aid)
            if rec is not None:
                self._actor_dead(rec, f"the node {node.name} hosting actor {rec.class_name} "
                                      f"was lost: {reason}")
        for wid in list(node.workers):
            self._worker_dead(wid, f"its node {node.name} was lost")

    def _driver_gone(self, driver: bytes, why: str) -> None:
        if self.drivers.pop(driver, None) is None:
            return
        for rec in list(self.actors.values()):
            if rec.owner == driver and not rec.detached:
                self._actor_dead(rec, f"its owner (driver {driver.hex()}) {why}", kill=True)

    def _check_liveness(self, now: float) -> None:
        for node in list(self.nodes.values()):
            if now - node.last_seen > PEER_TIMEOUT_S:
                log.warning("node %s silent for %.0fs: lost", node.name, now - node.last_seen)
                self._node_dead(node, f"no heartbeat for {PEER_TIMEOUT_S:.0f}s")
        for driver, info in list(self.drivers.items()):
            if now - info["last_seen"] > PEER_TIMEOUT_S:
                self._driver_gone(driver, f"sent no heartbeat for {PEER_TIMEOUT_S:.0f}s")

    def _stop_nodes(self) -> None:
        for node in self.nodes.values():
            self._notify(node.id, "stop")

    # --- messages for the broker -------------------------------------------------------

    def _to_broker(self, src: bytes, frames: list[Any]) -> None:
        blob = frames[2].buffer
        bufs = frames[3:]
        bi = 0
        new_tasks = False
        for kind, _, nbufs, call_id, payload, start, end in P.iter_items(blob):
            ibufs = bufs[bi : bi + nbufs]
            bi += nbufs
            if kind == P.TASK:
                self.tasks.append((src, bytes(blob[start:end]), ibufs))
                new_tasks = True
            elif kind == P.CONTROL:
                msg = P.decode_json(payload)
                handler = getattr(self, "_op_" + str(msg.get("op")), None)
                if handler is None:
                    self._reply_fail(src, call_id, "ActorzError",
                                     f"the broker does not know the request {msg.get('op')!r}")
                    continue
                handler(src, call_id, msg, ibufs)
            elif kind == P.CANCEL:
                self._cancel_task(src, call_id)
            elif call_id:
                self._reply_fail(src, call_id, "ActorzError",
                                 f"the broker cannot answer a {P.KIND_NAMES.get(kind, kind)} item")
        if new_tasks:
            self._dispatch_tasks()

    def _op_ping(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        now = time.monotonic()
        node = self.nodes.get(src)
        if node is not None:
            node.last_seen = now
        driver = self.drivers.get(src)
        if driver is not None:
            driver["last_seen"] = now
        self._notify(src, "pong")

    def _op_hello(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        role = msg.get("role")
        if role == "driver":
            self.drivers[src] = {"last_seen": time.monotonic(), "pid": msg.get("pid"),
                                 "namespace": msg.get("namespace", "default"),
                                 "since": time.time()}
            if msg.get("wait_nodes") and not self.nodes:
                self.hello_waiters.append((src, call_id))
            else:
                self._reply(src, call_id, ok=True, nodes=len(self.nodes))
        elif role == "actor":
            rec = self.actors.get(src)
            if rec is None or rec.spec is None:
                self._reply_fail(src, call_id, "ActorDiedError",
                                 self.dead.get(src, "this actor is unknown to the broker"))
                return
            rec.state = ALIVE
            rec.pid = msg.get("pid", 0)
            spec, rec.spec = rec.spec, None
            meta = rec.meta
            payload = P.encode_json(meta)
            self._send(src, P.header(P.CONTROL, call_id, len(payload), len(spec)) + payload, spec)
            buffered, rec.buffered = rec.buffered, []
            for frames in buffered:
                self._forward(src, frames)
        elif role == "worker":
            node = msg.get("node")
            node_id = bytes.fromhex(node) if node else None
            self.workers[src] = WorkerRecord(src, node_id, msg.get("pid", 0))
            if node_id in self.nodes:
                self.nodes[node_id].workers.add(src)
            self._reply(src, call_id, ok=True)
            self._dispatch_tasks()
        elif role == "node":
            self.nodes[src] = NodeRecord(src, msg)
            self._reply(src, call_id, ok=True)
            waiters, self.hello_waiters = self.hello_waiters, []
            for driver, cid in waiters:
                self._reply(driver, cid, ok=True, nodes=len(self.nodes))
        else:
            self._reply_fail(src, call_id, "ActorzError", f"unknown role {role!r}")

    def _op_bye(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        self._driver_gone(src, "disconnected")

    def _op_create_actor(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        actor_id = bytes.fromhex(msg["actor"])
        name = msg.get("name")
        ns = msg.get("namespace") or "default"
        if name is not None:
            existing = self.names.get((ns, name))
            if existing is not None:
                if msg.get("get_if_exists"):
                    self._reply(src, call_id, actor=existing.hex(), existing=True)
                else:
                    self._reply_fail(
                        src, call_id, "ValueError",
                        f"an actor named {name!r} already exists in namespace {ns!r}; use "
                        f"actorz.get_actor({name!r}) or .options(name={name!r}, "
                        "get_if_exists=True)")
                return
        rec = ActorRecord(actor_id, src, msg, list(bufs))
        node, missing = self._place(rec.resources)
        if node is None:
            reason = (f"cannot create actor {rec.class_name}: {missing}")
            self.dead[actor_id] = reason
            self._reply_fail(src, call_id, "ActorzError", reason)
            return
        rec.node = node.id
        node.actors.add(actor_id)
        for k, v in rec.resources.items():
            node.available[k] = node.available.get(k, 0) - v
        self.actors[actor_id] = rec
        if name is not None:
            self.names[(ns, name)] = actor_id
        self._notify(node.id, "spawn_actor", actor=actor_id.hex(), class_name=rec.class_name,
                     owner=src.hex(), log_to_driver=msg.get("log_to_driver", True))
        self._reply(src, call_id, actor=actor_id.hex())

    def _place(self, resources: dict[str, float]) -> tuple[NodeRecord | None, str]:
        if not self.nodes:
            return None, "the cluster has no node to run it (start one with 'actorz node')"
        fits = [n for n in self.nodes.values()
                if all(n.available.get(k, 0) >= v for k, v in resources.items())]
        if not fits:
            have = "; ".join(f"{n.name}: {n.available}" for n in self.nodes.values())
            return None, (f"no node has the resources it asks for ({resources}); "
                          f"available: {have}")
        return min(fits, key=lambda n: len(n.actors)), ""

    def _op_kill_actor(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        actor_id = bytes.fromhex(msg["actor"])
        rec = self.actors.get(actor_id)
        if rec is not None:
            self._actor_dead(rec, f"actor {rec.class_name} was killed by actorz.kill()", kill=True)
        self._reply(src, call_id, ok=True)

    def _op_actor_failed(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        rec = self.actors.get(src)
        if rec is not None:
            self._actor_dead(rec, msg.get("reason", "the actor failed"), kill=True)

    def _op_get_actor(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        name = msg.get("name")
        ns = msg.get("namespace") or "default"
        actor_id = self.names.get((ns, name))  # type: ignore[arg-type]
        rec = self.actors.get(actor_id) if actor_id else None
        if rec is None:
            self._reply_fail(src, call_id, "ValueError",
                             f"no actor named {name!r} in namespace {ns!r}")
            return
        self._reply(src, call_id, actor=rec.id.hex(), class_name=rec.class_name,
                    methods=rec.methods)

    def _op_spawned(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        rec = self.actors.get(bytes.fromhex(msg["id"]))
        if rec is not None:
            rec.pid = msg.get("pid", 0)

    def _op_child_exit(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        # Replies the process sent before it died may still be queued here: route them first.
        self._drain()
        child = bytes.fromhex(msg["id"])
        reason = msg.get("reason", "it exited")
        if msg.get("role") == "worker":
            self._worker_dead(child, reason)
            return
        rec = self.actors.get(child)
        if rec is not None:
            self._actor_dead(rec, f"the process of actor {rec.class_name} (pid {rec.pid}) died: "
                                  f"{reason}")

    def _op_status(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        now = time.monotonic()
        self._reply(src, call_id, **self.status(now))

    def status(self, now: float) -> dict[str, Any]:
        return {
            "broker": {"binds": self.binds, "pid": os.getpid(), "host": socket.gethostname(),
                       "uptime_s": round(time.time() - self.started, 1)},
            "nodes": [
                {"id": n.id.hex(), "name": n.name, "host": n.host, "pid": n.pid,
                 "resources": n.resources, "available": n.available, "actors": len(n.actors),
                 "workers": len(n.workers), "last_heartbeat_s": round(now - n.last_seen, 2)}
                for n in self.nodes.values()
            ],
            "actors": [
                {"id": r.id.hex(), "class_name": r.class_name, "name": r.name,
                 "namespace": r.namespace, "node": (self.nodes[r.node].name
                                                    if r.node in self.nodes else None),
                 "pid": r.pid, "state": r.state, "detached": r.detached,
                 "owner": r.owner.hex()}
                for r in self.actors.values()
            ],
            "workers": [
                {"id": w.id.hex(), "pid": w.pid, "inflight": len(w.inflight)}
                for w in self.workers.values()
            ],
            "task_queue": len(self.tasks),
            "drivers": [
                {"id": d.hex(), "pid": info.get("pid"), "namespace": info.get("namespace")}
                for d, info in self.drivers.items()
            ],
        }

    def _op_shutdown(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        if not self.embedded:
            self._reply_fail(src, call_id, "ActorzError",
                             "this broker is a daemon; stop it with SIGINT/SIGTERM")
            return
        self._reply(src, call_id, ok=True)
        self.running = False

    # --- tasks ---------------------------------------------------------------------

    def _dispatch_tasks(self) -> None:
        tasks = self.tasks
        while tasks and self.workers:
            w = max(self.workers.values(), key=_credit)
            if w.credit <= 0:
                return
            caller = tasks[0][0]
            items: list[bytes] = []
            bufs: list[Any] = []
            n = w.credit
            while tasks and len(items) < n and tasks[0][0] == caller:
                _, item, ibufs = tasks.popleft()
                items.append(item)
                bufs.extend(ibufs)
                w.inflight[(caller, _unpack(item, 0)[5])] = True
            w.credit -= len(items)
            self._send(w.id, b"".join(items), bufs, src=caller)

    def _count_results(self, w: WorkerRecord, dest: bytes, blob_frame: Any) -> None:
        blob = blob_frame.buffer
        size = len(blob)
        off = 0
        inflight = w.inflight
        while off < size:
            _, kind, _, _, length, call_id = _unpack(blob, off)
            off += _HSIZE + length
            if kind in _RESULT_KINDS and inflight.pop((dest, call_id), None) is not None:
                w.credit += 1

    def _cancel_task(self, caller: bytes, call_id: int) -> None:
        for i, (c, item, _) in enumerate(self.tasks):
            if c == caller and _unpack(item, 0)[5] == call_id:
                del self.tasks[i]
                self._reply_fail(caller, call_id, "TaskCancelledError",
                                 "the task was cancelled before it started")
                return
        for w in self.workers.values():
            if (caller, call_id) in w.inflight:
                self._send(w.id, P.item(P.CANCEL, call_id, b""), src=caller)
                return


def _credit(w: WorkerRecord) -> int:
    return w.credit

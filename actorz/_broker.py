"""The broker: one ROUTER socket, one thread; routes calls, keeps the registry, queues tasks.

Forwarding is a swap of the first two frames (``[src, dest, ...]`` in, ``[dest, src, ...]``
out). Payloads are never unpickled; item headers are parsed only for messages addressed
to the broker itself, for task-worker results (credits) and for bounces. The socket
primitives (non-blocking sends, per-peer backlogs, bounces) are in ``_router.py``; the
registry's entries and placement in ``_records.py``.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, cast

import zmq

from actorz import _protocol as P
from actorz._records import (
    ALIVE,
    DEAD,
    PENDING,
    ActorRecord,
    NodeRecord,
    WorkerRecord,
    credit,
    place,
)
from actorz._router import Router

log = logging.getLogger("actorz.broker")

#: A node or driver silent this long is gone (they ping every second).
PEER_TIMEOUT_S = 5.0
#: How long a status request waits for the actors to report their calls in flight.
STATS_WAIT_S = 0.5
#: Dead actors remembered (to answer late calls with the reason they died).
MAX_DEAD = 10_000
#: A waiting driver starts this long after a node joined, even if a worker is missing.
WORKERS_READY_S = 5.0
#: How long a leaving driver's log flush waits for a node that does not answer.
FLUSH_TIMEOUT_S = 1.0

_RESULT_KINDS = P.RESULT_KINDS
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
# The Cython method, unwrapped: pyzmq's own getsockopt turns EVENTS into an enum.Flag,
# which made up most of the broker's Python time per message in a profile.
_get_option = cast("Callable[[zmq.Socket[Any], int], int]", zmq.backend.Socket.get)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_unpack = P.HEADER.unpack_from
_HSIZE = P.HEADER_SIZE


class Broker(Router):
    """Routes messages between endpoints; see the module docstring."""

    def __init__(self, ctx: zmq.Context[Any], binds: list[str], *, embedded: bool = False) -> None:
        super().__init__(ctx, binds)
        self.embedded = embedded
        self.actors: dict[bytes, ActorRecord] = {}
        #: Non-detached actors by owner (driver, actor or task worker): stopped with it.
        self.owned: dict[bytes, set[bytes]] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self.nodes: dict[bytes, NodeRecord] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.drivers: dict[bytes, dict[str, Any]] = {}
        self.tasks: deque[tuple[bytes, bytes, list[Any]]] = deque()
        self.dead: OrderedDict[bytes, str] = OrderedDict()
        self.hello_waiters: list[tuple[bytes, int]] = []
        #: Log flushes in progress: token -> (driver, call id, nodes yet to answer, deadline).
        self.flushes: dict[int, tuple[bytes, int, set[bytes], float]] = {}
        self._next_token = 0
        #: status requests waiting for the actors' counts of calls in flight, by token.
        self.status_waits: dict[int, dict[str, Any]] = {}
        self.running = True
        self.started = time.time()

    # --- main loop -----------------------------------------------------------------

    def run(self, stop_fd: int | None = None) -> None:
        """Serve until ``stop()``, a ``shutdown`` request (embedded), or EOF on ``stop_fd``."""
        # Poll the socket's FD directly (zmq.Poller allocates per call); the FD is
        # edge-triggered, so ask EVENTS before every wait and drain until it is empty.
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        if stop_fd is not None:
            poller.register(stop_fd, select.POLLIN)
        next_check = time.monotonic() + 0.5
        while self.running:
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 0.5
                self._check_liveness(now)
            # _drain's last act is an EVENTS check made after its last send, so when it
            # returns False the FD is armed and polling is safe (one check per message
            # saved: libzmq does a poll(0) and a getpid() for each, ~3 us).
            if self._drain():
                continue
            if self.backlog:
                self._retry_backlog()
                if _get_option(self.sock, _EVENTS) & _POLLIN:
                    continue
            for fd, _ in poller.poll(2 if self.backlog else 250):
                if fd == stop_fd and not _read_or_eof(stop_fd):
                    self.running = False
        self._stop_nodes()

    def stop(self) -> None:
        self.running = False

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; ``linger_ms`` lets the last notices (``stop`` to nodes) go out."""
        self.sock.close(linger_ms)

    def _drain(self) -> bool:
        """Route what has arrived; True if it stopped with more waiting (a batch is done)."""
        sock = self.sock
        actors = self.actors
        workers = self.workers
        for _ in range(1000):
            # EVENTS, not recv raising zmq.Again: that exception costs ~3-10 us in pyzmq.
            if not _get_option(sock, _EVENTS) & _POLLIN:
                return False
            frames = self._recv()
            if frames is None:
                continue
            src = frames[0]
            dest = frames[1]
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
        return True

    # --- failures ----------------------------------------------------------------------

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
        owned = self.owned.get(rec.owner)
        if owned is not None:
            owned.discard(rec.id)
            if not owned:
                del self.owned[rec.owner]
        node = self.nodes.get(rec.node) if rec.node else None
        if node is not None:
            node.actors.discard(rec.id)
            for k, v in rec.resources.items():
                node.available[k] = node.available.get(k, 0) + v
            if kill:
                self._notify(node.id, "kill_actor", actor=rec.id.hex())
        for frames in rec.buffered:
            self._bounce(frames[0], frames[2], "ActorDiedError", reason)
        rec.buffered = []
        rec.spec = None
        for peer in rec.peers:
            self._notify(peer, "actor_died", actor=rec.id.hex(), reason=reason)
        self._owner_gone(rec.id, f"its owner, actor {rec.class_name} ({rec.id.hex()}), died")

    def _owner_gone(self, owner: bytes, why: str) -> None:
        """Stop the non-detached actors ``owner`` created (Ray's fate sharing)."""
        for aid in list(self.owned.pop(owner, ())):
            rec = self.actors.get(aid)
            if rec is not None:
                self._actor_dead(rec, f"actor {rec.class_name} was stopped: {why}", kill=True)

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
        self._owner_gone(wid, f"the task worker that created it (pid {w.pid}) died")
        if self.tasks:
            self._dispatch_tasks()

    def _node_dead(self, node: NodeRecord, reason: str, level: int = logging.WARNING) -> None:
        if self.nodes.pop(node.id, None) is None:
            return
        log.log(level, "node %s (%s, pid %d) left the cluster: %s", node.name, node.host,
                node.pid, reason)
        for aid in list(node.actors):
            rec = self.actors.get(aid)
            if rec is not None:
                self._actor_dead(rec, f"the node {node.name} hosting actor {rec.class_name} "
                                      f"was lost: {reason}")
        for wid in list(node.workers):
            self._worker_dead(wid, f"its node {node.name} was lost")
        for token in list(self.flushes):
            self._flush_answered(token, node.id)

    def _driver_gone(self, driver: bytes, why: str) -> None:
        info = self.drivers.pop(driver, None)
        if info is None:
            return
        log.info("driver %s (pid %s) %s", driver.hex(), info.get("pid"), why)
        self._owner_gone(driver, f"its owner (driver {driver.hex()}, pid {info.get('pid')}) "
                                 f"{why}")

    def _check_liveness(self, now: float) -> None:
        if self.flushes:
            self._expire_flushes(now)
        if self.status_waits:
            self._expire_status_waits(now)
        if self.hello_waiters and any(now - n.last_seen < PEER_TIMEOUT_S
                                      and time.time() - n.since > WORKERS_READY_S
                                      for n in self.nodes.values()):
            self._answer_hello_waiters()  # a worker that never came must not block a start
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
            elif kind == P.LOG:
                self._route_log(payload)
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
        elif src[:1] == P.NODE:
            # A node this broker does not know (it restarted, or declared the node lost):
            # its actors are gone from the registry, so the node must not go on as if not.
            self._notify(src, "unknown_node")
            return
        driver = self.drivers.get(src)
        if driver is not None:
            driver["last_seen"] = now
        elif src[:1] == P.DRIVER:
            # Likewise a driver: the actors it owned are not known here (any more).
            self._notify(src, "unknown_driver")
            return
        self._notify(src, "pong")

    def _op_hello(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        role = msg.get("role")
        if role == "driver":
            self.drivers[src] = {"last_seen": time.monotonic(), "pid": msg.get("pid"),
                                 "host": msg.get("host"),
                                 "namespace": msg.get("namespace", "default"),
                                 "since": time.time()}
            log.info("driver %s (pid %s%s) connected", src.hex(), msg.get("pid"),
                     f" on {msg['host']}" if msg.get("host") else "")
            if msg.get("wait_nodes") and not any(
                    len(n.workers) >= n.num_workers for n in self.nodes.values()):
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
            node = self.nodes.get(node_id) if node_id else None
            if node is not None:
                node.workers.add(src)
                if self.hello_waiters and len(node.workers) >= node.num_workers:
                    self._answer_hello_waiters()
            self._reply(src, call_id, ok=True)
            self._dispatch_tasks()
        elif role == "node":
            node = self.nodes[src] = NodeRecord(src, msg)
            log.info("node %s joined: host %s%s, pid %d, %d task workers, resources %s",
                     node.name, node.host, f" ({node.ip})" if node.ip else "", node.pid,
                     node.num_workers, node.resources)
            self._reply(src, call_id, ok=True, broker_host=socket.gethostname())
            if node.num_workers <= 0:
                self._answer_hello_waiters()
        else:
            self._reply_fail(src, call_id, "ActorzError", f"unknown role {role!r}")

    def _answer_hello_waiters(self) -> None:
        # An embedded cluster's driver starts once a node is up with its task workers:
        # tasks sent before the last worker registers would all queue on the first.
        waiters, self.hello_waiters = self.hello_waiters, []
        for driver, cid in waiters:
            self._reply(driver, cid, ok=True, nodes=len(self.nodes))

    def _op_bye(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        node = self.nodes.get(src)
        if node is not None:
            # A node stops after killing its children: their actors and tasks fail now.
            reason = msg.get("reason")
            self._node_dead(node, reason or "it stopped",
                            logging.WARNING if reason else logging.INFO)
        else:
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
                        src, call_id, "ActorNameTakenError",
                        f"an actor named {name!r} already exists in namespace {ns!r}; use "
                        f"actorz.get_actor({name!r}) or .options(name={name!r}, "
                        "get_if_exists=True)")
                return
        rec = ActorRecord(actor_id, src, msg, list(bufs))
        node, missing = place(self.nodes, rec.resources)
        if node is None:
            reason = (f"cannot create actor {rec.class_name}: {missing}")
            log.info("%s", reason)  # the creator gets the error; the log only records it
            self.dead[actor_id] = reason
            self._reply_fail(src, call_id, "ActorzError", reason)
            return
        rec.node = node.id
        node.actors.add(actor_id)
        for k, v in rec.resources.items():
            node.available[k] = node.available.get(k, 0) - v
        self.actors[actor_id] = rec
        if not rec.detached:
            self.owned.setdefault(src, set()).add(actor_id)
        if name is not None:
            self.names[(ns, name)] = actor_id
        log_to_driver = msg.get("log_to_driver", True)
        parent = self.actors.get(src)
        if parent is not None:  # an actor's actor prints where its creator prints
            log_to_driver = parent.meta.get("log_to_driver", True)
        rec.log_to = self._log_target(src)
        self._notify(node.id, "spawn_actor", actor=actor_id.hex(), class_name=rec.class_name,
                     owner=src.hex(), log_to=rec.log_to.hex(), log_to_driver=log_to_driver)
        self._reply(src, call_id, actor=actor_id.hex())

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

    # --- output of actors and tasks --------------------------------------------------

    def _log_target(self, endpoint: bytes) -> bytes:
        """The driver whose console shows what ``endpoint``'s work prints.

        An actor's output goes to the driver that created it, or that created its creator;
        a task's to its caller's. A task worker that creates an actor or calls a task
        passes on its current caller's (the one it is running tasks for).
        """
        for _ in range(8):  # bounded: a chain of task workers calling tasks
            role = endpoint[:1]
            if role == P.ACTOR:
                rec = self.actors.get(endpoint)
                return rec.log_to if rec is not None else endpoint
            if role != P.WORKER:
                return endpoint
            w = self.workers.get(endpoint)
            if w is None or not w.inflight:
                return endpoint
            endpoint = next(iter(w.inflight))[0]
        return endpoint

    def _route_log(self, payload: Any) -> None:
        # A node sends here the lines whose destination it cannot resolve itself
        # (output of a task called by an actor or by another task): not a hot path.
        msg = P.decode_json(payload)
        dest = self._log_target(bytes.fromhex(msg.get("to", "")))
        if dest[:1] == P.DRIVER and dest in self.drivers:
            self._send(dest, P.item(P.LOG, 0, bytes(payload)))

    def _op_flush_logs(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        """A driver about to leave asks every node to send the output it has read so far.

        Each node reads its children's pipes and answers after the lines it sent; those
        pass through here in order, so when the last node has answered, every line
        printed before the driver's last reply arrived has been forwarded to it.
        """
        if not self.nodes:
            self._reply(src, call_id, ok=True)
            return
        self._next_token += 1
        token = self._next_token
        self.flushes[token] = (src, call_id, set(self.nodes), time.monotonic() + FLUSH_TIMEOUT_S)
        for node in self.nodes:
            self._notify(node, "flush_logs", token=token)

    def _op_logs_flushed(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        self._flush_answered(msg.get("token", 0), src)

    def _flush_answered(self, token: int, node: bytes) -> None:
        flush = self.flushes.get(token)
        if flush is not None:
            flush[2].discard(node)
            if not flush[2]:
                del self.flushes[token]
                self._reply(flush[0], flush[1], ok=True)

    def _expire_flushes(self, now: float) -> None:
        for token, (driver, call_id, _, deadline) in list(self.flushes.items()):
            if now > deadline:  # a node that does not answer must not hold a driver up
                del self.flushes[token]
                self._reply(driver, call_id, ok=False)

    def _op_status(self, src: bytes, call_id: int, msg: dict[str, Any], bufs: Any) -> None:
        """Answer with the cluster, once live actors said how many calls they hold.

        Calls in flight are asked of the actors (not counted here: that would cost every
        forwarded message a walk over its items); the answer goes out when all have
        replied, or after ``STATS_WAIT_S`` with what came in (missing ones: ``null``).
        """
        alive = [r.id for r in self.actors.values() if r.state is ALIVE]
        if not alive:
            self._reply(src, call_id, **self.status(time.monotonic()))
            return
        self._next_token += 1
        token = self._next_token
        self.status_waits[token] = {"src": src, "call_id": call_id, "want": set(alive),
                                    "got": {}, "deadline": time.monotonic() + STATS_WAIT_S}
        for actor in alive:
            self._notify(actor, "stats", token=token)

    def _op_stats_reply(self, src: bytes, call_id: int, msg: dict[str, Any],
                        bufs: Any) -> None:
        wait = self.status_waits.get(msg.get("token", 0))
        if wait is None:
            return
        wait["got"][src] = msg.get("inflight")
        if len(wait["got"]) >= len(wait["want"]):
            self._answer_status(msg["token"])

    def _answer_status(self, token: int) -> None:
        wait = self.status_waits.pop(token)
        self._reply(wait["src"], wait["call_id"],
                    **self.status(time.monotonic(), inflight=wait["got"]))

    def _expire_status_waits(self, now: float) -> None:
        for token, wait in list(self.status_waits.items()):
            if now >= wait["deadline"]:
                self._answer_status(token)

    def status(self, now: float, inflight: dict[bytes, int] | None = None) -> dict[str, Any]:
        """The registry as plain data: what ``actorz status`` prints.

        ``inflight``: calls each actor holds (running and queued), as the actors told
        ``_op_status``; ``None`` for an actor that did not answer in time.
        """
        wall = time.time()
        names = {n.id: n.name for n in self.nodes.values()}
        return {
            "broker": {"binds": self.binds, "pid": os.getpid(), "host": socket.gethostname(),
                       "uptime_s": round(wall - self.started, 1)},
            "nodes": [
                {"id": n.id.hex(), "name": n.name, "host": n.host, "ip": n.ip, "pid": n.pid,
                 "resources": n.resources, "available": n.available, "actors": len(n.actors),
                 "workers": len(n.workers), "last_heartbeat_s": round(now - n.last_seen, 2),
                 "uptime_s": round(wall - n.since, 1)}
                for n in self.nodes.values()
            ],
            "actors": [
                {"id": r.id.hex(), "class_name": r.class_name, "name": r.name,
                 "namespace": r.namespace, "node": names.get(r.node) if r.node else None,
                 "pid": r.pid, "state": r.state, "detached": r.detached,
                 "owner": r.owner.hex(), "resources": r.resources,
                 "inflight": (inflight or {}).get(r.id)}
                for r in self.actors.values()
            ],
            "workers": [
                {"id": w.id.hex(), "node": names.get(w.node) if w.node else None, "pid": w.pid,
                 "inflight": len(w.inflight)}
                for w in self.workers.values()
            ],
            "task_queue": len(self.tasks),
            "drivers": [
                {"id": d.hex(), "pid": info.get("pid"), "host": info.get("host"),
                 "namespace": info.get("namespace"),
                 "connected_s": round(wall - info.get("since", wall), 1),
                 "last_heartbeat_s": round(now - info["last_seen"], 2)}
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
        if not tasks or not self.workers:
            return
        # A burst is shared out over the workers that have room (up to each one's credit):
        # two blocking tasks sent together must run on two workers, not queue on one.
        # Long bursts still go WORKER_CREDIT at a time, in one message per worker.
        ready = sum(1 for w in self.workers.values() if w.credit > 0)
        share = -(-len(tasks) // ready) if ready else 0
        while tasks:
            w = max(self.workers.values(), key=credit)
            if w.credit <= 0:
                return
            caller = tasks[0][0]
            items: list[bytes] = []
            bufs: list[Any] = []
            n = min(w.credit, share)
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


def _read_or_eof(fd: int) -> bool:
    """Consume what is readable on ``fd``; False at end of file (the other side is gone)."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True
    except OSError:
        return False

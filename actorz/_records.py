"""The broker's registry entries, and where a new actor should go. Pure data, no sockets."""

from __future__ import annotations

import time
from typing import Any

#: Tasks a worker may hold at once (running and queued in its process).
WORKER_CREDIT = 32

#: An actor's states: created (its calls wait at the broker), connected, gone.
PENDING, ALIVE, DEAD = "pending", "alive", "dead"


class ActorRecord:
    __slots__ = ("buffered", "class_name", "created", "detached", "id", "log_to", "meta",
                 "methods", "name", "namespace", "node", "owner", "peers", "pid", "reason",
                 "resources", "spec", "state")

    def __init__(self, actor_id: bytes, owner: bytes, meta: dict[str, Any],
                 spec: list[Any]) -> None:
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
        #: The driver its output goes to (its creator's driver, for an actor made by an actor).
        self.log_to = owner


class NodeRecord:
    __slots__ = ("actors", "available", "host", "id", "ip", "last_seen", "name", "num_workers",
                 "pid", "resources", "since", "workers")

    def __init__(self, node_id: bytes, msg: dict[str, Any]) -> None:
        self.id = node_id
        self.name: str = msg.get("name") or node_id.hex()[:8]
        self.host: str = msg.get("host", "?")
        self.ip: str = msg.get("ip") or ""
        self.since = time.time()
        self.pid: int = msg.get("pid", 0)
        self.resources: dict[str, float] = dict(msg.get("resources") or {})
        self.available = dict(self.resources)
        self.actors: set[bytes] = set()
        self.workers: set[bytes] = set()
        self.num_workers: int = msg.get("num_workers", 0)
        self.last_seen = time.monotonic()


class WorkerRecord:
    __slots__ = ("credit", "id", "inflight", "node", "pid")

    def __init__(self, worker_id: bytes, node: bytes | None, pid: int) -> None:
        self.id = worker_id
        self.node = node
        self.pid = pid
        self.credit = WORKER_CREDIT
        self.inflight: dict[tuple[bytes, int], bool] = {}


def place(nodes: dict[bytes, NodeRecord],
          resources: dict[str, float]) -> tuple[NodeRecord | None, str]:
    """The least-loaded node with the resources, or None and what is missing."""
    """The least-loaded node (fewest actors) with ``resources`` available, or why none."""
    if not nodes:
        return None, "the cluster has no node to run it (start one with 'actorz node')"
    best: NodeRecord | None = None
    for n in nodes.values():
        avail = n.available
        for k, v in resources.items():
            if avail.get(k, 0) < v:
                break
        else:
            if best is None or len(n.actors) < len(best.actors):
                best = n
    if best is not None:
        return best, ""
    return None, why_no_fit(resources, list(nodes.values()))


def why_no_fit(resources: dict[str, float], nodes: list[NodeRecord]) -> str:
    """Name what is missing: which resource no node has enough of, and what there is."""
    asked = ", ".join(f"{k}={_fmt(v)}" for k, v in resources.items())
    missing = []
    for k, v in resources.items():
        most_free = max(n.available.get(k, 0) for n in nodes)
        if most_free < v:
            most_total = max(n.resources.get(k, 0) for n in nodes)
            if most_total < v:
                missing.append(f"{k}={_fmt(v)} (no node has that much {k}: the largest has "
                               f"{_fmt(most_total)})")
            else:
                missing.append(f"{k}={_fmt(v)} (at most {_fmt(most_free)} of it is free now; "
                               "other actors hold the rest)")
    if not missing:
        missing.append("all of them on one node (each is available, but on different nodes)")
    have = "; ".join(
        f"{n.name}: " + (", ".join(f"{k}={_fmt(v)}" for k, v in sorted(n.available.items()))
                         or "nothing")
        for n in nodes)
    return (f"no node has the resources it asks for ({asked}): missing {'; '.join(missing)}. "
            f"Free now: {have}. Start a node with them (actorz node --resources '{{...}}') or "
            "ask for less")


def _fmt(v: float) -> str:
    return f"{v:g}"


def credit(w: WorkerRecord) -> int:
    return w.credit

"""The node agent: starts and supervises actor processes and task workers on one host.

It forks children through a template process (``_worker/_template.py``), reads each
child's log pipe and sends the lines to the driver they belong to, and reports a child's
exit to the broker at once, after its last lines (so a line printed just before a crash
arrives before the ``ActorDiedError``).
"""

from __future__ import annotations

import logging
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import zmq

from actorz import _protocol as P
from actorz._logging import parse_line
from actorz._transport import dealer

log = logging.getLogger("actorz.node")

HEARTBEAT_S = 1.0
#: No word from the broker for this long (it answers every ping): it is gone.
BROKER_TIMEOUT_S = 6.0
#: How long a new node waits for the broker to accept it before giving up.
CONNECT_TIMEOUT_S = 10.0
_HELLO_ID = 1


class _Child:
    # owner: the driver its output goes to (its creator's, for an actor).
    __slots__ = ("buf", "class_name", "ident", "log_to_driver", "owner", "pid", "pipe", "role")

    def __init__(self, role: str, ident: bytes, owner: bytes | None, class_name: str,
                 log_to_driver: bool, pipe: int) -> None:
        self.role = role
        self.ident = ident
        self.owner = owner
        self.class_name = class_name
        self.log_to_driver = log_to_driver
        self.pid = 0
        self.pipe = pipe
        self.buf = b""


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {name}"
    return f"exited with code {os.WEXITSTATUS(status)}"


class NodeAgent:
    """One host's agent; ``run()`` until ``stop`` is set, the broker says stop, or is lost.

    ``show_ip`` adds ``, ip=HOST`` to the prefix of its children's log lines: set it for
    nodes that join a broker over the network (``actorz node``), where a driver's output
    mixes lines from several hosts. After ``run()`` returns, ``exit_error`` says why it
    stopped when that was a failure (``None`` for a requested stop).
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], address: str, *,
                 num_workers: int | None = None, resources: dict[str, float] | None = None,
                 name: str | None = None, show_ip: bool = False,
                 connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.address = address
        self.identity = P.new_id(P.NODE)
        self.sock = dealer(ctx, address, self.identity)
        self.num_workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        res = {"CPU": float(os.cpu_count() or 1)}
        res.update(resources or {})
        self.resources = res
        self.host = socket.gethostname()
        self.name = name or self.host
        self.ip = _route_ip(address)
        self.ip_suffix = f", ip={self.ip}" if show_ip else ""
        self.connect_timeout = connect_timeout
        self.joined = threading.Event()
        self.exit_error: str | None = None
        self.children: dict[int, _Child] = {}  # by pid
        self.by_ident: dict[bytes, _Child] = {}
        self.spawning: dict[int, _Child] = {}  # by token
        self.pipes: dict[int, _Child] = {}  # log pipes polled, by fd
        self.poller = zmq.Poller()
        self._token = 0
        self.ctl: socket.socket | None = None
        self.template: subprocess.Popen[bytes] | None = None
        self._last_broker = time.monotonic()
        _raise_fd_limit()

    # --- the template -----------------------------------------------------------------

    def _start_template(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.template = subprocess.Popen(
            [sys.executable, "-m", "actorz._worker._template", str(child.fileno())],
            pass_fds=[child.fileno()], stdin=subprocess.DEVNULL,
        )
        child.close()
        self.ctl = parent

    def _spawn(self, role: str, ident: bytes, info: dict[str, Any], owner: bytes | None,
               class_name: str, log_to_driver: bool) -> None:
        assert self.ctl is not None
        r, w = os.pipe()
        os.set_blocking(r, False)
        self._token += 1
        child = _Child(role, ident, owner, class_name, log_to_driver, r)
        self.spawning[self._token] = child
        self.by_ident[ident] = child
        msg = ("spawn", self._token, role, ident, self.address, info)
        socket.send_fds(self.ctl, [pickle.dumps(msg)], [w])
        os.close(w)

    # --- main loop -----------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        self._start_template()
        assert self.ctl is not None
        hello = P.encode_json({"op": "hello", "role": "node", "resources": self.resources,
                               "name": self.name, "host": self.host, "ip": self.ip,
                               "pid": os.getpid(), "num_workers": self.num_workers})
        self._send(P.item(P.CONTROL, _HELLO_ID, hello))
        poller = self.poller
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.ctl.fileno(), zmq.POLLIN)
        started = time.monotonic()
        next_beat = started + HEARTBEAT_S
        try:
            while stop is None or not stop.is_set():
                events = dict(poller.poll(200))
                if events.get(self.sock) and not self._drain():
                    return
                if events.get(self.ctl.fileno()) and not self._on_template():
                    self._fail("the fork-server template process exited")
                    return
                for fd in events:
                    child = self.pipes.get(fd) if isinstance(fd, int) else None
                    if child is not None:
                        self._read_logs(child)
                now = time.monotonic()
                if not self.joined.is_set():
                    if now - started > self.connect_timeout:
                        self._fail(f"no actorz broker answered at {self.address} within "
                                   f"{self.connect_timeout:g}s; is it running ('actorz broker' "
                                   "or 'actorz up'), and is the address right?")
                        return
                elif now >= next_beat:
                    next_beat = now + HEARTBEAT_S
                    if now - self._last_broker > BROKER_TIMEOUT_S:
                        self._fail(f"lost the broker at {self.address}: no answer for "
                                   f"{BROKER_TIMEOUT_S:g}s; stopping this node and its "
                                   "processes")
                        return
                    self._send(P.control("ping"))
        finally:
            self._shutdown()

    def _fail(self, reason: str) -> None:
        self.exit_error = reason
        log.error("node %s: %s", self.name, reason)

    def _on_joined(self) -> None:
        self.joined.set()
        self._last_broker = time.monotonic()
        log.info("node %s joined the broker at %s with %d task workers, resources %s",
                 self.name, self.address, self.num_workers, self.resources)
        # Workers start once the broker knows this node, so it files them under it.
        for _ in range(self.num_workers):
            self._spawn("worker", P.new_id(P.WORKER), {"node": self.identity.hex()}, None,
                        "worker", True)

    def _send(self, item: bytes, dest: bytes = P.BROKER) -> None:
        try:
            self.sock.send_multipart([dest, item], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("node: could not send to the broker: %s", exc)

    def _drain(self) -> bool:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return True
            self._last_broker = time.monotonic()
            for kind, _, _, call_id, payload, _, _ in P.iter_items(frames[1]):
                if kind == P.FAIL and call_id == _HELLO_ID:
                    self._fail(f"the broker refused this node: {P.decode_json(payload)}")
                    return False
                if kind != P.CONTROL:
                    continue
                msg = P.decode_json(payload)
                if call_id == _HELLO_ID:
                    if not self.joined.is_set():
                        self._on_joined()
                    continue
                op = msg.get("op")
                if op == "spawn_actor":
                    self._spawn("actor", bytes.fromhex(msg["actor"]), {},
                                bytes.fromhex(msg.get("log_to") or msg["owner"]),
                                msg["class_name"], msg.get("log_to_driver", True))
                elif op == "kill_actor":
                    child = self.by_ident.get(bytes.fromhex(msg["actor"]))
                    if child is not None and child.pid:
                        self._kill(child.pid)
                elif op == "flush_logs":
                    # Whatever a child wrote before now goes out before this answer.
                    for child in list(self.children.values()):
                        self._read_logs(child)
                    self._send(P.control("logs_flushed", token=msg.get("token", 0)))
                elif op == "stop":
                    log.info("node %s: the broker asked it to stop", self.name)
                    return False
                elif op == "unknown_node":
                    self._fail("the broker no longer knows this node (it restarted, or took "
                               "the node for lost); stopping this node and its processes")
                    return False

    def _kill(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _on_template(self) -> bool:
        assert self.ctl is not None
        while True:
            try:
                data = self.ctl.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            msg = pickle.loads(data)
            if msg[0] == "spawned":
                child = self.spawning.pop(msg[1])
                child.pid = msg[2]
                self.children[child.pid] = child
                if child.pipe >= 0:
                    self.pipes[child.pipe] = child
                    self.poller.register(child.pipe, zmq.POLLIN)
                self._send(P.control("spawned", id=child.ident.hex(), pid=child.pid,
                                     role=child.role))
            elif msg[0] == "exited":
                gone = self.children.pop(msg[1], None)
                if gone is None:
                    continue
                self._read_logs(gone, final=True)
                self.by_ident.pop(gone.ident, None)
                self._send(P.control("child_exit", id=gone.ident.hex(), role=gone.role,
                                     pid=gone.pid, reason=_describe_status(msg[2])))

    def _read_logs(self, child: _Child, final: bool = False) -> None:
        if child.pipe < 0:
            return
        chunks = [child.buf]
        eof = False
        while True:
            try:
                data = os.read(child.pipe, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
        data = b"".join(chunks)
        lines = data.split(b"\n")
        child.buf = lines.pop()
        if (eof or final) and child.buf:
            lines.append(child.buf)
            child.buf = b""
        if lines:
            self._route_lines(child, lines)
        if eof or final:
            if child.pipe in self.pipes:
                del self.pipes[child.pipe]
                self.poller.unregister(child.pipe)
            os.close(child.pipe)
            child.pipe = -1

    def _route_lines(self, child: _Child, lines: list[bytes]) -> None:
        groups: dict[tuple[str | None, int, str], list[str]] = {}
        for raw in lines:
            stream, dest, name, text = parse_line(raw)
            if child.role == "actor":
                dest = child.owner.hex() if child.owner else None
                name = child.class_name
            elif name is None:
                name = "worker"
            groups.setdefault((dest, stream, name), []).append(text)
        for (dest, stream, name), texts in groups.items():
            prefix = f"{name} pid={child.pid}{self.ip_suffix}"
            if dest is None or (child.role == "actor" and not child.log_to_driver):
                if dest is None:
                    out = sys.stderr if stream == 2 else sys.stdout
                    out.write("".join(f"({prefix}) {t}\n" for t in texts))
                    out.flush()
                continue
            msg: dict[str, Any] = {"prefix": prefix, "stream": stream, "lines": texts}
            to = bytes.fromhex(dest)
            if to[:1] != P.DRIVER:
                # A task called by an actor or a task: the broker knows whose driver that is.
                msg["to"] = dest
                to = P.BROKER
            self._send(P.item(P.LOG, 0, P.encode_json(msg)), to)

    def _shutdown(self) -> None:
        for child in list(self.children.values()):
            self._kill(child.pid)
        for child in list(self.spawning.values()):
            if child.pipe >= 0:
                os.close(child.pipe)
                child.pipe = -1
        if self.ctl is not None:
            try:
                self.ctl.send(pickle.dumps(("stop",)))
            except OSError:
                pass
        if self.template is not None:
            try:
                self.template.wait(10)
            except subprocess.TimeoutExpired:
                self.template.kill()
                self.template.wait()
        for child in list(self.children.values()):
            self._read_logs(child, final=True)
        if self.ctl is not None:
            self.ctl.close()
        if self.joined.is_set():
            # Tell the broker at once (after the children's exits) instead of leaving it
            # to notice the silence; the socket's bounded linger lets this go out.
            self._send(P.control("bye", reason=self.exit_error))
            self.sock.close()
        else:
            self.sock.close(0)


def _raise_fd_limit() -> None:
    # Each child holds one log pipe here: a thousand actors need more than the usual 1024.
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def host_ip() -> str:
    """This host's address on its default route (else what its name resolves to)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: picks a route, sends nothing
            return str(probe.getsockname()[0])
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _route_ip(address: str) -> str:
    """This host's address on the route to the broker: what other hosts know it by."""
    if address.startswith("tcp://"):
        host = urlsplit(address).hostname or ""
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((host, 9))  # UDP connect: picks a route, sends nothing
                return str(probe.getsockname()[0])
        except OSError:
            pass
    return host_ip()

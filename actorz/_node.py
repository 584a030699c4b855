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

import zmq

from actorz import _protocol as P
from actorz._logging import parse_line
from actorz._transport import dealer

log = logging.getLogger("actorz.node")

HEARTBEAT_S = 1.0
BROKER_TIMEOUT_S = 6.0


class _Child:
    __slots__ = ("role", "ident", "owner", "class_name", "log_to_driver", "pid", "pipe", "buf")

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
    """One host's agent; ``run()`` until ``stop`` is set, the broker says stop, or is lost."""

    def __init__(self, ctx: zmq.Context, address: str, *, num_workers: int | None = None,
                 resources: dict[str, float] | None = None, name: str | None = None,
                 show_ip: bool = False) -> None:
        self.address = address
        self.identity = P.new_id(P.NODE)
        self.sock = dealer(ctx, address, self.identity)
        self.num_workers = os.cpu_count() or 1 if num_workers is None else num_workers
        res = {"CPU": float(os.cpu_count() or 1)}
        res.update(resources or {})
        self.resources = res
        self.host = socket.gethostname()
        self.name = name or self.host
        self.ip_suffix = f", ip={_host_ip()}" if show_ip else ""
        self.children: dict[int, _Child] = {}  # by pid
        self.by_ident: dict[bytes, _Child] = {}
        self.spawning: dict[int, _Child] = {}  # by token
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
        self._send(P.control("hello", role="node", resources=self.resources, name=self.name,
                             host=self.host, pid=os.getpid(), num_workers=self.num_workers))
        for _ in range(self.num_workers):
            self._spawn("worker", P.new_id(P.WORKER), {"node": self.identity.hex()}, None,
                        "worker", True)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.ctl.fileno(), zmq.POLLIN)
        registered: set[int] = set()
        next_beat = time.monotonic() + HEARTBEAT_S
        try:
            while stop is None or not stop.is_set():
                for child in self.children.values():
                    if child.pipe >= 0 and child.pipe not in registered:
                        poller.register(child.pipe, zmq.POLLIN)
                        registered.add(child.pipe)
                events = dict(poller.poll(200))
                if events.get(self.sock):
                    if not self._drain():
                        return
                if events.get(self.ctl.fileno()):
                    if not self._on_template():
                        log.error("node: the fork-server template exited")
                        return
                for child in list(self.children.values()):
                    if child.pipe in events:
                        self._read_logs(child)
                        if child.pipe < 0 or (events[child.pipe] & zmq.POLLERR):
                            pass
                for fd in list(registered):
                    if not any(c.pipe == fd for c in self.children.values()):
                        poller.unregister(fd)
                        registered.discard(fd)
                now = time.monotonic()
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_S
                    if now - self._last_broker > BROKER_TIMEOUT_S:
                        log.error("node: lost the broker at %s; stopping", self.address)
                        return
                    self._send(P.control("ping"))
        finally:
            self._shutdown()

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
            for kind, _, _, _, payload, _, _ in P.iter_items(frames[1]):
                if kind != P.CONTROL:
                    continue
                msg = P.decode_json(payload)
                op = msg.get("op")
                if op == "spawn_actor":
                    self._spawn("actor", bytes.fromhex(msg["actor"]), {}, 
                                bytes.fromhex(msg["owner"]), msg["class_name"],
                                msg.get("log_to_driver", True))
                elif op == "kill_actor":
                    child = self.by_ident.get(bytes.fromhex(msg["actor"]))
                    if child is not None and child.pid:
                        self._kill(child.pid)
                elif op == "stop":
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
                self._send(P.control("spawned", id=child.ident.hex(), pid=child.pid,
                                     role=child.role))
            elif msg[0] == "exited":
                child = self.children.pop(msg[1], None)
                if child is None:
                    continue
                self._read_logs(child, final=True)
                self.by_ident.pop(child.ident, None)
                self._send(P.control("child_exit", id=child.ident.hex(), role=child.role,
                                     pid=child.pid, reason=_describe_status(msg[2])))

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
            payload = P.encode_json({"prefix": prefix, "stream": stream, "lines": texts})
            self._send(P.item(P.LOG, 0, payload), bytes.fromhex(dest))

    def _shutdown(self) -> None:
        for child in list(self.children.values()):
            self._kill(child.pid)
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
        self.sock.close(0)


def _raise_fd_limit() -> None:
    # Each child holds one log pipe here: a thousand actors need more than the usual 1024.
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def _host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"

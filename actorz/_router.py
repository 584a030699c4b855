"""The broker's socket: receiving, forwarding, never blocking on one slow peer.

A ROUTER with ``ROUTER_MANDATORY``: a send to a peer that is not connected raises instead
of vanishing, and is answered with a FAIL for each call it carried (a *bounce*). Sends
are ``NOBLOCK``: a peer at its high-water mark gets a backlog of its own, retried by the
broker's loop, instead of stalling every other peer. Messages are handled frame by frame
(routing ids as bytes, payload frames zero-copy): pyzmq's multipart helpers cost 2-3x
more per message (a minimal forwarder: 72 vs 27 us of CPU per round trip, measured).

``Broker`` (``_broker.py``) adds the registry and what the broker is asked to do.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections import deque
from typing import Any

import zmq

from actorz import _protocol as P
from actorz._transport import router

log = logging.getLogger("actorz.broker")

#: Messages kept for one slow peer before new ones are refused.
MAX_BACKLOG = 100_000
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


class Router:
    """The ROUTER socket and the primitives to move messages through it."""

    def __init__(self, ctx: zmq.Context[Any], binds: list[str]) -> None:
        self.sock = router(ctx, [])
        try:
            #: The bound endpoints, wildcard ports resolved (``tcp://127.0.0.1:*``).
            self.binds = [_bind(self.sock, address) for address in binds]
        except BaseException:
            self.sock.close(0)
            raise
        #: Messages waiting for peers at their high-water mark, in order, per peer.
        self.backlog: dict[bytes, deque[list[Any]]] = {}

    def _unreachable(self, src: bytes, dest: bytes, blob_frame: Any) -> None:
        """A message for ``dest``, which is not connected: bounce it (``Broker`` says why)."""
        self._bounce(src, blob_frame, "ActorzError",
                     f"no endpoint {dest.hex()} is connected to the broker")

    def _recv(self) -> list[Any] | None:
        """One message as ``[src, dest, blob, *buffers]``: ids as bytes, the rest as frames.

        Frame by frame rather than recv_multipart(copy=False): a minimal forwarder costs
        27 us of CPU per round trip this way against 72 us (measured on this machine).
        """
        recv = self.sock.recv
        try:
            src = recv(_NOBLOCK)  # EVENTS may say POLLIN with nothing to read
        except zmq.Again:
            return None
        first = recv(copy=False)
        if not first.more:
            log.warning("dropped a malformed message from %s: no payload", src.hex())
            return None
        frame = recv(copy=False)
        frames = [src, first.bytes, frame]
        while frame.more:
            frame = recv(copy=False)
            frames.append(frame)
        return frames

    def _send_frames(self, frames: list[Any]) -> None:
        """Send ``[dest, src, blob, *buffers]``; raises on the first frame (Again, unroutable)."""
        send = self.sock.send
        send(frames[0], _NOBLOCK_MORE)
        last = len(frames) - 1
        for i in range(1, last):
            send(frames[i], _SNDMORE)
        send(frames[last])

    def _forward(self, dest: bytes, frames: list[Any]) -> None:
        """Send ``[src, dest, ...]`` to dest as ``[dest, src, ...]``."""
        frames[0], frames[1] = frames[1], frames[0]
        self._deliver(dest, frames)

    def _send(self, dest: bytes, blob: bytes, bufs: list[Any] | tuple[()] = (),
              src: bytes = P.BROKER) -> None:
        """Send a message the broker made (``src`` defaults to the broker itself)."""
        self._deliver(dest, [dest, src, blob, *bufs])

    def _deliver(self, dest: bytes, frames: list[Any]) -> None:
        """Send ``[dest, src, blob, *buffers]`` without blocking: behind dest's backlog if
        it has one, into a new one if dest is at its high-water mark. Calls that cannot
        go (dest gone, or its backlog full) are bounced to their sender, if any."""
        src = frames[1]
        q = self.backlog.get(dest)
        if q is not None:
            if src and len(q) >= MAX_BACKLOG:
                self._bounce(src, frames[2], "ActorzError",
                             f"endpoint {dest.hex()} is not keeping up ({len(q)} messages "
                             "queued at the broker); the call was refused")
            else:
                q.append(frames)
            return
        try:
            self._send_frames(frames)
        except zmq.Again:
            self.backlog[dest] = deque([frames])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            if src:  # a message of the broker's own to a peer that left: nobody to tell
                self._unreachable(src, dest, frames[2])

    def _retry_backlog(self) -> None:
        for dest in list(self.backlog):
            q = self.backlog[dest]
            while q:
                try:
                    self._send_frames(q[0])
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    frames = q.popleft()
                    if frames[1]:
                        self._bounce(frames[1], frames[2], "ActorzError",
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


def _bind(sock: zmq.Socket[Any], address: str) -> str:
    """Bind one address; return the endpoint as bound. Raises ``OSError`` saying why not."""
    if address.startswith("ipc://"):
        _check_ipc_free(address)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE,
                          f"cannot bind the broker to {address}: the address is already in use "
                          "(another actorz broker or another program listens there); stop it "
                          "or choose another address") from None
        raise OSError(exc.errno, f"cannot bind the broker to {address}: {exc}") from None
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


def _check_ipc_free(address: str) -> None:
    # ZeroMQ silently unlinks an existing ipc socket file and takes the path over, which
    # would cut a running broker off from everyone who joins later: refuse instead.
    path = address[len("ipc://"):]
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return  # a stale file: nobody listens there
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE,
                  f"cannot bind the broker to {address}: the address is already in use "
                  "(another actorz broker listens there); stop it or choose another path")

"""Socket setup: linger, high-water marks, reconnects, private ipc directories, address checks."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
import time
from urllib.parse import urlsplit

import zmq

#: Bounded linger: ``ctx.term()`` must never wait forever on messages for dead peers.
LINGER_MS = 500
#: Messages queued per peer before ZeroMQ pushes back. Calls travel in batches, so
#: this is a bound on batches, not on calls.
HWM = 100_000


def dealer(
    ctx: zmq.Context[zmq.Socket[bytes]], address: str, identity: bytes
) -> zmq.Socket[bytes]:
    """A DEALER endpoint connected to the broker, with its routing id set."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    # An embedded cluster's ipc path appears a moment after the driver starts
    # connecting; retry quickly at first.
    sock.setsockopt(zmq.RECONNECT_IVL, 20)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    sock.connect(address)
    return sock


def router(ctx: zmq.Context[zmq.Socket[bytes]], binds: list[str]) -> zmq.Socket[bytes]:
    """The broker's ROUTER: unroutable sends raise instead of vanishing."""
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    # A reconnecting peer with the same id takes over its old pipe.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    for address in binds:
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(f"cannot bind the broker to {address}: {exc}") from exc
    return sock


def private_ipc_address() -> tuple[str, str]:
    """An ``ipc://`` address inside a fresh 0700 directory; returns (address, directory)."""
    directory = tempfile.mkdtemp(prefix="actorz-")  # mkdtemp creates it 0700
    os.chmod(directory, 0o700)
    return f"ipc://{directory}/broker.sock", directory


def check_address(address: str) -> str:
    """Validate a broker address; raise ``ValueError`` saying what is wrong and what to do."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a string like 'tcp://127.0.0.1:6380', got {address!r}")
    if address.startswith("ipc://"):
        if len(address) <= len("ipc://"):
            raise ValueError(f"address {address!r} has no path: use 'ipc:///path/to/broker.sock'")
        return address
    if address.startswith("tcp://"):
        parts = urlsplit(address)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(
                f"address {address!r} has a port out of range (0-65535) or not a number"
            ) from None
        if not parts.hostname or port is None:
            raise ValueError(
                f"address {address!r} needs a host and a port, e.g. 'tcp://127.0.0.1:6380'"
            )
        return address
    raise ValueError(
        f"unsupported broker address {address!r}: use 'tcp://HOST:PORT' or 'ipc:///path'"
    )


def is_loopback(address: str) -> bool:
    """True for ipc:// and for tcp:// on a loopback host (127.0.0.0/8, ::1, localhost)."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def wait_reachable(address: str, timeout: float) -> str | None:
    """Why nothing can be listening at ``address`` (None if something may be).

    A cheap check before ZeroMQ's handshake, which retries silently: an unknown host, or
    a refused connection / missing ipc path that lasts ``timeout`` seconds (a broker may
    be starting at the same moment), is reported at once instead of after the full wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        if address.startswith("ipc://"):
            path = address[len("ipc://"):]
            if os.path.exists(path):
                return None
            why = f"there is no socket at {path}"
        else:
            parts = urlsplit(address)
            try:
                infos = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
            except (socket.gaierror, ValueError) as exc:
                return f"cannot resolve the host {parts.hostname!r}: {exc}"
            why = "connection refused"
            for family, kind, proto, _, sockaddr in infos:
                try:
                    with socket.socket(family, kind, proto) as probe:
                        probe.settimeout(max(0.1, deadline - time.monotonic()))
                        probe.connect(sockaddr)
                    return None
                except ConnectionRefusedError:
                    continue
                except OSError:  # unreachable network, timeout: let ZeroMQ try and see
                    return None
        if time.monotonic() >= deadline:
            return why
        time.sleep(0.1)

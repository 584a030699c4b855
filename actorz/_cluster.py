"""A broker and a local node agent in one process: what ``actorz.init()`` embeds.

Run as ``python -m actorz._cluster --bind ADDRESS [--embedded] [--num-workers N]``. With
``--embedded`` it stops when its standard input closes (the driver exited or called
``shutdown()``), and it ignores SIGINT: Ctrl-C is the driver's to handle. ``actorz up``
runs the same pair in the foreground (``LocalCluster``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from urllib.parse import urlsplit

import zmq

from actorz import _shm
from actorz._broker import Broker
from actorz._node import NodeAgent


class LocalCluster:
    """A broker bound to ``binds`` and a node agent on this host, in one process.

    The node runs on a thread and joins the broker through its first ipc address (or its
    first tcp address, on loopback when the broker is bound to every interface).
    Constructing it binds the broker (``OSError`` when it cannot); ``run()`` serves until
    ``stop()``, a signal handler calling it, or EOF on ``stop_fd``.
    """

    def __init__(self, binds: list[str], *, embedded: bool = False,
                 num_workers: int | None = None, resources: dict[str, float] | None = None,
                 name: str | None = None, show_ip: bool = False) -> None:
        self.ctx = zmq.Context()
        try:
            self.broker = Broker(self.ctx, binds, embedded=embedded)
        except BaseException:
            self.ctx.term()
            raise
        self.node = NodeAgent(self.ctx, local_address(self.broker.binds),
                              num_workers=num_workers, resources=resources, name=name,
                              show_ip=show_ip)
        self._stop = threading.Event()

    @property
    def binds(self) -> list[str]:
        return self.broker.binds

    def stop(self) -> None:
        self.broker.stop()

    def run(self, stop_fd: int | None = None) -> int:
        """Serve until stopped; returns 0, or 1 when the node agent failed."""
        thread = threading.Thread(target=self._run_node, name="actorz-node", daemon=True)
        thread.start()
        try:
            self.broker.run(stop_fd=stop_fd)
        finally:
            self._stop.set()
            thread.join(15)
            self.broker.close()
            self.ctx.term()
        return 1 if self.node.exit_error else 0

    def _run_node(self) -> None:
        try:
            self.node.run(self._stop)
        finally:
            if not self._stop.is_set():  # the node failed on its own: stop the broker too
                self.broker.stop()


def local_address(binds: list[str]) -> str:
    """The address a process on this host uses to reach a broker bound to ``binds``."""
    for address in binds:
        if address.startswith("ipc://"):
            return address
    address = binds[0]
    host = urlsplit(address).hostname or ""
    if host in ("0.0.0.0", "*", ""):
        return address.replace(f"//{host}:", "//127.0.0.1:", 1) if host else address
    if host == "::":
        return address.replace("//[::]:", "//[::1]:", 1)
    return address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actorz._cluster")
    parser.add_argument("--bind", action="append", required=True)
    parser.add_argument("--embedded", action="store_true")
    parser.add_argument("--num-workers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="actorz %(name)s: %(message)s")
    if args.embedded:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    cluster = LocalCluster(args.bind, embedded=args.embedded, num_workers=args.num_workers)
    signal.signal(signal.SIGTERM, lambda *_: cluster.stop())
    try:
        return cluster.run(stop_fd=sys.stdin.fileno() if args.embedded else None)
    finally:
        if args.embedded:  # the driver removes it too, unless it was killed
            _shm.remove_directory(os.environ.get("ACTORZ_SHM_DIR"))


if __name__ == "__main__":
    sys.exit(main())

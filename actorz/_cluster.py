"""A broker and a local node agent in one process: what ``actorz.init()`` embeds.

Run as ``python -m actorz._cluster --bind ADDRESS [--embedded] [--num-workers N]``. With
``--embedded`` it stops when its standard input closes (the driver exited or called
``shutdown()``), and it ignores SIGINT: Ctrl-C is the driver's to handle.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import zmq

from actorz._broker import Broker
from actorz._node import NodeAgent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actorz._cluster")
    parser.add_argument("--bind", action="append", required=True)
    parser.add_argument("--embedded", action="store_true")
    parser.add_argument("--num-workers", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="actorz %(name)s: %(message)s")
    if args.embedded:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    broker = Broker(ctx, args.bind, embedded=args.embedded)
    stop = threading.Event()
    node = NodeAgent(ctx, args.bind[0], num_workers=args.num_workers)
    thread = threading.Thread(target=node.run, args=(stop,), name="actorz-node", daemon=True)
    thread.start()
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    try:
        broker.run(stop_fd=sys.stdin.fileno() if args.embedded else None)
    finally:
        stop.set()
        thread.join(15)
        broker.close()
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())

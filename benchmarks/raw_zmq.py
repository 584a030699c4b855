"""The transport floor: one call = one round trip through a bare Python ROUTER broker.

``python benchmarks/raw_zmq.py [--seconds S]``: a DEALER client, a ROUTER broker that
swaps the routing frames, and a DEALER echo endpoint, in three processes on a private
``ipc://`` path, exactly the hops an actorz call takes, with nothing else (no pickling,
no bookkeeping). Prints round trips per second one at a time (blocking sockets, and the
echo side on an asyncio/uvloop reader as in an async actor) and pipelined (1000 in
flight). What actorz adds on top of these numbers is its own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time

import zmq

SNDMORE = int(zmq.SNDMORE)
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)


def broker(address: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(address)
    recv, send = sock.recv, sock.send
    while True:
        src = recv()
        dest = recv()
        body = recv()
        if not dest:  # for the broker itself: a hello, or stop
            if body == b"stop":
                break
            continue
        send(dest, SNDMORE)
        send(src, SNDMORE)
        send(body)


def broker_polled(address: str) -> None:
    """The shape of actorz's broker loop: a Poller, then recv_multipart/send_multipart
    with ``copy=False`` Frames until ``zmq.Again`` (what to compare ``broker`` against)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        events = dict(poller.poll(250))
        if sock not in events:
            continue
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            dest = frames[1].bytes
            if not dest:
                if frames[2].bytes == b"stop":
                    return
                continue
            frames[0], frames[1] = frames[1], frames[0]
            sock.send_multipart(frames, zmq.NOBLOCK, copy=False)


def echo_blocking(address: str) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"echo")
    sock.connect(address)
    sock.send(b"", SNDMORE)
    sock.send(b"hello")
    recv, send = sock.recv, sock.send
    while True:
        src = recv()
        body = recv()
        send(src, SNDMORE)
        send(body)


def echo_async(address: str) -> None:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"echo")
    sock.connect(address)
    sock.send(b"", SNDMORE)
    sock.send(b"hello")
    recv, send, getsockopt = sock.recv, sock.send, sock.getsockopt

    def readable() -> None:
        while getsockopt(EVENTS) & POLLIN:
            src = recv()
            body = recv()
            send(src, SNDMORE)
            send(body)

    loop.add_reader(sock.getsockopt(zmq.FD), readable)
    loop.call_soon(readable)
    loop.run_forever()


def client(address: str, seconds: float, pipelined: int) -> float:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"client")
    sock.connect(address)
    time.sleep(1.0)  # the echo endpoint says hello to the broker meanwhile
    recv, send = sock.recv, sock.send
    body = b"x" * 40
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(pipelined):
            send(b"echo", SNDMORE)
            send(body)
        for _ in range(pipelined):
            recv()
            recv()
        n += pipelined
    rate = n / (time.perf_counter() - start)
    send(b"", SNDMORE)
    send(b"stop")
    sock.close(linger=1000)
    ctx.term()
    return rate


def measure(echo: object, seconds: float, pipelined: int, brk: object = broker) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        address = f"ipc://{tmp}/b.sock"
        spawn = mp.get_context("spawn")
        b = spawn.Process(target=brk, args=(address,), daemon=True)
        b.start()
        e = spawn.Process(target=echo, args=(address,), daemon=True)
        e.start()
        try:
            return client(address, seconds, pipelined)
        finally:
            e.terminate()
            b.join(5)
            b.terminate()
            e.join(5)


def main() -> None:
    p = argparse.ArgumentParser(prog="benchmarks/raw_zmq.py")
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    print(f"# load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label, echo, k, brk in (
            ("blocking, one at a time", echo_blocking, 1, broker),
            ("uvloop echo, one at a time", echo_async, 1, broker),
            ("blocking, 1000 in flight", echo_blocking, 1000, broker),
            ("blocking, one at a time, Poller+multipart broker", echo_blocking, 1, broker_polled),
    ):
        print(f"raw zmq round trips ({label}) per second "
              f"{measure(echo, args.seconds, k, brk):.0f}", flush=True)


if __name__ == "__main__":
    main()

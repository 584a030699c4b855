"""``python -m examples.loadbalancer``: start the backends, the load balancer and the server.

Stops cleanly on Ctrl-C (SIGINT) or SIGTERM: the server stops accepting, requests in
flight get a few seconds to finish, then ``actorz.shutdown()`` ends every actor (and the
embedded cluster, when this program started one).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

import actorz
from actorz.exceptions import ActorzError
from examples.loadbalancer.actors import Backend, LoadBalancer
from examples.loadbalancer.server import make_app

#: How long the backends may take to start and answer a first call.
STARTUP_TIMEOUT_S = 60.0
#: How long requests in flight may take to finish once a stop is asked for.
SHUTDOWN_GRACE_S = 3.0
#: Spare load-balancer slots over what it admits, so that a 503 for overload (or a
#: /stats call) never waits behind admitted requests.
LB_HEADROOM = 100


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and less than 3600, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.loadbalancer",
        description="An aiohttp server in front of backend actors, routed by a "
                    "LoadBalancer actor.",
    )
    p.add_argument("--backends", type=_int_in(1, 256), default=4, metavar="N",
                   help="backend actors to start (default: 4)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8080,
                   help="port to listen on; 0 picks a free one (default: 8080)")
    p.add_argument("--address", metavar="ADDRESS", default=None,
                   help="join the actorz broker at this address (tcp://HOST:PORT or "
                        "ipc://PATH) instead of starting an embedded cluster")
    p.add_argument("--max-concurrency", type=_int_in(1, 10_000), default=16, metavar="N",
                   help="requests one backend runs at once (default: 16)")
    p.add_argument("--queue-limit", type=_int_in(0, 100_000), default=256, metavar="N",
                   help="requests that may wait once every backend is busy; past it the "
                        "server answers 503 at once (default: 256)")
    p.add_argument("--request-timeout", type=_positive_seconds, default=30.0,
                   metavar="SECONDS",
                   help="seconds before a request is answered 504 (default: 30)")
    p.add_argument("--allow-faults", action="store_true",
                   help="accept /work?fail=error|crash, which make a backend raise or exit, "
                        "to try the 502 and 503 answers")
    return p.parse_args(argv)


async def start_actors(args: argparse.Namespace) -> actorz.ActorHandle[Any]:
    backends = [Backend.options(max_concurrency=args.max_concurrency).remote(f"backend-{i}")
                for i in range(args.backends)]
    # Every actor is a process of its own: wait until each backend answers.
    infos = await asyncio.wait_for(asyncio.gather(*(b.info.remote() for b in backends)),
                                   STARTUP_TIMEOUT_S)
    admitted = args.backends * args.max_concurrency + args.queue_limit
    lb = LoadBalancer.options(max_concurrency=admitted + LB_HEADROOM).remote(
        [(info["name"], b, info["pid"]) for b, info in zip(backends, infos, strict=True)],
        args.max_concurrency, args.queue_limit,
    )
    stats = await asyncio.wait_for(lb.stats.remote(), STARTUP_TIMEOUT_S)
    names = ", ".join(f"{i['name']} pid={i['pid']}" for i in infos)
    print(f"LoadBalancer pid={stats['load_balancer_pid']} routes to {names}")
    print(f"max_concurrency={args.max_concurrency} per backend, queue_limit="
          f"{args.queue_limit}: past both, requests get a 503 at once")
    return lb


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        lb = await start_actors(args)
    except (TimeoutError, ActorzError) as exc:
        print(f"error: the actors did not start: {exc or 'timed out'}", file=sys.stderr)
        return 1
    app = make_app(lb, request_timeout=args.request_timeout, allow_faults=args.allow_faults)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, args.host, args.port).start()
        except OSError as exc:
            print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        host, port = runner.addresses[0][:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        print(f"Serving on {url} (Ctrl-C to stop). Try: curl '{url}/work?kind=cpu'")
        await stop.wait()
        print("Stopping: finishing requests in flight, then the actors")
    finally:
        # A second Ctrl-C during the cleanup interrupts as usual.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Line-buffered even into a pipe, so that our lines keep their place among the
    # actors' lines (which actorz writes as they arrive).
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    try:
        actorz.init(args.address)
    except (ActorzError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(args))
    except KeyboardInterrupt:  # Ctrl-C outside serve's handlers: a second one, say
        return 130
    finally:
        actorz.shutdown()


if __name__ == "__main__":
    sys.exit(main())

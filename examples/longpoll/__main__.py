"""``python -m examples.longpoll``: the async long-polling actor, then the threaded one.

Runs a few seconds and exits; Ctrl-C (or SIGTERM) stops it early, as cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Any

import actorz
from actorz.exceptions import ActorzError, GetTimeoutError, TaskCancelledError
from examples.longpoll.actors import DataStore, LongPollingActor, LongPollingActorAsync

#: Bound on every call that should answer at once; only a broken cluster reaches it.
CALL_TIMEOUT_S = 30.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m examples.longpoll",
        description="An async actor long-polls a data store and still answers other "
                    "calls; a threaded one cannot.",
    )
    p.add_argument("--duration", type=_seconds, default=3.0, metavar="SECONDS",
                   help="seconds the async actor runs (default: 3)")
    p.add_argument("--interval", type=_seconds, default=0.25, metavar="SECONDS",
                   help="seconds between two items of the data store (default: 0.25)")
    p.add_argument("--stuck-timeout", type=_seconds, default=1.5, metavar="SECONDS",
                   help="seconds to wait for the threaded actor's other_task (default: 1.5)")
    p.add_argument("--address", default=None,
                   help="join the actorz broker at this address (tcp://HOST:PORT or "
                        "ipc://PATH) instead of starting an embedded cluster")
    return p.parse_args(argv)


def async_actor(store: actorz.ActorHandle[Any], duration: float) -> None:
    print("== Async actor: run() loops on 'await data_store.fetch.remote()'")
    poller = LongPollingActorAsync.remote(store)
    run = poller.run.remote()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        started = time.perf_counter()
        actorz.get(poller.other_task.remote(), timeout=CALL_TIMEOUT_S)
        ms = (time.perf_counter() - started) * 1000
        print(f"other_task answered in {ms:.1f} ms while run() was looping")
    stats = actorz.get(poller.stats.remote(), timeout=CALL_TIMEOUT_S)
    print(f"stats: {stats['processed']} items processed, "
          f"{stats['other_task_calls']} other_task calls answered")
    # run() loops forever; an async call is stopped by cancelling it.
    actorz.cancel(run)
    try:
        actorz.get(run, timeout=CALL_TIMEOUT_S)
    except TaskCancelledError:
        print("run() stopped by actorz.cancel()")


def threaded_actor(store: actorz.ActorHandle[Any], stuck_timeout: float) -> None:
    print("== Threaded actor: run() loops on 'actorz.get(data_store.fetch.remote())'")
    poller = LongPollingActor.remote(store)
    poller.run.remote()
    try:
        actorz.get(poller.other_task.remote(), timeout=stuck_timeout)
        print("other_task answered (unexpected: run() should hold the only thread)")
    except GetTimeoutError:
        print(f"other_task did not answer within {stuck_timeout:g} s: run() holds the "
              "actor's only thread")
    # A running call of a threaded actor cannot be interrupted: end the process.
    actorz.kill(poller)
    print("killed the threaded actor with actorz.kill()")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Line-buffered even into a pipe, so that our lines keep their place among the
    # actors' lines (which actorz writes as they arrive).
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the demo as Ctrl-C does
    try:
        try:
            actorz.init(args.address)
        except (ActorzError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        store = DataStore.remote(args.interval)
        async_actor(store, args.duration)
        threaded_actor(store, args.stuck_timeout)
    except KeyboardInterrupt:
        print("Interrupted: stopping the actors")
        return 130
    finally:
        actorz.shutdown()
    print("Done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

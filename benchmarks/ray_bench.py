"""Ray's own microbenchmark cases, timed by actorz's harness: ``python benchmarks/ray_bench.py``.

The actor classes and remote functions are imported from Ray's
``ray/_private/ray_perf.py`` (the script behind ``ray microbenchmark``), and each case
body below is the body of the case of the same name in its ``main()``. Differences, all
shared with ``actorz.bench``: the timing is scaled by ``--duration`` (9 s is Ray's),
each case makes one untimed call first (so the warm-up does not time process start),
Ray's 10 s sleep before each case is left out, the actors of a case are killed after it
(Ray drops them when their handle is rebound), and ``1:1 async-actor calls with args
async`` passes 1 KiB of bytes (the issue's definition; Ray passes the loop index).
The extra cases (creation, 64 MiB, await latency, USS) use the same workload as actorz's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
from typing import Any

import ray

try:  # Ray's own definitions, when its client extra (grpc) is installed ...
    from ray._private.ray_perf import Actor, AsyncActor, Client, small_value
except ImportError:  # ... else the same definitions, copied from ray_perf.py
    @ray.remote(num_cpus=0)
    class Actor:  # type: ignore[no-redef]
        def small_value(self) -> bytes:
            return b"ok"

        def small_value_arg(self, x: Any) -> bytes:
            return b"ok"

        def small_value_batch(self, n: int) -> None:
            ray.get([small_value.remote() for _ in range(n)])

    @ray.remote
    class AsyncActor:  # type: ignore[no-redef]
        async def small_value(self) -> bytes:
            return b"ok"

        async def small_value_with_arg(self, x: Any) -> bytes:
            return b"ok"

    @ray.remote(num_cpus=0)
    class Client:  # type: ignore[no-redef]
        def __init__(self, servers: Any) -> None:
            if not isinstance(servers, list):
                servers = [servers]
            self.servers = servers

        def small_value_batch(self, n: int) -> None:
            results = []
            for s in self.servers:
                results.extend([s.small_value.remote() for _ in range(n)])
            ray.get(results)

        def small_value_batch_arg(self, n: int) -> None:
            x = ray.put(0)
            results = []
            for s in self.servers:
                results.extend([s.small_value_arg.remote(x) for _ in range(n)])
            ray.get(results)

    @ray.remote
    def small_value() -> bytes:
        return b"ok"

from actorz.bench import ARG_BYTES, BIG_BYTES, Result, Timer, arg_parser, run_suite, uss_mib


@ray.remote(num_cpus=0)
class Echo:
    def echo(self, x: Any) -> Any:
        return x

    def pid(self) -> int:
        return os.getpid()


@ray.remote
class AsyncEcho:
    async def pid(self) -> int:
        return os.getpid()


@ray.remote
def work(actors: list[Any], n: int) -> None:
    ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])


@ray.remote
def async_actor_work(actors: list[Any], n: int) -> None:
    ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])


_made: list[Any] = []


def new(cls: Any, *args: Any, ready: bool = True, **options: Any) -> Any:
    a = (cls.options(**options) if options else cls).remote(*args)
    _made.append(a)
    if ready:
        ray.get(a.small_value.remote() if hasattr(a, "small_value") else a.pid.remote())
    return a


def case(name: str, body: Any) -> tuple[str, Any]:
    def run(t: Timer) -> list[Result]:
        try:
            out = body(t)
        finally:
            for a in _made:
                ray.kill(a)
            _made.clear()
        return out if isinstance(out, list) else [Result(name, *out)]
    return name, run


def n_cpu() -> int:
    return max(1, multiprocessing.cpu_count() // 2)


def tasks_sync(t: Timer) -> Any:
    ray.get(small_value.remote())
    return t.rate(lambda: ray.get(small_value.remote()))


def tasks_async(t: Timer) -> Any:
    return t.rate(lambda: ray.get([small_value.remote() for _ in range(1000)]), 1000)


def multi_client_tasks(t: Timer) -> Any:
    n, m = 10000, 4
    actors = [new(Actor) for _ in range(m)]
    return t.rate(lambda: ray.get([a.small_value_batch.remote(n) for a in actors]), n * m)


def actor_sync(cls: Any) -> Any:
    def body(t: Timer) -> Any:
        a = new(cls)
        return t.rate(lambda: ray.get(a.small_value.remote()))
    return body


def actor_async(cls: Any, **options: Any) -> Any:
    def body(t: Timer) -> Any:
        a = new(cls, **options)
        return t.rate(lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000)
    return body


def one_to_n(cls: Any) -> Any:
    def body(t: Timer) -> Any:
        n = 5000
        actors = [new(cls) for _ in range(n_cpu())]
        client = new(Client, actors, ready=False)
        ray.get(client.small_value_batch.remote(1))
        return t.rate(lambda: ray.get(client.small_value_batch.remote(n)), n * len(actors))
    return body


def n_to_n(cls: Any, fn: Any) -> Any:
    def body(t: Timer) -> Any:
        n, m = 5000, 4
        actors = [new(cls) for _ in range(n_cpu())]
        return t.rate(lambda: ray.get([fn.remote(actors, n) for _ in range(m)]), m * n)
    return body


def n_to_n_arg(t: Timer) -> Any:
    n = 1000
    actors = [new(Actor) for _ in range(n_cpu())]
    clients = [new(Client, a, ready=False) for a in actors]
    ray.get([c.small_value_batch_arg.remote(1) for c in clients])
    return t.rate(lambda: ray.get([c.small_value_batch_arg.remote(n) for c in clients]),
                  n * len(clients))


def async_actor_with_args(t: Timer) -> Any:
    a = new(AsyncActor)
    arg = b"x" * ARG_BYTES
    return t.rate(lambda: ray.get([a.small_value_with_arg.remote(arg) for _ in range(1000)]),
                  1000)


def actor_creation(t: Timer) -> Any:
    def create() -> None:
        a = Actor.remote()
        ray.get(a.small_value.remote())
        ray.kill(a)
    return t.rate(create)


def big_round_trips(t: Timer) -> Any:
    a = new(Echo)
    value = bytes(BIG_BYTES)
    assert len(ray.get(a.echo.remote(value))) == BIG_BYTES
    return t.rate(lambda: ray.get(a.echo.remote(value)))


def await_latency(t: Timer) -> Any:
    a = new(AsyncActor)

    async def one() -> Any:
        return await a.small_value.remote()

    return asyncio.run(t.latency(one))


def idle_memory(t: Timer) -> Any:
    actors = [new(Echo) for _ in range(3)]
    result = uss_mib(ray.get([a.pid.remote() for a in actors]))
    result.extra["async_actor_mib"] = uss_mib([ray.get(new(AsyncEcho).pid.remote())], 0.5).mean
    return [result]


CASES = [
    case("single client tasks sync", tasks_sync),
    case("single client tasks async", tasks_async),
    case("multi client tasks async", multi_client_tasks),
    case("1:1 actor calls sync", actor_sync(Actor)),
    case("1:1 actor calls async", actor_async(Actor)),
    case("1:1 actor calls concurrent", actor_async(Actor, max_concurrency=16)),
    case("1:n actor calls async", one_to_n(Actor)),
    case("n:n actor calls async", n_to_n(Actor, work)),
    case("n:n actor calls with arg async", n_to_n_arg),
    case("1:1 async-actor calls sync", actor_sync(AsyncActor)),
    case("1:1 async-actor calls async", actor_async(AsyncActor)),
    case("1:1 async-actor calls with args async", async_actor_with_args),
    case("1:n async-actor calls async", one_to_n(AsyncActor)),
    case("n:n async-actor calls async", n_to_n(AsyncActor, async_actor_work)),
    case("actor creation", actor_creation),
    case("64MiB value round trips", big_round_trips),
    case("await ref latency", await_latency),
    case("idle actor process memory (USS)", idle_memory),
]


def main(argv: list[str] | None = None) -> int:
    args = arg_parser("ray_bench").parse_args(argv)
    run_suite("ray", ray.__version__, CASES, args,
              setup=lambda: ray.init(logging_level="ERROR", log_to_driver=False),
              teardown=ray.shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

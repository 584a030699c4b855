"""The actorz benchmark cases on xoscar: ``python benchmarks/xoscar_bench.py``.

xoscar (Xinference's runtime) is asyncio-only: a driver awaits actor calls. The mapping
to Ray's cases, timed with the same harness:

- "sync": ``await ref.small_value()``, one call at a time; "async": ``asyncio.gather``
  of 1000 calls, then the next 1000.
- an actor runs in a sub-pool process (``ProcessIndex(1)``), not in the driver's pool;
  the plain and async actors are ``xo.Actor`` with ``def`` or ``async def`` methods.
- ``1:n`` and ``n:n``: Ray's ``Client`` actor, or its four ``work`` tasks, become actors
  in a second sub-pool that gather their calls (xoscar has no tasks).
- ``actor creation``: a new sub-pool process with one actor answering its first call,
  removed again (``append_sub_pool`` / ``remove_sub_pool``), as Ray's is a new process.
- Cases xoscar has no counterpart for (threaded ``max_concurrency``, tasks) are left out.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
from typing import Any

import xoscar as xo
from xoscar.backends.allocate_strategy import ProcessIndex

from actorz.bench import ARG_BYTES, BIG_BYTES, Result, Timer, arg_parser, run_suite, uss_mib


class XActor(xo.Actor):
    def small_value(self) -> bytes:
        return b"ok"

    def small_value_arg(self, x: Any) -> bytes:
        return b"ok"

    def echo(self, x: Any) -> Any:
        return x

    def pid(self) -> int:
        return os.getpid()


class XAsyncActor(xo.Actor):
    async def small_value(self) -> bytes:
        return b"ok"

    async def small_value_with_arg(self, x: Any) -> bytes:
        return b"ok"

    async def pid(self) -> int:
        return os.getpid()


class XClient(xo.Actor):
    def __init__(self, servers: list[Any]) -> None:
        super().__init__()
        self.servers = servers

    async def small_value_batch(self, n: int) -> None:
        await asyncio.gather(*[s.small_value() for s in self.servers for _ in range(n)])

    async def small_value_batch_arg(self, n: int) -> None:
        await asyncio.gather(*[s.small_value_arg(0) for s in self.servers for _ in range(n)])

    async def work(self, n: int) -> None:  # Ray's ``work`` task
        k = len(self.servers)
        await asyncio.gather(*[self.servers[i % k].small_value() for i in range(n)])


class Env:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool: Any = None
        self.made: list[Any] = []
        self.uid = 0

    def start(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.pool = self.loop.run_until_complete(xo.create_actor_pool("127.0.0.1", n_process=2))

    def stop(self) -> None:
        self.loop.run_until_complete(self.pool.stop())
        self.loop.close()

    async def new(self, cls: Any, *args: Any, process: int = 1) -> Any:
        self.uid += 1
        ref = await xo.create_actor(cls, *args, address=self.pool.external_address,
                                    uid=f"bench-{self.uid}",
                                    allocate_strategy=ProcessIndex(process))
        self.made.append(ref)
        return ref

    async def drop(self) -> None:
        for ref in self.made:
            try:
                await xo.destroy_actor(ref)
            except Exception:  # noqa: BLE001, S110 - already gone: nothing to clean up
                pass
        self.made.clear()


env = Env()


def case(name: str, body: Any) -> tuple[str, Any]:
    def run(t: Timer) -> list[Result]:
        async def go() -> Any:
            try:
                return await body(t)
            finally:
                await env.drop()
        out = env.loop.run_until_complete(go())
        return out if isinstance(out, list) else [Result(name, *out)]
    return name, run


def n_cpu() -> int:
    return max(1, multiprocessing.cpu_count() // 2)


def actor_sync(cls: Any) -> Any:
    async def body(t: Timer) -> Any:
        a = await env.new(cls)
        await a.small_value()
        return await t.arate(a.small_value)
    return body


def actor_async(cls: Any) -> Any:
    async def body(t: Timer) -> Any:
        a = await env.new(cls)

        async def batch() -> None:
            await asyncio.gather(*[a.small_value() for _ in range(1000)])
        return await t.arate(batch, 1000)
    return body


def one_to_n(cls: Any) -> Any:
    async def body(t: Timer) -> Any:
        n = 5000
        servers = [await env.new(cls) for _ in range(n_cpu())]
        client = await env.new(XClient, servers, process=2)
        await client.small_value_batch(1)
        return await t.arate(lambda: client.small_value_batch(n), n * len(servers))
    return body


def n_to_n(cls: Any) -> Any:
    async def body(t: Timer) -> Any:
        n, m = 5000, 4
        servers = [await env.new(cls) for _ in range(n_cpu())]
        clients = [await env.new(XClient, servers, process=2) for _ in range(m)]

        async def batch() -> None:
            await asyncio.gather(*[c.work(n) for c in clients])
        return await t.arate(batch, m * n)
    return body


async def n_to_n_arg(t: Timer) -> Any:
    n = 1000
    servers = [await env.new(XActor) for _ in range(n_cpu())]
    clients = [await env.new(XClient, [s], process=2) for s in servers]

    async def batch() -> None:
        await asyncio.gather(*[c.small_value_batch_arg(n) for c in clients])
    return await t.arate(batch, n * len(clients))


async def async_actor_with_args(t: Timer) -> Any:
    a = await env.new(XAsyncActor)
    arg = b"x" * ARG_BYTES

    async def batch() -> None:
        await asyncio.gather(*[a.small_value_with_arg(arg) for _ in range(1000)])
    return await t.arate(batch, 1000)


async def actor_creation(t: Timer) -> Any:
    async def create() -> None:
        address = await env.pool.append_sub_pool()
        env.uid += 1
        ref = await xo.create_actor(XActor, address=address, uid=f"new-{env.uid}")
        await ref.small_value()
        await env.pool.remove_sub_pool(address, force=True)
    return await t.arate(create)


async def big_round_trips(t: Timer) -> Any:
    a = await env.new(XActor)
    value = bytes(BIG_BYTES)
    assert len(await a.echo(value)) == BIG_BYTES
    return await t.arate(lambda: a.echo(value))


async def await_latency(t: Timer) -> Any:
    a = await env.new(XAsyncActor)
    await a.small_value()
    return await t.latency(a.small_value)


async def idle_memory(t: Timer) -> Any:
    """USS of fresh sub-pool processes, each hosting one idle actor."""
    pids: dict[Any, list[int]] = {XActor: [], XAsyncActor: []}
    addresses = []
    for cls, k in ((XActor, 3), (XAsyncActor, 1)):
        for _ in range(k):
            address = await env.pool.append_sub_pool()
            addresses.append(address)
            env.uid += 1
            ref = await xo.create_actor(cls, address=address, uid=f"mem-{env.uid}")
            pids[cls].append(await ref.pid())
    result = uss_mib(pids[XActor])
    result.extra["async_actor_mib"] = uss_mib(pids[XAsyncActor], 0).mean
    for address in addresses:
        await env.pool.remove_sub_pool(address, force=True)
    return [result]


CASES = [
    case("1:1 actor calls sync", actor_sync(XActor)),
    case("1:1 actor calls async", actor_async(XActor)),
    case("1:n actor calls async", one_to_n(XActor)),
    case("n:n actor calls async", n_to_n(XActor)),
    case("n:n actor calls with arg async", n_to_n_arg),
    case("1:1 async-actor calls sync", actor_sync(XAsyncActor)),
    case("1:1 async-actor calls async", actor_async(XAsyncActor)),
    case("1:1 async-actor calls with args async", async_actor_with_args),
    case("1:n async-actor calls async", one_to_n(XAsyncActor)),
    case("n:n async-actor calls async", n_to_n(XAsyncActor)),
    case("actor creation", actor_creation),
    case("64MiB value round trips", big_round_trips),
    case("await ref latency", await_latency),
    case("idle actor process memory (USS)", idle_memory),
]


def main(argv: list[str] | None = None) -> int:
    args = arg_parser("xoscar_bench").parse_args(argv)
    from importlib.metadata import version

    run_suite("xoscar", version("xoscar"), CASES, args, env.start, env.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

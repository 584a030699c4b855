"""The benchmark suite: Ray's microbenchmark cases, by Ray's method, on actorz.

Run ``python -m actorz.bench`` (or ``actorz bench``). Each case prints one line in the
format of ``ray microbenchmark``::

    1:1 actor calls sync per second 8123.45 +- 101.2

Case names, workloads and timing mirror Ray's ``python/ray/_private/ray_perf.py`` and
``ray_microbenchmark_helpers.timeit``: a warm-up that sets the step (calls per tenth of
the warm-up), then four timed rounds; the line gives the mean and the population
standard deviation of the four rates, times the case's multiplier (calls per step).
Ray spends 1 s warming up and 2 s per round: ``--duration 9`` is exactly Ray's timing,
shorter durations scale both. A "sync" case gets each call before making the next; an
"async" case submits 1000 calls, then gets them all.

Beyond Ray's list: ``actor creation`` (a new actor process answering its first call),
``64MiB value round trips``, ``await ref latency`` (p50/p99 in microseconds, from an
asyncio driver) and ``idle actor process memory (USS)``; and, with ``--loadbalancer``,
the load test of ``examples/loadbalancer``.

The harness (``Timer``, ``Result``, ``run_suite``, ``parse_line``) is framework-neutral:
``benchmarks/ray_bench.py`` and ``benchmarks/xoscar_bench.py`` run the same cases on
Ray and xoscar with it, and ``benchmarks/compare.py`` puts the three side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import actorz

DEFAULT_DURATION_S = 4.5
#: Ray's rounds per case.
ROUNDS = 4
#: Argument size of ``1:1 async-actor calls with args async`` (the issue's 1 KiB; Ray
#: itself passes the loop index, an int).
ARG_BYTES = 1024
BIG_BYTES = 64 << 20

_perf = time.perf_counter


# --- the harness (framework-neutral) ----------------------------------------------------


@dataclass
class Result:
    """One output line: ``<name> <unit> <mean> +- <std>``."""

    name: str
    mean: float
    std: float
    unit: str = "per second"
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name} {self.unit} {round(self.mean, 2)} +- {round(self.std, 2)}"


UNITS = ("per second", "p50 us", "p99 us", "MiB")
_LINE = re.compile(
    r"^(?P<name>.+?) (?P<unit>" + "|".join(map(re.escape, UNITS)) + r") "
    r"(?P<mean>[-+0-9.eE]+|nan|inf) \+- (?P<std>[-+0-9.eE]+|nan|inf)$"
)


def parse_line(line: str) -> tuple[str, str, float, float] | None:
    """``(name, unit, mean, std)`` of a result line, or None for any other line."""
    m = _LINE.match(line.strip())
    if m is None:
        return None
    return m["name"], m["unit"], float(m["mean"]), float(m["std"])


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values)  # np.mean, np.std in Ray


class Timer:
    """Ray's ``timeit``, scaled: warm-up ``duration / 9``, four rounds of ``2 * duration / 9``."""

    def __init__(self, duration: float) -> None:
        self.warmup = duration / 9
        self.round = 2 * duration / 9

    def _plan(self, multiplier: float) -> Generator[None, None, tuple[float, float]]:
        """Ray's loop as a generator: yields before each call; returns (mean, std)."""
        start = _perf()
        count = 0
        while _perf() - start < self.warmup:
            yield
            count += 1
        step = count // 10 + 1
        stats = []
        for _ in range(ROUNDS):
            start = _perf()
            count = 0
            while _perf() - start < self.round:
                for _ in range(step):
                    yield
                count += step
            stats.append(multiplier * count / (_perf() - start))
        return _stats(stats)

    def rate(self, fn: Callable[[], Any], multiplier: float = 1) -> tuple[float, float]:
        """Calls of ``fn`` per second, times ``multiplier`` (Ray's ``timeit``)."""
        plan = self._plan(multiplier)
        try:
            while True:
                next(plan)
                fn()
        except StopIteration as end:
            result: tuple[float, float] = end.value  # _plan's return value
            return result

    async def arate(self, fn: Callable[[], Awaitable[Any]],
                    multiplier: float = 1) -> tuple[float, float]:
        """``rate`` for an async driver (Ray's ``asyncio_timeit``)."""
        plan = self._plan(multiplier)
        try:
            while True:
                next(plan)
                await fn()
        except StopIteration as end:
            result: tuple[float, float] = end.value  # _plan's return value
            return result

    async def latency(self, fn: Callable[[], Awaitable[Any]]) -> list[Result]:
        """p50 and p99 of one awaited call at a time; mean and std over the rounds."""
        start = _perf()
        while _perf() - start < self.warmup:
            await fn()
        p50s, p99s, rates, everything = [], [], [], []
        for _ in range(ROUNDS):
            lat = []
            start = _perf()
            while _perf() - start < self.round:
                t0 = _perf()
                await fn()
                lat.append((_perf() - t0) * 1e6)
            rates.append(len(lat) / (_perf() - start))
            lat.sort()
            p50s.append(_pct(lat, 0.50))
            p99s.append(_pct(lat, 0.99))
            everything += lat
        everything.sort()
        extra = {"per_second": _stats(rates)[0], "calls": len(everything),
                 "p50_all_us": _pct(everything, 0.5), "p99_all_us": _pct(everything, 0.99),
                 "max_us": everything[-1]}
        return [Result("await ref latency", *_stats(p50s), unit="p50 us", extra=extra),
                Result("await ref latency", *_stats(p99s), unit="p99 us", extra=extra)]


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def uss_mib(pids: Iterable[int], settle_s: float = 1.0) -> Result:
    """Unique set size of idle processes (what killing one would free), in MiB."""
    import importlib

    psutil = importlib.import_module("psutil")  # a test/bench dependency, not a runtime one

    time.sleep(settle_s)
    values = [psutil.Process(pid).memory_full_info().uss / (1 << 20) for pid in pids]
    mean, std = _stats(values)
    return Result("idle actor process memory (USS)", mean, std, unit="MiB",
                  extra={"values_mib": values})


#: A case: its name, and a function of the timer that runs it and returns its lines.
Case = tuple[str, Callable[[Timer], list[Result]]]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version(), "loadavg": _load()}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def select(cases: list[Case], patterns: list[str] | None) -> list[Case]:
    """Cases whose name contains one of ``patterns`` or matches it as a regex."""
    if not patterns:
        return cases
    chosen = []
    for name, fn in cases:
        for pat in patterns:
            try:
                hit = pat in name or re.search(pat, name) is not None
            except re.error:
                hit = False
            if hit:
                chosen.append((name, fn))
                break
    return chosen


def arg_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", action="append", metavar="PATTERN",
                   help="run the cases whose name contains PATTERN or matches it as a "
                        "regex (repeatable; default: all)")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, metavar="SECONDS",
                   help=f"time per case (default {DEFAULT_DURATION_S}; 9 is Ray's own timing)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--list", action="store_true", help="list the (selected) cases and exit")
    return p


def run_suite(framework: str, version: str, cases: list[Case], args: argparse.Namespace,
              setup: Callable[[], Any] = lambda: None,
              teardown: Callable[[], Any] = lambda: None) -> list[Result]:
    """Run the selected cases, print a line per result, write ``--json``; return results."""
    chosen = select(cases, args.cases)
    if args.list:
        for name, _ in chosen:
            print(name)
        return []
    if args.duration <= 0:
        raise SystemExit("--duration must be positive")
    info = machine_info()
    print(f"# {framework} {version}, Python {info['python']}, {info['cpu']} "
          f"({info['cores']} cores), load {' '.join(map(str, info['loadavg']))}", flush=True)
    timer = Timer(args.duration)
    results: list[Result] = []
    failed: dict[str, str] = {}
    setup()
    try:
        for name, fn in chosen:
            try:
                out = fn(timer)
            except Exception as exc:  # one broken case must not hide the others
                failed[name] = f"{type(exc).__name__}: {exc}"
                print(f"# {name}: failed: {failed[name]}", flush=True)
                continue
            for r in out:
                print(r.line(), flush=True)
            results += out
    finally:
        teardown()
    if args.json:
        doc = {"framework": framework, "version": version,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
               "duration_s": args.duration, "machine": info, "load_after": _load(),
               "results": [asdict(r) for r in results], "failed": failed}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return results


# --- the actorz workload (Ray's ray_perf.py, line by line) ------------------------------


@actorz.remote
class Actor:
    def small_value(self) -> bytes:
        return b"ok"

    def small_value_arg(self, x: Any) -> bytes:
        return b"ok"

    def small_value_batch(self, n: int) -> None:
        actorz.get([small_value.remote() for _ in range(n)])

    def echo(self, x: Any) -> Any:
        return x

    def pid(self) -> int:
        return os.getpid()


@actorz.remote
class AsyncActor:
    async def small_value(self) -> bytes:
        return b"ok"

    async def small_value_with_arg(self, x: Any) -> bytes:
        return b"ok"

    async def small_value_batch(self, n: int) -> None:
        await asyncio.wait([small_value.remote() for _ in range(n)])

    async def echo(self, x: Any) -> Any:
        return x

    async def pid(self) -> int:
        return os.getpid()


@actorz.remote
class Client:
    def __init__(self, servers: Any) -> None:
        if not isinstance(servers, list):
            servers = [servers]
        self.servers = servers

    def small_value_batch(self, n: int) -> None:
        results = []
        for s in self.servers:
            results.extend([s.small_value.remote() for _ in range(n)])
        actorz.get(results)

    def small_value_batch_arg(self, n: int) -> None:
        x = _put(self.servers[0], 0)
        results = []
        for s in self.servers:
            results.extend([s.small_value_arg.remote(x) for _ in range(n)])
        actorz.get(results)


def _put(server: Any, value: Any) -> Any:
    """``ray.put(value)``: a ready ref to a small value, owned by the caller."""
    put = getattr(actorz, "put", None)
    if put is not None:
        return put(value)
    ref = server.echo.remote(value)  # actorz has no put (yet): a ref from a finished call
    actorz.get(ref)
    return ref


@actorz.remote
def small_value() -> bytes:
    return b"ok"


@actorz.remote
def small_value_batch(n: int) -> int:
    actorz.get([small_value.remote() for _ in range(n)])
    return 0


@actorz.remote
def work(actors: list[Any], n: int) -> None:
    actorz.get([actors[i % len(actors)].small_value.remote() for i in range(n)])


@actorz.remote
def async_actor_work(actors: list[Any], n: int) -> None:
    actorz.get([actors[i % len(actors)].small_value.remote() for i in range(n)])


def _n_cpu() -> int:
    return max(1, multiprocessing.cpu_count() // 2)


class _Actors:
    """Actors a case made; killed when it ends (Ray drops them with their handles)."""

    def __init__(self) -> None:
        self.made: list[Any] = []

    def __call__(self, cls: Any, *args: Any, ready: bool = True, **options: Any) -> Any:
        a = (cls.options(**options) if options else cls).remote(*args)
        self.made.append(a)
        if ready and hasattr(a, "pid"):
            actorz.get(a.pid.remote())  # up and answering before the clock starts
        return a

    def kill(self) -> None:
        for a in self.made:
            try:
                actorz.kill(a)
            except actorz.exceptions.ActorzError:
                pass  # already gone
        self.made.clear()


_actors = _Actors()


def _case(name: str, body: Callable[[Timer], list[Result] | tuple[float, float]]) -> Case:
    def run(t: Timer) -> list[Result]:
        try:
            out = body(t)
        finally:
            _actors.kill()
        return out if isinstance(out, list) else [Result(name, *out)]
    return name, run


def _get(refs: Any) -> Any:
    return actorz.get(refs)


def _single_client_tasks_sync(t: Timer) -> tuple[float, float]:
    _get(small_value.remote())
    return t.rate(lambda: _get(small_value.remote()))


def _single_client_tasks_async(t: Timer) -> tuple[float, float]:
    return t.rate(lambda: _get([small_value.remote() for _ in range(1000)]), 1000)


def _multi_client_tasks_async(t: Timer) -> tuple[float, float]:
    n, m = 10000, 4
    actors = [_actors(Actor) for _ in range(m)]
    return t.rate(lambda: _get([a.small_value_batch.remote(n) for a in actors]), n * m)


def _actor_sync(cls: Any) -> Callable[[Timer], tuple[float, float]]:
    def body(t: Timer) -> tuple[float, float]:
        a = _actors(cls)
        return t.rate(lambda: _get(a.small_value.remote()))
    return body


def _actor_async(cls: Any, **options: Any) -> Callable[[Timer], tuple[float, float]]:
    def body(t: Timer) -> tuple[float, float]:
        a = _actors(cls, **options)
        return t.rate(lambda: _get([a.small_value.remote() for _ in range(1000)]), 1000)
    return body


def _one_to_n(cls: Any) -> Callable[[Timer], tuple[float, float]]:
    def body(t: Timer) -> tuple[float, float]:
        n = 5000
        actors = [_actors(cls) for _ in range(_n_cpu())]
        client = _actors(Client, actors, ready=False)
        _get(client.small_value_batch.remote(1))
        return t.rate(lambda: _get(client.small_value_batch.remote(n)), n * len(actors))
    return body


def _n_to_n(cls: Any, fn: Any) -> Callable[[Timer], tuple[float, float]]:
    def body(t: Timer) -> tuple[float, float]:
        n, m = 5000, 4
        actors = [_actors(cls) for _ in range(_n_cpu())]
        return t.rate(lambda: _get([fn.remote(actors, n) for _ in range(m)]), m * n)
    return body


def _n_to_n_arg(t: Timer) -> tuple[float, float]:
    n = 1000
    actors = [_actors(Actor) for _ in range(_n_cpu())]
    clients = [_actors(Client, a, ready=False) for a in actors]
    _get([c.small_value_batch_arg.remote(1) for c in clients])
    return t.rate(lambda: _get([c.small_value_batch_arg.remote(n) for c in clients]),
                  n * len(clients))


def _async_actor_with_args(t: Timer) -> tuple[float, float]:
    a = _actors(AsyncActor)
    arg = b"x" * ARG_BYTES
    return t.rate(lambda: _get([a.small_value_with_arg.remote(arg) for _ in range(1000)]), 1000)


def _actor_creation(t: Timer) -> tuple[float, float]:
    cls: Any = Actor

    def create() -> None:
        a = cls.remote()
        _get(a.small_value.remote())
        actorz.kill(a)
    return t.rate(create)


def _big_round_trips(t: Timer) -> tuple[float, float]:
    a = _actors(Actor)
    value = bytes(BIG_BYTES)
    assert len(_get(a.echo.remote(value))) == BIG_BYTES
    return t.rate(lambda: _get(a.echo.remote(value)))


def _await_latency(t: Timer) -> list[Result]:
    a = _actors(AsyncActor)

    async def one() -> Any:
        return await a.small_value.remote()

    return asyncio.run(t.latency(one))


def _idle_memory(t: Timer) -> list[Result]:
    actors = [_actors(Actor) for _ in range(3)]
    pids = _get([a.pid.remote() for a in actors])
    result = uss_mib(pids)
    async_pid = _get(_actors(AsyncActor).pid.remote())
    result.extra["async_actor_mib"] = uss_mib([async_pid], settle_s=0.5).mean
    return [result]


CASES: list[Case] = [
    _case("single client tasks sync", _single_client_tasks_sync),
    _case("single client tasks async", _single_client_tasks_async),
    _case("multi client tasks async", _multi_client_tasks_async),
    _case("1:1 actor calls sync", _actor_sync(Actor)),
    _case("1:1 actor calls async", _actor_async(Actor)),
    _case("1:1 actor calls concurrent", _actor_async(Actor, max_concurrency=16)),
    _case("1:n actor calls async", _one_to_n(Actor)),
    _case("n:n actor calls async", _n_to_n(Actor, work)),
    _case("n:n actor calls with arg async", _n_to_n_arg),
    _case("1:1 async-actor calls sync", _actor_sync(AsyncActor)),
    _case("1:1 async-actor calls async", _actor_async(AsyncActor)),
    _case("1:1 async-actor calls with args async", _async_actor_with_args),
    _case("1:n async-actor calls async", _one_to_n(AsyncActor)),
    _case("n:n async-actor calls async", _n_to_n(AsyncActor, async_actor_work)),
    _case("actor creation", _actor_creation),
    _case("64MiB value round trips", _big_round_trips),
    _case("await ref latency", _await_latency),
    _case("idle actor process memory (USS)", _idle_memory),
]


# --- the load balancer example's load test --------------------------------------------------


def loadbalancer_case(requests: int, concurrency: int) -> Case:
    """Start ``python -m examples.loadbalancer`` and run its ``loadtest.run_loadtest``."""

    def run(t: Timer) -> list[Result]:
        root = Path(__file__).resolve().parent.parent
        script = root / "examples" / "loadbalancer" / "loadtest.py"
        if not script.exists():
            print("# load balancer: skipped (examples/loadbalancer/loadtest.py not found)")
            return []
        import importlib.util
        import socket

        spec = importlib.util.spec_from_file_location("_actorz_loadtest", script)
        assert spec is not None and spec.loader is not None
        loadtest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loadtest)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/"
        proc = subprocess.Popen([sys.executable, "-m", "examples.loadbalancer",
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=root)
        try:
            _wait_http(url + "healthz", proc, 60)
            out = loadtest.run_loadtest(url, requests, concurrency)
        finally:
            proc.send_signal(2)  # SIGINT: the example's documented clean stop
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"# load balancer: {json.dumps(out, default=str)}")
        rate = float(out.get("requests_per_s", float("nan")))
        results = [Result("load balancer requests", rate, 0.0, extra=dict(out))]
        for q in ("p50", "p99"):
            if f"{q}_ms" in out:
                results.append(Result("load balancer latency", 1000 * float(out[f"{q}_ms"]),
                                      0.0, unit=f"{q} us"))
        if not out.get("ok", True):
            print("# load balancer: NOT every request succeeded on every backend")
        return results

    return "load balancer requests", run


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the load-balancer example exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the load-balancer example did not answer {url} in {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    """``python -m actorz.bench``: run the suite; returns the exit code."""
    parser = arg_parser("actorz bench")
    parser.add_argument("--loadbalancer", action="store_true",
                        help="also load-test examples/loadbalancer (skipped if it is missing)")
    parser.add_argument("--lb-requests", type=int, default=5000, metavar="N")
    parser.add_argument("--lb-concurrency", type=int, default=32, metavar="N")
    args = parser.parse_args(argv)
    cases = list(CASES)
    if args.loadbalancer:
        cases.append(loadbalancer_case(args.lb_requests, args.lb_concurrency))
        if args.cases:
            args.cases.append("load balancer")
    started = False

    def setup() -> None:
        nonlocal started
        if not actorz.is_initialized():
            actorz.init(log_to_driver=True)
            started = True

    def teardown() -> None:
        if started:
            actorz.shutdown()

    run_suite("actorz", actorz.__version__, cases, args, setup, teardown)
    return 0


if __name__ == "__main__":
    # The actor classes must live in ``actorz.bench`` (pickled by reference), not here.
    import importlib

    sys.exit(importlib.import_module("actorz.bench").main())

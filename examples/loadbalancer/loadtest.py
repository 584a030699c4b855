"""Load test for a running load-balancer example: many concurrent requests from this process.

    python -m examples.loadbalancer &                       # the server, on 127.0.0.1:8080
    python -m examples.loadbalancer.loadtest --requests 5000 --concurrency 32

Reports requests/s and p50/p99 latency, and checks that every request succeeded and that
every live backend (as listed by ``/stats`` before the run) answered some. Exits 1 when a
check fails. Loopback only, and bounded in requests and time.

From Python: ``run_loadtest(url, requests, concurrency) -> dict`` (the same figures).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

#: Half I/O-bound, half CPU-bound work (offloaded by the backends to task workers).
DEFAULT_PATHS = ("/work?kind=io&delay_ms=5", "/work?kind=cpu&n=20000")
MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 1_000


def run_loadtest(url: str, requests: int = 5000, concurrency: int = 32, *,
                 paths: Sequence[str] = DEFAULT_PATHS, warmup: int | None = None,
                 max_seconds: float = 300.0, request_timeout: float = 30.0) -> dict[str, Any]:
    """Send ``requests`` GETs, ``concurrency`` at a time, cycling through ``paths``.

    ``warmup`` requests (default: ``concurrency``) go first and are not counted: they
    open the connections. The run stops after ``max_seconds`` whatever is left (counted
    as failed). Returns a dict: ``requests_per_s``, ``p50_ms``, ``p99_ms``, ``succeeded``,
    ``failed``, ``errors`` (the first few), ``backends`` (requests per backend),
    ``unused_backends``, and ``ok``: every request succeeded on every backend.

    Runs its own event loop: call it from synchronous code (or a thread).
    """
    _check_url(url)
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be from 1 to {MAX_REQUESTS}, got {requests}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be from 1 to {MAX_CONCURRENCY}, got {concurrency}")
    if not paths or not all(p.startswith("/") for p in paths):
        raise ValueError(f"paths must be a non-empty list of paths starting with '/': {paths!r}")
    if not 0 < max_seconds <= 3600:
        raise ValueError(f"max_seconds must be more than 0 and at most 3600, got {max_seconds}")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_run(url.rstrip("/"), requests, concurrency, list(paths),
                               concurrency if warmup is None else warmup, max_seconds,
                               request_timeout))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    # uvloop when installed: the client shares the machine with the server, so the less
    # CPU it spends per request, the more the figures measure the server.
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"url must look like http://127.0.0.1:8080, got {url!r}")
    host = parts.hostname
    if host != "localhost" and not _is_loopback_ip(host):
        raise ValueError(f"the load test only targets loopback addresses, got {host!r}")


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _run(url: str, requests: int, concurrency: int, paths: list[str], warmup: int,
               max_seconds: float, request_timeout: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        async with http.get(url + "/stats") as resp:
            resp.raise_for_status()
            stats = await resp.json()
        expected = [b["name"] for b in stats["backends"] if b["alive"]]

        latencies: list[float] = []
        backends: Counter[str] = Counter()
        errors: list[str] = []

        async def one(i: int, record: bool) -> None:
            path = paths[i % len(paths)]
            started = time.perf_counter()
            try:
                async with http.get(url + path) as resp:
                    body = await resp.json()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = f"{path}: {type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    if record:
                        latencies.append(time.perf_counter() - started)
                        if isinstance(body, dict) and "backend" in body:
                            backends[body["backend"]] += 1
                    return
                error = f"{path}: HTTP {status}: {body}"
            if record:
                errors.append(error)

        async def worker(numbers: Any, record: bool) -> None:
            for i in numbers:  # one shared iterator: each worker takes the next number
                await one(i, record)

        async def phase(count: int, record: bool) -> None:
            numbers = iter(range(count))
            await asyncio.gather(*(worker(numbers, record) for _ in range(concurrency)))

        started = time.perf_counter()
        try:
            await asyncio.wait_for(phase(warmup, record=False), max_seconds)
            started = time.perf_counter()
            await asyncio.wait_for(phase(requests, record=True), max_seconds)
        except TimeoutError:
            errors.append(f"stopped after {max_seconds:g} s with requests left")
        seconds = time.perf_counter() - started

    latencies.sort()
    succeeded = len(latencies)
    unused = sorted(set(expected) - set(backends))
    return {
        "url": url,
        "requests": requests,
        "concurrency": concurrency,
        "paths": paths,
        "seconds": round(seconds, 3),
        "requests_per_s": round(succeeded / seconds, 1) if seconds else 0.0,
        "p50_ms": _percentile_ms(latencies, 50),
        "p99_ms": _percentile_ms(latencies, 99),
        "succeeded": succeeded,
        "failed": requests - succeeded,
        "errors": errors[:10],
        "backends": dict(sorted(backends.items())),
        "unused_backends": unused,
        "ok": succeeded == requests and not unused,
    }


def _percentile_ms(sorted_seconds: list[float], pct: int) -> float | None:
    if not sorted_seconds:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_seconds)))  # nearest-rank percentile
    return round(sorted_seconds[rank - 1] * 1000, 2)


def report(result: dict[str, Any]) -> str:
    """The result as a few readable lines."""
    used = ", ".join(f"{name} {n}" for name, n in result["backends"].items())
    what = f"{result['requests']} requests, {result['concurrency']} at a time"
    where = f"{result['url']} ({' and '.join(result['paths'])})"
    lines = [
        f"{what}, to {where}, in {result['seconds']} s",
        f"  throughput  {result['requests_per_s']} requests/s",
        f"  latency     p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms",
        f"  succeeded   {result['succeeded']} of {result['requests']}",
        f"  backends    {used or 'none'}",
    ]
    if result["unused_backends"]:
        lines.append(f"  UNUSED      {', '.join(result['unused_backends'])}")
    lines += [f"  error       {e}" for e in result["errors"]]
    lines.append("  OK" if result["ok"] else "  FAILED")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.loadbalancer.loadtest",
                                description="Load test a running load-balancer example.")
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="the server (loopback only; default: http://127.0.0.1:8080)")
    p.add_argument("--requests", type=int, default=5000, metavar="N",
                   help="requests to send (default: 5000)")
    p.add_argument("--concurrency", type=int, default=32, metavar="N",
                   help="requests in flight at once (default: 32)")
    p.add_argument("--path", action="append", dest="paths", metavar="PATH",
                   help="path to request, repeatable; requests cycle through them "
                        f"(default: {' and '.join(DEFAULT_PATHS)})")
    p.add_argument("--max-seconds", type=float, default=300.0, metavar="SECONDS",
                   help="stop the run after this long (default: 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        result = run_loadtest(args.url, args.requests, args.concurrency,
                              paths=args.paths or DEFAULT_PATHS, max_seconds=args.max_seconds)
    except ValueError as exc:
        p.error(str(exc))
    except (aiohttp.ClientError, OSError) as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

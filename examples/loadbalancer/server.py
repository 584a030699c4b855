"""The HTTP side of the load balancer: aiohttp handlers that await actor refs.

Endpoints (all answer JSON, errors included):

- ``GET /`` and ``GET /work?kind=io&delay_ms=5`` or ``?kind=cpu&n=200000``: work done by
  a backend; the answer names the backend and its pid.
- ``GET /stats``: per-backend request counts.
- ``GET /healthz``: 200 while at least one backend is alive, else 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import MultiMapping

import actorz
from actorz.exceptions import ActorzError
from examples.loadbalancer.actors import Work

PARAMS = ("kind", "delay_ms", "n", "fail")
MAX_DELAY_MS = 10_000
MAX_N = 10_000_000  # about a second of pure-Python summing


def parse_work(query: MultiMapping[str]) -> Work:
    """The ``Work`` a query string asks for; ``ValueError`` saying what is wrong if bad."""
    for key in query:
        if key not in PARAMS:
            raise ValueError(f"unknown query parameter {key!r}; /work takes {', '.join(PARAMS)}")
        if len(query.getall(key)) > 1:
            raise ValueError(f"query parameter {key!r} is given more than once")
    kind = query.get("kind", Work.kind)
    if kind not in ("io", "cpu"):
        raise ValueError(f"kind must be 'io' or 'cpu', got {kind!r}")
    if kind == "io" and "n" in query:
        raise ValueError("n applies to kind=cpu only")
    if kind == "cpu" and "delay_ms" in query:
        raise ValueError("delay_ms applies to kind=io only")
    fail = query.get("fail")
    if fail not in (None, "error", "crash"):
        raise ValueError(f"fail must be 'error' or 'crash', got {fail!r}")
    return Work(
        kind=kind,
        delay_ms=_int_param(query, "delay_ms", Work.delay_ms, MAX_DELAY_MS),
        n=_int_param(query, "n", Work.n, MAX_N),
        fail=fail,
    )


def _int_param(query: MultiMapping[str], key: str, default: int, maximum: int) -> int:
    raw = query.get(key)
    if raw is None:
        return default
    # isascii + isdigit: int() alone would also take " 5", "1_000" and non-ASCII digits.
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise ValueError(f"{key} must be an integer from 0 to {maximum}, got {raw!r}")
    return int(raw)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON, the router's 404 and 405 included."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return error(404, f"no such endpoint: {request.path}; try /, /work, /stats, /healthz")
        if exc.status == 405:
            return error(405, f"{request.method} is not allowed on {request.path}; use GET")
        return error(exc.status, exc.reason)
    except TimeoutError:
        return error(504, "the load balancer did not answer in time")
    except ActorzError as exc:  # the load-balancer actor is gone, or actorz is stopping
        return error(503, f"the load balancer is unavailable: {exc}")


def make_app(lb: actorz.ActorHandle[Any], *, request_timeout: float = 30.0,
             allow_faults: bool = False) -> web.Application:
    """The aiohttp application that sends every request to the ``LoadBalancer`` actor."""

    async def work(request: web.Request) -> web.Response:
        try:
            job = parse_work(request.query)
        except ValueError as exc:
            return error(400, str(exc))
        if job.fail and not allow_faults:
            return error(403, "fault injection (fail=...) is off; start the server with "
                              "--allow-faults to try it")
        ref = lb.proxy_request.remote(job)
        try:
            status, body = await asyncio.wait_for(ref, request_timeout)
        except TimeoutError:
            actorz.cancel(ref)  # the load balancer then cancels the backend's call too
            return error(504, f"no answer within {request_timeout:g} s")
        return web.json_response(body, status=status)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.wait_for(lb.stats.remote(), request_timeout))

    async def healthz(request: web.Request) -> web.Response:
        info = await asyncio.wait_for(lb.stats.remote(), request_timeout)
        live = sum(b["alive"] for b in info["backends"])
        return web.json_response(
            {"status": "ok" if live else "unavailable", "live_backends": live,
             "backends": len(info["backends"])},
            status=200 if live else 503,
        )

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/", work)
    app.router.add_get("/work", work)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app

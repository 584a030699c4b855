"""Actors and helpers shared by the test modules (actor processes import this module too).

Ordering and concurrency in the tests are proven with these, never with sleeps: a ``Gate``
holds calls until the test opens it, a ``Rendezvous`` completes only once ``n`` callers
are inside it at the same time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import actorz

#: Bound on every wait in the tests: generous for a loaded 2-core machine, and still far
#: below pytest-timeout, so a lost reply fails the test with a clear error instead of a hang.
TIMEOUT = 30.0

#: Bound on a driver script run as a subprocess.
SCRIPT_TIMEOUT = 90.0

TESTS_DIR = Path(__file__).resolve().parent


@actorz.remote
class Gate:
    """Calls to ``wait_open`` are held until ``open`` is called; ``wait_waiters`` counts them."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._waiters = 0
        self._arrived = asyncio.Condition()

    async def wait_open(self, value: object = None) -> object:
        async with self._arrived:
            self._waiters += 1
            self._arrived.notify_all()
        await self._open.wait()
        return value

    async def wait_waiters(self, n: int) -> int:
        async with self._arrived:
            await self._arrived.wait_for(lambda: self._waiters >= n)
        return self._waiters

    async def open(self) -> None:
        self._open.set()


@actorz.remote
class Rendezvous:
    """``arrive`` returns only once ``n`` calls have arrived: proof that n callers overlap."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._count = 0
        self._all_here = asyncio.Event()

    async def arrive(self, value: object = None) -> object:
        self._count += 1
        if self._count >= self._n:
            self._all_here.set()
        await self._all_here.wait()
        return value


def run_driver(script: str, tmp_path: Path, *, timeout: float = SCRIPT_TIMEOUT,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as a user's driver program (``python script.py``), pipes for output.

    stdout and stderr are pipes, not terminals, as under CI or ``| tee``.
    """
    path = tmp_path / "driver.py"
    path.write_text(textwrap.dedent(script))
    full_env = dict(os.environ)
    full_env.pop("ACTORZ_ADDRESS", None)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=timeout,
        env=full_env, cwd=tmp_path, check=False,
    )


def prefixed(output: str, prefix: str) -> list[str]:
    """The lines of ``output`` that start with ``(prefix``, prefix removed up to ``) ``."""
    out = []
    for line in output.splitlines():
        if line.startswith(f"({prefix}"):
            out.append(line.split(") ", 1)[1] if ") " in line else "")
    return out

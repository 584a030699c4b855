"""The watcher: a background thread that drains the socket when no other thread does.

Drivers and threaded actors have one. It takes in logs, death notices and the results
that ``ref.future()`` and callbacks wait for, flushes calls made by threads that did not
wait for them, and (in drivers) sends the heartbeat that tells the broker this program
is alive, declaring the broker lost when it stops answering.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from typing import TYPE_CHECKING

from actorz import _protocol as P

if TYPE_CHECKING:
    from actorz._client import Client

log = logging.getLogger("actorz")
_monotonic = time.monotonic

HEARTBEAT_S = 1.0
#: No word from the broker for this long: it is gone.
BROKER_TIMEOUT_S = 6.0
#: How often the watcher looks at the socket while another thread waits on it.
_NAP_MS = 5


class Watcher:
    """The thread; ``wake()`` from any thread makes it flush and drain now."""

    def __init__(self, client: Client, heartbeat: bool, watch_socket: bool = True) -> None:
        self.client = client
        self.heartbeat = heartbeat
        self.watch_socket = watch_socket
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._signaled = False
        self._thread = threading.Thread(target=self._run, name="actorz-io", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        if not self._signaled:
            self._signaled = True
            try:
                os.write(self._w, b"\0")
            except OSError:
                pass

    def stop(self) -> None:
        """After the client is closed: end the thread and release its pipe."""
        self.wake()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _run(self) -> None:
        client = self.client
        poller = select.poll()
        if self.watch_socket:
            poller.register(client.fd, select.POLLIN)
        poller.register(self._r, select.POLLIN)
        # While a thread is blocked in wait() it receives on the socket itself; the
        # watcher then only listens to its pipe and looks again every few ms, instead
        # of waking on every reply and fighting that thread for the lock (-20% on
        # synchronous calls, measured).
        nap = select.poll()
        nap.register(self._r, select.POLLIN)
        next_beat = _monotonic() + HEARTBEAT_S
        more = False
        while not client.closed:
            if client._waiters and not more:
                nap.poll(_NAP_MS)
                if client._waiters and not self._signaled:
                    if _monotonic() >= next_beat:
                        next_beat = _monotonic() + HEARTBEAT_S
                        if self.heartbeat:
                            self._beat(_monotonic())
                    continue
            elif not more:
                poller.poll(max(0, int((next_beat - _monotonic()) * 1000)) + 1)
            client.clean = False
            if client.closed:
                break
            if self._signaled:
                self._signaled = False
                try:
                    while os.read(self._r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            with client._lock:
                if client.closed:
                    break
                done, n = client._pump_locked()
                more = client._more
            if n:
                client._notify(done, n)
            now = _monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT_S
                if self.heartbeat:
                    self._beat(now)

    def _beat(self, now: float) -> None:
        client = self.client
        if client.broker_forgot or now - client.last_broker > BROKER_TIMEOUT_S:
            reason = (f"the broker at {client.address} no longer knows this program (it "
                      "restarted, or missed its heartbeats)" if client.broker_forgot else
                      f"lost the connection to the broker at {client.address}")
            log.error("actorz: %s", reason)
            client.lost(reason)
            return
        client.send_item(P.BROKER, P.control("ping"))

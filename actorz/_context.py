"""The process-wide current client and the session it belongs to."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actorz._client import Client

client: Client | None = None
#: Bumped at every init; handles and refs remember the session they were made in.
session = 0
#: Starts an embedded cluster when an API is used before ``init()`` (set by ``_api``).
auto_init: Callable[[], Client] | None = None


def current() -> Client:
    c = client
    if c is None:
        assert auto_init is not None
        c = auto_init()
    return c


def set_client(c: Client | None) -> None:
    global client, session
    client = c
    if c is not None:
        session += 1

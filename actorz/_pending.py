"""The state of one call: what ``.remote()`` leaves behind until the result arrives.

Pure: no sockets. The client completes a ``Pending`` under its lock; the raw result
frames are kept until someone asks for the value, then deserialized once.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from actorz import _protocol as P
from actorz import _serialization as S
from actorz.exceptions import (
    ActorDiedError,
    ActorNameTakenError,
    ActorzError,
    TaskCancelledError,
    WorkerCrashedError,
)

_CONTROL = P.CONTROL

PENDING, OK, ERR = 0, 1, 2

#: The call (caller id, call id) whose coroutine is running in this context. Child tasks
#: inherit it, so a ref awaited anywhere under a cancelled call can be cancelled too.
current_call: contextvars.ContextVar[tuple[bytes, int] | None] = contextvars.ContextVar(
    "actorz_current_call", default=None
)
_UNSET: Any = object()

_FAIL_TYPES: dict[str, type[ActorzError]] = {
    "ActorDiedError": ActorDiedError,
    "TaskCancelledError": TaskCancelledError,
    "ActorzError": ActorzError,
    "WorkerCrashedError": WorkerCrashedError,
    "ActorNameTakenError": ActorNameTakenError,
}


def fail_exception(payload: Any) -> BaseException:
    info = P.decode_json(payload)
    kind = info.get("type", "ActorzError")
    if kind == "ValueError":
        return ValueError(info["message"])
    return _FAIL_TYPES.get(kind, ActorzError)(info["message"])


class Pending:
    """The state of one call this process made (or one borrowed ref it fetches)."""

    __slots__ = ("call_id", "dest", "name", "state", "kind", "data", "bufs", "value",
                 "callbacks", "escaped", "__weakref__")

    def __init__(self, call_id: int, dest: bytes, name: str) -> None:
        self.call_id = call_id
        self.dest = dest
        self.name = name
        self.state = PENDING
        self.kind = 0
        self.data: Any = None
        self.bufs: Any = ()
        self.value: Any = _UNSET
        self.callbacks: list[Callable[[Pending], None]] | None = None
        self.escaped = False

    def result(self) -> Any:
        """The value, deserialized on first use; raises the call's error."""
        if self.state == OK:
            value = self.value
            if value is _UNSET:
                data = self.data
                value = P.decode_json(data) if self.kind == _CONTROL else S.loads(data, self.bufs)
                self.value = value
                if not self.escaped:
                    self.data = self.bufs = None
            return value
        if self.state == ERR:
            raise self.exception()
        raise RuntimeError("result() of a call that has not finished")

    def exception(self) -> BaseException:
        value = self.value
        if value is _UNSET:
            value = S.loads_error(self.data) if self.kind == P.ERROR else fail_exception(self.data)
            self.value = value
        return value  # type: ignore[no-any-return]

    def set_error(self, exc: BaseException) -> None:
        self.state = ERR
        self.value = exc


class Deferred:
    """A call waiting for its top-level ref arguments (sent once they are ready)."""

    __slots__ = ("pending", "kind", "build", "args", "kwargs", "deps", "flags")

    def __init__(self, pending: Pending, kind: int, build: Callable[..., tuple[bytes, list[Any]]],
                 args: tuple[Any, ...], kwargs: dict[str, Any], deps: list[Pending],
                 flags: int = 0) -> None:
        self.pending = pending
        self.kind = kind
        self.build = build
        self.args = args
        self.kwargs = kwargs
        self.deps = deps
        #: Item flags of what ``build`` returns (FLAG_SHM: its buffers are already in shm).
        self.flags = flags

    def ready(self) -> bool:
        return all(d.state != PENDING for d in self.deps)

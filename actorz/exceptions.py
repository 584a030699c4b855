"""The public error types of actorz."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActorDiedError",
    "ActorNameTakenError",
    "ActorzError",
    "GetTimeoutError",
    "TaskCancelledError",
    "TaskError",
    "WorkerCrashedError",
]


class ActorzError(Exception):
    """Base class of every error actorz raises."""


class ActorDiedError(ActorzError):
    """The actor that should run the call is dead: killed, crashed, or its ``__init__`` failed.

    Calls are at-most-once: a call pending when the actor died may or may not have run.
    """


class ActorNameTakenError(ActorzError, ValueError):
    """An actor of that name already exists in the namespace (``.options(name=...)``).

    Use ``actorz.get_actor(name)``, or create with ``.options(name=..., get_if_exists=True)``
    to get the existing actor instead of an error.
    """


class GetTimeoutError(ActorzError, TimeoutError):
    """``actorz.get(..., timeout=...)`` ran out of time. The call itself goes on."""


class TaskCancelledError(ActorzError):
    """The call was cancelled with ``actorz.cancel`` before it produced a value."""


class TaskError(ActorzError):
    """An exception raised by user code in a remote call, re-raised at the caller.

    Instances are also instances of the original exception's class, so
    ``except ValueError:`` catches a remote ``ValueError``.

    Attributes:
        cause: the original exception (rebuilt at the caller when possible).
        remote_traceback: the traceback text from the process that raised it.
        function_name: the method or function that raised.
    """

    cause: BaseException | None
    remote_traceback: str
    function_name: str
    cause_type_name: str

    def __init__(
        self,
        cause: BaseException | None,
        remote_traceback: str,
        function_name: str = "",
        cause_type_name: str = "",
        message: str = "",
    ) -> None:
        # Not super().__init__: the original class's __init__ may need other arguments.
        self.args = (message or (str(cause) if cause is not None else ""),)
        self.cause = cause
        self.remote_traceback = remote_traceback
        self.function_name = function_name
        self.cause_type_name = cause_type_name or (
            type(cause).__qualname__ if cause is not None else "Exception"
        )

    def __str__(self) -> str:
        where = f" in {self.function_name}" if self.function_name else ""
        tb = self.remote_traceback.rstrip()
        return f"{self.cause_type_name}{where}: {self.args[0] if self.args else ''}\n\n{tb}"

    def __reduce__(self) -> Any:
        from actorz._serialization import rebuild_task_error, task_error_state

        return rebuild_task_error, task_error_state(self)


class WorkerCrashedError(ActorzError):
    """The task-worker process running a remote function died before it answered."""

"""Serialization: pickle protocol 5 with out-of-band buffers; cloudpickle where pickle can't.

Pure: objects in, bytes and buffers out, no sockets.
"""

from __future__ import annotations

import functools
import pickle
import traceback
from typing import Any

import cloudpickle

from actorz.exceptions import TaskError

#: ``bytes`` at least this large travel as an out-of-band frame, not inside the pickle.
LARGE_BYTES = 64 * 1024

_dumps = pickle.dumps
_loads = pickle.loads


class _OutOfBandBytes:
    """Wraps a large ``bytes`` so pickle 5 hands it to ``buffer_callback`` uncopied."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return bytes, (pickle.PickleBuffer(self.data),)


def wrap_large(obj: Any) -> Any:
    if type(obj) is bytes and len(obj) >= LARGE_BYTES:
        return _OutOfBandBytes(obj)
    return obj


def dumps(obj: Any) -> tuple[bytes, list[Any]]:
    """Pickle ``obj``; returns the in-band stream and its out-of-band buffers.

    The C pickler is tried first (three to four times faster than cloudpickle on
    small call payloads: 0.64 us vs 2.2 us). It pickles classes and functions by
    reference, which fails on the receiving side for anything defined in
    ``__main__``; a stream that names ``__main__`` is redone with cloudpickle,
    which sends such definitions by value. The same goes for a stream naming a module
    registered for pickling by value (``init(pickle_by_value=...)``).
    """
    bufs: list[Any] = []
    try:
        data = _dumps(obj, 5, buffer_callback=bufs.append)
        if b"__main__" not in data and not (_BY_VALUE and _names_by_value_module(data)):
            return data, [_snapshot(b) for b in bufs] if bufs else bufs
    except Exception:
        pass
    bufs = []
    data = cloudpickle.dumps(obj, 5, buffer_callback=bufs.append)
    return data, [_snapshot(b) for b in bufs] if bufs else bufs


#: Modules registered with cloudpickle.register_pickle_by_value (init(pickle_by_value=)):
#: a stream that names one of them must be redone by cloudpickle, as for __main__.
_BY_VALUE: set[str] = getattr(cloudpickle.cloudpickle, "_PICKLE_BY_VALUE_MODULES", set())


def _names_by_value_module(data: bytes) -> bool:
    return any(name.encode() in data for name in _BY_VALUE)


def _snapshot(buf: pickle.PickleBuffer) -> Any:
    """A buffer as it is now. Immutable ones (bytes) travel uncopied; a writable one (a
    numpy array) is copied once, because the send happens later and the caller may
    change the array meanwhile: a call's arguments are fixed when it is made."""
    view = buf.raw()
    return buf if view.readonly else view.tobytes()


def argument_error(what: str, exc: BaseException) -> TypeError:
    """The error for arguments that cannot travel: says which call and what to do."""
    return TypeError(
        f"cannot send the arguments of {what} to another process: {type(exc).__name__}: "
        f"{exc}. Arguments are pickled (cloudpickle): pass plain data, or build the "
        "object inside the actor or task."
    )


def loads(data: Any, buffers: Any = ()) -> Any:
    return _loads(data, buffers=buffers)


def dumps_definition(obj: Any) -> bytes:
    """A class or function, by value where needed (cloudpickle), for one-time shipping."""
    data: bytes = cloudpickle.dumps(obj, 5)
    return data


# --- remote errors -----------------------------------------------------------


def dumps_error(exc: BaseException, function_name: str) -> bytes:
    """Capture an exception raised by user code, for re-raising at the caller."""
    if isinstance(exc, TaskError):
        # Propagated from a nested call: keep the original cause and prepend this hop.
        cause = exc.cause
        tb_text = exc.remote_traceback
        type_name = exc.cause_type_name
        cls: Any = type(cause) if cause is not None else None
        message = exc.args[0] if exc.args else ""
    else:
        cause = exc
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        type_name = type(exc).__qualname__
        cls = type(exc)
        message = str(exc)
    cause_bytes = None
    if cause is not None:
        try:
            cause_bytes = cloudpickle.dumps(cause, 5)
            pickle.loads(cause_bytes)  # an exception that can't be rebuilt is sent by parts
        except Exception:
            cause_bytes = None
    cls_bytes = None
    if cls is not None:
        try:
            cls_bytes = cloudpickle.dumps(cls, 5)
        except Exception:
            cls_bytes = None
    return pickle.dumps(
        (type_name, message, tb_text, function_name, cause_bytes, cls_bytes), 5
    )


def loads_error(payload: Any) -> TaskError:
    """Rebuild a ``TaskError`` that is also an instance of the original exception class."""
    type_name, message, tb_text, function_name, cause_bytes, cls_bytes = pickle.loads(payload)
    return rebuild_task_error(type_name, message, tb_text, function_name, cause_bytes, cls_bytes)


def task_error_state(err: TaskError) -> tuple[Any, ...]:
    cause = err.cause
    cause_bytes = cls_bytes = None
    if cause is not None:
        try:
            cause_bytes = cloudpickle.dumps(cause, 5)
        except Exception:
            cause_bytes = None
        try:
            cls_bytes = cloudpickle.dumps(type(cause), 5)
        except Exception:
            cls_bytes = None
    message = err.args[0] if err.args else ""
    return (err.cause_type_name, message, err.remote_traceback, err.function_name,
            cause_bytes, cls_bytes)


def rebuild_task_error(
    type_name: str,
    message: str,
    tb_text: str,
    function_name: str,
    cause_bytes: bytes | None,
    cls_bytes: bytes | None,
) -> TaskError:
    cause: BaseException | None = None
    cls: type[BaseException] | None = None
    if cause_bytes is not None:
        try:
            cause = pickle.loads(cause_bytes)
            cls = type(cause)
        except Exception:
            cause = None
    if cls is None and cls_bytes is not None:
        try:
            cls = pickle.loads(cls_bytes)
        except Exception:
            cls = None
    # mypy checks a class object against Hashable by its instances' __hash__ signature;
    # classes are hashable.
    dual = _dual_class(cls) if cls is not None else TaskError  # type: ignore[arg-type]
    err = dual.__new__(dual)
    TaskError.__init__(err, cause, tb_text, function_name, type_name, message)
    if err.cause is None:
        # The original could not be rebuilt; the error itself stands in for it.
        err.cause = err
    return err


@functools.lru_cache(maxsize=256)
def _dual_class(cls: type[BaseException]) -> type[TaskError]:
    """``TaskError`` subclass that is also a ``cls``, so ``except cls`` catches it."""
    if issubclass(cls, TaskError) or not issubclass(cls, Exception):
        # KeyboardInterrupt and friends are not re-raised as themselves at the caller.
        return TaskError
    try:
        dual = type(
            f"TaskError({cls.__qualname__})",
            (TaskError, cls),
            {"__module__": "actorz.exceptions", "__str__": TaskError.__str__,
             "__reduce__": TaskError.__reduce__, "__init__": TaskError.__init__},
        )
    except TypeError:  # incompatible layouts: plain TaskError still carries the parts
        return TaskError
    return dual

"""``@actorz.remote``: actor classes and remote functions, and their ``.options()``."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, Generic, TypeVar

from actorz import _context
from actorz import _protocol as P
from actorz import _serialization as S
from actorz._client import Client
from actorz._pending import PENDING
from actorz._refs import ActorHandle, ObjectRef, submit

T = TypeVar("T")

_ACTOR_OPTIONS = {
    "max_concurrency", "name", "namespace", "lifetime", "get_if_exists", "num_cpus",
    "num_gpus", "resources", "max_restarts", "max_task_retries", "memory",
}
_TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "max_retries", "num_returns", "name", "memory",
}
DEFAULT_ASYNC_CONCURRENCY = 1000
DEFAULT_THREADED_CONCURRENCY = 1


def remote(*args: Any, **options: Any) -> Any:
    """Make a class an actor class, or a function a remote function.

    ``@actorz.remote`` or ``@actorz.remote(max_concurrency=..., ...)``. A class with any
    ``async def`` method (or async generator) becomes an *async actor*: one event loop
    runs every method, at most ``max_concurrency`` (default 1000) calls at once. Any
    other class is a *threaded actor*: a pool of ``max_concurrency`` threads (default 1).
    """
    if len(args) == 1 and not options and (inspect.isclass(args[0]) or callable(args[0])):
        return _make(args[0], {})
    if args:
        raise TypeError(
            "@actorz.remote is used bare (@actorz.remote) or with keyword options "
            "(@actorz.remote(max_concurrency=10)); it got positional arguments "
            f"{args!r}"
        )

    def decorate(obj: Any) -> Any:
        return _make(obj, options)

    return decorate


def _make(obj: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(obj):
        return ActorClass(obj, _check_actor_options(options, obj.__name__))
    if callable(obj):
        return RemoteFunction(obj, _check_task_options(options, getattr(obj, "__name__", "")))
    raise TypeError(f"@actorz.remote needs a class or a function, got {obj!r}")


def _check_common(options: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)} for {what}; valid options: {sorted(allowed)}"
        )
    for key in ("num_cpus", "num_gpus", "memory"):
        v = options.get(key)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{key} must be a non-negative number, got {v!r}")
    res = options.get("resources")
    if res is not None and not (isinstance(res, dict) and all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
        for k, v in res.items()
    )):
        raise ValueError(f"resources must be a dict of name -> non-negative number, got {res!r}")


def _check_actor_options(options: dict[str, Any], what: str) -> dict[str, Any]:
    _check_common(options, _ACTOR_OPTIONS, f"actor class {what}")
    mc = options.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or isinstance(mc, bool) or mc < 1):
        raise ValueError(f"max_concurrency must be an integer >= 1, got {mc!r}")
    name = options.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    ns = options.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not ns):
        raise ValueError(f"namespace must be a non-empty string, got {ns!r}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be None, 'detached' or 'non_detached', got {lifetime!r}")
    for key in ("max_restarts", "max_task_retries"):
        if options.get(key, 0) not in (0, None):
            raise ValueError(
                f"{key}={options[key]!r}: actorz does not restart actors or retry their calls "
                f"(calls are at-most-once); leave {key} at 0"
            )
    return options


def _check_task_options(options: dict[str, Any], what: str) -> dict[str, Any]:
    _check_common(options, _TASK_OPTIONS, f"remote function {what}")
    if options.get("num_returns", 1) != 1:
        raise ValueError("num_returns: actorz remote functions return exactly one value")
    if options.get("max_retries", 0) not in (0, None):
        raise ValueError(
            f"max_retries={options['max_retries']!r}: actorz runs tasks at most once; "
            "leave max_retries at 0"
        )
    return options


def is_async_class(cls: type) -> bool:
    """Decided once, at definition: any ``async def`` method or async generator."""
    for _, member in inspect.getmembers(cls):
        fn = getattr(member, "__func__", member)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            return True
    return False


def method_names(cls: type) -> tuple[str, ...]:
    names = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") and name.endswith("__"):
            continue
        if callable(member):
            names.append(name)
    return tuple(names)


class ActorClass(Generic[T]):
    """An actor class: ``Cls.remote(*args)`` starts an actor process and returns its handle."""

    def __init__(self, cls: type[T], options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = options
        self._is_async = is_async_class(cls)
        self._methods = method_names(cls)
        self._definition: bytes | None = None
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    @property
    def is_async(self) -> bool:
        """True when this class runs an async dispatcher (decided at definition)."""
        return self._is_async

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the wrapper does not have, e.g. Counter.incr.remote().
        if name.startswith("_") or name not in self.__dict__.get("_methods", ()):
            raise AttributeError(f"actor class {self.__dict__.get('__name__', '?')!r} has no "
                                 f"attribute {name!r}")
        cls = self.__dict__["__name__"]
        raise AttributeError(
            f"{cls}.{name} is a method of the actor class; methods are called on an actor: "
            f"create one with 'a = {cls}.remote()', then call 'a.{name}.remote()'"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor classes cannot be instantiated directly. Use "
            f"'{self.__name__}.remote()' instead of '{self.__name__}()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        """Start the actor; calls to the handle queue until it is up."""
        return self._create(args, kwargs, self._options)

    def options(self, **options: Any) -> _ActorOptions[T]:
        """Override options for one creation: ``Cls.options(name="x").remote()``."""
        merged = dict(self._options)
        merged.update(options)
        return _ActorOptions(self, _check_actor_options(merged, self.__name__))

    def _create(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                options: dict[str, Any]) -> ActorHandle[T]:
        client = _context.current()
        if self._definition is None:
            self._definition = S.dumps_definition(self._cls)
        args, kwargs = _resolve_init_args(client, args, kwargs)
        try:
            spec, bufs = S.dumps((self._definition, args, kwargs))
        except Exception as exc:
            raise S.argument_error(f"{self.__name__}.__init__", exc) from exc
        actor_id = P.new_id(P.ACTOR)
        default_mc = DEFAULT_ASYNC_CONCURRENCY if self._is_async else DEFAULT_THREADED_CONCURRENCY
        resources = dict(options.get("resources") or {})
        if options.get("num_cpus"):
            resources["CPU"] = options["num_cpus"]
        if options.get("num_gpus"):
            resources["GPU"] = options["num_gpus"]
        meta = {
            "actor": actor_id.hex(),
            "class_name": self.__name__,
            "methods": list(self._methods),
            "is_async": self._is_async,
            "max_concurrency": options.get("max_concurrency") or default_mc,
            "name": options.get("name"),
            "namespace": options.get("namespace") or getattr(client, "namespace", "default"),
            "get_if_exists": bool(options.get("get_if_exists")),
            "detached": options.get("lifetime") == "detached",
            "resources": resources,
            "log_to_driver": getattr(client, "log_to_driver", True),
            "sys_path": [p for p in sys.path if p and os.path.isdir(p)],
        }
        payload = P.encode_json(dict(meta, op="create_actor"))
        frames = [spec, *bufs]
        named = meta["name"] is not None
        p = client.new_pending(P.BROKER, "create_actor")
        if named:
            hdr = P.header(P.CONTROL, p.call_id, len(payload), len(frames))
            with client._lock:
                client._pending[p.call_id] = p
            client.send_item(P.BROKER, hdr + payload, frames, flush=True)
            client.wait(lambda: p.state != PENDING, None)
            answer = p.result()  # raises ActorNameTakenError (a ValueError) for a taken name
            actor_id = bytes.fromhex(answer["actor"])
        else:
            hdr = P.header(P.CONTROL, 0, len(payload), len(frames))
            client.send_item(P.BROKER, hdr + payload, frames)
        return ActorHandle(actor_id, self.__name__, self._methods, _context.session)

    def __repr__(self) -> str:
        kind = "async" if self._is_async else "threaded"
        return f"<actorz {kind} actor class {self.__qualname__}>"


class _ActorOptions(Generic[T]):
    def __init__(self, actor_class: ActorClass[T], options: dict[str, Any]) -> None:
        self._actor_class = actor_class
        self._options = options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle[T]:
        return self._actor_class._create(args, kwargs, self._options)


def _resolve_init_args(client: Client, args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Constructor arguments that are refs are replaced by their values (as in Ray)."""
    refs = [a for a in (*args, *kwargs.values()) if isinstance(a, ObjectRef)]
    if not refs:
        return args, kwargs
    pendings = [r._pending() for r in refs]
    client.wait(lambda: all(p.state != PENDING for p in pendings), None)

    def value(a: Any) -> Any:
        return a._pending().result() if isinstance(a, ObjectRef) else a

    return tuple(value(a) for a in args), {k: value(v) for k, v in kwargs.items()}


class RemoteFunction(Generic[T]):
    """A remote function: ``fn.remote(*args)`` runs it in a task-worker process.

    ``async def`` functions are supported: the worker runs them on its event loop.
    """

    def __init__(self, fn: Any, options: dict[str, Any]) -> None:
        self._fn = fn
        self._options = options
        self._id = os.urandom(16)
        self._definition: bytes | None = None
        self.__name__ = getattr(fn, "__name__", "function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        # None for a callable without a module; typeshed types __module__ as str.
        self.__module__ = getattr(fn, "__module__", None)  # type: ignore[assignment]
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Remote functions cannot be called directly. Use "
            f"'{self.__name__}.remote()' instead of '{self.__name__}()'."
        )

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef[T]:
        """Queue one call of the function; returns a ref to its result."""
        client = _context.client or _context.current()
        definition = self._definition
        if definition is None:
            definition = self._definition = S.dumps_definition((self._fn, self.__name__))
        fn_id = self._id

        def encode(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> tuple[bytes, list[Any]]:
            data, bufs = S.dumps((args, kwargs))
            return P.encode_task(fn_id, definition, data), bufs

        return submit(client, P.BROKER, P.TASK, self.__name__, args, kwargs, encode, key=object())

    def options(self, **options: Any) -> RemoteFunction[T]:
        merged = dict(self._options)
        merged.update(options)
        clone = RemoteFunction.__new__(RemoteFunction)
        clone.__dict__.update(self.__dict__)
        clone._options = _check_task_options(merged, self.__name__)
        return clone

    def __repr__(self) -> str:
        return f"<actorz remote function {self.__qualname__}>"

"""ObjectRef, ActorHandle and ActorMethod: what ``.remote()`` returns and what it is called on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from actorz import _context
from actorz import _protocol as P
from actorz import _serialization as S
from actorz._client import Client
from actorz._pending import PENDING, Pending, current_call
from actorz.exceptions import ActorzError

T = TypeVar("T")
A = TypeVar("A")


class ObjectRef(Generic[T]):
    """A reference to the future result of a remote call.

    Owned by the process that made the call: ``(owner endpoint, call id)``. Await it in
    any event loop (``await ref``, ``asyncio.gather``, ``asyncio.wait``,
    ``asyncio.wait_for``), block on it with ``actorz.get``, or turn it into a
    ``concurrent.futures.Future`` with ``ref.future()``. Refs can be passed to other
    calls: as a top-level argument they are replaced by their value before the call
    runs; nested inside other values they arrive as refs.
    """

    __slots__ = ("_owner", "_call_id", "_p", "_client", "_callbacks", "__weakref__")

    def __init__(self, owner: bytes, call_id: int, pending: Pending | None,
                 client: Client | None) -> None:
        self._owner = owner
        self._call_id = call_id
        self._p = pending
        self._client = client
        self._callbacks: list[list[Any]] | None = None

    def _pending(self) -> Pending:
        client = self._client
        if client is not None and client.closed:
            raise ActorzError(
                f"{self!r} belongs to an actorz session that was shut down; its value is "
                "gone with it"
            )
        p = self._p
        if p is None:
            if client is None:
                client = self._client = _context.current()
            p = self._p = client.borrow(self._owner, self._call_id)
        return p

    def _get_client(self) -> Client:
        c = self._client
        if c is None:
            c = self._client = _context.current()
        return c

    def __await__(self) -> Generator[Any, None, T]:
        return self._await().__await__()

    async def _await(self) -> T:
        p = self._pending()
        if p.state == PENDING:
            client = self._get_client()
            try:
                await client.wait_async(p)
            except asyncio.CancelledError:
                # Recursive cancel: the call awaiting this ref was cancelled, so is this one.
                if current_call.get() in client.cancelled_calls:
                    client.cancel(p)
                raise
        return p.result()  # type: ignore[no-any-return]

    def future(self) -> Future[T]:
        """A ``concurrent.futures.Future`` of the value (``asyncio.wrap_future`` accepts it)."""
        return self._get_client().future(self._pending())

    # The subset of the asyncio.Future interface that asyncio.wait() uses (Python 3.11
    # passes the objects straight to it: an awaitable alone is not enough).

    def done(self) -> bool:
        """True once the call has finished, with a value or an error."""
        return self._pending().state != PENDING

    def cancelled(self) -> bool:
        return False

    def result(self) -> T:
        """The value of a finished call (raises its error); ``InvalidStateError`` before."""
        p = self._pending()
        if p.state == PENDING:
            raise asyncio.InvalidStateError("the call has not finished; await the ref")
        return p.result()  # type: ignore[no-any-return]

    def exception(self) -> BaseException | None:
        p = self._pending()
        if p.state == PENDING:
            raise asyncio.InvalidStateError("the call has not finished; await the ref")
        return p.exception() if p.state != 1 else None

    def add_done_callback(self, fn: Callable[[ObjectRef[T]], Any], *,
                          context: Any = None) -> None:
        """Call ``fn(ref)`` when done: in the running event loop if there is one."""
        client = self._get_client()
        p = self._pending()
        loop = asyncio._get_running_loop()
        entry: list[Any] = [fn, True]
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(entry)

        def wake(_p: Pending) -> None:
            if not entry[1]:
                return
            if loop is None:
                fn(self)
            elif asyncio._get_running_loop() is loop:
                loop.call_soon(fn, self, context=context)
            else:
                try:
                    loop.call_soon_threadsafe(fn, self, context=context)
                except RuntimeError:  # the loop is closed
                    pass

        if loop is not None:
            client.ensure_reader(loop)
        elif client._watcher is None:
            client.start_watcher()
        client.add_callback(p, wake)
        client.flush()

    def remove_done_callback(self, fn: Callable[[ObjectRef[T]], Any]) -> int:
        removed = 0
        for entry in self._callbacks or ():
            if entry[0] == fn and entry[1]:
                entry[1] = False
                removed += 1
        return removed

    def hex(self) -> str:
        return f"{self._owner.hex()}{self._call_id:016x}"

    def __reduce__(self) -> tuple[Callable[..., ObjectRef[Any]], tuple[bytes, int]]:
        p = self._p
        client = self._client
        if p is not None and client is not None and client.identity == self._owner:
            client.escape(p)
        return _rebuild_ref, (self._owner, self._call_id)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ObjectRef) and other._call_id == self._call_id
                and other._owner == self._owner)

    def __hash__(self) -> int:
        return hash((self._owner, self._call_id))

    def __repr__(self) -> str:
        return f"ObjectRef({self.hex()})"


def _rebuild_ref(owner: bytes, call_id: int) -> ObjectRef[Any]:
    return ObjectRef(owner, call_id, None, _context.client)


def submit(client: Client, dest: bytes, kind: int, name: str, args: tuple[Any, ...],
           kwargs: dict[str, Any], encode: Callable[[tuple[Any, ...], dict[str, Any] | None],
                                                    tuple[bytes, list[Any]]],
           key: Any = None, what: str | None = None) -> ObjectRef[Any]:
    """Send one call; top-level ``ObjectRef`` arguments are resolved to values first."""
    p = Pending(client._next_id(), dest, name)
    for a in args:
        t = type(a)
        if t is ObjectRef or t is bytes:
            break
    else:
        if not kwargs or not _needs_prep(kwargs.values()):
            try:
                payload, bufs = encode(args, kwargs or None)
            except Exception as exc:
                raise S.argument_error(what or name, exc) from exc
            client.send_call(p, kind, payload, bufs)
            return ObjectRef(client.identity, p.call_id, p, client)
    deps = [a._pending() for a in _refs_in(args, kwargs)]

    def build() -> tuple[bytes, list[Any]]:
        new_args = tuple(_value(a) for a in args)
        new_kwargs = {k: _value(v) for k, v in kwargs.items()} if kwargs else None
        try:  # an upstream ref's error above goes out as it is; this one gets context
            return encode(new_args, new_kwargs)
        except Exception as exc:
            raise S.argument_error(what or name, exc) from exc

    if not deps:
        payload, bufs = build()
        client.send_call(p, kind, payload, bufs)
    else:
        client.send_deferred(p, kind, dest if key is None else key, build, (), {}, deps)
    return ObjectRef(client.identity, p.call_id, p, client)


def _needs_prep(values: Any) -> bool:
    for v in values:
        t = type(v)
        if t is ObjectRef or t is bytes:
            return True
    return False


def _refs_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[ObjectRef[Any]]:
    refs = [a for a in args if type(a) is ObjectRef]
    if kwargs:
        refs += [v for v in kwargs.values() if type(v) is ObjectRef]
    return refs


def _value(a: Any) -> Any:
    if type(a) is ObjectRef:
        return a._pending().result()
    return S.wrap_large(a)


def encode_call(name: str) -> Callable[[tuple[Any, ...], dict[str, Any] | None],
                                       tuple[bytes, list[Any]]]:
    def encode(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> tuple[bytes, list[Any]]:
        return S.dumps((name, args, kwargs))
    return encode


class ActorMethod:
    """``handle.method``: call it with ``.remote(*args, **kwargs)``."""

    __slots__ = ("_handle", "_name", "_encode")

    def __init__(self, handle: ActorHandle[Any], name: str) -> None:
        self._handle = handle
        self._name = name
        self._encode = encode_call(name)

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef[Any]:
        h = self._handle
        client = _context.client
        if client is None or h._actorz_session != _context.session:
            client = h._actorz_rebind()
        # Fast path inlined from submit(): plain arguments, no refs, no large bytes.
        for a in args:
            t = type(a)
            if t is ObjectRef or t is bytes:
                break
        else:
            if not kwargs:
                p = Pending(client._next_id(), h._actorz_id, self._name)
                try:
                    payload, bufs = S.dumps((self._name, args, None))
                except Exception as exc:
                    raise S.argument_error(
                        f"{h._actorz_class_name}.{self._name}", exc) from exc
                client.send_call(p, P.CALL, payload, bufs)
                return ObjectRef(client.identity, p.call_id, p, client)
        return submit(client, h._actorz_id, P.CALL, self._name, args, kwargs, self._encode,
                      what=f"{h._actorz_class_name}.{self._name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"Actor methods cannot be called directly. Use "
            f"'{self._handle._actorz_class_name}.{self._name}.remote()' instead of "
            f"'{self._name}()'."
        )

    def __repr__(self) -> str:
        return f"ActorMethod({self._handle._actorz_class_name}.{self._name})"


class ActorHandle(Generic[A]):
    """A handle to a live actor; pass it to other actors and tasks, they can call it too."""

    def __init__(self, actor_id: bytes, class_name: str, methods: tuple[str, ...],
                 session: int) -> None:
        self._actorz_id = actor_id
        self._actorz_class_name = class_name
        self._actorz_methods = methods
        self._actorz_session = session
        for name in methods:
            self.__dict__[name] = ActorMethod(self, name)

    def _actorz_rebind(self) -> Client:
        """The client to call through; refuses handles from a session that was shut down."""
        client = _context.client
        if client is None or self._actorz_session != _context.session:
            if self._actorz_session == -1 and client is not None:
                # Unpickled before this process had a client; adopt the current one.
                self._actorz_session = _context.session
                return client
            raise ActorzError(
                f"this handle to actor {self._actorz_class_name} belongs to an actorz session "
                f"that was shut down; create the actor again after actorz.init()"
            )
        return client

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_actorz"):
            raise AttributeError(name)
        methods = ", ".join(sorted(self._actorz_methods)) or "none"
        raise AttributeError(
            f"'{self._actorz_class_name}' actor has no method '{name}' (its methods: {methods})"
        )

    def __reduce__(self) -> Any:
        return _rebuild_handle, (self._actorz_id, self._actorz_class_name, self._actorz_methods)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actorz_id == self._actorz_id

    def __hash__(self) -> int:
        return hash(self._actorz_id)

    def __repr__(self) -> str:
        return f"Actor({self._actorz_class_name}, {self._actorz_id.hex()})"


def _rebuild_handle(actor_id: bytes, class_name: str, methods: tuple[str, ...]) -> ActorHandle[Any]:
    session = _context.session if _context.client is not None else -1
    return ActorHandle(actor_id, class_name, methods, session)

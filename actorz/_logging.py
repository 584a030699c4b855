"""Output of actors and task workers, delivered to the driver line by line.

In a worker process, ``sys.stdout``/``sys.stderr`` are replaced by ``TaggedStream``: each
complete line goes straight to the process's log pipe (one ``write`` per line, so a line
printed just before the process exits is not lost), marked with its stream and, in a
task worker, with the caller and function it belongs to. The node agent reads the pipe,
adds ``pid=N`` and sends the lines to the right driver, which prints them with
``(ClassName pid=N) `` in front, as Ray does.
"""

from __future__ import annotations

import contextvars
import io
import os
import sys
import threading
from typing import Any

#: Start and end of a line's tag: ``\\x1e<stream><dest hex>|<name>\\x1f<text>\\n``.
TAG_START = b"\x1e"
TAG_END = b"\x1f"

#: (caller id hex, function name) of the task running in this context (task workers).
current_task: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "actorz_current_task", default=None
)


class TaggedStream(io.TextIOBase):
    """A text stream writing whole, tagged lines to a file descriptor."""

    def __init__(self, fd: int, stream: int) -> None:
        self._fd = fd
        self._stream = str(stream).encode()
        self._buf: dict[Any, str] = {}
        self._lock = threading.Lock()

    # A read-only property, as on io.TextIOWrapper; typeshed declares a plain attribute.
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        task = current_task.get()
        with self._lock:
            text = self._buf.pop(task, "") + s
            if "\n" not in text:
                self._buf[task] = text
                return len(s)
            *lines, rest = text.split("\n")
            if rest:
                self._buf[task] = rest
        self._emit(lines, task)
        return len(s)

    def _emit(self, lines: list[str], task: tuple[str, str] | None) -> None:
        tag = TAG_START + self._stream
        if task is not None:
            tag += f"{task[0]}|{task[1]}".encode()
        tag += TAG_END
        data = b"".join(tag + line.encode("utf-8", "replace") + b"\n" for line in lines)
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:
                continue
            view = view[n:]

    def flush(self) -> None:
        with self._lock:
            pending = list(self._buf.items())
            self._buf.clear()
        for task, text in pending:
            if text:
                self._emit([text], task)


def install_worker_streams() -> None:
    """In a worker process: route print() and tracebacks through tagged lines."""
    sys.stdout = TaggedStream(1, 1)
    sys.stderr = TaggedStream(2, 2)


def parse_line(raw: bytes) -> tuple[int, str | None, str | None, str]:
    """(stream, dest hex or None, name or None, text) of one line read from a log pipe."""
    if raw.startswith(TAG_START):
        end = raw.find(TAG_END)
        if end > 0:
            stream = 2 if raw[1:2] == b"2" else 1
            tag = raw[2:end].decode("utf-8", "replace")
            text = raw[end + 1 :].decode("utf-8", "replace")
            if tag:
                dest, _, name = tag.partition("|")
                return stream, dest, name, text
            return stream, None, None, text
    # Untagged: written below Python (a C extension, a fatal error report).
    return 2, None, None, raw.decode("utf-8", "replace")


class DriverLogSink:
    """Prints LOG messages on the driver: ``(ClassName pid=N) line``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, msg: dict[str, Any]) -> None:
        stream = sys.stderr if msg.get("stream") == 2 else sys.stdout
        prefix = f"({msg['prefix']}) "
        if stream.isatty():
            prefix = f"\x1b[36m{prefix}\x1b[0m"
        text = "".join(prefix + line + "\n" for line in msg["lines"])
        with self._lock:
            stream.write(text)
            stream.flush()

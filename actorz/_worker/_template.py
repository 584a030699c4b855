"""The fork server: a template process that forks actor and task-worker processes.

Started by the node agent (``python -m actorz._worker._template FD``). It imports the
worker runtime once (pyzmq, cloudpickle, uvloop, actorz) and never opens a socket, so a
fork of it is safe and starts in milliseconds instead of the ~150 ms of a fresh
interpreter; ``gc.freeze()`` keeps the shared pages shared (copy-on-write), which is what
keeps an idle actor's own memory (USS) small.

Protocol with the node agent, over a SOCK_SEQPACKET unix socket, one pickle a packet:
  node -> template: ("spawn", token, role, identity, address, info) + the log pipe's fd
                    ("kill", pid)  ("stop",)
  template -> node: ("spawned", token, pid)  ("exited", pid, wait status)
EOF on the socket (the node agent died) kills every child and ends the template.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import select
import signal
import socket
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except Exception:
        pass


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _child(ctl: socket.socket, msg: tuple[Any, ...], log_fd: int, template_pid: int) -> None:
    code = 1
    try:
        os.setpgid(0, 0)  # own group: kill takes the actor's own subprocesses along
        set_pdeathsig()
        if os.getppid() != template_pid:
            os._exit(1)
        ctl.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        from actorz._worker import _host

        _, _, role, identity, address, info = msg
        _host.run(role, identity, address, info)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def serve(fd: int) -> None:
    ctl = socket.socket(fileno=fd)
    children: set[int] = set()
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    gc.freeze()

    def send(obj: Any) -> None:
        try:
            ctl.send(pickle.dumps(obj))
        except OSError:
            pass

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            send(("exited", pid, status))

    watched: list[socket.socket | int] = [ctl, sig_r]
    running = True
    while running:
        try:
            readable, _, _ = select.select(watched, [], [])
        except InterruptedError:
            continue
        if sig_r in readable:
            try:
                while os.read(sig_r, 4096):
                    pass
            except BlockingIOError:
                pass
            reap()
        if ctl not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(ctl, 1 << 16, 4)
        except InterruptedError:
            continue
        except OSError:
            data, fds = b"", []
        if not data:
            break  # the node agent is gone
        msg = pickle.loads(data)
        op = msg[0]
        if op == "spawn":
            log_fd = fds[0]
            pid = os.fork()
            if pid == 0:
                os.close(sig_r)
                os.close(sig_w)
                _child(ctl, msg, log_fd, me)
            os.close(log_fd)
            children.add(pid)
            send(("spawned", msg[1], pid))
        elif op == "kill":
            _kill_group(msg[1])
        elif op == "stop":
            running = False
        for extra in fds[1:]:
            os.close(extra)
    for pid in list(children):
        _kill_group(pid)
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main() -> None:
    fd = int(sys.argv[1])
    set_pdeathsig()
    sys_path = os.environ.get("ACTORZ_SYS_PATH")
    if sys_path:
        for p in reversed(json.loads(sys_path)):
            if p not in sys.path:
                sys.path.insert(0, p)
    # Preload what every worker imports, so a fork starts warm.
    from actorz._worker import _host  # noqa: F401

    serve(fd)


if __name__ == "__main__":
    main()

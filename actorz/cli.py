"""The ``actorz`` command: ``broker``, ``node``, ``up``, ``status`` and ``bench``.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM included), 1 for an error at run time
(address in use, unreachable broker, a node that lost its broker), 2 for malformed
arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from actorz._transport import check_address, is_loopback

log = logging.getLogger("actorz.cli")

DEFAULT_BIND = "tcp://127.0.0.1:6380"
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: How long ``actorz status`` waits for the broker's answer by default.
STATUS_TIMEOUT_S = 5.0


class CliError(Exception):
    """An error to print (without a traceback) before exiting with code 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``actorz`` command with ``argv`` (default ``sys.argv[1:]``); return its exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "bench":
        # Everything after "bench" belongs to the benchmark suite's own parser.
        return _bench(args_list[1:])
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args, args.parser))
    except CliError as exc:
        print(f"actorz {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except SystemExit as exc:  # parser.error() inside a command
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C during a clean stop
        print(f"actorz {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


# --- arguments --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actorz", description="Run and inspect an actorz cluster.",
        epilog="Run 'actorz COMMAND --help' for the options of one command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("broker", help="run the broker in the foreground",
                       description="Run the broker until SIGINT or SIGTERM. Nodes and drivers "
                                   "join it at the addresses it is bound to.")
    _add_bind_options(p)
    _add_log_level(p)
    p.set_defaults(run=_cmd_broker, parser=p)

    p = sub.add_parser("node", help="run a node agent that joins a broker",
                       description="Run a node agent: it joins the broker, hosts actor "
                                   "processes and task workers on this machine, and stops "
                                   "(killing them) on SIGINT/SIGTERM or when the broker is "
                                   "lost.")
    p.add_argument("--address", type=_join_address, default=None,
                   help="the broker to join, e.g. tcp://10.0.0.1:6380 "
                        "(default: $ACTORZ_ADDRESS)")
    _add_node_options(p)
    p.add_argument("--connect-timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                   help="give up when the broker has not answered within this time "
                        "(default: 10)")
    _add_log_level(p)
    p.set_defaults(run=_cmd_node, parser=p)

    p = sub.add_parser("up", help="run a broker and a local node together",
                       description="Run a broker and a node agent on this machine (what "
                                   "actorz.init() embeds) and print the address to join.")
    _add_bind_options(p)
    _add_node_options(p)
    _add_log_level(p)
    p.set_defaults(run=_cmd_up, parser=p)

    p = sub.add_parser("status", help="print the nodes, actors, tasks and drivers of a cluster",
                       description="Ask a broker for its registry and print it.")
    p.add_argument("--address", type=_join_address, default=None,
                   help="the broker to ask (default: $ACTORZ_ADDRESS)")
    p.add_argument("--json", action="store_true", help="print JSON, for scripts")
    p.add_argument("--timeout", type=_positive_float, default=STATUS_TIMEOUT_S,
                   metavar="SECONDS",
                   help=f"fail when the broker has not answered within this time "
                        f"(default: {STATUS_TIMEOUT_S:g})")
    p.set_defaults(run=_cmd_status, parser=p)

    sub.add_parser("bench", help="run the benchmark suite ('actorz bench --help')",
                   add_help=False)
    return parser


def _add_bind_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", action="append", type=_bind_address, metavar="ADDRESS",
                   help=f"an address to listen on, tcp://HOST:PORT or ipc:///PATH; repeat "
                        f"for several; a port of * picks a free one (default: {DEFAULT_BIND})")
    p.add_argument("--insecure", action="store_true",
                   help="allow a tcp address that is not loopback. There is no "
                        "authentication yet: anyone who can reach the port can run code on "
                        "every node")


def _add_node_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-workers", type=_non_negative_int, default=None, metavar="N",
                   help="task-worker processes on this node (default: the CPU count)")
    p.add_argument("--resources", type=_resources, default=None, metavar="JSON",
                   help='custom resources of this node, e.g. \'{"gpu": 1}\' '
                        "(CPU defaults to the CPU count)")
    p.add_argument("--name", default=None, help="the node's name (default: the host name)")


def _add_log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", type=str.lower,
                   choices=["debug", "info", "warning", "error"],
                   help="what to log on stderr (default: info)")


def _bind_address(value: str) -> str:
    # A wildcard port is fine for a bind (the broker prints the port it got).
    probe = value
    if value.startswith("tcp://") and value.endswith(":*"):
        probe = value[:-1] + "0"
    try:
        check_address(probe)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _join_address(value: str) -> str:
    try:
        return check_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _resources(value: str) -> dict[str, float]:
    try:
        res = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({exc.msg}): {value!r}; write e.g. '{{\"gpu\": 1}}'") from None
    if not isinstance(res, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int | float) and not isinstance(v, bool)
        and v >= 0 for k, v in res.items()
    ):
        raise argparse.ArgumentTypeError(
            f"must be a JSON object of resource name -> non-negative number, e.g. "
            f"'{{\"gpu\": 1}}'; got {value!r}")
    return {k: float(v) for k, v in res.items()}


def _non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value!r}")
    return n


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = -1.0
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value!r}")
    return x


def _address_or_env(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.address:
        return str(args.address)
    env = os.environ.get("ACTORZ_ADDRESS")
    if not env:
        parser.error("--address is required (or set ACTORZ_ADDRESS)")
    try:
        return check_address(env)
    except ValueError as exc:
        parser.error(f"ACTORZ_ADDRESS: {exc}")
    raise AssertionError  # parser.error does not return


def _checked_binds(args: argparse.Namespace) -> list[str]:
    binds: list[str] = args.bind or [DEFAULT_BIND]
    exposed = [b for b in binds if not is_loopback(b)]
    if exposed and not args.insecure:
        raise CliError(
            f"refusing to listen on {', '.join(exposed)}: it is not a loopback address, and "
            "actorz has no authentication yet, so anyone who can reach it could run code on "
            "every node of the cluster. Listen on 127.0.0.1 (and reach it through an SSH "
            "tunnel), or pass --insecure on a trusted, isolated network.")
    return binds


def _warn_insecure(binds: list[str]) -> None:
    exposed = [b for b in binds if not is_loopback(b)]
    if not exposed:
        return
    bar = "!" * 78
    log.warning(bar)
    log.warning("INSECURE: listening on %s WITHOUT AUTHENTICATION (--insecure).",
                ", ".join(exposed))
    log.warning("Anyone who can reach this port can run arbitrary code on every node of "
                "this cluster.")
    log.warning("Use it only on a trusted, isolated network.")
    log.warning(bar)


def _setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- signals ----------------------------------------------------------------------------


class _Stop:
    """What SIGINT/SIGTERM stop: set once the thing to stop exists (a signal before that
    stops it as soon as it is set)."""

    def __init__(self) -> None:
        self.requested = False
        self._target: Callable[[], None] | None = None

    def set_target(self, target: Callable[[], None]) -> None:
        self._target = target
        if self.requested:
            target()

    def __call__(self) -> None:
        self.requested = True
        if self._target is not None:
            self._target()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    """SIGINT/SIGTERM stop cleanly (see ``_Stop``); a second one interrupts at once."""
    stop = _Stop()
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("%s: stopping", signal.Signals(signum).name)
            stop()
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- commands -----------------------------------------------------------------------------


def _cmd_broker(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import zmq

    from actorz._broker import Broker

    _setup_logging(args.log_level)
    binds = _checked_binds(args)
    with _stop_on_signals() as stop:
        ctx = zmq.Context()
        try:
            broker = Broker(ctx, binds)
        except OSError as exc:
            ctx.term()
            raise CliError(exc.strerror or str(exc)) from None
        try:
            _warn_insecure(broker.binds)
            _print_ready("actorz broker", broker.binds)
            log.info("broker pid %d listening on %s", os.getpid(), ", ".join(broker.binds))
            stop.set_target(broker.stop)
            broker.run()
        finally:
            # A bounded linger lets the "stop" notices to the nodes go out.
            broker.close(linger_ms=1000)
            ctx.term()
    log.info("broker stopped")
    return EXIT_OK


def _cmd_node(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import zmq

    from actorz._node import NodeAgent

    address = _address_or_env(args, parser)
    _setup_logging(args.log_level)
    with _stop_on_signals() as stop:
        ctx = zmq.Context()
        # Nodes started here join over the network: their children's lines carry the ip.
        node = NodeAgent(ctx, address, num_workers=args.num_workers, resources=args.resources,
                         name=args.name, show_ip=True, connect_timeout=args.connect_timeout)
        done = threading.Event()
        stop.set_target(done.set)
        try:
            node.run(done)
        finally:
            ctx.term()
    if node.exit_error:
        raise CliError(node.exit_error)
    log.info("node %s stopped", node.name)
    return EXIT_OK


def _cmd_up(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from actorz._cluster import LocalCluster

    _setup_logging(args.log_level)
    binds = _checked_binds(args)
    exposed = any(not is_loopback(b) for b in binds)
    with _stop_on_signals() as stop:
        try:
            cluster = LocalCluster(binds, num_workers=args.num_workers,
                                   resources=args.resources, name=args.name, show_ip=exposed)
        except OSError as exc:
            raise CliError(exc.strerror or str(exc)) from None
        _warn_insecure(cluster.binds)
        _print_ready("actorz cluster up: broker and a local node", cluster.binds)
        stop.set_target(cluster.stop)
        code = cluster.run()
    if code:
        raise CliError(cluster.node.exit_error or "the local node failed")
    log.info("cluster stopped")
    return EXIT_OK


def _print_ready(title: str, binds: list[str]) -> None:
    joins = [_address_to_join(b) for b in binds]
    lines = [f"{title}, listening on {', '.join(binds)}"]
    first = joins[0]
    lines.append(f"  join it:     actorz.init(address=\"{first}\")   "
                 f"or   export ACTORZ_ADDRESS={first}")
    for other in joins[1:]:
        lines.append(f"           or actorz.init(address=\"{other}\")")
    lines.append(f"  add a node:  actorz node --address {first}")
    lines.append(f"  inspect:     actorz status --address {first}")
    lines.append("  stop:        Ctrl-C (or SIGTERM)")
    print("\n".join(lines), flush=True)


def _address_to_join(bind: str) -> str:
    """What another host connects to: a wildcard host becomes this host's address."""
    from actorz._node import host_ip

    if not bind.startswith("tcp://"):
        return bind
    host = urlsplit(bind).hostname or ""
    if host in ("0.0.0.0", "*"):
        return bind.replace(f"//{host}:", f"//{host_ip()}:", 1)
    return bind


# --- status ---------------------------------------------------------------------------------


def fetch_status(address: str, timeout: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    """The broker's registry at ``address`` as a dict; ``CliError`` when it does not answer.

    Connects without registering as a driver, so asking does not change the answer.
    """
    import zmq

    from actorz import _protocol as P
    from actorz._client import Client
    from actorz._pending import PENDING

    ctx = zmq.Context()
    client = Client(ctx, address, P.new_id(P.DRIVER))
    try:
        p = client.request("status")
        if not client.wait(lambda: p.state != PENDING, timeout):
            raise CliError(f"no actorz broker answered at {address} within {timeout:g}s; is it "
                           "running ('actorz broker' or 'actorz up'), and is the address right?")
        status: dict[str, Any] = p.result()
        return status
    finally:
        client.close("status received")
        ctx.term()


def _cmd_status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    address = _address_or_env(args, parser)
    status = fetch_status(address, args.timeout)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    """The human-readable report ``actorz status`` prints."""
    b = status["broker"]
    out = [(f"broker   {', '.join(b['binds'])}   host {b['host']}   pid {b['pid']}   "
            f"up {_duration(b['uptime_s'])}")]
    nodes = status["nodes"]
    out += ["", f"NODES ({len(nodes)})"]
    out += _table(["NAME", "HOST", "IP", "PID", "RESOURCES (free/total)", "ACTORS", "WORKERS",
                   "HEARTBEAT"],
                  [[n["name"], n["host"], n.get("ip") or "-", n["pid"],
                    _resources_text(n["available"], n["resources"]), n["actors"], n["workers"],
                    f"{n['last_heartbeat_s']:.1f}s ago"] for n in nodes])
    actors = status["actors"]
    out += ["", f"ACTORS ({len(actors)})"]
    out += _table(["ID", "CLASS", "NAME", "NODE", "PID", "STATE", "IN FLIGHT", "LIFETIME"],
                  [[a["id"], a["class_name"],
                    (f"{a['namespace']}/{a['name']}" if a["name"] else "-"),
                    a["node"] or "-", a["pid"] or "-", a["state"],
                    "-" if a.get("inflight") is None else a["inflight"],
                    "detached" if a["detached"] else "owned"] for a in actors])
    workers = status.get("workers", [])
    running = sum(w["inflight"] for w in workers)
    out += ["", (f"TASKS    queued at the broker: {status['task_queue']}   "
                 f"running or queued on {len(workers)} task workers: {running}")]
    drivers = status["drivers"]
    out += ["", f"DRIVERS ({len(drivers)})"]
    out += _table(["ID", "HOST", "PID", "NAMESPACE", "CONNECTED"],
                  [[d["id"], d.get("host") or "-", d["pid"], d["namespace"],
                    _duration(d.get("connected_s", 0))] for d in drivers])
    return "\n".join(out)


def _resources_text(available: dict[str, float], total: dict[str, float]) -> str:
    return ", ".join(f"{k} {available.get(k, 0):g}/{v:g}" for k, v in sorted(total.items()))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
            for r in cells]


# --- bench ----------------------------------------------------------------------------------


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("actorz.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "actorz.bench":
            raise
        print("actorz bench: error: the benchmark suite (actorz/bench.py) is not part of this "
              "installation of actorz", file=sys.stderr)
        return EXIT_ERROR
    try:
        code = bench.main(argv)
    except SystemExit as exc:  # its own --help or usage errors
        code = exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return int(code or 0)


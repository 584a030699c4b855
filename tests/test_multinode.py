"""Clusters of several nodes started with the ``actorz`` command, joined by driver programs.

One cluster serves the module: a broker and three node agents (``n1``, ``n2``, and
``n3`` with a ``gpu``), each its own process group on loopback TCP, one task worker per
node. Drivers are scripts run with ``sys.executable``. Tests that need an empty cluster
wait for it; every detached actor a test makes, it kills. Waits poll the broker's status
under a deadline. At the end every process the module started must be gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from test_cli import (
    WAIT_S,
    Processes,
    actorz_cmd,
    result_of,
    start_broker,
    start_node,
    status,
    wait_status,
)

#: Owners and nodes are declared lost after 5 s of silence (checked every 0.5 s).
LOSS_DETECTED_S = 12.0


class Cluster:
    def __init__(self, procs: Processes, address: str) -> None:
        self.procs = procs
        self.address = address

    def driver(self, code: str, **kw: Any) -> tuple[Any, str]:
        return self.procs.driver(self.address, code, **kw)

    def start_driver(self, code: str) -> Any:
        return self.procs.start([sys.executable, "-c", textwrap.dedent(code)],
                                ACTORZ_ADDRESS=self.address)

    def wait_empty(self) -> dict[str, Any]:
        """Until no actor and no driver is left from an earlier test."""
        return wait_status(self.address, lambda s: not s["actors"] and not s["drivers"],
                           "an empty cluster")

    def node_of(self, s: dict[str, Any]) -> dict[str, str]:
        return {a["id"]: a["node"] for a in s["actors"]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    procs = Processes()
    try:
        _, address = start_broker(procs)
        start_node(procs, address, "n1", wait=False)
        start_node(procs, address, "n2", wait=False)
        start_node(procs, address, "n3", "--resources", '{"gpu": 1}', wait=False)
        wait_status(address, lambda s: sorted((n["name"], n["workers"]) for n in s["nodes"])
                    == [("n1", 1), ("n2", 1), ("n3", 1)], "three nodes with their workers")
        for proc in procs.started:
            proc.remember()
        yield Cluster(procs, address)
    finally:
        procs.stop_all_and_check()


def test_actors_spread_over_the_nodes_and_call_each_other_across_them(cluster: Cluster) -> None:
    cluster.wait_empty()
    result, out = cluster.driver("""
        import json, os, actorz
        from actorz.cli import fetch_status
        actorz.init()

        @actorz.remote
        class Peer:
            def __init__(self, i):
                self.i = i
            def pid(self):
                print(f"peer {self.i} here")
                return os.getpid()
            def ask(self, other):  # a handle to an actor on another node
                return actorz.get(other.pid.remote(), timeout=30)
            def echo(self, value):
                return value
            def unwrap(self, refs):  # a ref owned by the driver, fetched from here
                return actorz.get(refs[0], timeout=30)

        peers = [Peer.remote(i) for i in range(6)]
        pids = actorz.get([p.pid.remote() for p in peers], timeout=30)
        # One at a time: all at once, the ring of blocking calls would deadlock
        # (one thread per threaded actor, as in Ray).
        asked = [actorz.get(peers[i].ask.remote(peers[(i + 1) % 6]), timeout=30)
                 for i in range(6)]
        nested = actorz.get(peers[1].unwrap.remote([peers[0].echo.remote("payload")]),
                            timeout=30)
        s = fetch_status(os.environ["ACTORZ_ADDRESS"])
        print("RESULT", json.dumps({"ids": [p._actorz_id.hex() for p in peers], "pids": pids,
                                     "asked": asked, "nested": nested, "status": s}))
    """)
    nodes = {a["id"]: a["node"] for a in result["status"]["actors"]}
    placed = [nodes[i] for i in result["ids"]]
    # Least loaded first: six actors on three empty nodes, two each.
    assert sorted(placed) == ["n1", "n1", "n2", "n2", "n3", "n3"], placed
    assert all(placed[i] != placed[(i + 1) % 6] for i in range(6)), placed
    assert result["asked"] == result["pids"][1:] + result["pids"][:1]
    assert result["nested"] == "payload"
    # Each line printed on a node reaches this driver, prefixed with the node's ip.
    for i, pid in enumerate(result["pids"]):
        line = rf"^\(Peer pid={pid}, ip=127\.0\.0\.1\) peer {i} here$"
        assert re.search(line, out, re.MULTILINE), out


def test_remote_functions_run_on_task_workers_of_every_node(cluster: Cluster) -> None:
    cluster.wait_empty()
    result, out = cluster.driver("""
        import asyncio, json, os, actorz
        actorz.init()

        @actorz.remote
        class Meeting:
            def __init__(self, n):
                self.n, self.arrived = n, 0
                self.changed = asyncio.Condition()
            async def arrive(self):
                async with self.changed:
                    self.arrived += 1
                    self.changed.notify_all()
                    await self.changed.wait_for(lambda: self.arrived >= self.n)
            async def wait_arrived(self, k):
                async with self.changed:
                    await self.changed.wait_for(lambda: self.arrived >= k)

        @actorz.remote
        def meet(meeting):
            print("meeting")
            actorz.get(meeting.arrive.remote(), timeout=60)
            return os.getpid()

        # Three tasks that can only finish together: each must hold a worker of its own,
        # and with one worker per node, that is one task on every node.
        meeting = Meeting.remote(3)
        refs = []
        for k in range(1, 4):
            refs.append(meet.remote(meeting))
            actorz.get(meeting.wait_arrived.remote(k), timeout=30)
        print("RESULT", json.dumps(actorz.get(refs, timeout=30)))
    """)
    workers = {w["pid"]: w["node"] for w in status(cluster.address)["workers"]}
    assert sorted(workers[pid] for pid in result) == ["n1", "n2", "n3"]
    assert len(re.findall(r"^\(meet pid=\d+, ip=127\.0\.0\.1\) meeting$", out, re.MULTILINE)) == 3


def test_named_actors_are_found_from_other_drivers_in_their_namespace(cluster: Cluster) -> None:
    cluster.wait_empty()
    define = """
        import json, os, actorz
        from actorz.exceptions import ActorNameTakenError
        @actorz.remote
        class Svc:
            def __init__(self, label):
                self.label = label
            def who(self):
                return self.label
    """
    result, _ = cluster.driver(define + """
        actorz.init()
        Svc.options(name="svc", lifetime="detached").remote("default svc")
        Svc.options(name="svc", namespace="other", lifetime="detached").remote("other svc")
        try:
            Svc.options(name="svc").remote("duplicate")
            taken = None
        except ActorNameTakenError as exc:
            taken = [isinstance(exc, ValueError), str(exc)]
        print("RESULT", json.dumps(taken))
    """)
    assert result[0] is True
    assert "an actor named 'svc' already exists in namespace 'default'" in result[1]

    result, _ = cluster.driver(define + """
        actorz.init()
        found = [actorz.get(actorz.get_actor("svc").who.remote(), timeout=30),
                 actorz.get(actorz.get_actor("svc", namespace="other").who.remote(),
                            timeout=30)]
        try:
            actorz.get_actor("nobody")
        except ValueError as exc:
            found.append(str(exc))
        print("RESULT", json.dumps(found))
    """)
    assert result == ["default svc", "other svc", "no actor named 'nobody' in namespace 'default'"]

    result, _ = cluster.driver(define + """
        actorz.init(namespace="other")
        print("RESULT", json.dumps(actorz.get(actorz.get_actor("svc").who.remote(),
                                              timeout=30)))
    """)
    assert result == "other svc"

    # get_if_exists from two drivers at once: one actor, whoever wins.
    racers = [cluster.start_driver(define + """
        actorz.init()
        ids = [Svc.options(name="shared", get_if_exists=True, lifetime="detached")
               .remote("shared")._actorz_id.hex() for _ in range(5)]
        print("RESULT", json.dumps(ids))
    """) for _ in range(2)]
    ids = set()
    for racer in racers:
        assert racer.wait() == 0, racer.output
        ids.update(result_of(racer.output))
    assert len(ids) == 1, ids
    s = status(cluster.address)
    assert sorted((a["namespace"], a["name"]) for a in s["actors"]) == [
        ("default", "shared"), ("default", "svc"), ("other", "svc")]

    cluster.driver("""
        import actorz
        actorz.init()
        for name, ns in [("svc", None), ("svc", "other"), ("shared", None)]:
            actorz.kill(actorz.get_actor(name, namespace=ns))
        print("RESULT null")
    """)
    cluster.wait_empty()


def test_owned_actors_stop_with_a_killed_driver_and_detached_ones_live_on(
        cluster: Cluster) -> None:
    cluster.wait_empty()
    driver = cluster.start_driver("""
        import json, os, time, actorz
        actorz.init()
        @actorz.remote
        class Pid:
            def pid(self):
                return os.getpid()
        owned = Pid.remote()
        kept = Pid.options(name="survivor", lifetime="detached").remote()
        print("RESULT", json.dumps({"owned": actorz.get(owned.pid.remote(), timeout=30),
                                     "kept": actorz.get(kept.pid.remote(), timeout=30),
                                     "owned_id": owned._actorz_id.hex()}), flush=True)
        time.sleep(300)  # until the test kills this process
    """)
    driver.wait_for(r"^RESULT ")
    result = result_of(driver.output)
    owned, kept = psutil.Process(result["owned"]), psutil.Process(result["kept"])
    assert len(status(cluster.address)["drivers"]) == 1

    driver.kill_group()  # SIGKILL: no goodbye, the broker must notice the silence
    killed = time.monotonic()
    s = wait_status(cluster.address, lambda s: result["owned_id"] not in cluster.node_of(s),
                    "the owned actor stopped", timeout=LOSS_DETECTED_S + 5)
    assert time.monotonic() - killed < LOSS_DETECTED_S
    assert s["drivers"] == []
    assert [a["name"] for a in s["actors"]] == ["survivor"]
    psutil.wait_procs([owned], timeout=10)
    assert not owned.is_running() or owned.status() == psutil.STATUS_ZOMBIE

    result, _ = cluster.driver("""
        import json, os, actorz
        actorz.init()
        survivor = actorz.get_actor("survivor")
        pid = actorz.get(survivor.pid.remote(), timeout=30)
        actorz.kill(survivor)
        print("RESULT", json.dumps(pid))
    """)
    assert result == kept.pid
    cluster.wait_empty()
    psutil.wait_procs([kept], timeout=10)
    assert not kept.is_running() or kept.status() == psutil.STATUS_ZOMBIE


def test_an_actor_no_node_can_host_fails_naming_what_is_missing(cluster: Cluster) -> None:
    cluster.wait_empty()
    result, _ = cluster.driver("""
        import json, os, actorz
        from actorz.cli import fetch_status
        from actorz.exceptions import ActorDiedError, ActorzError
        actorz.init()
        @actorz.remote
        class Gpu:
            def ok(self):
                return True
        out = {}
        g = Gpu.options(resources={"gpu": 1}).remote()
        out["gpu"] = actorz.get(g.ok.remote(), timeout=30)
        out["gpu_node"] = [a["node"] for a in fetch_status(os.environ["ACTORZ_ADDRESS"])["actors"]]
        try:
            actorz.get(Gpu.options(resources={"gpu": 1}).remote().ok.remote(), timeout=30)
        except ActorDiedError as exc:
            out["second_gpu"] = str(exc)
        try:
            actorz.get(Gpu.options(resources={"tpu": 2}, num_cpus=1).remote().ok.remote(),
                       timeout=30)
        except ActorDiedError as exc:
            out["tpu"] = str(exc)
        try:
            Gpu.options(name="named", resources={"tpu": 1}).remote()
        except ActorzError as exc:
            out["named"] = str(exc)
        print("RESULT", json.dumps(out))
    """)
    assert result["gpu"] is True and result["gpu_node"] == ["n3"]
    assert "cannot create actor Gpu" in result["second_gpu"]
    assert "missing gpu=1 (at most 0 of it is free now" in result["second_gpu"]
    assert "missing tpu=2 (no node has that much tpu" in result["tpu"]
    assert "CPU=1" in result["tpu"] and "CPU=1 (" not in result["tpu"]  # CPU is not missing
    assert "missing tpu=1" in result["named"]


def test_pickle_by_value_ships_a_module_the_nodes_cannot_import(cluster: Cluster,
                                                                tmp_path: Any) -> None:
    cluster.wait_empty()
    name = f"azmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import actorz\n"
        "def helper(x):\n    return x * 2\n"
        "@actorz.remote\ndef double(x):\n    return helper(x)\n"
        "@actorz.remote\nclass Doubler:\n    def run(self, x):\n        return helper(x)\n"
        "class Point:\n    def __init__(self, x):\n        self.x = x\n"
        "@actorz.remote\ndef bigger(p):\n    return Point(p.x + 1)\n")
    # Decorated functions and classes travel by value anyway (the module attribute is
    # the wrapper, so pickling by reference cannot work); the helpers they use do not.
    (tmp_path / f"{name}_ref.py").write_text(
        "import actorz\ndef helper(x):\n    return 3 * x\n"
        "@actorz.remote\ndef triple(x):\n    return helper(x)\n")
    result, _ = cluster.driver(f"""
        import json, shutil, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import {name}, {name}_ref
        sys.path.remove({str(tmp_path)!r})
        shutil.rmtree({str(tmp_path)!r})  # from now on no process can import them
        import actorz
        actorz.init(pickle_by_value=[{name}])
        out = [actorz.get({name}.double.remote(21), timeout=30),
               actorz.get({name}.Doubler.remote().run.remote(4), timeout=30),
               # an instance of one of its classes, as an argument and as a value
               actorz.get({name}.bigger.remote({name}.Point(1)), timeout=30).x]
        try:  # not registered: it travels by reference and the worker cannot import it
            actorz.get({name}_ref.triple.remote(1), timeout=30)
        except ModuleNotFoundError as exc:
            out.append(str(exc))
        print("RESULT", json.dumps(out))
    """)
    assert result[:3] == [42, 8, 2]
    assert f"No module named '{name}_ref'" in result[3]


def test_a_lost_node_fails_its_actors_and_leaves_the_cluster(cluster: Cluster) -> None:
    cluster.wait_empty()
    doomed = start_node(cluster.procs, cluster.address, "doomed", "--resources",
                        '{"doomed": 1}')
    driver = cluster.start_driver("""
        import json, os, time, actorz
        from actorz.exceptions import ActorDiedError
        actorz.init()
        @actorz.remote
        class Pid:
            def pid(self):
                return os.getpid()
        a = Pid.options(resources={"doomed": 1}).remote()
        print("RESULT", json.dumps(actorz.get(a.pid.remote(), timeout=30)), flush=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # calls go on until the actor is known dead
            try:
                actorz.get(a.pid.remote(), timeout=10)
            except ActorDiedError as exc:
                print("DIED", exc, flush=True)
                break
    """)
    driver.wait_for(r"^RESULT ")
    actor = psutil.Process(result_of(driver.output))
    doomed.remember()
    assert actor.pid in doomed.seen
    doomed.kill_group()  # the node agent and its template: as if the host went away
    killed = time.monotonic()
    assert driver.wait_for(r"^DIED (.*)").group(1)
    assert driver.wait() == 0, driver.output
    wait_status(cluster.address, lambda s: "doomed" not in [n["name"] for n in s["nodes"]],
                "the lost node dropped", timeout=LOSS_DETECTED_S + 5)
    assert time.monotonic() - killed < LOSS_DETECTED_S
    doomed.assert_gone_with_children()
    cluster.wait_empty()


def test_the_load_balancer_example_spreads_its_backends_over_the_nodes(
        cluster: Cluster) -> None:
    pytest.importorskip("aiohttp")
    cluster.wait_empty()
    example = cluster.procs.start([sys.executable, "-m", "examples.loadbalancer",
                                   "--address", cluster.address, "--backends", "6",
                                   "--port", "0"])
    url = example.wait_for(r"Serving on (http://\S+)").group(1)
    s = status(cluster.address)
    backends = [a["node"] for a in s["actors"] if a["class_name"] == "Backend"]
    assert sorted(backends) == ["n1", "n1", "n2", "n2", "n3", "n3"], backends
    seen = set()
    for _ in range(6):
        with urllib.request.urlopen(url + "/", timeout=WAIT_S) as resp:
            assert resp.status == 200
            seen.add(json.load(resp)["backend"])
    assert len(seen) >= 2  # idle backends take turns
    text = cluster.procs.run(actorz_cmd("status", "--address", cluster.address))
    assert text.stdout.count(" Backend ") == 6, text.stdout
    example.signal(signal.SIGINT)
    assert example.wait() == 0, example.output
    cluster.wait_empty()


# --- nodes in network namespaces ------------------------------------------------------------


def _netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


class Netns:
    """Network namespaces and veth pairs made for one test, removed at its end.

    Private addresses exist only inside these namespaces: traffic goes between them.
    """

    def __init__(self) -> None:
        self.tag = f"az{os.getpid() % 100000}{uuid.uuid4().hex[:3]}"
        self.names: list[str] = []

    def ip(self, *args: str, ns: str | None = None) -> None:
        cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S, check=False)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    def add(self, suffix: str) -> str:
        name = f"{self.tag}{suffix}"
        self.ip("netns", "add", name)
        self.names.append(name)
        self.ip("link", "set", "lo", "up", ns=name)
        return name

    def link(self, a: str, a_addr: str, b: str, b_addr: str, n: int) -> None:
        """A veth pair between namespaces a and b, with an address (CIDR) on each end."""
        left, right = f"{self.tag}v{n}a", f"{self.tag}v{n}b"
        self.ip("link", "add", left, "type", "veth", "peer", "name", right)
        self.ip("link", "set", left, "netns", a)
        self.ip("link", "set", right, "netns", b)
        for ns, dev, addr in ((a, left, a_addr), (b, right, b_addr)):
            self.ip("addr", "add", addr, "dev", dev, ns=ns)
            self.ip("link", "set", dev, "up", ns=ns)

    def remove(self) -> None:
        for name in self.names:  # deleting a namespace deletes its end of each veth
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=WAIT_S,
                           check=False)


def test_nodes_in_separate_network_namespaces_work_across_veth_links() -> None:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Netns()
    procs = Processes()
    try:
        try:
            hub = net.add("b")
            n1 = net.add("n1")
            n2 = net.add("n2")
            net.link(hub, "10.213.1.1/24", n1, "10.213.1.2/24", 1)
            net.link(hub, "10.213.2.1/24", n2, "10.213.2.2/24", 2)
        except OSError as exc:
            pytest.skip(f"cannot create network namespaces and veth pairs here: {exc}")
        in_ns = {ns: ("ip", "netns", "exec", ns) for ns in (hub, n1, n2)}
        # Listening on every interface is safe here: the hub namespace has only the two
        # veth links of this test.
        _, bound = start_broker(procs, "--insecure", prefix=in_ns[hub], bind="tcp://0.0.0.0:*")
        port = bound.rsplit(":", 1)[1]
        local = f"tcp://127.0.0.1:{port}"
        start_node(procs, f"tcp://10.213.1.1:{port}", "ns1", prefix=in_ns[n1])
        start_node(procs, f"tcp://10.213.2.1:{port}", "ns2", prefix=in_ns[n2])

        def hub_status() -> dict[str, Any]:
            done = procs.run(actorz_cmd("status", "--json", "--address", local),
                             prefix=in_ns[hub])
            assert done.returncode == 0, done.stderr
            return dict(json.loads(done.stdout))

        deadline = time.monotonic() + WAIT_S
        while sorted((n["name"], n["ip"], n["workers"]) for n in hub_status()["nodes"]) != [
                ("ns1", "10.213.1.2", 1), ("ns2", "10.213.2.2", 1)]:
            assert time.monotonic() < deadline, hub_status()
            time.sleep(0.1)

        result, out = procs.driver(local, """
            import json, os, actorz
            actorz.init()
            @actorz.remote
            class Peer:
                def pid(self):
                    print("here")
                    return os.getpid()
                def ask(self, other):
                    return actorz.get(other.pid.remote(), timeout=30)
            a, b = Peer.remote(), Peer.remote()
            pids = actorz.get([a.pid.remote(), b.pid.remote()], timeout=30)
            print("RESULT", json.dumps({"pids": pids,
                                         "asked": actorz.get(a.ask.remote(b), timeout=30)}))
        """, prefix=in_ns[hub])
        assert result["asked"] == result["pids"][1]
        ips = set(re.findall(r"^\(Peer pid=\d+, ip=(10\.213\.\d\.2)\) here$", out, re.MULTILINE))
        assert ips == {"10.213.1.2", "10.213.2.2"}, out
    finally:
        try:
            procs.stop_all_and_check()
        finally:
            net.remove()

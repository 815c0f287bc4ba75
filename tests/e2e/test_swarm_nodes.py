"""docker-stack.yml on a two-node Swarm on this machine, under steady bounded traffic
through the manager's loopback edge: the second node is a second Docker engine in a
network namespace of its own (scripts/second-node.sh), with its own address and VXLAN
endpoint, as another host would be. Replicas spread over both nodes; every answer is
200 while the worker node is drained, while the service comes back to it with a
rolling update to a new image, and while that update runs across both nodes; when
the worker node is lost (every process of its engine killed), what fails is what was
in flight on it, and the lost replica runs again on the manager; on the node's return
scripts/swarm-rebalance.sh puts a replica on it again (and evens what an update left
uneven). The figures are printed (README, "Several nodes, proven on two"). The
engine is left as it was found: stack removed, node stopped and its namespace, link
and data removed, swarm left."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.e2e.conftest import ROOT, copy_project, docker, wait_until
from tests.e2e.test_swarm import (
    IRIS,
    SERVED_OK,
    SERVICE,
    Swarm,
    Traffic,
    _status,
    build_images,
    stack_env,
    swarm_left_as_found,
)

pytestmark = pytest.mark.e2e
NODE = ROOT / "scripts" / "second-node.sh"
REBALANCE = ROOT / "scripts" / "swarm-rebalance.sh"
MANAGER_ADDR = "198.51.100.1"  # the host's end of the second node's link


def second_node(*args: str, timeout_s: float = 300, check: bool = True) -> str:
    done = subprocess.run(
        ["bash", str(NODE), *args], capture_output=True, text=True, timeout=timeout_s
    )
    if check and done.returncode != 0:
        raise AssertionError(f"second-node.sh {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout.strip()


@dataclass
class TwoNodes(Swarm):
    manager: str = ""
    worker: str = ""

    def tasks(self) -> list[dict[str, Any]]:
        """The service's tasks that should run, with the node they are on."""
        ids = docker(
            "service", "ps", "-q", "--filter", "desired-state=running", SERVICE
        ).stdout.split()
        return json.loads(docker("inspect", *ids).stdout) if ids else []

    def running_on(self) -> list[str]:
        """The node of each running task ("manager" or "worker")."""
        names = {self.manager: "manager", self.worker: "worker"}
        return sorted(
            names.get(t["NodeID"], "?") for t in self.tasks() if t["Status"]["State"] == "running"
        )

    def healthy_containers(self) -> int:
        """Healthy ml-api containers on both engines."""
        count = 0
        for engine in (_host, _worker):
            ids = engine(
                "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={SERVICE}"
            ).split()
            states = (
                engine("inspect", "-f", "{{.State.Health.Status}}", *ids).split() if ids else []
            )
            count += states.count("healthy")
        return count

    def node_status(self, node: str) -> str:
        return docker("node", "inspect", "-f", "{{.Status.State}}", node).stdout.strip()

    def settled(self, where: list[str]) -> bool:
        return self.running_on() == where and self.healthy_containers() == len(where)

    def where(self) -> str:
        """What ``settled`` looks at, and each task's node, image and state: said when
        a wait for it times out."""
        names = {self.manager: "manager", self.worker: "worker"}
        tasks = [
            f"{names.get(t['NodeID'], '?')} {t['Spec']['ContainerSpec']['Image'].split('@')[0]} "
            f"{t['Status']['State']} {t['Status'].get('Err', '')}".strip()
            for t in self.tasks()
        ]
        update = docker(
            "service", "inspect", "-f", "{{json .UpdateStatus}}", SERVICE, check=False
        ).stdout.strip()
        return f"tasks {tasks}, {self.healthy_containers()} healthy, update {update}"


def rebalance(service: str = SERVICE) -> str:
    """scripts/swarm-rebalance.sh on ``service``: what it said (it must succeed)."""
    done = subprocess.run(
        ["bash", str(REBALANCE), service], capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr.strip()


def _host(*args: str) -> str:
    return docker(*args, check=False).stdout


def _worker(*args: str) -> str:
    return second_node("docker", *args, check=False)


@pytest.fixture
def two_nodes(engine: None, tmp_path: Path) -> Iterator[TwoNodes]:
    folder = copy_project(tmp_path / "project")
    build_images(folder)
    key = "nodes-" + os.urandom(16).hex()
    (folder / "secrets" / "api_key.txt").write_text(key + "\n")
    env = stack_env(f"mlapi_e2e_nodes_{uuid.uuid4().hex[:6]}")
    with swarm_left_as_found([], lambda: second_node("stop", timeout_s=120, check=False)):
        second_node("start", timeout_s=120)
        docker("swarm", "init", "--advertise-addr", MANAGER_ADDR)
        token = docker("swarm", "join-token", "-q", "worker").stdout.strip()
        worker = second_node("join", token)
        manager = docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        # no registry: each node has the images it runs copied in
        second_node("load", "ml-api:swarm-v1", "ml-api:swarm-v2", env["PROXY_IMAGE"])
        yield TwoNodes(folder, env, key, manager=manager, worker=worker)
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "mlapi-node2" not in leftovers, leftovers


def _both_serve(nodes: TwoNodes) -> bool:
    """Each node's replica answered some of the traffic (its own ok counter)."""
    served = []
    for engine in (_host, _worker):
        ids = engine("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={SERVICE}")
        served += [float(engine("exec", i, "python", "-c", SERVED_OK) or 0) for i in ids.split()]
    return len(served) == 2 and min(served) > 0


def test_the_stack_on_two_nodes(two_nodes: TwoNodes) -> None:
    nodes = two_nodes
    nodes.deploy()
    wait_until(
        lambda: nodes.settled(["manager", "worker"]),
        240,
        "a healthy replica on each node",
        nodes.where,
    )
    wait_until(lambda: _status(nodes.url + "/health") == 200, 60, "the edge to answer")
    # the manager's edge reaches the worker's replica over the overlay
    with Traffic(nodes.url, nodes.key) as traffic:
        wait_until(lambda: _both_serve(nodes), 30, "both nodes' replicas to answer")
    traffic.report("two nodes")
    assert traffic.failures == [], traffic.failures[:5]

    # the worker drained: its replica moves to the manager, nothing fails
    with Traffic(nodes.url, nodes.key) as traffic:
        time.sleep(2)
        docker("node", "update", "--availability", "drain", nodes.worker)
        wait_until(
            lambda: nodes.settled(["manager", "manager"]),
            180,
            "both replicas on the manager",
            nodes.where,
        )
        time.sleep(2)
    traffic.report("worker drained")
    assert traffic.failures == [], traffic.failures[:5]

    # the worker back, and a rolling update to a new image across both nodes: its first
    # replacement goes to the empty worker; the last meets a tie (start-first: the old
    # task still counts on its node) that Swarm breaks at random, so both may land on
    # the worker. The rebalance script evens them when they are not; nothing fails.
    docker("node", "update", "--availability", "active", nodes.worker)
    with Traffic(nodes.url, nodes.key) as traffic:
        docker(
            "service",
            "update",
            "--detach=false",
            "--image",
            "ml-api:swarm-v2",
            SERVICE,
            timeout_s=300,
        )
        wait_until(
            lambda: "worker" in nodes.running_on() and nodes.healthy_containers() == 2,
            120,
            "a v2 replica on the worker",
            nodes.where,
        )
        print(f"after the update: {nodes.running_on()}; {rebalance()}")
        wait_until(
            lambda: nodes.settled(["manager", "worker"]),
            120,
            "a v2 replica on each node",
            nodes.where,
        )
        time.sleep(2)
    traffic.report("rolling update over both nodes")
    assert traffic.failures == [], traffic.failures[:5]
    assert nodes.image() == "ml-api:swarm-v2"

    # the worker lost: every process of its engine killed at once. What fails is what
    # was in flight on it and what reached its address before the proxies' DNS let it
    # go; the manager marks the node down and runs its replica itself.
    with Traffic(nodes.url, nodes.key) as traffic:
        time.sleep(3)
        killed = time.monotonic()
        second_node("kill")
        wait_until(lambda: nodes.node_status(nodes.worker) == "down", 120, "the node marked down")
        detected = time.monotonic() - killed
        wait_until(
            lambda: nodes.settled(["manager", "manager"]),
            180,
            "the lost replica replaced",
            nodes.where,
        )
        rescheduled = time.monotonic() - killed
        time.sleep(3)
    traffic.report("worker lost")
    print(
        f"worker lost: marked down after {detected:.1f} s, its replica healthy on the "
        f"manager after {rescheduled:.1f} s; {len(traffic.failures)} of {traffic.total} "
        f"requests not 200: {traffic.failures[:4]}"
    )
    # one request out per client at a time: at most one each was in flight on it
    assert len(traffic.failures) <= traffic.workers, traffic.failures

    # the node returns (its engine restarted, its swarm state kept) empty: the rebalance
    # script puts a replica on it again (one more replica, then back), nothing failing
    second_node("restart", timeout_s=120)
    wait_until(lambda: nodes.node_status(nodes.worker) == "ready", 120, "the node back")
    assert nodes.running_on() == ["manager", "manager"]
    with Traffic(nodes.url, nodes.key) as traffic:
        said = rebalance()
        assert "uneven" in said, said
        wait_until(
            lambda: nodes.settled(["manager", "worker"]),
            120,
            "a replica on each again",
            nodes.where,
        )
        time.sleep(2)
    assert "spread already" in rebalance()  # even now: it does nothing
    unknown = subprocess.run(
        ["bash", str(REBALANCE), "no-such-service"], capture_output=True, text=True, timeout=60
    )
    assert unknown.returncode == 2 and "no service" in unknown.stderr, unknown.stderr
    traffic.report("node back, rebalanced")
    assert traffic.failures == [], traffic.failures[:5]
    answer = httpx.post(
        nodes.url + "/v2/models/iris/infer", json=IRIS, headers={"X-API-Key": nodes.key}, timeout=10
    )
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"

"""docker-stack.yml on a single-node Swarm on the real engine, under steady traffic
(>= 100 requests/s through the edge, bounded in count and time): deploy, the key,
loopback only (proved from a network namespace of the test's own), a rolling update
to a new image, an update that never gets ready rolled back by Swarm itself, scaling
to 4 and back, a replica's server killed from the host, and the key rotated. The
engine is left as it was found: stack removed, swarm left, namespace deleted."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from tests.e2e.conftest import CA_BUNDLE, copy_project, docker, wait_until
from tests.fixtures.grpc import infer, triton_client

pytestmark = pytest.mark.e2e
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}
STACK = "mlapi-e2e"
SERVICE = f"{STACK}_ml-api"


def _own_address() -> str:
    """This machine's own address on its default route (what Swarm advertises)."""
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "default"], capture_output=True, text=True, check=True
    ).stdout.split()
    device = routes[routes.index("dev") + 1]
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", device],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return shown[shown.index("inet") + 1].split("/")[0]


@dataclass
class Traffic:
    """Clients sending the iris request through the edge in a loop: ``workers``
    threads, each paced to ``per_worker_rps``, until stopped (at most ``max_s``)."""

    url: str
    key: str
    workers: int = 4
    per_worker_rps: float = 35.0
    max_s: float = 300.0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = 0.0
    stopped: float = 0.0

    def __enter__(self) -> Traffic:
        self.started = time.monotonic()
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.stopped = time.monotonic()

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        interval = 1.0 / self.per_worker_rps
        deadline = time.monotonic() + self.max_s
        with httpx.Client(headers=headers, timeout=30) as client:
            next_at = time.monotonic()
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.post(self.url + "/v2/models/iris/infer", json=IRIS)
                    status = response.status_code
                    detail = response.text[:200] if status != 200 else ""
                except httpx.HTTPError as exc:
                    status, detail = 0, repr(exc)
                with self._lock:
                    self.statuses[status] += 1
                    if status != 200:
                        self.failures.append(f"{status} {detail}")
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def rate(self) -> float:
        return self.total / max(1e-9, self.stopped - self.started)

    def report(self, phase: str) -> None:
        print(
            f"{phase}: {self.total} requests in {self.stopped - self.started:.0f} s "
            f"({self.rate():.0f}/s), {dict(self.statuses)}"
        )


@dataclass
class Swarm:
    folder: Path
    env: dict[str, str]
    key: str
    secrets: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['API_PORT']}"

    def deploy(self) -> None:
        subprocess.run(
            ["docker", "stack", "deploy", "-c", "docker-stack.yml", STACK],
            cwd=self.folder,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )

    def containers(self) -> list[dict[str, Any]]:
        """The running containers of the model server (one may stop between the two
        calls: inspect then lists the others)."""
        ids = docker(
            "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={SERVICE}"
        ).stdout.split()
        found = docker("inspect", *ids, check=False).stdout if ids else ""
        return json.loads(found) if found.strip() else []

    def healthy(self, count: int) -> bool:
        found = self.containers()
        states = [c["State"].get("Health", {}).get("Status") for c in found]
        return len(found) == count and states.count("healthy") == count

    def image(self) -> str:
        spec = json.loads(docker("service", "inspect", SERVICE).stdout)[0]["Spec"]
        return str(spec["TaskTemplate"]["ContainerSpec"]["Image"]).split("@")[0]

    def update_state(self) -> str:
        status = json.loads(docker("service", "inspect", SERVICE).stdout)[0].get("UpdateStatus")
        return str(status["State"]) if status else ""


def _build(folder: Path, tag: str, dockerfile: str | None = None) -> None:
    """The production image as the compose files build it (``tag`` of ml-api), or a
    one-line variant of it from ``dockerfile``."""
    if dockerfile is None:
        env = {
            **os.environ,
            "MLAPI_TAG": tag.split(":")[1],
            "PYTHON_IMAGE": os.environ.get("MLAPI_TEST_BASE_IMAGE", "mlapi-base:bookworm"),
            "PIP_CA_FILE": CA_BUNDLE if Path(CA_BUNDLE).exists() else "/dev/null",
            "COMPOSE_PROGRESS": "quiet",
        }
        command = ["docker", "compose", "-f", "docker-compose.yml", "build", "ml-api"]
    else:
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        command = ["docker", "build", "-q", "--force-rm", "-t", tag, "-"]
    subprocess.run(
        command,
        input=dockerfile,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )


def build_images(folder: Path) -> None:
    """ml-api:swarm-v1, the production image; ml-api:swarm-v2, the same server whose
    bundled default model has a version 2."""
    _build(folder, "ml-api:swarm-v1")
    models = (
        "$(python -c 'import mlapi, os; print(os.path.dirname(mlapi.__file__))')/default_models"
    )
    _build(
        folder,
        "ml-api:swarm-v2",
        f"FROM ml-api:swarm-v1\nUSER root\nRUN cp -r {models}/iris/1 {models}/iris/2\n"
        "USER 1000:1000\n",
    )


def stack_env(secret_name: str) -> dict[str, str]:
    """The variables `docker stack deploy` gets: the test images, free loopback ports,
    one worker on one CPU, short health and update timings."""
    return {
        "MLAPI_IMAGE": "ml-api",
        "MLAPI_TAG": "swarm-v1",
        "PROXY_IMAGE": os.environ.get("MLAPI_TEST_NGINX_IMAGE", "mlapi-nginx:bookworm"),
        "API_PORT": str(free_port()),
        "API_GRPC_PORT": str(free_port()),
        "API_KEY_SECRET_NAME": secret_name,
        "WORKERS": "1",
        "ML_API_CPUS": "1",
        "ML_API_START_PERIOD": "10s",
        "ML_API_UPDATE_MONITOR": "25s",
    }


@contextlib.contextmanager
def swarm_left_as_found(secrets: list[str], before_leaving: Callable[[], object]) -> Iterator[None]:
    """Whatever the body does or fails: the stack removed, ``before_leaving`` (a second
    node stopped), the swarm left, and what it made (its bridge network, the stack's
    volumes and secrets, the model cache volume, the v2 and bad images) removed."""
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    assert state == "inactive", f"the engine is already in a swarm ({state}): not touching it"
    had_cache = "model_cache_1" in docker("volume", "ls", "-q").stdout.split()
    had_gwbridge = "docker_gwbridge" in docker("network", "ls", "--format", "{{.Name}}").stdout
    try:
        yield
    finally:
        docker("stack", "rm", STACK, check=False)
        wait_until(
            lambda: (
                not docker(
                    "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={STACK}"
                ).stdout.strip()
            ),
            120,
            "the stack's containers to go",
        )
        for name in secrets:
            docker("secret", "rm", name, check=False)
        before_leaving()
        docker("swarm", "leave", "--force", check=False)
        if not had_gwbridge:  # swarm init made it; leaving does not remove it
            docker("network", "rm", "docker_gwbridge", check=False)
        volumes = docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={STACK}"
        ).stdout.split()
        if volumes:
            docker("volume", "rm", "-f", *volumes, check=False)
        if not had_cache:
            docker("volume", "rm", "-f", "model_cache_1", check=False)
        for tag in ("v2", "bad"):
            docker("image", "rm", "-f", f"ml-api:swarm-{tag}", check=False)


@pytest.fixture
def swarm(engine: None, tmp_path: Path) -> Iterator[Swarm]:
    folder = copy_project(tmp_path / "project")
    build_images(folder)
    # bad: never gets ready
    _build(folder, "ml-api:swarm-bad", 'FROM ml-api:swarm-v1\nENTRYPOINT ["sleep"]\nCMD ["3600"]\n')
    key = "swarm-" + os.urandom(16).hex()
    secret = folder / "secrets" / "api_key.txt"
    secret.write_text(key + "\n")
    env = stack_env(f"mlapi_e2e_key_{uuid.uuid4().hex[:6]}_1")
    cluster = Swarm(folder, env, key)
    with swarm_left_as_found(cluster.secrets, lambda: None):
        docker("swarm", "init", "--advertise-addr", _own_address())
        yield cluster


def _model_versions(url: str, key: str, count: int) -> Counter[str]:
    """The model versions that answer ``count`` inferences through the edge."""
    with httpx.Client(headers={"X-API-Key": key}, timeout=10) as client:
        return Counter(
            client.post(url + "/v2/models/iris/infer", json=IRIS).json()["model_version"]
            for _ in range(count)
        )


# run inside a replica: prints its mlapi_requests_total{outcome="ok"}
SERVED_OK = (
    "import urllib.request as u; "
    "t = u.urlopen('http://127.0.0.1:8000/metrics').read().decode(); "
    "print(sum(float(l.rsplit(' ', 1)[1]) for l in t.splitlines() "
    "if l.startswith('mlapi_requests_total{') and 'outcome=\"ok\"' in l))"
)


def _served_ok(container_id: str) -> float:
    """mlapi_requests_total{outcome="ok"} of one replica, read inside it."""
    return float(docker("exec", container_id, "python", "-c", SERVED_OK).stdout)


def _loopback_only(swarm: Swarm) -> None:
    """From a network namespace the test makes (a veth pair, addresses from the
    documentation range 198.51.100.0/30, which this machine does not use), the host
    end's API ports refuse while a control listener on every interface answers.
    Traffic goes only between the two ends of that pair."""
    in_use = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    assert "198.51.100." not in in_use, "the test's addresses are this machine's"
    tag = uuid.uuid4().hex[:6]
    namespace, host_end, ns_end = f"mlapi-{tag}", f"mlh{tag}", f"mln{tag}"
    control = socket.socket()
    control.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    control.bind(("0.0.0.0", 0))
    control.listen(4)
    control_port = control.getsockname()[1]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def connect_from_namespace(port: int) -> str:
        probe = (
            "import socket, sys\n"
            "s = socket.socket(); s.settimeout(3)\n"
            f"try:\n    s.connect(('198.51.100.1', {port})); print('open')\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except OSError as e: print('error', e)\n"
        )
        return subprocess.run(
            ["ip", "netns", "exec", namespace, "python3", "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()

    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        ip("link", "set", ns_end, "netns", namespace)
        ip("addr", "add", "198.51.100.1/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("netns", "exec", namespace, "ip", "addr", "add", "198.51.100.2/30", "dev", ns_end)
        ip("netns", "exec", namespace, "ip", "link", "set", ns_end, "up")
        assert connect_from_namespace(control_port) == "open"
        for port in (swarm.env["API_PORT"], swarm.env["API_GRPC_PORT"]):
            assert connect_from_namespace(int(port)) == "refused", port
            with socket.create_connection(("127.0.0.1", int(port)), timeout=3):
                pass  # and it does listen, on loopback
    finally:
        control.close()
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30)


def test_the_stack_on_a_single_node_swarm(swarm: Swarm) -> None:
    swarm.deploy()
    wait_until(lambda: swarm.healthy(2), 240, "two healthy replicas")
    wait_until(lambda: _status(swarm.url + "/health") == 200, 60, "the edge to answer")
    # the key: 401 without it, answers with it, over HTTP and gRPC
    assert httpx.post(swarm.url + "/v2/models/iris/infer", json=IRIS, timeout=10).status_code == 401
    ok = httpx.post(
        swarm.url + "/v2/models/iris/infer", json=IRIS, timeout=10, headers={"X-API-Key": swarm.key}
    )
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == ["setosa"]
    rows = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    with triton_client(f"127.0.0.1:{swarm.env['API_GRPC_PORT']}") as client:
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            infer(client, "iris", rows, "FP32")
        answer = infer(client, "iris", rows, "FP32", headers={"x-api-key": swarm.key})
        assert answer.as_numpy("label").tolist() == [b"setosa"]
    # what Swarm kept of the hardening
    for container in swarm.containers():
        host = container["HostConfig"]
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
        assert container["Config"]["User"] == "1000:1000"
        assert host["Memory"] == 1024**3 and host["NanoCpus"] == 1_000_000_000
        cid = str(container["Id"])
        setuid = docker(
            "exec", "-u", "0", cid, "find", "/", "-xdev", "-type", "f", "-perm", "/6000"
        )
        assert setuid.stdout == "", setuid.stdout  # no-new-privileges' stand-in
        assert swarm.key not in json.dumps(container)
    _loopback_only(swarm)

    # a rolling update to a new image under traffic: nothing fails, then all is new
    assert _model_versions(swarm.url, swarm.key, 20) == Counter({"1": 20})
    with Traffic(swarm.url, swarm.key) as traffic:
        time.sleep(2)
        docker(
            "service",
            "update",
            "--detach=false",
            "--image",
            "ml-api:swarm-v2",
            "--limit-pids",  # what the stack file cannot carry (README)
            "256",
            SERVICE,
            timeout_s=300,
        )
        time.sleep(2)
    traffic.report("rolling update")
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.rate() >= 100, traffic.rate()
    assert swarm.image() == "ml-api:swarm-v2"
    # the new image brought iris version 2; every replica serves it now
    wait_until(
        lambda: _model_versions(swarm.url, swarm.key, 20) == Counter({"2": 20}),
        30,
        "every answer from model version 2",
    )
    assert {c["HostConfig"]["PidsLimit"] for c in swarm.containers()} == {256}

    # an image that never gets ready: Swarm rolls back by itself, nothing fails
    with Traffic(swarm.url, swarm.key) as traffic:
        docker("service", "update", "--detach=true", "--image", "ml-api:swarm-bad", SERVICE)
        wait_until(lambda: swarm.update_state() == "rollback_completed", 240, "the rollback")
        time.sleep(2)
    traffic.report("bad update rolled back")
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.rate() >= 100, traffic.rate()
    assert swarm.image() == "ml-api:swarm-v2"
    wait_until(lambda: swarm.healthy(2), 60, "two healthy replicas after the rollback")

    # scale to 4 under traffic: the proxy uses every new replica; back to 2
    with Traffic(swarm.url, swarm.key) as traffic:
        docker("service", "scale", "--detach=true", f"{SERVICE}=4")
        wait_until(lambda: swarm.healthy(4), 180, "four healthy replicas")
        before = {str(c["Id"]): _served_ok(str(c["Id"])) for c in swarm.containers()}
        time.sleep(8)  # the proxy's DNS cache (5 s), then traffic to all four
        after = {cid: _served_ok(cid) for cid in before}
        assert all(after[cid] > before[cid] for cid in before), (before, after)
        docker("service", "scale", "--detach=true", f"{SERVICE}=2")
        wait_until(lambda: swarm.healthy(2), 120, "two replicas again")
        time.sleep(2)
    traffic.report("scale 4 and back")
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.rate() >= 100, traffic.rate()

    # a replica's server process killed from the host: replaced; what fails is at
    # most what was in flight on it (each client has one request out at a time)
    with Traffic(swarm.url, swarm.key) as traffic:
        time.sleep(2)
        victim = swarm.containers()[0]
        os.kill(int(victim["State"]["Pid"]), 9)
        wait_until(
            lambda: (
                swarm.healthy(2)
                and str(victim["Id"]) not in {str(c["Id"]) for c in swarm.containers()}
            ),
            180,
            "a healthy replacement",
        )
        time.sleep(2)
    traffic.report("replica killed")
    assert len(traffic.failures) <= traffic.workers, traffic.failures

    # the key rotated: a new secret name, a rolling update; then the new key
    # answers and the old one is refused
    new_key = "swarm-" + os.urandom(16).hex()
    new_file = swarm.folder / "secrets" / "api_key_2.txt"
    new_file.write_text(new_key + "\n")
    new_name = swarm.env["API_KEY_SECRET_NAME"][:-1] + "2"
    docker("secret", "create", new_name, str(new_file))
    swarm.secrets.append(new_name)
    with Traffic(swarm.url, swarm.key) as during:  # clients still on the old key
        docker(
            "service",
            "update",
            "--detach=false",
            "--secret-rm",
            swarm.env["API_KEY_SECRET_NAME"],
            "--secret-add",
            f"source={new_name},target=api_key,uid=1000,gid=1000,mode=0400",
            SERVICE,
            timeout_s=300,
        )
    during.report("key rotation, old key")
    assert set(during.statuses) <= {200, 401}, during.failures[:5]  # refused, never failed
    with Traffic(swarm.url, new_key) as traffic:
        time.sleep(5)
    traffic.report("after rotation, new key")
    assert traffic.failures == [] and traffic.total > 300, (traffic.total, traffic.failures[:5])
    old = httpx.post(
        swarm.url + "/v2/models/iris/infer", json=IRIS, timeout=10, headers={"X-API-Key": swarm.key}
    )
    assert old.status_code == 401


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None

"""docker-compose.yml + docker-compose.prod.yml on a real engine: two replicas
behind nginx on one loopback address, the key as a Docker secret, hardening and
limits applied, a crashed replica restarted, the models volume kept by `down`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from tests.e2e.conftest import ROOT, Stack, docker, make_stack, wait_until, write_api_key
from tests.fixtures.grpc import health_of, health_stub, infer, triton_client

pytestmark = pytest.mark.e2e
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}
PROD = ["docker-compose.yml", "docker-compose.prod.yml"]


def _infer(stack: Stack, key: str | None, model: str = "iris") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{stack.url}/v2/models/{model}/infer", json=IRIS, headers=headers, timeout=10
    )


def _healthy(stack: Stack, count: int) -> bool:
    states = [c["State"].get("Health", {}).get("Status") for c in stack.containers("ml-api")]
    return states.count("healthy") == count


def test_production_stack(stack_factory: list[Stack], tmp_path: Path) -> None:
    stack = make_stack(tmp_path, PROD)
    stack_factory.append(stack)
    key = write_api_key(stack)

    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240")

    # health on the one loopback address, nothing published anywhere else
    assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200
    replicas = stack.containers("ml-api")
    assert len(replicas) == 2
    everything = replicas + stack.containers("proxy")
    for container in everything:
        bindings = container["HostConfig"]["PortBindings"] or {}
        for port_bindings in bindings.values():
            assert all(b["HostIp"] == "127.0.0.1" for b in port_bindings), bindings
    assert all(not (c["HostConfig"]["PortBindings"] or {}) for c in replicas)

    # auth with the key from the secret file
    assert _infer(stack, None).status_code == 401
    assert _infer(stack, "wrong").status_code == 401
    ok = _infer(stack, key)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == ["setosa"]

    # the key is in no inspect output, environment or image history
    for container in everything:
        assert key not in json.dumps(container)
    image = replicas[0]["Image"]
    assert key not in docker("image", "inspect", str(image)).stdout
    assert key not in docker("history", "--no-trunc", str(image)).stdout
    assert key not in stack.compose("logs", "--no-color").stdout
    assert key not in httpx.get(f"{stack.url}/metrics", timeout=10).text
    assert key not in _infer(stack, key[:-1] + "x").text  # an error body

    # uid 1000, hardening and limits
    for container in replicas:
        cid = str(container["Id"])
        assert docker("exec", cid, "id", "-u").stdout.strip() == "1000"
        host = container["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["NanoCpus"] == 2_000_000_000
        assert host["Memory"] == 1024**3
        assert host["PidsLimit"] == 256
        assert host["RestartPolicy"]["Name"] == "always"
        env = container["Config"]["Env"]
        assert "OMP_NUM_THREADS=2" in env and "API_KEY_FILE=/run/secrets/api_key" in env

    # both replicas answer traffic sent to the one address
    with httpx.Client(base_url=stack.url, headers={"X-API-Key": key}, timeout=10) as client:
        for _ in range(40):
            assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200
    replica_ips = {
        next(iter(c["NetworkSettings"]["Networks"].values()))["IPAddress"] for c in replicas
    }
    proxy_log = stack.compose("logs", "--no-color", "proxy").stdout
    served_by = set(re.findall(r"upstream=([0-9.]+):8000", proxy_log))
    assert served_by == replica_ips, (served_by, replica_ips)

    # gRPC through the proxy too: the key, both replicas, answers as over HTTP
    _grpc_through_the_proxy(stack, key, replica_ips)

    _slow_clients_stay_at_the_proxy(stack, key)

    # a replica whose server process is SIGKILLed is restarted and healthy again
    victim = replicas[0]
    os.kill(int(victim["State"]["Pid"]), signal.SIGKILL)

    def restarted() -> bool:
        (now,) = json.loads(docker("inspect", str(victim["Id"])).stdout)
        return bool(
            now["RestartCount"] >= 1 and now["State"].get("Health", {}).get("Status") == "healthy"
        )

    wait_until(restarted, 120, "the killed replica to restart and be healthy")
    wait_until(lambda: _infer(stack, key).status_code == 200, 30, "service through the proxy")

    # the models volume survives down/up, and goes with down -v
    volume = f"{stack.project}_ml_models_v1"
    docker(
        "run",
        "--rm",
        "-u",
        "1000:1000",
        "-v",
        f"{volume}:/models",
        "--entrypoint",
        "cp",
        str(image),
        "-r",
        "/models/iris",
        "/models/iris_copy",
    )
    stack.compose("down", "-t", "10")
    assert volume in docker("volume", "ls", "-q").stdout.split()
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240")
    assert _infer(stack, key, model="iris_copy").status_code == 200
    stack.compose("down", "-v", "-t", "10")
    assert volume not in docker("volume", "ls", "-q").stdout.split()


def test_the_ci_secret_form_reads_the_key_from_the_environment(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, [*PROD, "docker-compose.ci.yml"])
    stack_factory.append(stack)
    key = "ci-" + os.urandom(16).hex()
    stack.env["ML_API_KEY"] = key
    stack.env["ML_API_REPLICAS"] = "1"
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240")
    assert _infer(stack, None).status_code == 401
    assert _infer(stack, key).status_code == 200
    for container in stack.containers("ml-api"):
        assert key not in json.dumps(container)


def test_models_on_a_host_folder_through_the_named_volume(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml", "docker-compose.host-models.yml"])
    stack_factory.append(stack)
    host_models = tmp_path / "host-models"
    shutil.copytree(ROOT / "src" / "mlapi" / "default_models" / "iris", host_models / "flowers")
    stack.env["ML_MODELS_HOST_PATH"] = str(host_models)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240")
    assert _infer(stack, None, model="flowers").status_code == 200
    assert _infer(stack, None, model="iris").status_code == 404  # the host folder, not the image's


def test_monitoring_profile_scrapes_every_replica(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, PROD)
    stack_factory.append(stack)
    key = write_api_key(stack)
    stack.env["MLAPI_PAYLOAD_SAMPLE"] = "1"  # the payload log and drift (issue 26)
    stack.env["PROMETHEUS_IMAGE"] = os.environ.get(
        "MLAPI_TEST_PROMETHEUS_IMAGE", "mlapi-prometheus:bookworm"
    )
    stack.env["PROMETHEUS_PORT"] = str(free_port())
    # Grafana has no image here (not in Debian, no registry): its service is left out.
    stack.compose(
        "--profile",
        "monitoring",
        "up",
        "-d",
        "--build",
        "--wait",
        "--wait-timeout",
        "240",
        "ml-api",
        "proxy",
        "prometheus",
    )
    replica_ips = {
        next(iter(c["NetworkSettings"]["Networks"].values()))["IPAddress"]
        for c in stack.containers("ml-api")
    }
    assert len(replica_ips) == 2
    prometheus = f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"

    def all_up() -> bool:
        try:
            targets = httpx.get(prometheus + "/api/v1/targets", timeout=5).json()["data"]
        except (httpx.HTTPError, ValueError):
            return False
        up = {
            t["labels"]["instance"].split(":")[0]
            for t in targets["activeTargets"]
            if t["health"] == "up"
        }
        return up == replica_ips

    wait_until(all_up, 90, "Prometheus to scrape both replicas")
    (prom,) = stack.containers("prometheus")
    bindings = prom["HostConfig"]["PortBindings"]["9090/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": stack.env["PROMETHEUS_PORT"]}]
    _payloads_and_drift(stack, key, prometheus)


def _payloads_and_drift(stack: Stack, key: str, prometheus: str) -> None:
    """Every request written on the logs volume by the four workers; each worker's
    first 1,000 become its reference; Prometheus scrapes the drift gauge; and
    `mlapi drift` reads the volume inside the container."""

    def send(_: int) -> int:
        with httpx.Client(base_url=stack.url, headers={"X-API-Key": key}, timeout=10) as c:
            return sum(
                c.post("/v2/models/iris/infer", json=IRIS).status_code == 200 for _ in range(700)
            )

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(send, range(8))) == 5600

    def drift_scraped() -> bool:
        query = {"query": 'mlapi_drift_psi{model="iris", feature="input[0]"}'}
        answer = httpx.get(prometheus + "/api/v1/query", params=query, timeout=5).json()
        return bool(answer["data"]["result"])

    wait_until(drift_scraped, 90, "Prometheus to scrape the drift gauge")
    listing = stack.compose(
        "exec", "-T", "ml-api", "ls", "/app/logs/payloads/iris", "/app/logs/drift"
    )
    assert ".jsonl" in listing.stdout and ".reference.npz" in listing.stdout
    report = stack.compose(
        "exec", "-T", "ml-api", "mlapi", "drift", "iris", "--format", "json", check=False
    )
    assert report.returncode == 0, report.stderr  # every request the same row as before
    assert json.loads(report.stdout)["requests"] > 0


SLOW_BODY = (
    b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
)


def _grpc_through_the_proxy(stack: Stack, key: str, replica_ips: set[str]) -> None:
    address = f"127.0.0.1:{stack.env['API_GRPC_PORT']}"
    rows = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
    with triton_client(address) as client:
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            infer(client, "iris", rows, "FP32")
        for _ in range(40):  # each call a new HTTP/2 stream; nginx picks the replica
            answer = infer(client, "iris", rows, "FP32", headers={"authorization": f"Bearer {key}"})
            assert answer.as_numpy("label").tolist() == [b"setosa"]
    with health_stub(address) as health:  # the standard health service, no key
        assert health_of(health, "") == "SERVING"
    proxy_log = stack.compose("logs", "--no-color", "proxy").stdout
    served_by = set(re.findall(r"upstream=([0-9.]+):8001", proxy_log))
    assert served_by == replica_ips, (served_by, replica_ips)


def _slow_clients_stay_at_the_proxy(stack: Stack, key: str) -> None:
    """80 clients that send headers and then a body that never ends: real traffic is
    served meanwhile, no replica holds one of them in flight (nginx reads a body
    whole before passing it on), and nginx ends each at its client_body_timeout."""
    host, port = stack.url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(80)]
    try:
        for sock in socks:
            sock.sendall(SLOW_BODY)
        opened = time.monotonic()
        with httpx.Client(base_url=stack.url, headers={"X-API-Key": key}, timeout=10) as client:
            statuses = [
                client.post("/v2/models/iris/infer", json=IRIS).status_code for _ in range(30)
            ]
            assert statuses == [200] * 30
        for replica in stack.containers("ml-api"):
            assert _in_flight(str(replica["Id"])) == 0.0  # none of the 80 reached a replica
        ended = 0
        for sock in socks:
            sock.settimeout(max(1.0, opened + 25 - time.monotonic()))
            try:
                reply = sock.recv(4096)
            except ConnectionResetError:
                reply = b""
            assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply[:100]
            ended += 1
        assert ended == 80
        assert time.monotonic() - opened < 25  # client_body_timeout 10 s, with a margin
    finally:
        for sock in socks:
            sock.close()


def _in_flight(container_id: str) -> float:
    """mlapi_inflight_requests of one replica, read from inside it."""
    scrape = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    lines = docker("exec", container_id, "python", "-c", scrape).stdout.splitlines()
    (line,) = [ln for ln in lines if ln.startswith('mlapi_inflight_requests{model="iris"')]
    return float(line.rsplit(" ", 1)[1])

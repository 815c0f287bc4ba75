"""Faults on the real engine: a full logs volume, and `docker compose stop` with
requests in flight."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e.conftest import Stack, docker, make_stack

pytestmark = pytest.mark.e2e
HERE = Path(__file__).resolve().parent
ROWS = 2000
BIG = {
    "inputs": [
        {
            "name": "input",
            "datatype": "FP32",
            "shape": [ROWS, 4],
            "data": [5.1, 3.5, 1.4, 0.2] * ROWS,
        }
    ]
}


def test_a_full_logs_volume_never_fails_inference(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml", "full-logs.yml"])
    shutil.copy(HERE / "overrides" / "full-logs.yml", stack.folder / "full-logs.yml")
    stack_factory.append(stack)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240", "ml-api")
    small = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}
        ]
    }
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        statuses = {
            client.post("/v2/models/iris/infer", json=small).status_code for _ in range(1500)
        }
        assert statuses == {200}
        metrics = client.get("/metrics").text
    (line,) = [ln for ln in metrics.splitlines() if ln.startswith("mlapi_log_write_errors_total ")]
    assert float(line.split()[1]) > 0, line
    (container,) = stack.containers("ml-api")
    usage = docker("exec", str(container["Id"]), "df", "-k", "/app/logs").stdout
    assert " 100% " in usage or "64 " in usage, usage


def test_compose_stop_under_load_answers_every_accepted_request(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml"])
    stack_factory.append(stack)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240", "ml-api")
    results: list[int | str] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            status: int | str = httpx.post(
                stack.url + "/v2/models/iris/infer", json=BIG, timeout=60
            ).status_code
        except httpx.HTTPError as exc:  # refused after the stop: never accepted
            status = type(exc).__name__
        with lock:
            results.append(status)

    with ThreadPoolExecutor(max_workers=32) as pool:
        for _ in range(32):
            pool.submit(call)
        time.sleep(0.3)  # requests in flight when the stop lands
        started = time.monotonic()
        stopper = threading.Thread(target=lambda: stack.compose("stop", "ml-api"))
        stopper.start()
    stopper.join(timeout=90)
    stopped_in = time.monotonic() - started
    accepted = [r for r in results if isinstance(r, int)]
    assert accepted and all(r == 200 for r in accepted), results
    assert all(r == "ConnectError" for r in results if not isinstance(r, int)), results
    (container,) = stack.containers("ml-api")
    assert container["State"]["ExitCode"] == 0  # type: ignore[index]
    assert stopped_in < 30  # inside stop_grace_period: drained, not killed

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

from tests.conftest import wait_for
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
    # Filesystem 1K-blocks Used Available Use% Mounted on: the 64 KiB volume, full
    size_kb, used_kb, available_kb = (int(v) for v in usage.splitlines()[1].split()[1:4])
    assert size_kb == 64 and available_kb == 0 and used_kb == 64, usage


def test_compose_stop_under_load_answers_every_accepted_request(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml"])
    stack_factory.append(stack)
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "240", "ml-api")
    # (sent, answered, status): 32 clients send back to back until the stop is over,
    # so requests are in flight when it lands; each loop is bounded in count.
    results: list[tuple[float, float, int | str]] = []
    lock = threading.Lock()
    stopped = threading.Event()

    def client_loop() -> None:
        for _ in range(300):
            if stopped.is_set():
                return
            sent = time.monotonic()
            try:  # a new connection each time, as a client arriving during the stop
                url = stack.url + "/v2/models/iris/infer"
                status: int | str = httpx.post(url, json=BIG, timeout=60).status_code
            except httpx.TransportError as exc:  # not accepted: the server had closed
                status = type(exc).__name__
            with lock:
                results.append((sent, time.monotonic(), status))
            if not isinstance(status, int):
                return

    with ThreadPoolExecutor(max_workers=32) as pool:
        for _ in range(32):
            pool.submit(client_loop)
        wait_for(lambda: len(results) >= 64, timeout_s=30, what="traffic flowing")
        started = time.monotonic()
        stack.compose("stop", "ml-api", timeout_s=90)
        stopped_in = time.monotonic() - started
        stopped.set()
    in_flight_at_stop = [r for r in results if r[0] < started < r[1]]
    assert len(in_flight_at_stop) >= 8, f"only {len(in_flight_at_stop)} in flight at the stop"
    assert all(status == 200 for _, _, status in in_flight_at_stop), in_flight_at_stop
    # sent inside the drain grace (MLAPI_DRAIN_GRACE_S, 2 s): accepted and answered
    in_grace = [status for sent, _, status in results if started <= sent < started + 1.0]
    assert in_grace and all(status == 200 for status in in_grace), in_grace
    # later ones are answered or refused at the connection, never an HTTP error
    assert all(s == 200 or isinstance(s, str) for _, _, s in results), results
    (container,) = stack.containers("ml-api")
    assert container["State"]["ExitCode"] == 0
    assert stopped_in < 30  # inside stop_grace_period: drained, not killed

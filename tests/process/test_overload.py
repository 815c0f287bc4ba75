"""Load at and past the limit, driven by `hey` (Debian) on loopback, bounded in
time: at the limit nothing fails; at four times the limit every answer is a 200
or a fast 503, health and metrics keep answering, and memory stays flat."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.process.conftest import Server, status_of

pytestmark = pytest.mark.process
QUEUE_LIMIT = 16  # max_queue of the model under test
IRIS = {
    "inputs": [
        {"name": "input", "datatype": "FP32", "shape": [8, 4], "data": [5.1, 3.5, 1.4, 0.2] * 8}
    ]
}


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def _hey(url: str, body: Path, concurrency: int, seconds: int) -> dict[int, int]:
    assert shutil.which("hey"), "hey missing: scripts/test-engine.sh installs it"
    output = subprocess.run(
        [
            "hey",
            "-z",
            f"{seconds}s",
            "-c",
            str(concurrency),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-D",
            str(body),
            "-t",
            "10",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    statuses = {
        int(code): int(count)
        for code, count in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)
    }
    errors = re.search(r"Error distribution:(.*)", output, re.DOTALL)
    assert errors is None, output[-2000:]  # connection resets, timeouts: none allowed
    return statuses


@pytest.fixture
def limited_server(start_server: Callable[..., Server], tmp_path: Path) -> Server:
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL_PATH / "iris", repo / "iris")
    with (repo / "iris" / "1" / "model.toml").open("a") as config:
        config.write(f"\n[batching]\nmax_queue = {QUEUE_LIMIT}\nmax_batch_size = 8\n")
    return start_server(MODEL_PATH=str(repo))


def test_held_load_at_the_limit_and_overload_past_it(
    limited_server: Server, tmp_path: Path
) -> None:
    server = limited_server
    body = tmp_path / "body.json"
    body.write_bytes(orjson.dumps(IRIS))
    url = server.url + "/v2/models/iris/infer"
    rss_start = _rss_mb(server.process.pid)

    held = _hey(url, body, concurrency=QUEUE_LIMIT, seconds=60)
    assert set(held) == {200} and held[200] > 1000, held
    assert server.process.poll() is None
    rss_held = _rss_mb(server.process.pid)

    slow: list[float] = []
    probing = threading.Event()

    def probe_health() -> None:  # health and metrics stay quick during overload
        while not probing.is_set():
            started = time.monotonic()
            assert status_of(server.url + "/health/live", timeout_s=5) == 200
            assert httpx.get(server.url + "/metrics", timeout=5).status_code == 200
            slow.append(time.monotonic() - started)
            time.sleep(0.2)

    prober = threading.Thread(target=probe_health)
    prober.start()
    try:
        overloaded = _hey(url, body, concurrency=4 * QUEUE_LIMIT, seconds=10)
    finally:
        probing.set()
        prober.join(timeout=30)
    assert set(overloaded) <= {200, 503}, overloaded
    assert overloaded.get(503, 0) > 0 and overloaded.get(200, 0) > 0, overloaded
    assert max(slow) < 1.0, slow
    assert status_of(server.url + "/health") == 200
    rss_end = _rss_mb(server.process.pid)
    assert rss_held - rss_start < 60 and rss_end - rss_start < 80, (rss_start, rss_held, rss_end)

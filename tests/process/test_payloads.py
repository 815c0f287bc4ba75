"""The payload log with two workers (issue 26): each writes files of its own, every
line whole, every sampled request there once, the files flushed at a stop."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.process.conftest import Server

pytestmark = pytest.mark.process
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}


def test_two_workers_write_files_of_their_own_with_whole_lines(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    server = start_server(
        MODEL_PATH=str(DEFAULT_MODEL_PATH),
        WORKERS="2",
        MLAPI_LOG_DIR=str(logs),
        MLAPI_PAYLOAD_SAMPLE="1",
    )

    def send(n: int) -> int:
        answered = 0
        for batch in range(4):  # a new connection every 25 requests: both workers take some
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for i in range(batch * 25, batch * 25 + 25):
                    headers = {"x-request-id": f"c{n}-{i}"}
                    response = client.post("/v2/models/iris/infer", json=IRIS, headers=headers)
                    answered += response.status_code == 200
        return answered

    with ThreadPoolExecutor(8) as pool:
        answered = sum(pool.map(send, range(8)))
    assert answered == 800
    assert server.stop() == 0
    files = sorted((logs / "payloads" / "iris").glob("*.jsonl"))
    pids = {path.stem.rsplit("-", 1)[1] for path in files}  # <time>-<host>-<pid>
    assert len(pids) == 2, files
    ids = [
        orjson.loads(line)["request_id"]
        for path in files
        for line in path.read_bytes().splitlines()
    ]
    assert sorted(ids) == sorted(f"c{n}-{i}" for n in range(8) for i in range(100))

"""Keys per client on a real two-worker server (issue 25): a key revoked in the file
is refused by every worker after its next look, with no restart; a file that breaks
keeps the keys in force; a client's rate holds across the workers (one bucket)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest

from mlapi import keys_cli
from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import wait_for
from tests.process.conftest import Server, metric

pytestmark = pytest.mark.process
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}


def _fresh(server: Server, key: str, count: int) -> list[int]:
    """``count`` requests, each on a connection of its own (so both workers answer)."""
    statuses = []
    for _ in range(count):
        with httpx.Client(base_url=server.url, timeout=10) as client:
            response = client.post(
                "/v2/models/iris/infer", json=IRIS, headers={"Authorization": f"Bearer {key}"}
            )
            statuses.append(response.status_code)
    return statuses


def test_a_revoked_key_is_refused_by_every_worker_and_a_broken_file_changes_nothing(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.toml"
    kept = keys_cli.add(keys_file, "kept", None, None, None, False)
    leaving = keys_cli.add(keys_file, "leaving", None, None, None, False)
    server = start_server(
        MODEL_PATH=str(DEFAULT_MODEL_PATH),
        WORKERS="2",
        API_KEYS_FILE=str(keys_file),
        MLAPI_KEYS_POLL_S="0.5",
    )
    assert set(_fresh(server, leaving, 20)) == {200}
    keys_cli.revoke(keys_file, "leaving")
    wait_for(
        lambda: server.log().count("keys file read: 1 keys") == 2,
        what="both workers reading the file again",
    )
    assert set(_fresh(server, leaving, 40)) == {401}
    assert set(_fresh(server, kept, 20)) == {200}
    keys_file.write_text(keys_file.read_text() + "[[key]\n")  # broken: not TOML
    wait_for(
        lambda: server.log().count("keys file refused, the keys in force stay") == 2,
        what="both workers refusing the broken file",
    )
    assert set(_fresh(server, kept, 20)) == {200} and set(_fresh(server, leaving, 10)) == {401}
    assert server.stop() == 0
    assert kept not in server.log() and leaving not in server.log()


def test_a_rate_holds_across_the_workers(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """20 a second with a burst of 5, asked by four clients for 5 s as fast as they
    go, each request on a new connection (so both workers answer): 20 +- 2 a second
    get through (after the burst), the rest 429. A bucket per worker lets 40 by."""
    keys_file = tmp_path / "keys.toml"
    key = keys_cli.add(keys_file, "fast", None, 20.0, 5, False)
    server = start_server(
        MODEL_PATH=str(DEFAULT_MODEL_PATH), WORKERS="2", API_KEYS_FILE=str(keys_file)
    )
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():  # a connection each: the workers take turns accepting
            response = httpx.post(
                server.url + "/v2/models/iris/infer",
                json=IRIS,
                headers={"X-API-Key": key},
                timeout=10,
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=send) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(5)
    stop.set()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert set(statuses) == {200, 429}
    ok, limited = statuses.count(200), statuses.count(429)
    wait_for(  # the workers hand their counts to the metrics every second
        lambda: (
            metric(server, 'mlapi_requests_total{client="fast",outcome="ok"') == ok
            and metric(server, 'mlapi_requests_total{client="fast",outcome="rate_limited"')
            == limited
        ),
        what="the counts on /metrics",
    )
    per_second = (ok - 5) / elapsed
    assert 18 <= per_second <= 22, (ok, limited, elapsed)

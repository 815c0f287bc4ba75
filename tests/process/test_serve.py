"""`mlapi serve` as a process: concurrency, raw-socket abuse, workers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import wait_for
from tests.fixtures.models import DEFAULT_ONNX, vector_toml, write_python_model
from tests.process.conftest import Server, metric, status_of

pytestmark = pytest.mark.process


def _request(rows: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.ravel().tolist(),
            }
        ]
    }


def test_400_concurrent_mixed_batches_each_get_their_own_answer(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    session = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    batches = [
        (rng.normal(size=(int(rng.integers(1, 65)), 4)) * 2 + 4).astype(np.float32)
        for _ in range(400)
    ]
    local = threading.local()
    clients: list[httpx.Client] = []
    start = threading.Barrier(32)

    def call(index: int) -> tuple[int, int, dict[str, Any]]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=30)
            clients.append(local.client)
            start.wait(timeout=30)  # all 32 threads fire together
        response = local.client.post("/v2/models/iris/infer", json=_request(batches[index]))
        body: Any = response.json()
        return index, response.status_code, body

    try:
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(call, range(400)))
    finally:
        for client in clients:
            client.close()
    assert len(results) == 400
    for index, status, body in results:
        assert status == 200, body
        labels, probabilities = session.run(["label", "probabilities"], {"input": batches[index]})
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["label"]["data"] == labels.tolist(), index
        got = np.array(outputs["probabilities"]["data"], np.float32).reshape(probabilities.shape)
        np.testing.assert_allclose(got, probabilities, rtol=1e-6, atol=1e-7)


def _raw(server: Server, payload: bytes, read_timeout_s: float = 5.0) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout_s) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_a_huge_declared_body_is_refused_before_it_is_sent(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH), MLAPI_MAX_BODY_BYTES="65536")
    started = time.monotonic()
    reply = _raw(
        server,
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 1073741824\r\n\r\n{",
    )
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 3
    assert status_of(server.url + "/health") == 200


def test_lying_content_length_and_oversized_headers_do_not_break_the_server(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    short = b'{"inputs": []}'
    # declares more than it sends, then the client goes quiet: the server must not hang others
    _raw(
        server,
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n"
        + short,
        read_timeout_s=1.0,
    )
    # declares less than it sends: the rest is garbage on the connection
    reply = _raw(
        server,
        b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\n"
        + short,
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    huge_header = b"X-Big: " + b"a" * 200_000 + b"\r\n"
    reply = _raw(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + huge_header + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert status_of(server.url + "/health") == 200
    body = _request(np.ones((1, 4), np.float32))
    assert httpx.post(server.url + "/v2/models/iris/infer", json=body).status_code == 200


def test_two_workers_serve_on_one_port_and_metrics_add_up(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH), WORKERS="2")
    body = _request(np.ones((2, 4), np.float32))
    for _ in range(30):  # a new connection each time, so both workers take some
        response = httpx.post(server.url + "/v2/models/iris/infer", json=body)
        assert response.status_code == 200

    def ok_total() -> float:
        return metric(server, 'mlapi_requests_total{model="iris",outcome="ok"')

    # each worker hands its counts over within a second; then every scrape, whichever
    # worker answers it, reports the whole server's total
    wait_for(lambda: ok_total() == 30, timeout_s=10, what="the total of both workers")
    assert [ok_total() for _ in range(6)] == [30.0] * 6
    assert server.stop() == 0


HELD_MODEL = """
    import time
    from pathlib import Path

    class Held:
        def load(self, path):
            self.gate = Path(path) / "release"

        def predict(self, inputs):
            deadline = time.monotonic() + 30
            while not self.gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return {"y": inputs["x"] + 1}
"""
HELD_TOML = vector_toml(
    "FP32", extra="[warmup]\n    enabled = false\n\n    [batching]\n    max_queue = 2"
)


HELD_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}


@pytest.fixture
def held(start_server: Callable[..., Server], tmp_path: Path) -> tuple[Server, Path]:
    """A server whose model 'held' answers only once its folder has a file 'release'."""
    folder = write_python_model(tmp_path / "repo", "held", HELD_MODEL, HELD_TOML)
    return start_server(MODEL_PATH=str(tmp_path / "repo")), folder


def _wait_gauge(server: Server, name: str, value: float) -> None:
    wait_for(
        lambda: metric(server, name + '{model="held"') == value,
        timeout_s=10,
        what=f"{name} = {value}",
    )


def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted(
    held: tuple[Server, Path],
) -> None:
    server, folder = held
    url = server.url + "/v2/models/held/infer"
    with ThreadPoolExecutor(max_workers=3) as pool:
        running = pool.submit(httpx.post, url, json=HELD_BODY, timeout=30)
        _wait_gauge(server, "mlapi_inflight_requests", 1)  # it holds the model's thread
        queued = [pool.submit(httpx.post, url, json=HELD_BODY, timeout=30) for _ in range(2)]
        _wait_gauge(server, "mlapi_queue_depth", 2)  # both wait in the queue (max_queue = 2)
        shed = httpx.post(url, json=HELD_BODY, timeout=10)
        assert shed.status_code == 503, shed.text
        assert shed.headers["retry-after"] == "1" and "queued" in shed.json()["error"]
        # refused at once, as the server's own counts show (a 0.1 s wall-clock bound
        # failed a clean-clone CI run on a busy machine): counted overloaded, never
        # queued (the queue holds the same two), never in flight past the first
        overloaded = 'mlapi_requests_total{model="held",outcome="overloaded"'
        assert metric(server, overloaded) == 1
        assert metric(server, 'mlapi_queue_depth{model="held"') == 2
        assert metric(server, 'mlapi_inflight_requests{model="held"') == 3
        assert status_of(server.url + "/health/live") == 200
        (folder / "release").touch()
        for future in [running, *queued]:
            response = future.result(timeout=30)
            assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [2.0]


def test_a_client_that_disconnects_while_queued_never_costs_a_prediction(
    held: tuple[Server, Path],
) -> None:
    server, folder = held
    url = server.url + "/v2/models/held/infer"
    payload = orjson.dumps(HELD_BODY)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(httpx.post, url, json=HELD_BODY, timeout=30)
        _wait_gauge(server, "mlapi_inflight_requests", 1)  # it holds the model's thread
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                b"POST /v2/models/held/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                b"application/json\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            _wait_gauge(server, "mlapi_queue_depth", 1)  # queued behind the first
        # the socket is closed: that client has gone. The server learns it from the
        # event loop; any request it answers after that has seen the close.
        assert status_of(server.url + "/health/live") == 200
        (folder / "release").touch()
        assert running.result(timeout=30).status_code == 200

    wait_for(
        lambda: metric(server, 'mlapi_requests_total{model="held",outcome="cancelled"') == 1,
        timeout_s=10,
        what="the disconnected request counted as cancelled",
    )
    # one prediction ran (the first request); the gone client's never did
    assert metric(server, 'mlapi_inference_duration_seconds_count{model="held"') == 1


def test_requests_past_max_inflight_get_503_and_the_admitted_ones_their_answer(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    folder = write_python_model(
        tmp_path / "repo",
        "held",
        HELD_MODEL,
        vector_toml(
            "FP32", extra="[warmup]\n    enabled = false\n\n    [batching]\n    max_queue = 64"
        ),
    )
    server = start_server(MODEL_PATH=str(tmp_path / "repo"), MLAPI_MAX_INFLIGHT="3")
    url = server.url + "/v2/models/held/infer"
    with ThreadPoolExecutor(max_workers=3) as pool:
        admitted = [pool.submit(httpx.post, url, json=HELD_BODY, timeout=30) for _ in range(3)]
        _wait_gauge(server, "mlapi_inflight_requests", 3)
        shed = httpx.post(url, json=HELD_BODY, timeout=10)
        assert shed.status_code == 503, shed.text
        assert "MLAPI_MAX_INFLIGHT" in shed.json()["error"]
        assert shed.headers["retry-after"] == "1"
        assert status_of(server.url + "/health/live") == 200  # health is outside the limit
        (folder / "release").touch()
        for future in admitted:
            response = future.result(timeout=30)
            assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [2.0]
    assert httpx.post(url, json=HELD_BODY, timeout=10).status_code == 200
    overloaded = 'mlapi_requests_total{model="held",outcome="overloaded"'
    wait_for(lambda: metric(server, overloaded) == 1, timeout_s=5, what="the 503 counted")


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response (status line and headers, body by Content-Length) off a socket;
    what follows it stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, bytes(buffer[:200])
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    buffer[:] = rest[length:]
    return head, rest[:length]


def test_responses_keep_their_framing_with_100_continue_pipelining_and_large_bodies(
    start_server: Callable[..., Server],
) -> None:
    """Headers leave with the body in one write: an interim 100 Continue must still go
    at once (the client waits for it before sending its body), pipelined responses
    come back whole and in order, and a large body (a vectored write) arrives intact."""
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    host, port = server.url.removeprefix("http://").split(":")
    rows = np.random.default_rng(2).normal(4, 2, size=(900, 4)).astype(np.float32)
    big = orjson.dumps(_request(rows))
    small = orjson.dumps(_request(rows[:1]))

    def post(body: bytes, extra: bytes = b"") -> bytes:
        return (
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            % len(body)
            + extra
            + b"\r\n"
        )

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(post(small, b"Expect: 100-continue\r\n"))
        interim = sock.recv(4096)  # before the body is sent
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        sock.sendall(small)
        head, body = _read_response(sock, buffer)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert orjson.loads(body)["outputs"][0]["shape"] == [1]

        sock.sendall(post(big) + big + post(small) + small + post(big) + big)
        shapes = []
        for _ in range(3):
            head, body = _read_response(sock, buffer)
            assert head.startswith(b"HTTP/1.1 200"), head
            shapes.append(orjson.loads(body)["outputs"][0]["shape"])
        assert shapes == [[900], [1], [900]]
        assert len(body) > 16384  # the large answer took the vectored write
        assert not buffer

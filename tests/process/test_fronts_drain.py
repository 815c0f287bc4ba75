"""The fronts the in-process matrix (tests/service/test_fronts.py) cannot hold to a
real connection and a real signal: SIGTERM with calls queued answers every one of
them, and a client that leaves while its request is queued costs no prediction,
on V2 binary, KServe V1 and gRPC (V2 JSON: test_drain and test_serve; OpenAI:
test_text), so the five fronts are each held to both."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2

from tests.conftest import wait_for
from tests.fixtures.grpc import stub
from tests.fixtures.models import vector_toml, write_python_model
from tests.process.conftest import Server, metric, status_of
from tests.process.test_drain import SLOW_MODEL, SLOW_TOML, sigterm_under_load

pytestmark = pytest.mark.process
FRONTS = ["v2-binary", "v1", "grpc"]


def _binary(values: list[float]) -> tuple[bytes, dict[str, str]]:
    data = np.array(values, np.float64).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP64",
                    "shape": [len(values)],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    )
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def _request(front: str, model: str, values: list[float]) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of an HTTP front's request."""
    if front == "v2-binary":
        body, headers = _binary(values)
        return f"/v2/models/{model}/infer", body, headers
    return f"/v1/models/{model}:predict", orjson.dumps({"instances": values}), {}


def _first_value(front: str, response: httpx.Response) -> float | None:
    if response.status_code != 200:
        return None
    if front == "v2-binary":  # outputs come back as JSON unless asked for in binary
        return float(response.json()["outputs"][0]["data"][0])
    return float(response.json()["predictions"][0])


def _grpc_request(model: str, values: list[float]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP64", shape=[len(values)])
    request.raw_input_contents.append(np.array(values, np.float64).tobytes())
    return request


@pytest.mark.parametrize("front", FRONTS)
def test_sigterm_answers_every_queued_call_on_the_front(
    start_server: Callable[..., Server], tmp_path: Path, front: str
) -> None:
    write_python_model(tmp_path / "repo", "slow", SLOW_MODEL, SLOW_TOML)
    server = start_server(
        grpc=front == "grpc",
        MODEL_PATH=str(tmp_path / "repo"),
        MLAPI_DRAIN_GRACE_S="1.5",
        MLAPI_SHUTDOWN_TIMEOUT_S="60",
    )
    results: list[tuple[float, float | None]] = []
    lock = threading.Lock()

    def call(value: float) -> None:
        values = [value] * 2000
        if front == "grpc":
            assert server.grpc is not None
            with stub(server.grpc) as calls:
                try:
                    answer = calls.ModelInfer(_grpc_request("slow", values), timeout=120)
                    got: float | None = float(
                        np.frombuffer(answer.raw_output_contents[0], np.float64)[0]
                    )
                except grpc.RpcError:
                    got = None
        else:
            path, body, headers = _request(front, "slow", values)
            response = httpx.post(server.url + path, content=body, headers=headers, timeout=120)
            got = _first_value(front, response)
        with lock:
            results.append((value, got))

    sigterm_under_load(
        server, call, lambda: status_of(server.url + "/health") == 503, "readiness 503"
    )
    assert server.process.wait(timeout=120) == 0, server.log()
    assert len(results) == 48
    assert all(got == value * 2 for value, got in results), sorted(results)
    assert "Traceback" not in server.log()


HELD_MODEL = """
    import time
    from pathlib import Path

    class Held:
        def load(self, path):
            self.folder = Path(path)

        def predict(self, inputs):
            with (self.folder / "calls").open("a") as log:
                log.write(f"{float(inputs['x'].ravel()[0])}\\n")
            deadline = time.monotonic() + 30
            while not (self.folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return {"y": inputs["x"] + 1}
"""
HELD_TOML = vector_toml("FP64", extra="[warmup]\n    enabled = false")


@pytest.mark.parametrize("front", FRONTS)
def test_a_client_that_leaves_while_queued_costs_no_prediction(
    start_server: Callable[..., Server], tmp_path: Path, front: str
) -> None:
    folder = write_python_model(tmp_path / "repo", "m", HELD_MODEL, HELD_TOML)
    server = start_server(grpc=front == "grpc", MODEL_PATH=str(tmp_path / "repo"))
    holder: list[Any] = []
    first = threading.Thread(
        target=lambda: holder.append(
            httpx.post(server.url + "/v1/models/m:predict", json={"instances": [1.0]}, timeout=60)
        )
    )
    first.start()  # holds the model's one thread
    wait_for(lambda: (folder / "calls").exists(), what="the first prediction running")
    if front == "grpc":
        assert server.grpc is not None
        with stub(server.grpc) as calls:
            future = calls.ModelInfer.future(_grpc_request("m", [7.0]), timeout=60)
            wait_for(lambda: metric(server, 'mlapi_queue_depth{model="m"') == 1, what="queued")
            future.cancel()
    else:
        path, body, headers = _request(front, "m", [7.0])
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head.encode() + b"\r\n" + body)
            wait_for(lambda: metric(server, 'mlapi_queue_depth{model="m"') == 1, what="queued")
    # the client has gone: the server learns it on its event loop, so a request it
    # answers after this has seen the close
    assert status_of(server.url + "/health/live") == 200
    (folder / "release").touch()
    first.join(60)
    assert holder and holder[0].status_code == 200
    after = httpx.post(server.url + "/v1/models/m:predict", json={"instances": [3.0]}, timeout=60)
    assert after.status_code == 200
    assert (folder / "calls").read_text().split() == ["1.0", "3.0"]  # 7.0 never ran
    assert status_of(server.url + "/health/live") == 200

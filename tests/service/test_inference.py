"""The app in-process with real models: V2 JSON and binary, V1, metadata,
repository extension, auth, and every bad input answered with a 4xx JSON error
while the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from starlette.testclient import TestClient

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.fixtures.models import (
    DEFAULT_ONNX,
    v2_request,
    write_onnx_classifier,
    write_skops_classifier,
)

Start = Callable[..., TestClient]
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)


def _reference(path: Path, rows: np.ndarray) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: rows}), strict=True))


def _assert_serving(client: TestClient) -> None:
    response = client.post("/v2/models/iris/infer", json=v2_request(ROWS[:1]))
    assert response.status_code == 200, response.text


def test_v2_json_infer_equals_onnxruntime(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH)
    response = client.post("/v2/models/iris/infer", json=v2_request(ROWS, id="abc"))
    assert response.status_code == 200
    body = response.json()
    expected = _reference(DEFAULT_ONNX, ROWS)
    outputs = {o["name"]: o for o in body["outputs"]}
    assert body["id"] == "abc" and body["model_name"] == "iris" and body["model_version"] == "1"
    assert outputs["label"]["data"] == list(expected["label"])
    assert outputs["label"]["datatype"] == "BYTES"
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(3, 3),
        expected["probabilities"],
        rtol=1e-6,
    )
    versioned = client.post("/v2/models/iris/versions/1/infer", json=v2_request(ROWS)).json()
    assert "id" not in versioned
    assert versioned["outputs"] == body["outputs"]


def test_v2_requests_without_content_type_are_read_as_json(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH)
    response = client.post(
        "/v2/models/iris/infer",
        content=orjson.dumps(v2_request(ROWS)),
        headers={"content-type": ""},
    )
    assert response.status_code == 200


def test_output_selection_and_binary_outputs(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH)
    request = v2_request(
        ROWS, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}]
    )
    response = client.post("/v2/models/iris/infer", json=request)
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    (output,) = header["outputs"]
    assert output["name"] == "probabilities" and output["parameters"]["binary_data_size"] == 36
    probabilities = np.frombuffer(response.content[length:], np.float32).reshape(3, 3)
    np.testing.assert_allclose(probabilities, _reference(DEFAULT_ONNX, ROWS)["probabilities"])


def test_v1_predict(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH)
    response = client.post("/v1/models/iris:predict", json={"instances": ROWS.tolist()})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    expected = _reference(DEFAULT_ONNX, ROWS)
    assert [p["label"] for p in predictions] == list(expected["label"])
    np.testing.assert_allclose(
        [p["probabilities"] for p in predictions], expected["probabilities"], rtol=1e-6
    )
    assert client.get("/v1/models/iris").json() == {"name": "iris", "ready": True}


def test_metadata_and_server_routes(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH)
    meta = client.get("/v2/models/iris").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert meta["versions"] == ["1"]
    assert client.get("/v2/models/iris/versions/1").status_code == 200
    assert client.get("/v2/models/iris/ready").status_code == 200
    server = client.get("/v2").json()
    assert (
        "binary_tensor_data" in server["extensions"] and "model_repository" in server["extensions"]
    )
    spec = client.get("/openapi.json").json()
    assert "/v2/models/{model}/infer" in spec["paths"]


def test_onnx_model_without_config_and_skops_model(serve_app: Start, tmp_path: Path) -> None:
    onnx_path = write_onnx_classifier(tmp_path, "fresh", n_features=8)
    write_skops_classifier(tmp_path, "skl", n_features=8)
    client = serve_app(tmp_path)
    rows = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    meta = client.get("/v2/models/fresh").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    body = client.post("/v2/models/fresh/infer", json=v2_request(rows, name="features")).json()
    expected = _reference(onnx_path, rows)
    by_name = {o["name"]: o["data"] for o in body["outputs"]}
    assert by_name["label"] == expected["label"].tolist()
    np.testing.assert_allclose(
        np.array(by_name["probabilities"]).reshape(5, 3), expected["probabilities"], rtol=1e-5
    )

    skl_meta = client.get("/v2/models/skl").json()
    assert skl_meta["platform"] == "scikit-learn"
    assert skl_meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 8]}]
    request = {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP64",
                "shape": [5, 8],
                "data": rows.astype(np.float64).ravel().tolist(),
            }
        ]
    }
    skl_body = client.post("/v2/models/skl/infer", json=request).json()
    skl_labels = {o["name"]: o["data"] for o in skl_body["outputs"]}["label"]
    import skops.io as sio

    model = sio.load(tmp_path / "skl" / "1" / "model.skops")
    assert skl_labels == model.predict(rows.astype(np.float64)).tolist()


def test_api_key_guards_inference_but_not_health(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH, API_KEY="s3cret-key")
    assert client.get("/health").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    for headers in (
        {},
        {"authorization": "Bearer wrong"},
        {"x-api-key": "s3cret-keyX"},
        {"authorization": "Basic czNjcmV0LWtleQ=="},
    ):
        response = client.post("/v2/models/iris/infer", json=v2_request(ROWS), headers=headers)
        assert response.status_code == 401
        assert "error" in response.json() and "s3cret" not in response.text
    assert client.post("/v2/repository/index").status_code == 401
    assert client.get("/v2/models/iris").status_code == 401
    ok_bearer = client.post(
        "/v2/models/iris/infer",
        json=v2_request(ROWS),
        headers={"authorization": "Bearer s3cret-key"},
    )
    ok_header = client.post(
        "/v2/models/iris/infer", json=v2_request(ROWS), headers={"x-api-key": "s3cret-key"}
    )
    assert ok_bearer.status_code == ok_header.status_code == 200


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("POST", "/v2/models/nope/infer", {"json": v2_request(ROWS)}, 404),
    ("POST", "/v2/models/iris/versions/9/infer", {"json": v2_request(ROWS)}, 404),
    ("POST", "/v2/models/iris/versions/x/infer", {"json": v2_request(ROWS)}, 404),
    ("GET", "/v2/models/nope", {}, 404),
    ("GET", "/nope", {}, 404),
    ("GET", "/v2/models/iris/infer", {}, 405),
    ("POST", "/v2/models/iris/infer", {"content": b"{not json"}, 400),
    ("POST", "/v2/models/iris/infer", {"content": b"\xff\xfe\xfd"}, 400),
    (
        "POST",
        "/v2/models/iris/infer",
        {"content": b"\xff\xfe\xfd", "headers": {"content-type": "application/json"}},
        400,
    ),
    ("POST", "/v2/models/iris/infer", {"content": b""}, 400),
    ("POST", "/v2/models/iris/infer", {"content": b"null"}, 400),
    ("POST", "/v2/models/iris/infer", {"content": b"[]"}, 400),
    ("POST", "/v2/models/iris/infer", {"content": b"[" * 100_000}, 400),
    ("POST", "/v2/models/iris/infer", {"json": v2_request(ROWS, name="wrong")}, 400),
    (
        "POST",
        "/v2/models/iris/infer",
        {
            "json": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
                ]
            }
        },
        400,
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {
            "json": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [10**12, 4], "data": [1] * 4}
                ]
            }
        },
        413,  # over MLAPI_MAX_ELEMENTS, refused before the data is read
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {
            "json": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ["a"] * 4}
                ]
            }
        },
        400,
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {
            "json": {
                "inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 4], "data": [1] * 4}]
            }
        },
        400,
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {
            "json": {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1e39] * 4}
                ]
            }
        },
        400,
    ),
    ("POST", "/v2/models/iris/infer", {"json": {**v2_request(ROWS), "surprise": True}}, 400),
    ("POST", "/v2/models/iris/infer", {"json": v2_request(ROWS, outputs=[{"name": "nope"}])}, 400),
    (
        "POST",
        "/v2/models/iris/infer",
        {"content": b"{}", "headers": {"content-encoding": "br"}},
        415,
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"content": b"garbage", "headers": {"content-encoding": "gzip"}},
        400,
    ),
    (
        "POST",
        "/v2/models/iris/infer",
        {"content": b"{}", "headers": {"inference-header-content-length": "99"}},
        400,
    ),
    ("POST", "/v1/models/iris:predict", {"json": {"instances": [[1, 2, 3]]}}, 400),
    ("POST", "/v1/models/iris:predict", {"json": {"instances": []}}, 400),
    ("POST", "/v1/models/iris:predict", {"json": {"instances": [[1, 2], [1, 2, 3]]}}, 400),
    ("POST", "/v1/models/iris:predict", {"json": {"rows": [[1, 2, 3, 4]]}}, 400),
    ("POST", "/v1/models/nope:predict", {"json": {"instances": [[1, 2, 3, 4]]}}, 404),
    ("POST", "/v2/repository/models/nope/load", {}, 404),
    ("POST", "/v2/repository/models/..%2F..%2Fetc/load", {}, 404),
    ("POST", "/v2/repository/index", {"json": {"ready": "yes"}}, 400),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    BAD_REQUESTS,
    ids=[f"{m} {p} {s}" for m, p, _, s in BAD_REQUESTS],
)
def test_bad_input_gets_a_4xx_json_error_and_the_server_keeps_serving(
    serve_app: Start, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    client = serve_app(DEFAULT_MODEL_PATH)
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert "Traceback" not in response.text
    _assert_serving(client)


def _asgi_post(
    client: TestClient, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[list[dict[str, Any]], int]:
    """POST straight to the app with a body it can only get by asking: the messages
    it sent, and how many times it asked for the body."""
    asked = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        return {"type": "http.request", "body": b"{" * 5000, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }

    async def call() -> None:
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    client.portal.call(call)  # type: ignore[union-attr]
    return sent, asked


def test_body_over_the_limit_is_413_before_it_is_read(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH, MLAPI_MAX_BODY_BYTES=4096)
    for path in ("/v2/models/iris/infer", "/v1/models/iris:predict"):
        sent, asked = _asgi_post(client, path, [(b"content-length", b"5000")])
        assert sent[0]["status"] == 413, sent
        assert b"MLAPI_MAX_BODY_BYTES" in sent[1]["body"]
        assert asked == 0, f"{path}: the body was read before the 413"
    big = orjson.dumps(v2_request(np.ones((400, 4), np.float32)))
    assert len(big) > 4096
    response = client.post("/v2/models/iris/infer", content=big)  # and when it was sent
    assert response.status_code == 413 and "MLAPI_MAX_BODY_BYTES" in response.json()["error"]
    import gzip

    bomb = gzip.compress(b" " * 1_000_000)
    response = client.post(
        "/v2/models/iris/infer", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 413
    small = client.post(
        "/v2/models/iris/infer",
        content=gzip.compress(orjson.dumps(v2_request(ROWS))),
        headers={"content-encoding": "gzip"},
    )
    assert small.status_code == 200


def test_every_credential_presented_must_be_right(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH, API_KEY="s3cret-key")
    mixed = {"x-api-key": "s3cret-key", "authorization": "Bearer wrong"}
    assert (
        client.post("/v2/models/iris/infer", json=v2_request(ROWS), headers=mixed).status_code
        == 401
    )
    both = {"x-api-key": "s3cret-key", "authorization": "Bearer s3cret-key"}
    assert (
        client.post("/v2/models/iris/infer", json=v2_request(ROWS), headers=both).status_code == 200
    )


def test_oversized_headers_are_431_on_the_infer_path_and_elsewhere(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH, MLAPI_MAX_HEADER_BYTES=2048)
    big = {"x-padding": "a" * 4096}
    cases: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("POST", "/v2/models/iris/infer", {"json": v2_request(ROWS)}),
        ("GET", "/v2/models/iris", {}),
    )
    for method, path, kwargs in cases:
        response = client.request(method, path, headers=big, **kwargs)
        assert response.status_code == 431
        assert "MLAPI_MAX_HEADER_BYTES" in response.json()["error"]
    _assert_serving(client)

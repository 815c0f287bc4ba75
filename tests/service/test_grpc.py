"""The Open Inference Protocol over gRPC, in-process: tritonclient.grpc unmodified
against the default model and fresh ONNX models (answers equal onnxruntime's for
batch 1..64), typed contents both ways, metadata and readiness, the repository
calls, the API and admin keys, hostile requests (the right status code, and the
server keeps serving), the metrics' protocol label, and the standard health
service with grpc's own client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2
from starlette.testclient import TestClient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import free_port, wait_for
from tests.fixtures.grpc import (
    INFER,
    health_of,
    health_stub,
    infer,
    raw_request,
    status_of,
    stub,
    triton_client,
)
from tests.fixtures.models import (
    DEFAULT_ONNX,
    v2_request,
    write_broken_onnx,
    write_onnx_classifier,
)
from tests.service import test_metrics

Start = Callable[..., TestClient]
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
Code = grpc.StatusCode


def serve_grpc(serve_app: Start, path: Path, **overrides: Any) -> tuple[TestClient, str]:
    port = free_port()
    client = serve_app(path, API_GRPC_PORT=port, **overrides)
    return client, f"127.0.0.1:{port}"


def _equal_to_onnxruntime(address: str, model: str, onnx_path: Path, n_features: int) -> None:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(3)
    with triton_client(address) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(model)
        for batch in range(1, 65):
            rows = (rng.normal(size=(batch, n_features)) * 2 + 4).astype(np.float32)
            result = infer(client, model, rows, "FP32", input_name)
            expected = session.run(names, {input_name: rows})
            for name, want in zip(names, expected, strict=True):
                got = result.as_numpy(name)
                assert got is not None and got.shape == want.shape, (batch, name)
                if want.dtype.kind in "OUS":
                    assert [g.decode() for g in got.ravel()] == list(want.ravel()), batch
                else:
                    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_tritonclient_grpc_on_the_default_model(serve_app: Start) -> None:
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    _equal_to_onnxruntime(address, "iris", DEFAULT_ONNX, 4)


def test_tritonclient_grpc_on_fresh_onnx_models_with_no_config(
    serve_app: Start, tmp_path: Path
) -> None:
    paths = {n: write_onnx_classifier(tmp_path, f"fresh{n}", n_features=n) for n in (3, 12)}
    assert not any((p.parent / "model.toml").exists() for p in paths.values())
    _, address = serve_grpc(serve_app, tmp_path)
    for n, path in paths.items():
        _equal_to_onnxruntime(address, f"fresh{n}", path, n)


def test_typed_contents_in_and_out(serve_app: Start) -> None:
    """A client that sends typed contents gets typed contents back (raw only when
    it sent raw), with the same values."""
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    typed = service_pb2.ModelInferRequest(model_name="iris", id="req-7")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(ROWS.ravel().tolist())
    with stub(address) as calls:
        answer = calls.ModelInfer(typed)
        raw_answer = calls.ModelInfer(raw_request("iris", ROWS))
    assert answer.id == "req-7" and answer.model_version == "1"
    assert not answer.raw_output_contents and len(raw_answer.raw_output_contents) == 2
    outputs = {o.name: o for o in answer.outputs}
    assert list(outputs["label"].contents.bytes_contents) == [b"setosa", b"virginica"]
    probabilities = np.array(outputs["probabilities"].contents.fp32_contents, np.float32)
    raw_probabilities = np.frombuffer(raw_answer.raw_output_contents[1], np.float32)
    assert list(outputs["probabilities"].shape) == [2, 3]
    np.testing.assert_array_equal(probabilities, raw_probabilities)


def test_metadata_and_readiness_calls(serve_app: Start, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(DEFAULT_MODEL_PATH / "iris", tmp_path / "iris")
    write_broken_onnx(tmp_path, "broken")
    client, address = serve_grpc(serve_app, tmp_path, wait_ready=False)
    with triton_client(address) as triton:
        wait_for(lambda: triton.is_model_ready("iris"), what="iris ready")
        wait_for(lambda: client.get("/health").status_code == 503, what="broken settled")
        assert triton.is_server_live()
        assert not triton.is_server_ready()  # a model that should serve does not
        assert not triton.is_model_ready("broken")
        metadata = triton.get_model_metadata("iris", as_json=True)
        http = client.get("/v2/models/iris").json()
        assert metadata["name"] == http["name"] and metadata["versions"] == http["versions"]
        assert metadata["platform"] == http["platform"]
        for side in ("inputs", "outputs"):
            got = [{**t, "shape": [int(d) for d in t["shape"]]} for t in metadata[side]]
            assert got == http[side]
        assert triton.get_model_metadata("iris", "1").versions == ["1"]
        server = triton.get_server_metadata()
        assert server.name == "mlapi" and "model_repository" in server.extensions
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            triton.get_model_metadata("nope")


def test_repository_calls_index_unload_and_load(serve_app: Start) -> None:
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    with triton_client(address) as triton:
        index = triton.get_model_repository_index(as_json=True)["models"]
        assert index == [{"name": "iris", "version": "1", "state": "READY"}]
        triton.unload_model("iris")
        with pytest.raises(InferenceServerException, match="unknown model"):
            infer(triton, "iris", ROWS, "FP32")
        triton.load_model("iris")
        assert triton.is_model_ready("iris")
        assert infer(triton, "iris", ROWS, "FP32").as_numpy("label").tolist() == [
            b"setosa",
            b"virginica",
        ]
        with pytest.raises(InferenceServerException, match=r"NOT_FOUND.*no model 'nope'"):
            triton.load_model("nope")


def test_the_api_key_guards_model_calls_and_the_admin_key_the_repository(
    serve_app: Start,
) -> None:
    _, address = serve_grpc(
        serve_app, DEFAULT_MODEL_PATH, API_KEY="k-123", MLAPI_ADMIN_KEY="admin-9"
    )
    request = raw_request("iris", ROWS)
    bearer = [("authorization", "Bearer k-123")]
    with stub(address) as calls:
        # open: liveness, readiness, server metadata
        assert calls.ServerLive(service_pb2.ServerLiveRequest()).live
        assert calls.ServerReady(service_pb2.ServerReadyRequest()).ready
        assert calls.ServerMetadata(service_pb2.ServerMetadataRequest()).name == "mlapi"
        model_calls = [
            lambda md: calls.ModelInfer(request, metadata=md),
            lambda md: calls.ModelReady(service_pb2.ModelReadyRequest(name="iris"), metadata=md),
            lambda md: calls.ModelMetadata(
                service_pb2.ModelMetadataRequest(name="iris"), metadata=md
            ),
        ]
        for call in model_calls:
            assert status_of(lambda c=call: c(())) == Code.UNAUTHENTICATED
            assert status_of(lambda c=call: c([("x-api-key", "wrong")])) == Code.UNAUTHENTICATED
            assert status_of(lambda c=call: c([("x-api-key", "k-123")])) == Code.OK
            assert status_of(lambda c=call: c(bearer)) == Code.OK
        # every credential presented must be right, and each comes once
        mixed = [("x-api-key", "k-123"), ("authorization", "Bearer wrong")]
        assert status_of(lambda: calls.ModelInfer(request, metadata=mixed)) == Code.UNAUTHENTICATED
        twice = [("x-api-key", "k-123"), ("x-api-key", "k-123")]
        assert status_of(lambda: calls.ModelInfer(request, metadata=twice)) == (
            Code.INVALID_ARGUMENT
        )
        # the repository takes the admin key: the API key is known, but not allowed
        index = service_pb2.RepositoryIndexRequest()
        assert status_of(lambda: calls.RepositoryIndex(index, metadata=bearer)) == (
            Code.PERMISSION_DENIED
        )
        wrong = [("authorization", "Bearer nope")]
        assert status_of(lambda: calls.RepositoryIndex(index, metadata=wrong)) == (
            Code.UNAUTHENTICATED
        )
        admin = [("authorization", "Bearer admin-9")]
        assert calls.RepositoryIndex(index, metadata=admin).models[0].name == "iris"
        unload = service_pb2.RepositoryModelUnloadRequest(model_name="iris")
        assert status_of(lambda: calls.RepositoryModelUnload(unload, metadata=bearer)) == (
            Code.PERMISSION_DENIED
        )
        assert calls.ModelReady(service_pb2.ModelReadyRequest(name="iris"), metadata=bearer).ready


def test_the_repository_calls_can_be_turned_off(serve_app: Start) -> None:
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH, MLAPI_REPOSITORY_API="false")
    with stub(address) as calls:
        unload = service_pb2.RepositoryModelUnloadRequest(model_name="iris")
        assert status_of(lambda: calls.RepositoryModelUnload(unload)) == Code.PERMISSION_DENIED
        assert calls.ModelReady(service_pb2.ModelReadyRequest(name="iris")).ready


def _request(**changes: Any) -> service_pb2.ModelInferRequest:
    """A good raw request for iris, then ``changes`` applied to it."""
    request = raw_request("iris", ROWS)
    tensor = request.inputs[0]
    for key, value in changes.items():
        if key == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        elif key == "raw":
            del request.raw_input_contents[:]
            request.raw_input_contents.extend(value)
        elif key in ("name", "datatype"):
            setattr(tensor, key, value)
        elif key == "typed":
            del request.raw_input_contents[:]
            field, values = value
            getattr(tensor.contents, field).extend(values)
        elif key == "also_typed":
            tensor.contents.fp32_contents.extend([1.0] * 8)
        elif key == "twice":
            request.inputs.add().CopyFrom(tensor)
            request.raw_input_contents.append(request.raw_input_contents[0])
        elif key == "no_inputs":
            del request.inputs[:]
            del request.raw_input_contents[:]
        elif key == "output":
            request.outputs.add(name=value)
        elif key == "classification":
            request.outputs.add(name="label").parameters["classification"].int64_param = 2
        else:
            setattr(request, key, value)
    return request


HOSTILE: list[tuple[str, dict[str, Any], grpc.StatusCode]] = [
    ("unknown model", {"model_name": "nope"}, Code.NOT_FOUND),
    ("unknown version", {"model_version": "9"}, Code.NOT_FOUND),
    ("version not a number", {"model_version": "x"}, Code.NOT_FOUND),
    ("version in other digits", {"model_version": "²"}, Code.NOT_FOUND),
    ("unknown input", {"name": "wrong"}, Code.INVALID_ARGUMENT),
    ("unknown datatype", {"datatype": "FLOAT"}, Code.INVALID_ARGUMENT),
    ("datatype the model does not take", {"datatype": "INT64"}, Code.INVALID_ARGUMENT),
    ("shape the model does not take", {"shape": [2, 3]}, Code.INVALID_ARGUMENT),
    ("negative dimension", {"shape": [-2, 4]}, Code.INVALID_ARGUMENT),
    ("seventeen dimensions", {"shape": [1] * 17}, Code.INVALID_ARGUMENT),
    ("over MLAPI_MAX_ELEMENTS", {"shape": [10**12, 4]}, Code.RESOURCE_EXHAUSTED),
    ("raw shorter than the shape", {"raw": [b"\0" * 31]}, Code.INVALID_ARGUMENT),
    ("raw longer than the shape", {"raw": [b"\0" * 33]}, Code.INVALID_ARGUMENT),
    ("two raw buffers for one input", {"raw": [b"\0" * 32] * 2}, Code.INVALID_ARGUMENT),
    ("raw and typed at once", {"also_typed": True}, Code.INVALID_ARGUMENT),
    ("typed in the wrong field", {"typed": ("int64_contents", [1] * 8)}, Code.INVALID_ARGUMENT),
    ("typed too few values", {"typed": ("fp32_contents", [1.0] * 7)}, Code.INVALID_ARGUMENT),
    # JSON cannot carry NaN or infinity: typed contents refuse them too
    ("typed NaN", {"typed": ("fp32_contents", [float("nan")] + [1.0] * 7)}, Code.INVALID_ARGUMENT),
    (
        "typed infinity",
        {"typed": ("fp32_contents", [1.0] * 7 + [float("inf")])},
        Code.INVALID_ARGUMENT,
    ),
    ("no data at all", {"typed": ("fp32_contents", [])}, Code.INVALID_ARGUMENT),
    ("no inputs", {"no_inputs": True}, Code.INVALID_ARGUMENT),
    ("an input twice", {"twice": True}, Code.INVALID_ARGUMENT),
    ("unknown output", {"output": "nope"}, Code.INVALID_ARGUMENT),
    ("classification extension", {"classification": True}, Code.INVALID_ARGUMENT),
]


@pytest.mark.parametrize(("what", "changes", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_the_right_status_and_the_server_keeps_serving(
    serve_app: Start, what: str, changes: dict[str, Any], code: grpc.StatusCode
) -> None:
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    with stub(address) as calls:
        try:
            calls.ModelInfer(_request(**changes))
        except grpc.RpcError as exc:
            assert exc.code() == code, exc.details()
            assert exc.details() and "Traceback" not in str(exc.details())
        else:
            raise AssertionError(f"{what}: answered OK")
        assert len(calls.ModelInfer(_request()).raw_output_contents) == 2


def _garbage_is_invalid_argument(address: str, method: str, message: str) -> None:
    """Bytes that do not parse as ``message``, sent to ``method``: INVALID_ARGUMENT."""
    channel = grpc.insecure_channel(address)
    try:
        raw_call: Any = channel.unary_unary(method)  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as garbage:
            raw_call(b"\xff\xff\xff\xff\x0f")
        assert garbage.value.code() == Code.INVALID_ARGUMENT
        assert message in str(garbage.value.details())
    finally:
        channel.close()


def test_bytes_that_are_not_a_message_and_messages_over_the_limit(serve_app: Start) -> None:
    client, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH, MLAPI_MAX_BODY_BYTES=4096)
    _garbage_is_invalid_argument(address, INFER, "ModelInferRequest")
    big = raw_request("iris", np.zeros((300, 4), np.float32))  # 4.8 KB of tensor
    with stub(address) as calls:
        assert status_of(lambda: calls.ModelInfer(big)) == Code.RESOURCE_EXHAUSTED
    with triton_client(address) as triton:
        assert infer(triton, "iris", ROWS, "FP32").as_numpy("label") is not None
    assert client.get("/health").status_code == 200


def test_grpc_requests_are_counted_with_their_protocol(serve_app: Start) -> None:
    client, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    with triton_client(address) as triton:
        for _ in range(3):
            infer(triton, "iris", ROWS, "FP32")
        with pytest.raises(InferenceServerException):
            infer(triton, "iris", ROWS[:, :3].copy(), "FP32")
    assert client.post("/v2/models/iris/infer", json=v2_request(ROWS)).status_code == 200
    found = test_metrics.samples(client)

    def count(outcome: str, protocol: str) -> float:
        labels = {"model": "iris", "version": "1", "outcome": outcome, "protocol": protocol}
        return test_metrics.value(found, "mlapi_requests_total", **labels)

    assert count("ok", "grpc") == 3 and count("bad_request", "grpc") == 1
    assert count("ok", "http") == 1 and count("bad_request", "http") == 0


def test_the_standard_health_service_answers_as_health_does(
    serve_app: Start, tmp_path: Path
) -> None:
    """grpc.health.v1 with grpc's own client: the server ("" and the inference
    service) is SERVING only when /health is 200, a model by its name, an unknown
    name NOT_FOUND, no key needed; List names them all."""
    import shutil

    shutil.copytree(DEFAULT_MODEL_PATH / "iris", tmp_path / "iris")
    write_broken_onnx(tmp_path, "broken")
    client, address = serve_grpc(serve_app, tmp_path, wait_ready=False, API_KEY="k-1")
    wait_for(lambda: client.get("/health").status_code == 503, what="broken settled")
    with health_stub(address) as health:
        wait_for(lambda: health_of(health, "iris") == "SERVING", what="iris serving")
        assert health_of(health, "") == "NOT_SERVING"  # a model that should serve does not
        assert health_of(health, "inference.GRPCInferenceService") == "NOT_SERVING"
        assert health_of(health, "broken") == "NOT_SERVING"
        assert status_of(lambda: health_of(health, "nope")) == Code.NOT_FOUND
        listed = health.List(health_pb2.HealthListRequest(), timeout=5).statuses
        assert {name: status.status for name, status in listed.items()} == {
            "": health_pb2.HealthCheckResponse.NOT_SERVING,
            "inference.GRPCInferenceService": health_pb2.HealthCheckResponse.NOT_SERVING,
            "iris": health_pb2.HealthCheckResponse.SERVING,
            "broken": health_pb2.HealthCheckResponse.NOT_SERVING,
        }
    # once the broken model is gone, the server serves
    admin = {"x-api-key": "k-1"}
    assert client.post("/v2/repository/models/broken/unload", headers=admin).status_code == 200
    assert client.get("/health").status_code == 200
    with health_stub(address) as health:
        assert health_of(health, "") == "SERVING"
        assert health_of(health, "broken") == "NOT_SERVING"  # known, unloaded
    _garbage_is_invalid_argument(address, "/grpc.health.v1.Health/Check", "HealthCheckRequest")


def test_health_watch_streams_each_change(serve_app: Start) -> None:
    client, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    seen: list[str] = []
    with health_stub(address) as health:
        stream = health.Watch(health_pb2.HealthCheckRequest(service="iris"), timeout=30)
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=30)

        def read() -> None:
            try:
                for answer in stream:
                    seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
            except grpc.RpcError as exc:  # the cancel at the end
                assert exc.code() == Code.CANCELLED, exc

        reader = threading.Thread(target=read)
        reader.start()
        try:
            first = next(iter(unknown))
            assert first.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            unknown.cancel()
            wait_for(lambda: seen == ["SERVING"], what="the first status at once")
            assert client.post("/v2/repository/models/iris/unload").status_code == 200
            wait_for(lambda: seen == ["SERVING", "NOT_SERVING"], what="the unload streamed")
            assert client.post("/v2/repository/models/iris/load").status_code == 200
            wait_for(lambda: seen[-1] == "SERVING", what="the load streamed")
            assert seen == ["SERVING", "NOT_SERVING", "SERVING"]  # each change once
        finally:
            stream.cancel()
            reader.join(timeout=10)

"""The gRPC front under a hostile caller (issue 22, findings 1-3 and 11): the key
is checked from the metadata before the message is read, a message that does not
come is answered at its deadline, the health service and keyed calls have budgets
of their own, a request is refused by the counts of its inputs and outputs before
they are read one by one, and error details echo no control characters."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from starlette.testclient import TestClient
from tritonclient.grpc import service_pb2

from mlapi.rpc.server import WATCHES
from mlapi.settings import DEFAULT_MODEL_PATH
from tests.fixtures.grpc import INFER, raw_request, stub
from tests.service.test_grpc import ROWS, serve_grpc

Start = Callable[..., TestClient]
Code = grpc.StatusCode
KEY = "s3cret-key-for-tests"
SERVICE = "/inference.GRPCInferenceService/"


def _never_sent(release: threading.Event) -> Iterator[bytes]:
    """A request stream that sends its headers and no message until released."""
    release.wait(60)
    return
    yield b""  # pragma: no cover - makes this a generator


def _silent_call(address: str, method: str, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
    """Call ``method`` sending headers only; the error (or answer) it gets."""
    release = threading.Event()
    channel = grpc.insecure_channel(address)
    try:
        call: Any = channel.stream_unary(method)
        try:
            return call(_never_sent(release), metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc
    finally:
        release.set()
        channel.close()


def test_a_call_without_its_key_is_refused_before_its_message_is_read(serve_app: Start) -> None:
    """The call's message never comes: it is answered UNAUTHENTICATED all the same
    (were the message read first, the call would wait for it until its deadline)."""
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH, API_KEY=KEY)
    for method in (
        "ModelInfer",
        "ModelReady",
        "ModelMetadata",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    ):
        error = _silent_call(address, SERVICE + method)
        assert isinstance(error, grpc.RpcError) and error.code() == Code.UNAUTHENTICATED, method
        wrong = _silent_call(address, SERVICE + method, (("x-api-key", "wrong"),))
        assert isinstance(wrong, grpc.RpcError) and wrong.code() == Code.UNAUTHENTICATED
    with stub(address) as calls:
        answer = calls.ModelInfer(raw_request("iris", ROWS), metadata=(("x-api-key", KEY),))
        assert len(answer.raw_output_contents) == 2


def test_a_message_that_does_not_come_is_answered_at_its_deadline(serve_app: Start) -> None:
    client, address = serve_grpc(
        serve_app, DEFAULT_MODEL_PATH, MLAPI_BODY_TIMEOUT_S=1, MLAPI_HEADER_TIMEOUT_S=1
    )
    error = _silent_call(address, INFER)
    assert isinstance(error, grpc.RpcError) and error.code() == Code.DEADLINE_EXCEEDED
    assert "did not arrive within 1s (MLAPI_BODY_TIMEOUT_S)" in str(error.details())
    check = _silent_call(address, "/grpc.health.v1.Health/Check")
    assert isinstance(check, grpc.RpcError) and check.code() == Code.DEADLINE_EXCEEDED
    assert "MLAPI_HEADER_TIMEOUT_S" in str(check.details())
    # the requests that have no fields are answered without their message
    live = _silent_call(address, SERVICE + "ServerLive")
    assert not isinstance(live, grpc.RpcError)
    assert service_pb2.ServerLiveResponse.FromString(live).live
    assert client.get("/health").status_code == 200


def test_health_watch_streams_have_a_budget_of_their_own(serve_app: Start) -> None:
    """More Watch streams than the budget: the extra ones are refused at once, and
    keyed inference and the other health calls go on being answered meanwhile."""
    client, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    channel = grpc.insecure_channel(address)
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )

    def opened() -> Any:
        return watch(health_pb2.HealthCheckRequest(service=""), timeout=60)

    # the budget's streams first, each watching (its request read) before the next
    # opens: opened all at once, the extras could be refused by the budget of messages
    # being read instead, with that budget's words
    streams: list[Any] = []
    try:
        for _ in range(WATCHES):
            streams.append(opened())
            next(streams[-1])
        streams += [opened() for _ in range(6)]
        refused = 0
        for stream in streams[WATCHES:]:
            try:
                next(stream)
            except grpc.RpcError as exc:
                assert exc.code() == Code.RESOURCE_EXHAUSTED, exc.details()
                assert "health Watch streams" in str(exc.details())
                refused += 1
        assert refused == 6
        with stub(address) as calls:
            assert len(calls.ModelInfer(raw_request("iris", ROWS)).raw_output_contents) == 2
            assert calls.ServerLive(service_pb2.ServerLiveRequest()).live
    finally:
        for stream in streams:
            stream.cancel()
        channel.close()
    assert client.get("/health/live").status_code == 200


def test_inputs_and_outputs_past_the_models_count_are_refused_before_they_are_read(
    serve_app: Start,
) -> None:
    """200,000 output entries were read one by one, each against all before it."""
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    request = raw_request("iris", ROWS)
    for _ in range(200_000):
        request.outputs.add(name="label")
    with stub(address) as calls:
        with pytest.raises(grpc.RpcError) as caught:
            calls.ModelInfer(request, timeout=60)
        assert caught.value.code() == Code.INVALID_ARGUMENT
        assert "asks for 200000 outputs, more than the model's 2" in str(caught.value.details())
        assert len(calls.ModelInfer(raw_request("iris", ROWS)).raw_output_contents) == 2


def test_error_details_echo_no_control_characters(serve_app: Start) -> None:
    _, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    with stub(address) as calls:
        request = raw_request("iris", ROWS)
        request.inputs[0].name = "x\x1b[31m\ny"
        with pytest.raises(grpc.RpcError) as caught:
            calls.ModelInfer(request)
    details = str(caught.value.details())
    assert "\\x1b[31m\\x0ay" in details and "\x1b" not in details and "\n" not in details


def test_health_by_model_name_follows_the_drain(serve_app: Start) -> None:
    """A model's name is NOT_SERVING from the SIGTERM on, as the server's is."""
    from tests.fixtures.grpc import health_of, health_stub

    client, address = serve_grpc(serve_app, DEFAULT_MODEL_PATH)
    with health_stub(address) as health:
        assert health_of(health, "iris") == "SERVING"
        assert client.app.state.lifecycle.start_draining()  # type: ignore[attr-defined]
        assert health_of(health, "iris") == "NOT_SERVING"
        assert health_of(health, "") == "NOT_SERVING"

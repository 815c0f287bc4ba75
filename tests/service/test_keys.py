"""Keys per client on every front (issue 25): the same key file, and each front's own
rendering of the same refusal. V2 JSON and binary, V1 and gRPC call iris; OpenAI
calls minilm; a key that covers one and not the other is refused the other with
403 (PERMISSION_DENIED), whether or not that model exists, and does not see it in
the indexes; a key over its rate gets 429 with Retry-After (RESOURCE_EXHAUSTED);
each request is counted under its client's name."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from grpc import StatusCode as Code
from tritonclient.grpc import service_pb2

from tests.fixtures.grpc import status_of, stub
from tests.fixtures.text import text_models  # noqa: F401  (the session fixture)
from tests.service import test_metrics
from tests.service.test_fronts import FRONTS, MODEL, PROTOCOL, Env, start  # noqa: F401

KEYS = {"iris-app": "k-iris", "text-app": "k-text", "ops": "k-ops", "slow": "k-slow"}


def _keys_file(tmp_path: Path) -> Path:
    def entry(name: str, extra: str) -> str:
        digest = hashlib.sha256(KEYS[name].encode()).hexdigest()
        return f'[[key]]\nname = "{name}"\nsha256 = "{digest}"\n{extra}\n'

    path = tmp_path / "keys.toml"
    path.write_text(
        entry("iris-app", 'models = ["iris"]')
        + entry("text-app", 'models = ["mini*"]')
        + entry("ops", 'models = ["iris"]\nadmin = true')
        + entry("slow", "rate = 0.01\nburst = 2")
    )
    return path


def _as(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _owner(front: str) -> str:
    return "text-app" if front == "openai" else "iris-app"


def _stranger(front: str) -> str:
    return "iris-app" if front == "openai" else "text-app"


@pytest.mark.parametrize("front", FRONTS)
def test_a_key_calls_its_models_and_is_refused_the_others_by_name(
    start: Callable[..., Env],  # noqa: F811
    tmp_path: Path,
    front: str,
) -> None:
    env = start(API_KEYS_FILE=str(_keys_file(tmp_path)))
    send, model = FRONTS[front], MODEL[front]
    assert send(env, model, 1, _as(_owner(front))).status == 200
    for name in (model, "no-such-model"):  # existing or not: the same refusal
        refused = send(env, name, 1, _as(_stranger(front)))
        assert refused.status == (Code.PERMISSION_DENIED if front == "grpc" else 403)
        assert refused.message == f"key '{_stranger(front)}' may not call model '{name}'"
    unknown = send(env, model, 1, {"Authorization": "Bearer nope"})
    assert unknown.status == (Code.UNAUTHENTICATED if front == "grpc" else 401)
    found = test_metrics.samples(env.client)
    labels = {"model": model, "outcome": "ok", "protocol": PROTOCOL[front]}
    assert test_metrics.value(found, "mlapi_requests_total", client=_owner(front), **labels) == 1


@pytest.mark.parametrize("front", FRONTS)
def test_a_key_over_its_rate_is_told_when_to_retry(
    start: Callable[..., Env],  # noqa: F811
    tmp_path: Path,
    front: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = start(API_KEYS_FILE=str(_keys_file(tmp_path)), MLAPI_ACCESS_LOG="all")
    send, model = FRONTS[front], MODEL[front]
    assert [send(env, model, 1, _as("slow")).status for _ in range(2)] == [200, 200]  # the burst
    with caplog.at_level(logging.INFO, logger="mlapi.access"):
        refused = send(env, model, 1, _as("slow"))
    assert refused.status == (Code.RESOURCE_EXHAUSTED if front == "grpc" else 429)
    assert refused.message.startswith(
        "key 'slow' is over its rate of 0.01 requests a second (burst 2); retry in "
    )
    assert [getattr(r, "client", None) for r in caplog.records if r.name == "mlapi.access"] == [
        "slow"
    ]
    found = test_metrics.samples(env.client)
    limited = {"outcome": "rate_limited", "protocol": PROTOCOL[front], "client": "slow"}
    assert test_metrics.value(found, "mlapi_requests_total", **limited) == 1


def test_http_says_when_to_retry_and_openai_in_its_own_words(
    start: Callable[..., Env],  # noqa: F811
    tmp_path: Path,
) -> None:
    env = start(API_KEYS_FILE=str(_keys_file(tmp_path)))
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
    for _ in range(2):
        env.client.post("/v2/models/iris/infer", json=body, headers=_as("slow"))
    limited = env.client.post("/v2/models/iris/infer", json=body, headers=_as("slow"))
    assert limited.status_code == 429 and 90 <= int(limited.headers["retry-after"]) <= 100
    embeddings = env.client.post(
        "/v1/embeddings", json={"model": "minilm", "input": "x"}, headers=_as("slow")
    )
    error = embeddings.json()["error"]
    assert embeddings.status_code == 429 and "retry-after" in embeddings.headers
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    denied = env.client.post(
        "/v1/embeddings", json={"model": "minilm", "input": "x"}, headers=_as("iris-app")
    ).json()["error"]
    assert denied["message"] == "key 'iris-app' may not call model 'minilm'"


def test_each_key_sees_only_its_models_in_metadata_and_the_indexes(
    start: Callable[..., Env],  # noqa: F811
    tmp_path: Path,
) -> None:
    env = start(API_KEYS_FILE=str(_keys_file(tmp_path)))
    get = env.client.get
    assert get("/v2/models/iris", headers=_as("iris-app")).status_code == 200
    assert get("/v2/models/minilm", headers=_as("iris-app")).status_code == 403
    assert get("/v2/models/minilm/ready", headers=_as("iris-app")).status_code == 403
    assert get("/v1/models/minilm", headers=_as("iris-app")).status_code == 403
    assert get("/v1/models/iris", headers=_as("iris-app")).status_code == 200
    listed = get("/v1/models", headers=_as("text-app")).json()["data"]
    assert [m["id"] for m in listed] == ["minilm"]
    assert get("/v1/models", headers=_as("iris-app")).json()["data"] == []
    index = env.client.post("/v2/repository/index", headers=_as("ops")).json()
    assert {item["name"] for item in index} == {"iris"}  # not minilm, not broken
    assert env.client.post("/v2/repository/index", headers=_as("iris-app")).status_code == 403
    load = env.client.post("/v2/repository/models/minilm/load", headers=_as("ops"))
    assert (
        load.status_code == 403 and load.json()["error"] == "key 'ops' may not call model 'minilm'"
    )
    ops = (("authorization", f"Bearer {KEYS['ops']}"),)
    iris_app = (("authorization", f"Bearer {KEYS['iris-app']}"),)
    with stub(env.grpc_address) as calls:
        answer = calls.RepositoryIndex(service_pb2.RepositoryIndexRequest(), metadata=ops)
        assert {m.name for m in answer.models} == {"iris"}
        metadata = service_pb2.ModelMetadataRequest(name="minilm")
        assert status_of(lambda: calls.ModelMetadata(metadata, metadata=iris_app)) == (
            Code.PERMISSION_DENIED
        )
        ready = service_pb2.ModelReadyRequest(name="iris")
        assert calls.ModelReady(ready, metadata=iris_app).ready
        unload = service_pb2.RepositoryModelUnloadRequest(model_name="minilm")
        assert status_of(lambda: calls.RepositoryModelUnload(unload, metadata=ops)) == (
            Code.PERMISSION_DENIED
        )
    # health stays open: liveness, and readiness saying why (the broken model), no 401
    assert get("/health/live").status_code == 200 and get("/health").status_code == 503

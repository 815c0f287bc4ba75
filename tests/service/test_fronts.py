"""One data plane under five fronts (issue 21): the same scenarios against V2 JSON,
V2 binary, KServe V1, OpenAI /v1/embeddings and gRPC, each asserting the front's own
rendering of the same outcome, and that mlapi_requests_total and the access log
count the request exactly once, with the same labels.

V2, V1 and gRPC call the default iris model; OpenAI calls the minilm embedding
model. A model is held busy, or made to raise, by wrapping its batcher's predict
(the worker thread calls it), so every front's model can be held alike. Client gone
and SIGTERM while queued need a real connection and a real signal: they are in the
process tier (test_serve, test_drain, test_grpc) and, for every front at once, in
the plane's own tests at the bottom of this file."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import free_port, wait_for
from tests.fixtures.grpc import raw_request, stub
from tests.fixtures.models import write_broken_onnx
from tests.fixtures.text import text_models  # noqa: F401  (the session fixture)
from tests.service import test_metrics

Start = Callable[..., TestClient]
Code = grpc.StatusCode
KEY = "front-matrix-key"
ROW = [5.1, 3.5, 1.4, 0.2]


@dataclass
class Answer:
    status: int | Code
    message: str
    request_id: str | None = None


@dataclass
class Env:
    client: TestClient
    grpc_address: str

    def registry(self) -> Any:
        return self.client.app.state.registry  # type: ignore[attr-defined]


# ----- the five fronts: one request each, its answer as (status, message) ----------
def _http(env: Env, path: str, headers: dict[str, str], **kwargs: Any) -> Answer:
    response = env.client.post(path, headers=headers, **kwargs)
    if response.status_code == 200:
        return Answer(200, "")
    error = response.json()["error"]
    message = error["message"] if isinstance(error, dict) else error
    return Answer(response.status_code, message, response.headers.get("x-request-id"))


def _rows(n: int) -> list[list[float]]:
    """n rows for iris; 0: one row of three values, which iris does not take."""
    return [ROW] * n if n else [ROW[:3]]


def v2_json(env: Env, model: str, rows: int, headers: dict[str, str]) -> Answer:
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": _rows(rows)}]
    }
    return _http(env, f"/v2/models/{model}/infer", headers, json=body)


def v2_binary(env: Env, model: str, rows: int, headers: dict[str, str]) -> Answer:
    array = np.array(_rows(rows), np.float32)
    data = array.tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    )
    return _http(
        env,
        f"/v2/models/{model}/infer",
        {**headers, "Inference-Header-Content-Length": str(len(header))},
        content=header + data,
    )


def v1(env: Env, model: str, rows: int, headers: dict[str, str]) -> Answer:
    return _http(env, f"/v1/models/{model}:predict", headers, json={"instances": _rows(rows)})


def openai(env: Env, model: str, rows: int, headers: dict[str, str]) -> Answer:
    # a row: one input of 4 characters (the element limit counts characters here)
    body = {"model": model, "input": ["word"] * rows}  # 0: no input, which is refused
    return _http(env, "/v1/embeddings", headers, json=body)


def grpc_front(env: Env, model: str, rows: int, headers: dict[str, str]) -> Answer:
    metadata = tuple((k.lower(), v) for k, v in headers.items())
    with stub(env.grpc_address) as calls:
        try:
            calls.ModelInfer(
                raw_request(model, np.array(_rows(rows), np.float32)), metadata=metadata, timeout=60
            )
        except grpc.RpcError as exc:
            return Answer(exc.code(), exc.details() or "")
    return Answer(200, "")


FRONTS: dict[str, Callable[[Env, str, int, dict[str, str]], Answer]] = {
    "v2-json": v2_json,
    "v2-binary": v2_binary,
    "v1": v1,
    "openai": openai,
    "grpc": grpc_front,
}
MODEL = {"v2-json": "iris", "v2-binary": "iris", "v1": "iris", "openai": "minilm", "grpc": "iris"}
PROTOCOL = {front: "grpc" if front == "grpc" else "http" for front in FRONTS}


# ----- the deployment --------------------------------------------------------------
@pytest.fixture
def start(serve_app: Start, tmp_path: Path, text_models: Path) -> Callable[..., Env]:  # noqa: F811
    repo = tmp_path / "repo"
    shutil.copytree(DEFAULT_MODEL_PATH / "iris", repo / "iris")
    shutil.copytree(text_models / "minilm", repo / "minilm")
    write_broken_onnx(repo, "broken")  # FAILED: never ready

    def started(max_queue: int | None = None, **overrides: Any) -> Env:
        if max_queue is not None:
            for name in ("iris", "minilm"):  # the model's own file: every version's default
                (repo / name / "model.toml").write_text(f"[batching]\nmax_queue = {max_queue}\n")
        port = free_port()
        client = serve_app(repo, wait_ready=False, API_GRPC_PORT=port, **overrides)
        env = Env(client, f"127.0.0.1:{port}")
        wait_for(lambda: _ready(env), what="iris and minilm READY")
        return env

    return started


def _ready(env: Env) -> bool:
    try:
        return all(env.registry().get(name) is not None for name in ("iris", "minilm"))
    except Exception:
        return False


BODY_NAMED = {"openai", "grpc"}  # the model is named in the body, not the path


def labels_of(front: str, stage: str, model: str | None = None) -> tuple[str, str]:
    """The (model, version) labels a request is counted with: once resolved, the
    version's; before, the model's name alone where the path names it (a front
    whose body names the model knows none before the body); an unknown name none."""
    name = MODEL[front] if model is None else model
    if stage == "resolved":
        return name, "1"
    if stage == "unknown" or (stage == "before body" and front in BODY_NAMED):
        return "", ""
    return name, ""


def _count(env: Env, front: str, outcome: str, labels: tuple[str, str]) -> float:
    found = test_metrics.samples(env.client)
    key = {"model": labels[0], "version": labels[1], "outcome": outcome}
    key["protocol"] = PROTOCOL[front]
    wanted = set(key.items())  # whichever client
    named = "mlapi_requests_total"
    return sum(v for (n, have), v in found.items() if n == named and wanted <= have)


@contextmanager
def _counted_once(
    env: Env, front: str, outcome: str, caplog: pytest.LogCaptureFixture, labels: tuple[str, str]
) -> Iterator[None]:
    """The block's one request is counted once, with these labels, and logged once
    by the access log."""
    before = _count(env, front, outcome, labels)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlapi.access"):
        yield
    assert _count(env, front, outcome, labels) == before + 1, (front, outcome, labels)
    access = [r for r in caplog.records if r.name == "mlapi.access"]
    assert len(access) == 1, [r.getMessage() for r in access]


def _model_thread(env: Env, model: str) -> Any:
    return env.registry().get(model).batcher


@contextmanager
def _held(env: Env, model: str) -> Iterator[tuple[threading.Event, list[int]]]:
    """The model's worker thread busy until the event is set (or 30 s)."""
    batcher = _model_thread(env, model)
    real = batcher._predict
    release = threading.Event()
    runs: list[int] = []

    def held(inputs: Any, names: Any) -> Any:
        runs.append(1)
        release.wait(30)
        return real(inputs, names)

    batcher._predict = held
    try:
        yield release, runs
    finally:
        release.set()
        batcher._predict = real


# ----- the scenarios ---------------------------------------------------------------
KEYS = [
    ("no key", {}, 401, Code.UNAUTHENTICATED, "missing API key"),
    ("wrong key", {"X-API-Key": "wrong"}, 401, Code.UNAUTHENTICATED, "invalid API key"),
    (
        "a credential twice",
        {"Authorization": f"Bearer {KEY}", "X-API-Key": KEY, "x-api-key": KEY},
        400,
        Code.INVALID_ARGUMENT,
        "more than one",
    ),
]


@pytest.mark.parametrize("front", FRONTS)
def test_keys_on_every_front(
    start: Callable[..., Env], front: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = start(API_KEY=KEY, MLAPI_ACCESS_LOG="all")
    send = FRONTS[front]
    before_body = labels_of(front, "before body")
    for what, headers, status, code, message in KEYS:
        outcome = "unauthorized" if status == 401 else "bad_request"
        with _counted_once(env, front, outcome, caplog, before_body):
            if what == "a credential twice" and front != "grpc":
                answer = _twice(env, front)  # an HTTP header given twice: a raw list
            else:
                answer = send(env, MODEL[front], 1, headers)
        expected = code if front == "grpc" else status
        assert answer.status == expected, (what, answer)
        assert message in answer.message, (what, answer)
    assert send(env, MODEL[front], 1, {"Authorization": f"Bearer {KEY}"}).status == 200


def _twice(env: Env, front: str) -> Answer:
    path = {
        "v2-json": "/v2/models/iris/infer",
        "v2-binary": "/v2/models/iris/infer",
        "v1": "/v1/models/iris:predict",
        "openai": "/v1/embeddings",
    }[front]
    body = (
        {"model": "minilm", "input": "word"}
        if front == "openai"
        else {"instances": [ROW]}
        if front == "v1"
        else {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    )
    response = env.client.post(
        path,
        content=orjson.dumps(body),
        headers=[("content-type", "application/json"), ("x-api-key", KEY), ("x-api-key", KEY)],
    )
    error = response.json()["error"]
    return Answer(response.status_code, error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize("front", FRONTS)
def test_unknown_and_not_ready_models(
    start: Callable[..., Env], front: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = start(MLAPI_ACCESS_LOG="all")
    send = FRONTS[front]
    with _counted_once(env, front, "not_found", caplog, labels_of(front, "unknown")):
        unknown = send(env, "nope", 1, {})
    assert unknown.status == (Code.NOT_FOUND if front == "grpc" else 404), unknown
    assert "nope" in unknown.message
    with _counted_once(env, front, "not_ready", caplog, ("broken", "")):
        broken = send(env, "broken", 1, {})
    assert broken.status == (Code.UNAVAILABLE if front == "grpc" else 503), broken


@pytest.mark.parametrize("front", FRONTS)
def test_over_the_element_and_body_caps(
    start: Callable[..., Env], front: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = start(MLAPI_MAX_ELEMENTS=32, MLAPI_MAX_BODY_BYTES=4096, MLAPI_ACCESS_LOG="all")
    send = FRONTS[front]
    with _counted_once(env, front, "bad_request", caplog, labels_of(front, "resolved")):
        over = send(env, MODEL[front], 9, {})  # 36 elements (openai: 36 characters)
    assert over.status == (Code.RESOURCE_EXHAUSTED if front == "grpc" else 413), over
    assert "MLAPI_MAX_ELEMENTS" in over.message
    if front != "grpc":  # gRPC's message limit is grpc's own: refused before any count
        stage = "before body" if front in BODY_NAMED else "resolved"  # read, then refused
        with _counted_once(env, front, "bad_request", caplog, labels_of(front, stage)):
            huge = send(env, MODEL[front], 600, {})  # well over 4 KB
        assert huge.status == 413 and "MLAPI_MAX_BODY_BYTES" in huge.message, huge
    else:
        assert send(env, MODEL[front], 600, {}).status == Code.RESOURCE_EXHAUSTED
    assert send(env, MODEL[front], 1, {}).status == 200


@pytest.mark.parametrize("front", FRONTS)
def test_in_flight_cap_full(
    start: Callable[..., Env], front: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One request in flight of one allowed: the next is refused (before its body is
    decoded: this one is not even valid for its model), and the held one answered."""
    env = start(MLAPI_MAX_INFLIGHT=1, MLAPI_ACCESS_LOG="all")
    send = FRONTS[front]
    model = MODEL[front]
    answers: list[Answer] = []
    with _held(env, model) as (release, _):
        thread = threading.Thread(target=lambda: answers.append(send(env, model, 1, {})))
        thread.start()
        wait_for(lambda: _inflight(env) == 1, what="the first request in flight")
        stage = "before body" if front in BODY_NAMED else "resolved"
        with _counted_once(env, front, "overloaded", caplog, labels_of(front, stage)):
            refused = send(env, model, 1, {})
        release.set()
        thread.join(30)
    assert refused.status == (Code.RESOURCE_EXHAUSTED if front == "grpc" else 503), refused
    assert "MLAPI_MAX_INFLIGHT" in refused.message
    assert answers and answers[0].status == 200


@pytest.mark.parametrize("front", FRONTS)
def test_queue_full(
    start: Callable[..., Env], front: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One running, one queued of one allowed: the next is refused before its body is
    decoded (it is not even valid for its model), with Retry-After over HTTP."""
    env = start(max_queue=1, MLAPI_ACCESS_LOG="all")
    send = FRONTS[front]
    model = MODEL[front]
    batcher = _model_thread(env, model)
    answers: list[Answer] = []
    with _held(env, model) as (release, runs):
        threads = [
            threading.Thread(target=lambda: answers.append(send(env, model, 1, {})))
            for _ in range(2)
        ]
        threads[0].start()
        wait_for(lambda: runs == [1], what="one running")
        threads[1].start()
        wait_for(lambda: batcher.queue_depth == 1, what="one queued")
        # resolved before the refusal on every front (the body-named ones read it first)
        with _counted_once(env, front, "overloaded", caplog, labels_of(front, "resolved")):
            refused = send(env, model, 0, {})
        release.set()
        for thread in threads:
            thread.join(30)
    assert refused.status == (Code.RESOURCE_EXHAUSTED if front == "grpc" else 503), refused
    assert "queued" in refused.message
    assert [a.status for a in answers] == [200, 200]


def _inflight(env: Env) -> int:
    tracking = env.client.app._plane.tracking  # type: ignore[attr-defined]
    return int(tracking.active)


@pytest.mark.parametrize("front", FRONTS)
def test_deadline_passed_while_queued_runs_nothing(
    start: Callable[..., Env], front: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The model's thread held past the 1 s deadline: the running request and the one
    queued behind it both answer 504; the queued one is withdrawn, never run. Each is
    counted once and logged once."""
    env = start(MLAPI_REQUEST_TIMEOUT_S=1, MLAPI_ACCESS_LOG="all")
    send = FRONTS[front]
    model = MODEL[front]
    batcher = _model_thread(env, model)
    labels = labels_of(front, "resolved")
    before = _count(env, front, "timeout", labels)
    answers: list[Answer] = []
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mlapi.access"), _held(env, model) as (release, runs):
        first = threading.Thread(target=lambda: answers.append(send(env, model, 1, {})))
        first.start()
        wait_for(lambda: runs == [1], what="the first request running")
        late = send(env, model, 1, {})  # queued behind it, past its deadline
        assert batcher.queue_depth == 0  # withdrawn, not left to run
        first.join(30)
        release.set()
        after = send(env, model, 1, {})  # answered once the held run is over
    assert after.status == 200
    assert runs == [1, 1]  # the held request and the one after: the queued one never ran
    for answer in [late, *answers]:
        assert answer.status == (Code.DEADLINE_EXCEEDED if front == "grpc" else 504), answer
        assert "MLAPI_REQUEST_TIMEOUT_S" in answer.message
    assert _count(env, front, "timeout", labels) == before + 2
    logged = [r.getMessage() for r in caplog.records if r.name == "mlapi.access"]
    assert len(logged) == 3 and sum(" 504 " in line for line in logged) == 2, logged


@pytest.mark.parametrize("front", FRONTS)
def test_a_model_that_raises_is_a_500_with_the_request_id_in_the_log(
    start: Callable[..., Env], front: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = start(MLAPI_ACCESS_LOG="all")
    send = FRONTS[front]
    batcher = _model_thread(env, MODEL[front])
    real = batcher._predict

    def raising(inputs: Any, names: Any) -> Any:
        raise RuntimeError("the model broke")

    batcher._predict = raising
    try:
        with _counted_once(env, front, "error", caplog, labels_of(front, "resolved")):
            answer = send(env, MODEL[front], 1, {})
    finally:
        batcher._predict = real
    assert answer.status == (Code.INTERNAL if front == "grpc" else 500), answer
    assert "internal server error (request id " in answer.message
    assert "the model broke" not in answer.message  # no detail reaches the client
    request_id = answer.message.rsplit(" ", 1)[1].rstrip(")")
    if front != "grpc":
        assert answer.request_id == request_id
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged, "the request id is in a log line"
    assert send(env, MODEL[front], 1, {}).status == 200


# ----- the plane itself: what no front can skip ----------------------------------------
class _Wire:
    """A front of the plane's for its own tests: counts what the plane asks of it."""

    cost_per_byte = 1

    def __init__(self, gone: bool = False) -> None:
        self.reads = 0
        self.gone = (lambda: True) if gone else None

    async def read(self) -> bytes:
        self.reads += 1
        return b"x"

    def model_of(self, body: bytes) -> tuple[str, str | None]:
        return "iris", None

    def decode(self, body: bytes, model: Any, limits: Any) -> Any:
        from mlapi.serving.codec import InferRequest

        return InferRequest(None, {"input": np.array([ROW], np.float32)}, ("label",), frozenset())

    def encode(self, model: Any, decoded: Any, results: Any) -> Any:
        return results


def test_the_plane_refuses_a_full_server_before_reading_a_body(serve_app: Start) -> None:
    from mlapi.errors import Overloaded
    from mlapi.serving.plane import Call

    client = serve_app(DEFAULT_MODEL_PATH, MLAPI_MAX_INFLIGHT=1)
    plane = client.app._plane  # type: ignore[attr-defined]
    wire = _Wire()
    plane.tracking.active = 1  # one in flight, of one
    try:
        with pytest.raises(Overloaded):
            asyncio.run(plane.infer(Call("iris", None, "POST", "/", None, None, None), wire))
        with pytest.raises(Overloaded):  # named in the body: still before the body
            asyncio.run(plane.infer(Call(None, None, "POST", "/", None, None, None), wire))
    finally:
        plane.tracking.active = 0
    assert wire.reads == 0


def test_the_plane_drops_a_queued_request_whose_client_has_gone(serve_app: Start) -> None:
    """What every front's probe feeds: a request whose client is gone is not run."""
    from mlapi.errors import ClientGone
    from mlapi.serving.plane import Call

    client = serve_app(DEFAULT_MODEL_PATH)
    plane = client.app._plane  # type: ignore[attr-defined]
    batcher = client.app.state.registry.get("iris").batcher  # type: ignore[attr-defined]
    runs: list[int] = []
    real = batcher._predict

    def counted(inputs: Any, names: Any) -> Any:
        runs.append(1)
        return real(inputs, names)

    batcher._predict = counted
    try:
        with pytest.raises(ClientGone):
            call = Call("iris", None, "POST", "/", None, None, None)
            client.portal.call(plane.infer, call, _Wire(gone=True))  # type: ignore[union-attr]
    finally:
        batcher._predict = real
    assert runs == []


@pytest.mark.parametrize("front", FRONTS)
def test_a_request_running_when_its_model_unloads_gets_503(
    start: Callable[..., Env], front: str
) -> None:
    """The soak found it: an unload under a running batch reached the client as a
    bare 500 (the batcher's cancellation escaped the plane)."""
    env = start()
    send, model = FRONTS[front], MODEL[front]
    answers: list[Answer] = []
    with _held(env, model) as (release, runs):
        request = threading.Thread(target=lambda: answers.append(send(env, model, 1, {})))
        request.start()
        wait_for(lambda: runs == [1], what="the request running")
        unload = threading.Thread(
            target=lambda: env.client.post(f"/v2/repository/models/{model}/unload")
        )
        unload.start()
        request.join(30)
        release.set()  # the held run ends; the unload finishes freeing the model
        unload.join(30)
    (answer,) = answers
    assert answer.status == (Code.RESOURCE_EXHAUSTED if front == "grpc" else 503), answer
    assert answer.message == f"model '{model}:1' is unloading"

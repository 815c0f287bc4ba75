"""A new version must answer right before it serves (issue 23): under a shadow
rollout it answers copies of live requests beside the version that serves and is
promoted only when it agrees and is not slower; under a canary it answers a stable
share of requests, step by step, and a failing step rolls back. Real models,
trained here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from starlette.testclient import TestClient

from mlapi.repository import publish
from tests.conftest import free_port, wait_for
from tests.fixtures.models import v2_request, write_chain_onnx
from tests.fixtures.traffic import back_to_back
from tests.service.test_metrics import samples, value

Start = Callable[..., TestClient]
FEATURES, TARGET = make_classification(
    n_samples=400, n_features=4, n_informative=3, n_redundant=0, n_classes=2, random_state=3
)
FEATURES = FEATURES.astype(np.float32)
SHADOW = """
[rollout]
strategy = "shadow"
min_compared = 60
max_shadow_s = 60
bake_s = 0
"""


def _classifier(relabel: bool = False, nudge: float = 0.0) -> bytes:
    """A logistic regression on FEATURES as ONNX: ``relabel`` swaps its two labels
    (the same scores, the opposite answer); ``nudge`` moves its weights a little."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    model = LogisticRegression(max_iter=500).fit(FEATURES, TARGET)
    if nudge:
        model.coef_ = model.coef_ + nudge
    if relabel:
        model.classes_ = model.classes_[::-1].copy()
    graph = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, 4]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    return bytes(graph.SerializeToString())


EXPECTED = LogisticRegression(max_iter=500).fit(FEATURES, TARGET).predict(FEATURES)


def _repository(tmp_path: Path, rollout: str = SHADOW) -> Path:
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "model.onnx").write_bytes(_classifier())
    (repo / "m" / "model.toml").write_text(rollout)
    return repo


def _publish(tmp_path: Path, repo: Path, onnx: bytes, label: str) -> None:
    folder = tmp_path / "incoming" / label
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(onnx)
    publish.publish(repo, "m", 2, source=folder)


Answer = tuple[int, str | None, int | None, int]  # status, version, label, row


def _traffic(client: TestClient, keys: bool = False) -> AbstractContextManager[list[Answer]]:
    """One row at a time, back to back, while the block runs."""

    def send(n: int) -> Answer:
        row = n % len(FEATURES)
        headers = {"x-request-id": f"user-{n}"} if keys else {}
        response = client.post(
            "/v2/models/m/infer",
            json=v2_request(FEATURES[row : row + 1], name="features"),
            headers=headers,
        )
        if response.status_code != 200:
            return (response.status_code, None, None, row)
        body = response.json()
        label = next(o for o in body["outputs"] if o["name"] == "label")["data"][0]
        return (200, body["model_version"], label, row)

    return back_to_back(send)


def _index(client: TestClient) -> dict[str, dict[str, Any]]:
    """The repository index by version (the last item of each version)."""
    items = client.post("/v2/repository/index").json()
    return {str(item.get("version")): item for item in items if item["name"] == "m"}


def _state(client: TestClient, version: str) -> str | None:
    return _index(client).get(version, {}).get("state")


def test_a_version_with_its_labels_swapped_is_refused_and_never_answers(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = _repository(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1", MLAPI_LOG_DIR=str(tmp_path / "logs"))
    with _traffic(client) as answers:
        _publish(tmp_path, repo, _classifier(relabel=True), "swapped")
        wait_for(lambda: _state(client, "2") == "FAILED", timeout_s=60, what="the refusal")
        count = len(answers)
        wait_for(lambda: len(answers) > count + 20, what="traffic after the refusal")
    assert {status for status, *_ in answers} == {200}
    assert {version for _, version, *_ in answers} == {"1"}
    assert all(label == EXPECTED[row] for _, _, label, row in answers)
    reason = _index(client)["2"]["reason"]
    assert "agreement 0.00 < 0.99" in reason, reason
    assert "label '1' -> '0'" in reason or "label '0' -> '1'" in reason, reason
    found = samples(client)
    assert value(found, "mlapi_model_rollouts_total", model="m", outcome="refused") == 1
    assert value(found, "mlapi_shadow_compared_total", model="m", version="2") >= 60
    disagreed = value(found, "mlapi_shadow_disagreements_total", model="m", output="label")
    assert disagreed >= 60
    mark = orjson.loads((repo / "m" / ".gate-2").read_bytes())
    assert mark["decision"] == "refused"
    lines = (tmp_path / "logs" / "shadow" / "m-v2.jsonl").read_bytes().splitlines()
    first = orjson.loads(lines[0])
    assert (
        first["differs"] == ["label"]
        and first["served"]["label"]["data"] != first["trial"]["label"]["data"]
    )
    assert 1 <= len(lines) <= 32
    # the refusal holds across a restart: the server that comes next serves v1 alone
    again = serve_app(repo)
    assert _index(again)["2"]["state"] == "REFUSED"
    response = again.post("/v2/models/m/infer", json=v2_request(FEATURES[:1], name="features"))
    assert response.json()["model_version"] == "1"


@pytest.mark.parametrize("nudge", [0.0, 1e-7], ids=["re-exported", "numerically-close"])
def test_a_version_that_agrees_is_promoted_after_its_comparisons(
    serve_app: Start, tmp_path: Path, nudge: float
) -> None:
    repo = _repository(tmp_path)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    with _traffic(client) as answers:
        _publish(tmp_path, repo, _classifier(nudge=nudge), "same")
        wait_for(lambda: "trial" in _index(client).get("2", {}), what="the trial")
        wait_for(lambda: answers[-1][1] == "2", timeout_s=60, what="v2 to serve")
        count = len(answers)
        wait_for(lambda: len(answers) > count + 20, what="traffic after the switch")
    assert {status for status, *_ in answers} == {200}
    versions = [version for _, version, *_ in answers]
    switched = versions.index("2")
    assert set(versions[:switched]) == {"1"} and set(versions[switched:]) == {"2"}
    assert all(label == EXPECTED[row] for _, _, label, row in answers)
    found = samples(client)
    assert value(found, "mlapi_shadow_compared_total", model="m", version="2") >= 60
    assert value(found, "mlapi_model_rollouts_total", model="m", outcome="promoted") == 1
    assert orjson.loads((repo / "m" / ".gate-2").read_bytes())["decision"] == "promoted"


def test_a_version_three_times_slower_is_refused_on_latency(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_chain_onnx(repo, "chain", side=300, nodes=40)
    rollout = SHADOW.replace("max_shadow_s = 60", "max_shadow_s = 4")
    (repo / "chain" / "model.toml").write_text(rollout)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    slow = write_chain_onnx(tmp_path / "incoming", "chain", side=300, nodes=120)
    publish.publish(repo, "chain", 2, source=slow.parent)
    body = v2_request(np.ones((1, 300), np.float32), name="x")
    seen: list[str] = []

    def refused() -> bool:
        response = client.post("/v2/models/chain/infer", json=body)
        seen.append(response.json()["model_version"])
        items = client.post("/v2/repository/index").json()
        return any(i.get("version") == "2" and i["state"] == "FAILED" for i in items)

    wait_for(refused, timeout_s=60, what="the refusal")
    assert set(seen) == {"1"}
    reason = next(
        i["reason"] for i in client.post("/v2/repository/index").json() if i.get("version") == "2"
    )
    assert "latency ratio" in reason and "agreement 1.0000" in reason, reason
    ratio = float(reason.split("latency ratio ")[1].split(" ")[0])
    # three times the work measures 2 to 2.5 times the time on this machine (a run's
    # fixed cost is the same); the gate is 1.5, an identical model measures 0.9-1.2
    assert ratio > 1.5, reason


CANARY = """
[rollout]
strategy = "canary"
canary_percent = [10, 100]
step_s = 600
min_requests = 20
bake_s = 0
"""


def test_a_canary_answers_its_share_by_a_stable_key(serve_app: Start, tmp_path: Path) -> None:
    repo = _repository(tmp_path, CANARY)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    _publish(tmp_path, repo, _classifier(nudge=1e-7), "canary")
    wait_for(lambda: "trial" in _index(client).get("2", {}), what="the canary")

    def versions() -> dict[str, str]:
        met = {}
        for i in range(2000):
            row = i % len(FEATURES)
            response = client.post(
                "/v2/models/m/infer",
                json=v2_request(FEATURES[row : row + 1], name="features"),
                headers={"x-request-id": f"user-{i}"},
            )
            assert response.status_code == 200
            met[f"user-{i}"] = response.json()["model_version"]
        return met

    first = versions()
    share = Counter(first.values())["2"] / len(first)
    assert 0.07 <= share <= 0.13, share
    assert versions() == first  # the same key meets the same version
    trial = _index(client)["2"]["trial"]
    assert trial["strategy"] == "canary" and trial["percent"] == 10
    found = samples(client)
    assert value(found, "mlapi_canary_percent", model="m", version="2") == 10


FAILING = """
import numpy as np


class Failing:
    '''Answers its warm-up, then fails every request: a broken release.'''

    def load(self, path):
        self.calls = 0

    def predict(self, inputs):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("feature store unreachable")
        rows = inputs["features"].shape[0]
        return {"label": np.zeros(rows, np.int64), "probabilities": np.zeros((rows, 2), np.float32)}
"""
FAILING_TOML = """
[warmup]
inputs = { features = [[0.0, 0.0, 0.0, 0.0]] }

[[inputs]]
name = "features"
datatype = "FP32"
shape = [-1, 4]

[[outputs]]
name = "label"
datatype = "INT64"
shape = [-1]

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [-1, 2]
"""


def test_a_failing_canary_step_rolls_back_at_once(serve_app: Start, tmp_path: Path) -> None:
    repo = _repository(tmp_path, CANARY.replace("[10, 100]", "[50, 100]"))
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    folder = tmp_path / "incoming" / "failing"
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(FAILING)
    (folder / "model.toml").write_text(FAILING_TOML)
    with _traffic(client, keys=True) as answers:
        publish.publish(repo, "m", 2, source=folder)
        wait_for(lambda: _state(client, "2") == "FAILED", timeout_s=60, what="the rollback")
        failed_then = sum(1 for status, *_ in answers if status != 200)
        count = len(answers)
        wait_for(lambda: len(answers) > count + 50, what="traffic after the rollback")
    after = answers[count:]
    assert {status for status, *_ in after} == {200} and {v for _, v, *_ in after} == {"1"}
    assert 1 <= failed_then < 100  # the breach was seen within the first failures
    reason = _index(client)["2"]["reason"]
    assert "canary at 50%" in reason and "failed on the server" in reason, reason
    found = samples(client)
    assert value(found, "mlapi_model_rollouts_total", model="m", outcome="rolled_back") == 1
    assert value(found, "mlapi_canary_percent", model="m", version="2") == 0


def test_a_version_that_serves_is_not_demoted_when_its_model_becomes_gated(
    serve_app: Start, tmp_path: Path
) -> None:
    repo = _repository(tmp_path, "")  # switch
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    with _traffic(client) as answers:
        _publish(tmp_path, repo, _classifier(relabel=True), "switched")
        wait_for(lambda: answers[-1][1] == "2", what="v2 to serve")
        (repo / "m" / "model.toml").write_text(SHADOW)  # the operator turns shadow on
        wait_for(lambda: (repo / "m" / ".gate-2").exists(), what="v2 recorded as promoted")
        count = len(answers)
        wait_for(lambda: len(answers) > count + 50, what="traffic after")
    assert {status for status, *_ in answers} == {200}
    versions = [version for _, version, *_ in answers]
    assert set(versions[versions.index("2") :]) == {"2"}
    assert orjson.loads((repo / "m" / ".gate-2").read_bytes())["decision"] == "promoted"


def test_the_gates_hold_on_the_grpc_front_too(serve_app: Start, tmp_path: Path) -> None:
    """Written once in the plane: gRPC requests are copied to a shadow, and a canary
    keyed by a header of the config's choosing reads it from gRPC metadata."""
    from tests.fixtures.grpc import infer, triton_client

    port = free_port()
    repo = _repository(tmp_path, SHADOW.replace("min_compared = 60", "min_compared = 30"))
    canary = CANARY.replace("step_s = 600", 'step_s = 600\ncanary_key = "x-user"')
    (repo / "c" / "1").mkdir(parents=True)
    (repo / "c" / "1" / "model.onnx").write_bytes(_classifier())
    (repo / "c" / "model.toml").write_text(canary)
    client = serve_app(repo, API_GRPC_PORT=port, MLAPI_REPOSITORY_POLL_S="0.1")
    _publish(tmp_path, repo, _classifier(relabel=True), "swapped")
    (tmp_path / "incoming" / "c2").mkdir(parents=True)
    (tmp_path / "incoming" / "c2" / "model.onnx").write_bytes(_classifier(nudge=1e-7))
    publish.publish(repo, "c", 2, source=tmp_path / "incoming" / "c2")
    wait_for(
        lambda: sum(bool(i.get("trial")) for i in client.post("/v2/repository/index").json()) == 2,
        what="the shadow of m and the canary of c",
    )
    with triton_client(f"127.0.0.1:{port}") as grpc_client:

        def refused() -> bool:
            answer = infer(grpc_client, "m", FEATURES[:1], "FP32", input_name="features")
            assert answer.get_response().model_version == "1"
            return _state(client, "2") == "FAILED"

        wait_for(refused, timeout_s=60, what="the refusal over gRPC")
        met = Counter(
            infer(
                grpc_client,
                "c",
                FEATURES[:1],
                "FP32",
                input_name="features",
                headers={"x-user": f"user-{n % 50}"},
            )
            .get_response()
            .model_version
            for n in range(500)
        )
    assert 0 < met["2"] < 200, met  # 10% of 50 users, each always on one version
    assert met["2"] % 10 == 0, met
    assert value(samples(client), "mlapi_shadow_compared_total", model="m") >= 30


def test_the_shadow_follows_when_the_version_it_watches_is_replaced(
    serve_app: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """v1's files change in place while v2 is on trial: the reloaded v1 serves, and
    its answers are the ones copied from then on."""
    import logging

    forever = SHADOW.replace("min_compared = 60", "min_compared = 1000000")
    repo = _repository(tmp_path, forever)
    client = serve_app(repo, MLAPI_REPOSITORY_POLL_S="0.1")
    caplog.set_level(logging.INFO, logger="mlapi.registry")
    _publish(tmp_path, repo, _classifier(), "same")
    wait_for(lambda: "trial" in _index(client).get("2", {}), what="the shadow")

    def compared() -> int:
        return int(_index(client)["2"]["trial"]["compared"])

    with _traffic(client):
        wait_for(lambda: compared() > 20, what="copies compared")
        caplog.clear()
        (repo / "m" / "1" / "model.onnx").write_bytes(_classifier(nudge=1e-7))
        wait_for(
            lambda: any("v1 now serves" in r.getMessage() for r in caplog.records),
            what="v1 reloaded",
        )
        since = compared()
        wait_for(lambda: compared() > since + 50, what="copies of the reloaded v1's answers")

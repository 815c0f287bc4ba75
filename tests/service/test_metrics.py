"""/metrics: the names, labels and values the dashboards and alerts rely on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.fixtures.models import write_broken_onnx

Start = Callable[..., TestClient]
IRIS = {
    "inputs": [
        {
            "name": "input",
            "datatype": "FP32",
            "shape": [2, 4],
            "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3],
        }
    ]
}


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` that carry these labels (and any others: the
    requests' ``client``, say); none at all fails the test (so an assertion of 0
    cannot pass on a metric that does not exist)."""
    wanted = set(labels.items())
    matched = [v for (n, have), v in found.items() if n == name and wanted <= have]
    assert matched, f"no sample {name}{labels} on /metrics"
    return sum(matched)


def test_counters_count_each_request_once_by_outcome(serve_app: Start) -> None:
    client = serve_app(DEFAULT_MODEL_PATH, API_KEY="k")
    auth = {"x-api-key": "k"}
    for _ in range(7):
        assert client.post("/v2/models/iris/infer", json=IRIS, headers=auth).status_code == 200
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    for _ in range(2):
        assert client.post("/v2/models/iris/infer", json=bad, headers=auth).status_code == 400
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 401
    assert client.post("/v2/models/nosuch/infer", json=IRIS, headers=auth).status_code == 404
    assert (
        client.post(
            "/v1/models/iris:predict", json={"instances": [[1, 2, 3, 4]]}, headers=auth
        ).status_code
        == 200
    )
    for _ in range(5):  # never counted as traffic
        client.get("/health")
        client.get("/metrics")
    found = samples(client)
    requests = "mlapi_requests_total"
    assert value(found, requests, model="iris", version="1", outcome="ok", protocol="http") == 8
    assert (
        value(found, requests, model="iris", version="1", outcome="bad_request", protocol="http")
        == 2
    )
    assert (
        value(found, requests, model="iris", version="", outcome="unauthorized", protocol="http")
        == 1
    )
    assert (
        value(found, requests, model="", version="", outcome="not_found", protocol="http") == 1
    )  # no 'nosuch' label
    assert not any("nosuch" in str(key) for key in found)
    assert value(found, "mlapi_request_duration_seconds_count", model="iris", version="1") == 10
    assert value(found, "mlapi_inference_duration_seconds_count", model="iris", version="1") >= 8
    assert value(found, "mlapi_batch_size_sum", model="iris", version="1") >= 8 * 2 - 1
    assert value(found, "mlapi_inflight_requests", model="iris", version="1") == 0
    assert value(found, "mlapi_queue_depth", model="iris", version="1") == 0
    assert value(found, "mlapi_model_state", model="iris", version="1", state="ready") == 1
    assert value(found, "mlapi_model_state", model="iris", version="1", state="failed") == 0
    assert value(found, "mlapi_model_load_seconds", model="iris", version="1") > 0
    assert value(found, "mlapi_process_resident_memory_bytes") > 10_000_000
    assert any(name == "mlapi_build_info" for name, _ in found)


def test_model_state_reports_failed_and_unloaded_models(serve_app: Start, tmp_path: Path) -> None:
    write_broken_onnx(tmp_path, "broken")
    import shutil

    shutil.copytree(DEFAULT_MODEL_PATH / "iris", tmp_path / "iris")
    client = serve_app(tmp_path, wait_ready=False)
    from tests.conftest import wait_for

    wait_for(
        lambda: (
            value(samples(client), "mlapi_model_state", model="broken", version="1", state="failed")
            == 1
        ),
        what="failed state",
    )
    assert client.post("/v2/repository/models/iris/unload").status_code == 200
    found = samples(client)
    assert value(found, "mlapi_model_state", model="iris", version="1", state="unavailable") == 1
    assert value(found, "mlapi_model_state", model="iris", version="1", state="ready") == 0


def test_metrics_render_off_the_event_loop(serve_app: Start) -> None:
    """Rendering /metrics for 400 models held the event loop for 0.65 s a scrape:
    while a render is held here, liveness and inference are still answered."""
    import threading

    client = serve_app(DEFAULT_MODEL_PATH)
    metrics = client.app.state.registry.metrics  # type: ignore[attr-defined]
    real = metrics.expose
    entered, release = threading.Event(), threading.Event()

    def held() -> bytes:
        entered.set()
        release.wait(30)
        return real()

    metrics.expose = held
    scrape: list[int] = []
    thread = threading.Thread(target=lambda: scrape.append(client.get("/metrics").status_code))
    thread.start()
    try:
        assert entered.wait(30)
        assert client.get("/health/live").status_code == 200
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
        assert client.post("/v2/models/iris/infer", json=body).status_code == 200
        assert not scrape  # the render is still held
    finally:
        release.set()
        thread.join(30)
    assert scrape == [200]

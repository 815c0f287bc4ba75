"""Model life: readiness while loading, failures that stay contained, the
repository extension, pickle refusal, and the Python runtime."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest
from starlette.testclient import TestClient

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.conftest import wait_for
from tests.fixtures.models import (
    GATED_MODEL,
    GATED_TOML,
    fresh_classifier,
    write_broken_onnx,
    write_pickle,
    write_python_model,
)

Start = Callable[..., TestClient]
IRIS = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
}


def _repo_with_iris(tmp_path: Path) -> Path:
    shutil.copytree(DEFAULT_MODEL_PATH / "iris", tmp_path / "iris")
    return tmp_path


def _states(client: TestClient) -> dict[str, dict[str, object]]:
    return {m["name"]: m for m in client.get("/health").json()["models"]}


def test_health_is_503_while_a_slow_model_loads_and_200_after(
    serve_app: Start, tmp_path: Path
) -> None:
    folder = write_python_model(_repo_with_iris(tmp_path), "slow", GATED_MODEL, GATED_TOML)
    client = serve_app(tmp_path, wait_ready=False)
    assert client.get("/health/live").status_code == 200
    wait_for(lambda: _states(client).get("iris", {}).get("state") == "READY", what="iris ready")
    response = client.get("/health")
    assert response.status_code == 503
    assert _states(client)["slow"]["state"] == "LOADING"
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/slow/ready").status_code == 503
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200  # others serve
    infer_slow = client.post(
        "/v2/models/slow/infer",
        json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.5, 2]}]},
    )
    assert infer_slow.status_code == 503 and "LOADING" in infer_slow.json()["error"]
    (folder / "release").touch()
    wait_for(lambda: client.get("/health").status_code == 200, what="readiness after load")
    doubled = client.post(
        "/v2/models/slow/infer",
        json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.5, 2]}]},
    )
    assert doubled.json()["outputs"][0]["data"] == [3.0, 4.0]


def test_a_broken_model_is_named_and_the_others_keep_serving(
    serve_app: Start, tmp_path: Path
) -> None:
    _repo_with_iris(tmp_path)
    write_broken_onnx(tmp_path, "broken")
    (tmp_path / "empty").mkdir()
    client = serve_app(tmp_path, wait_ready=False)
    wait_for(
        lambda: _states(client).get("broken", {}).get("state") == "FAILED", what="broken fails"
    )
    wait_for(lambda: _states(client).get("iris", {}).get("state") == "READY", what="iris ready")
    response = client.get("/health")
    assert response.status_code == 503
    states = _states(client)
    assert "not a valid ONNX model" in str(states["broken"]["reason"])
    assert str(tmp_path) not in response.text  # no host path leaked
    assert states["empty"]["state"] == "FAILED"
    assert client.get("/health/live").status_code == 200
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200
    failed = client.post("/v2/models/broken/infer", json=IRIS)
    assert failed.status_code == 503 and "FAILED" in failed.json()["error"]


def test_fixing_a_model_and_loading_it_again_makes_it_ready(
    serve_app: Start, tmp_path: Path
) -> None:
    _repo_with_iris(tmp_path)
    broken = write_broken_onnx(tmp_path, "second")
    client = serve_app(tmp_path, wait_ready=False)
    wait_for(lambda: _states(client).get("second", {}).get("state") == "FAILED", what="failure")
    still_broken = client.post("/v2/repository/models/second/load")
    assert still_broken.status_code == 400 and "not a valid ONNX" in still_broken.json()["error"]
    shutil.copy(DEFAULT_MODEL_PATH / "iris" / "1" / "model.onnx", broken)
    assert client.post("/v2/repository/models/second/load").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.post("/v2/models/second/infer", json=IRIS).status_code == 200


def test_repository_index_load_and_unload(serve_app: Start, tmp_path: Path) -> None:
    _repo_with_iris(tmp_path)
    client = serve_app(tmp_path)
    assert client.post("/v2/repository/index").json() == [
        {"name": "iris", "version": "1", "state": "READY"}
    ]
    assert client.post("/v2/repository/models/iris/unload").status_code == 200
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 404
    assert client.post("/v2/repository/index").json()[0]["state"] == "UNAVAILABLE"
    assert client.post("/v2/repository/index", json={"ready": True}).json() == []
    assert client.post("/v2/repository/models/iris/load").status_code == 200
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200

    # a new version dropped into the folder is picked up by a load, the old one retired
    shutil.copytree(tmp_path / "iris" / "1", tmp_path / "iris" / "2")
    assert client.post("/v2/repository/models/iris/load").status_code == 200
    assert client.post("/v2/models/iris/infer", json=IRIS).json()["model_version"] == "2"
    assert client.post("/v2/models/iris/versions/1/infer", json=IRIS).status_code == 404


@pytest.mark.parametrize("layout", ["renamed_onnx", "joblib_file", "pickle_beside_python"])
def test_pickles_are_refused_under_every_runtime(
    serve_app: Start, tmp_path: Path, layout: str
) -> None:
    _repo_with_iris(tmp_path)
    if layout == "renamed_onnx":
        write_pickle(tmp_path / "evil" / "1" / "model.onnx")
    elif layout == "joblib_file":
        folder = tmp_path / "evil" / "1"
        folder.mkdir(parents=True)
        joblib.dump(fresh_classifier(4), folder / "model.joblib")
    else:
        folder = write_python_model(
            tmp_path, "evil", "class M:\n    def predict(self, inputs):\n        return inputs\n"
        )
        write_pickle(folder / "weights.pkl")
    client = serve_app(tmp_path, wait_ready=False)
    wait_for(lambda: _states(client).get("evil", {}).get("state") == "FAILED", what="refusal")
    wait_for(lambda: _states(client).get("iris", {}).get("state") == "READY", what="iris ready")
    reason = str(_states(client)["evil"]["reason"])
    assert "MLAPI_ALLOW_PICKLE" in reason and "arbitrary code" in reason
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200


def test_trusted_joblib_loads_when_the_operator_allows_it(serve_app: Start, tmp_path: Path) -> None:
    model = fresh_classifier(4)
    folder = tmp_path / "trusted" / "1"
    folder.mkdir(parents=True)
    joblib.dump(model, folder / "model.joblib")
    client = serve_app(tmp_path, MLAPI_ALLOW_PICKLE="true")
    rows = np.array([[0.1, 0.2, 0.3, 0.4]])
    body = client.post(
        "/v2/models/trusted/infer",
        json={
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP64",
                    "shape": [1, 4],
                    "data": rows.ravel().tolist(),
                }
            ]
        },
    ).json()
    labels = {o["name"]: o["data"] for o in body["outputs"]}["label"]
    assert labels == model.predict(rows).tolist()


def test_python_model_without_a_signature_takes_what_it_is_given(
    serve_app: Start, tmp_path: Path
) -> None:
    write_python_model(
        tmp_path,
        "echo",
        """
        import numpy as np

        class Echo:
            def load(self):
                self.offset = 10

            def predict(self, inputs):
                return {"sum": inputs["a"] + self.offset, "text": np.array(["ok"], dtype=object)}
    """,
    )
    client = serve_app(tmp_path)
    body = client.post(
        "/v2/models/echo/infer",
        json={"inputs": [{"name": "a", "datatype": "INT32", "shape": [3], "data": [1, 2, 3]}]},
    ).json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["sum"]["data"] == [11, 12, 13] and outputs["sum"]["datatype"] == "INT32"
    assert outputs["text"]["data"] == ["ok"]


def test_python_model_that_fails_to_import_or_load_is_reported(
    serve_app: Start, tmp_path: Path
) -> None:
    _repo_with_iris(tmp_path)
    write_python_model(tmp_path, "syntax", "class M(:\n")
    write_python_model(
        tmp_path,
        "raises",
        """
        class M:
            def load(self):
                raise RuntimeError("weights not found")

            def predict(self, inputs):
                return inputs
    """,
    )
    client = serve_app(tmp_path, wait_ready=False)
    wait_for(
        lambda: all(
            _states(client).get(n, {}).get("state") == "FAILED" for n in ("syntax", "raises")
        ),
        what="both fail",
    )
    wait_for(lambda: _states(client).get("iris", {}).get("state") == "READY", what="iris ready")
    states = _states(client)
    assert "SyntaxError" in str(states["syntax"]["reason"])
    assert "weights not found" in str(states["raises"]["reason"])
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200


def test_a_model_that_fails_its_warm_up_is_failed(serve_app: Start, tmp_path: Path) -> None:
    write_python_model(
        tmp_path,
        "cold",
        """
        class M:
            def predict(self, inputs):
                raise ValueError("cannot predict")
    """,
        GATED_TOML,
    )
    client = serve_app(tmp_path, wait_ready=False)
    wait_for(
        lambda: _states(client).get("cold", {}).get("state") == "FAILED", what="warm-up failure"
    )
    assert "warm-up inference failed" in str(_states(client)["cold"]["reason"])


def test_no_models_is_not_ready(serve_app: Start, tmp_path: Path) -> None:
    client = serve_app(tmp_path, wait_ready=False)
    response = client.get("/health")
    assert response.status_code == 503 and response.json()["models"] == []


def test_model_version_pin(serve_app: Start, tmp_path: Path) -> None:
    _repo_with_iris(tmp_path)
    shutil.copytree(tmp_path / "iris" / "1", tmp_path / "iris" / "2")
    client = serve_app(tmp_path, MODEL_VERSION="1")
    assert client.post("/v2/models/iris/infer", json=IRIS).json()["model_version"] == "1"


def test_optimised_onnx_graphs_are_cached_and_reused(serve_app: Start, tmp_path: Path) -> None:
    repo = _repo_with_iris(tmp_path / "repo")
    cache = tmp_path / "cache"
    first = serve_app(repo, MLAPI_CACHE_DIR=str(cache))
    cached = list((cache / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and cached[0].stat().st_size > 0
    runtime = first.app.state.registry.get("iris").runtime  # type: ignore[attr-defined]
    assert runtime.from_cache is False
    second = serve_app(repo, MLAPI_CACHE_DIR=str(cache))
    runtime = second.app.state.registry.get("iris").runtime  # type: ignore[attr-defined]
    assert runtime.from_cache is True
    assert (
        second.post("/v2/models/iris/infer", json=IRIS).json()
        == first.post("/v2/models/iris/infer", json=IRIS).json()
    )
    assert list((cache / "onnx").glob("*.partial")) == []


def test_an_unwritable_cache_is_not_fatal(serve_app: Start, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    client = serve_app(_repo_with_iris(tmp_path / "repo"), MLAPI_CACHE_DIR=str(blocker))
    assert client.post("/v2/models/iris/infer", json=IRIS).status_code == 200


def test_a_version_unloaded_under_a_request_answers_503_not_500(
    serve_app: Start, tmp_path: Path
) -> None:
    client = serve_app(_repo_with_iris(tmp_path))
    version = client.app.state.registry.get("iris")  # type: ignore[attr-defined]
    version.close()  # what an unload does while a request still holds the version
    from mlapi.errors import NotReady

    with pytest.raises(NotReady):
        _ = version.signature


def test_a_model_unloaded_while_it_loads_is_never_served(serve_app: Start, tmp_path: Path) -> None:
    folder = write_python_model(_repo_with_iris(tmp_path), "slow", GATED_MODEL, GATED_TOML)
    client = serve_app(tmp_path, wait_ready=False)
    wait_for(lambda: _states(client).get("iris", {}).get("state") == "READY", what="iris ready")
    assert _states(client)["slow"]["state"] == "LOADING"
    loading = client.app.state.registry.record("slow").versions[1]  # type: ignore[attr-defined]
    assert client.post("/v2/repository/models/slow/unload").status_code == 200
    (folder / "release").touch()  # the load finishes after the unload
    wait_for(
        lambda: (
            loading.warmup_seconds is not None  # the late load has run to its end ...
            and loading.runtime is None  # ... and freed the model ...
            and loading.state.value == "UNAVAILABLE"
        ),  # ... instead of making it READY
        what="the late load to free the model instead of serving it",
    )
    assert (
        client.post(
            "/v2/models/slow/infer",
            json={"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]},
        ).status_code
        == 404
    )
    assert client.get("/health").status_code == 200  # an unloaded model is not owed readiness

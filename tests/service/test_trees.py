"""XGBoost and LightGBM models, trained here on scikit-learn's data sets, saved in
their safe formats and served: the answers equal the library's own predict (labels
exactly, probabilities within 1e-5), rows the models never saw, batch sizes 1..64,
over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from starlette.testclient import TestClient

from tests.conftest import free_port
from tests.fixtures.grpc import infer, triton_client
from tests.fixtures.models import v2_request

Start = Callable[..., TestClient]


def _split(loader: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    data = loader()
    rows, target = data.data.astype(np.float64), data.target
    names = [str(n) for n in getattr(data, "target_names", [])] or None
    if loader is load_diabetes:
        names = None
    order = np.random.default_rng(0).permutation(len(rows))
    rows, target = rows[order], target[order]
    return rows[:-64], target[:-64], rows[-64:], names


def _write(folder: Path, name: str, labels: list[str] | None) -> Path:
    folder.mkdir(parents=True)
    if labels:
        (folder / "model.toml").write_text(f"labels = {labels!r}\n".replace("'", '"'))
    return folder / name


def _xgboost(folder: Path, loader: Any, fmt: str) -> tuple[Any, np.ndarray, list[str] | None]:
    import xgboost

    rows, target, unseen, labels = _split(loader)
    kind = xgboost.XGBRegressor if labels is None else xgboost.XGBClassifier
    model = kind(n_estimators=40, max_depth=4, learning_rate=0.3, random_state=0)
    model.fit(rows, target)
    model.save_model(str(_write(folder, f"model.{fmt}", labels)))
    return model, unseen, labels


def _lightgbm(folder: Path, loader: Any, fmt: str) -> tuple[Any, np.ndarray, list[str] | None]:
    import lightgbm

    rows, target, unseen, labels = _split(loader)
    kind = lightgbm.LGBMRegressor if labels is None else lightgbm.LGBMClassifier
    model = kind(n_estimators=40, num_leaves=15, random_state=0, verbose=-1)
    model.fit(rows, target)
    model.booster_.save_model(str(_write(folder, "model.txt", labels)))
    return model, unseen, labels


CASES = [
    ("xgboost", _xgboost, load_iris, "json"),
    ("xgboost", _xgboost, load_breast_cancer, "ubj"),
    ("xgboost", _xgboost, load_diabetes, "json"),
    ("lightgbm", _lightgbm, load_iris, "txt"),
    ("lightgbm", _lightgbm, load_breast_cancer, "txt"),
    ("lightgbm", _lightgbm, load_diabetes, "txt"),
]


def _infer(client: TestClient, rows: np.ndarray) -> dict[str, Any]:
    response = client.post("/v2/models/m/infer", json=v2_request(rows, "FP64"))
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


@pytest.mark.parametrize(
    ("library", "make", "loader", "fmt"),
    CASES,
    ids=[f"{c[0]}-{c[2].__name__.removeprefix('load_')}-{c[3]}" for c in CASES],
)
def test_served_answers_equal_the_library(
    serve_app: Start, tmp_path: Path, library: str, make: Any, loader: Any, fmt: str
) -> None:
    model, unseen, labels = make(tmp_path / "m" / "1", loader, fmt)
    grpc_port = free_port()
    client = serve_app(tmp_path, API_GRPC_PORT=grpc_port)
    metadata = client.get("/v2/models/m").json()
    assert metadata["platform"] == library
    assert metadata["inputs"] == [
        {"name": "input", "datatype": "FP64", "shape": [-1, unseen.shape[1]]}
    ]
    with triton_client(f"127.0.0.1:{grpc_port}") as over_grpc:
        for size in (1, 7, 64):
            rows = unseen[:size]
            outputs = _infer(client, rows)
            answer = infer(over_grpc, "m", rows, "FP64")
            if labels is None:
                expected = model.predict(rows)
                for got in (np.array(outputs["prediction"]["data"]), answer.as_numpy("prediction")):
                    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
                continue
            expected_labels = [labels[int(i)] for i in model.predict(rows)]
            assert outputs["label"]["data"] == expected_labels
            assert [b.decode() for b in answer.as_numpy("label")] == expected_labels
            probabilities = np.array(outputs["probabilities"]["data"]).reshape(size, len(labels))
            for got in (probabilities, answer.as_numpy("probabilities")):
                np.testing.assert_allclose(got, model.predict_proba(rows), atol=1e-5)
    # KServe V1 on the same model
    v1 = client.post("/v1/models/m:predict", json={"instances": unseen[:2].tolist()})
    assert v1.status_code == 200, v1.text


def test_refusals_say_why(serve_app: Start, tmp_path: Path) -> None:
    import xgboost

    rows, target, _, _ = _split(load_iris)
    softmax = xgboost.XGBClassifier(n_estimators=5, objective="multi:softmax")
    softmax.fit(rows, target)
    softmax.save_model(str(_write(tmp_path / "softmax" / "1", "model.json", None)))
    broken = _write(tmp_path / "broken" / "1", "model.txt", None)
    broken.write_text("not a model\n")
    _xgboost(tmp_path / "labels" / "1", load_iris, "json")
    (tmp_path / "labels" / "1" / "model.toml").write_text('labels = ["a", "b"]\n')
    client = serve_app(tmp_path, wait_ready=False)
    reasons: dict[str, str] = {}

    def settled() -> bool:
        index = client.post("/v2/repository/index", json={}).json()
        reasons.update({i["name"]: i.get("reason", "") for i in index if i["state"] == "FAILED"})
        return len(reasons) == 3

    from tests.conftest import wait_for

    wait_for(settled, what="three models failed")
    assert "multi:softprob" in reasons["softmax"]
    assert "not a LightGBM model" in reasons["broken"]
    assert "2 labels for a model of 3 classes" in reasons["labels"]

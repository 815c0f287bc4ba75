"""`mlapi models import` of a pickle the user trusts: a joblib pipeline, a random
forest and a pickled XGBoost classifier are each converted to a safe format, served,
and equal to the original on rows it never saw; what the converter cannot handle
falls back to skops and says so; without --trust, nothing is loaded."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from starlette.testclient import TestClient

from tests.process.conftest import run_import

pytestmark = pytest.mark.process
Start = Callable[..., TestClient]


def _data(loader: Any, strings: bool) -> tuple[np.ndarray, Any, np.ndarray]:
    data = loader()
    order = np.random.default_rng(1).permutation(len(data.data))
    rows = data.data[order]
    target = np.asarray(data.target_names)[data.target[order]] if strings else data.target[order]
    return rows[:-40], target[:-40], rows[-40:]


def _pipeline() -> tuple[Any, np.ndarray]:
    rows, target, unseen = _data(load_iris, strings=True)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        rows, target
    ), unseen


def _forest(trees: int = 31) -> tuple[Any, np.ndarray]:
    """An odd number of trees: two classes never tie exactly on a row."""
    rows, target, unseen = _data(load_breast_cancer, strings=False)
    return RandomForestClassifier(n_estimators=trees, random_state=0).fit(rows, target), unseen


def _xgboost() -> tuple[Any, np.ndarray]:
    import xgboost

    rows, target, unseen = _data(load_iris, strings=False)
    return xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(rows, target), unseen


def _lightgbm() -> tuple[Any, np.ndarray]:
    import lightgbm

    rows, target, unseen = _data(load_breast_cancer, strings=False)
    model = lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(rows, target)
    return model, unseen


def _centroid() -> tuple[Any, np.ndarray]:
    rows, target, unseen = _data(load_iris, strings=True)
    return NearestCentroid().fit(rows, target), unseen


CASES = [
    ("pipeline", _pipeline, "joblib", "onnx"),
    ("forest", _forest, "pkl", "onnx"),
    ("xgboost", _xgboost, "pkl", "onnx"),
    ("lightgbm", _lightgbm, "pkl", "lightgbm"),
    ("centroid", _centroid, "joblib", "skops"),
]


@pytest.mark.parametrize(("name", "make", "suffix", "fmt"), CASES, ids=[c[0] for c in CASES])
def test_imported_served_and_equal_to_the_original(
    serve_app: Start, tmp_path: Path, name: str, make: Any, suffix: str, fmt: str
) -> None:
    model, unseen = make()
    source = tmp_path / f"model.{suffix}"
    if suffix == "joblib":
        joblib.dump(model, source)
    else:
        source.write_bytes(pickle.dumps(model))
    repository = tmp_path / "models"
    repository.mkdir()
    done = run_import(str(source), "--name", name, "--model-path", str(repository), "--trust")
    assert done.returncode == 0, done.stderr
    assert f"({fmt};" in done.stdout and "labels equal" in done.stdout
    if fmt == "skops":
        assert "kept as skops" in done.stderr  # the fallback says so
    folder = repository / name / "1"
    assert not any(p.suffix in (".pkl", ".joblib") for p in folder.iterdir())
    assert (folder / "manifest.json").is_file()
    client = serve_app(repository)
    width = unseen.shape[1]
    metadata = client.get(f"/v2/models/{name}").json()
    (spec,) = metadata["inputs"]
    assert spec["shape"] == [-1, width]
    body = {
        "inputs": [
            {
                "name": spec["name"],
                "datatype": spec["datatype"],
                "shape": list(unseen.shape),
                "data": unseen.ravel().tolist(),
            }
        ]
    }
    response = client.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    expected = model.predict(unseen)
    assert [str(x) for x in outputs["label"]["data"]] == [str(x) for x in expected]
    if "probabilities" in outputs and hasattr(model, "predict_proba"):
        got = np.array(outputs["probabilities"]["data"]).reshape(len(unseen), -1)
        np.testing.assert_allclose(got, model.predict_proba(unseen), atol=1e-5)


def test_without_trust_nothing_is_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = tmp_path / "model.pkl"
    # a pickle that would create a file if it were ever loaded
    source.write_bytes(
        b"cbuiltins\nexec\n(S'open(" + repr(str(marker)).encode() + b', "w").close()\'\ntR.'
    )
    repository = tmp_path / "models"
    repository.mkdir()
    done = run_import(str(source), "--name", "m", "--model-path", str(repository))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--trust" in done.stderr
    assert not marker.exists() and list(repository.iterdir()) == []


def test_exact_ties_are_reported_not_refused(tmp_path: Path) -> None:
    """With 30 trees, generated rows far from the data often split 15 to 15: there
    scikit-learn names the first class and the ONNX model, summing in another order,
    may name the second. The probabilities are equal; the import says so."""
    model, _ = _forest(trees=30)
    source = tmp_path / "model.pkl"
    source.write_bytes(pickle.dumps(model))
    done = run_import(str(source), "--name", "m", "--model-path", str(tmp_path), "--trust")
    assert done.returncode == 0, done.stderr
    assert "(onnx;" in done.stdout and "exact ties" in done.stderr


def test_a_sample_that_is_not_rows_is_refused(tmp_path: Path) -> None:
    model, _ = _forest()
    source = tmp_path / "model.pkl"
    source.write_bytes(pickle.dumps(model))
    sample = tmp_path / "sample.npy"
    np.save(sample, np.zeros(3))
    done = run_import(
        str(source),
        "--name",
        "m",
        "--model-path",
        str(tmp_path),
        "--trust",
        "--sample",
        str(sample),
    )
    assert done.returncode == 2 and "2-D array" in done.stderr


def test_the_sample_becomes_the_versions_drift_reference(tmp_path: Path) -> None:
    model, unseen = _forest()
    source = tmp_path / "model.pkl"
    source.write_bytes(pickle.dumps(model))
    sample = tmp_path / "sample.npy"
    np.save(sample, unseen)
    repository = tmp_path / "models"
    repository.mkdir()
    done = run_import(
        str(source),
        "--name",
        "m",
        "--model-path",
        str(repository),
        "--trust",
        "--sample",
        str(sample),
    )
    assert done.returncode == 0, done.stderr
    with np.load(repository / "m" / "1" / "reference.npz", allow_pickle=False) as reference:
        names = set(reference.files)
        (feature,) = names - {n for n in names if n.startswith("output:")}
        np.testing.assert_allclose(reference[feature], unseen, rtol=1e-6)
        assert [str(x) for x in reference["output:label"]] == [
            str(x) for x in model.predict(unseen)
        ]
    manifest = json.loads((repository / "m" / "1" / "manifest.json").read_text())
    assert "reference.npz" in manifest["files"]

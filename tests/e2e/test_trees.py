"""The image built with MLAPI_EXTRAS=trees serves an XGBoost and a LightGBM model
dropped onto the models volume as their own files, answering as the libraries do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris

from tests.e2e.conftest import Stack, make_stack
from tests.fixtures.models import v2_request

pytestmark = pytest.mark.e2e


def test_the_trees_image_serves_xgboost_and_lightgbm(
    stack_factory: list[Stack], tmp_path: Path
) -> None:
    import lightgbm
    import xgboost

    rows, target = load_iris(return_X_y=True)
    models = tmp_path / "host-models"
    trained: dict[str, Any] = {
        "xgb": xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(rows, target),
        "lgb": lightgbm.LGBMClassifier(n_estimators=20, verbose=-1).fit(rows, target),
    }
    for name, model in trained.items():
        folder = models / name / "1"
        folder.mkdir(parents=True)
        if name == "xgb":
            model.save_model(str(folder / "model.json"))
        else:
            model.booster_.save_model(str(folder / "model.txt"))
    stack = make_stack(tmp_path, ["docker-compose.yml", "docker-compose.host-models.yml"])
    stack_factory.append(stack)
    stack.env.update(ML_MODELS_HOST_PATH=str(models), MLAPI_EXTRAS="trees", MLAPI_TAG="e2e-trees")
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "300")
    sample = rows[::15]
    for name, model in trained.items():
        body = v2_request(sample, "FP64")
        response = httpx.post(f"{stack.url}/v2/models/{name}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["label"]["data"] == [str(i) for i in model.predict(sample)]
        got = np.array(outputs["probabilities"]["data"]).reshape(len(sample), 3)
        np.testing.assert_allclose(got, model.predict_proba(sample), atol=1e-5)

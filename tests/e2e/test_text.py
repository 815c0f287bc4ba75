"""A text model on the compose deployment: the image built with MLAPI_EXTRAS=text
serves a folder that `mlapi models import` made, from the models volume, with no
other change; its answers equal the host's; doctor measures it like any model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from tests.e2e.conftest import Stack, make_stack
from tests.fixtures.text import text_models  # noqa: F401
from tests.process.conftest import MLAPI

pytestmark = pytest.mark.e2e


def test_the_image_serves_an_imported_text_model(
    stack_factory: list[Stack],
    tmp_path: Path,
    text_models: Path,  # noqa: F811
) -> None:
    stack = make_stack(tmp_path, ["docker-compose.yml", "docker-compose.host-models.yml"])
    stack_factory.append(stack)
    models = tmp_path / "host-models"
    shutil.copytree(text_models / "minilm", models / "minilm")
    stack.env.update(ML_MODELS_HOST_PATH=str(models), MLAPI_EXTRAS="text", MLAPI_TAG="e2e-text")
    stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "300")
    sentences = ["Serving sentence embeddings from a container.", "short"]
    response = httpx.post(
        stack.url + "/v1/embeddings",
        json={"model": "minilm", "input": sentences, "encoding_format": "float"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    served = np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)
    from mlapi.repository import config as model_config
    from mlapi.runtimes.base import LoadContext
    from mlapi.runtimes.text import TextRuntime

    folder = models / "minilm" / "1"
    config = model_config.parse(model_config.read_raw(folder / "model.toml"))
    host = TextRuntime(LoadContext(folder, folder / "model.onnx", config, False, 1))
    expected = host.predict({"text": np.array(sentences, dtype=object)}, ["embedding"])
    np.testing.assert_allclose(served, expected["embedding"], atol=1e-5)
    # doctor measures it like any model, under the service's CPU limit
    files = [a for name in stack.files for a in ("-f", name)]
    doctor = subprocess.run(
        [MLAPI, "doctor", *files, "--model-path", str(models), "--format", "json"],
        cwd=stack.folder,
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(doctor.stdout)
    (measured,) = report["models"]
    assert measured["name"] == "minilm" and measured["latency_ms"]["batch_1"] > 0
    assert measured["steady_rss_bytes"] > 80_000_000  # a 90 MB encoder is resident
    assert doctor.returncode == 0, [f for f in report["findings"] if f["severity"] == "fail"]

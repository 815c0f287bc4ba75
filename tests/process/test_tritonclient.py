"""The official tritonclient, with its defaults (binary tensors, no Content-Type),
against `mlapi serve`: results equal in-process onnxruntime for batch sizes 1..64."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from mlapi.settings import DEFAULT_MODEL_PATH
from tests.fixtures.models import DEFAULT_ONNX, write_onnx_classifier
from tests.process.conftest import Server

pytestmark = pytest.mark.process


def _check_all_batch_sizes(server: Server, model: str, onnx_path: Path, n_features: int) -> None:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(model)
        metadata = client.get_model_metadata(model)
        assert metadata["inputs"][0]["name"] == input_name
        rng = np.random.default_rng(7)
        for batch in range(1, 65):
            rows = (rng.normal(size=(batch, n_features)) * 2 + 4).astype(np.float32)
            tensor = triton.InferInput(input_name, list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)  # binary_data=True by default
            result = client.infer(model, [tensor])
            expected = session.run(output_names, {input_name: rows})
            for name, want in zip(output_names, expected, strict=True):
                got = result.as_numpy(name)
                assert got is not None and got.shape == want.shape, (batch, name)
                if want.dtype.kind in "OUS":
                    assert [g.decode() if isinstance(g, bytes) else g for g in got.ravel()] == list(
                        want.ravel()
                    ), (batch, name)
                else:
                    np.testing.assert_allclose(
                        got, want, rtol=1e-6, atol=1e-7, err_msg=f"batch {batch}"
                    )
    finally:
        client.close()


def test_tritonclient_on_the_default_model(start_server: Callable[..., Server]) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH))
    _check_all_batch_sizes(server, "iris", DEFAULT_ONNX, 4)


def test_tritonclient_on_a_fresh_onnx_model_with_no_config(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    onnx_path = write_onnx_classifier(repo, "fresh", n_features=12)
    assert not (onnx_path.parent / "model.toml").exists()
    server = start_server(MODEL_PATH=str(repo))
    _check_all_batch_sizes(server, "fresh", onnx_path, 12)


def test_tritonclient_json_mode_and_errors(start_server: Callable[..., Server]) -> None:
    server = start_server(MODEL_PATH=str(DEFAULT_MODEL_PATH), API_KEY="k-123")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        rows = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
        tensor = triton.InferInput("input", [1, 4], "FP32")
        tensor.set_data_from_numpy(rows, binary_data=False)
        outputs = [triton.InferRequestedOutput("label", binary_data=False)]
        result = client.infer("iris", [tensor], outputs=outputs, headers={"X-API-Key": "k-123"})
        assert result.as_numpy("label").tolist() == ["setosa"]
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("iris", [tensor], outputs=outputs)
        bad = triton.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(rows[:, :3])
        with pytest.raises(InferenceServerException, match="shape"):
            client.infer("iris", [bad], headers={"X-API-Key": "k-123"})
    finally:
        client.close()

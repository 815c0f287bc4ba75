"""A text model served by `mlapi serve`, called by the `openai` Python package,
unmodified: its embeddings are sentence-transformers' own (cosine >= 0.999), in
both encodings, through the same key, metrics and drain as every route."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from tests.conftest import wait_for
from tests.fixtures.text import minilm_source, text_models  # noqa: F401
from tests.process.conftest import MLAPI, Server, base_env, metric, run_import

pytestmark = pytest.mark.process
KEY = "sk-local-test-key"
SENTENCES = [
    "How do I serve a model on my own machine?",
    "Serving machine learning models locally",
    "The cat sat on the mat.",
    "Prices of wheat rose sharply in the spring of 1847, after a poor harvest across "
    "much of northern Europe, and bread riots followed in several towns.",
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_source()), device="cpu")
    return np.asarray(model.encode(SENTENCES), dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_openai_client_gets_sentence_transformers_embeddings(
    start_server: Callable[..., Server],
    text_models: Path,  # noqa: F811
    reference: np.ndarray,
) -> None:
    from openai import AuthenticationError, OpenAI

    server = start_server(MODEL_PATH=str(text_models), API_KEY=KEY)
    client = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    # a list, in the base64 the client asks for when the caller does not say
    listed = client.embeddings.create(model="minilm", input=SENTENCES)
    got = np.array([item.embedding for item in listed.data], dtype=np.float32)
    assert got.shape == (4, 384)
    assert cosine(got, reference).min() >= 0.999
    assert listed.usage.prompt_tokens == listed.usage.total_tokens > len(SENTENCES)
    # floats, and one string at a time
    for index, sentence in enumerate(SENTENCES):
        one = client.embeddings.create(model="minilm", input=sentence, encoding_format="float")
        vector = np.array([one.data[0].embedding], dtype=np.float32)
        assert cosine(vector, reference[index : index + 1])[0] >= 0.999
    assert [m.id for m in client.models.list().data] == ["minilm", "minilm-dims", "minilm-strict"]
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="minilm", input="x"
        )
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    line = next(
        line
        for line in metrics.splitlines()
        if line.startswith("mlapi_requests_total{") and 'model="minilm"' in line and '"ok"' in line
    )
    assert float(line.split()[-1]) >= 1 + len(SENTENCES)


def test_sigterm_answers_the_embedding_requests_in_flight(
    start_server: Callable[..., Server],
    text_models: Path,  # noqa: F811
) -> None:
    # What is asserted is that every accepted request is answered, not how fast: on a
    # busy machine six encodings took past the default 30 s request timeout (a 504),
    # so the deadlines here are long enough for any machine.
    server = start_server(
        MODEL_PATH=str(text_models),
        MLAPI_DRAIN_GRACE_S="0.5",
        MLAPI_REQUEST_TIMEOUT_S="300",
        MLAPI_SHUTDOWN_TIMEOUT_S="300",
    )
    answers: list[object] = []
    body = {"model": "minilm", "input": ["a longer sentence to keep the encoder busy " * 20] * 32}

    def call() -> None:
        try:
            answers.append(httpx.post(server.url + "/v1/embeddings", json=body, timeout=300))
        except httpx.HTTPError as exc:
            answers.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    # every request accepted and in flight (queued or encoding) before the signal
    wait_for(
        lambda: metric(server, 'mlapi_inflight_requests{model="minilm"') >= len(threads),
        timeout_s=30,
        what="six requests in flight",
    )
    server.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=300)
    assert server.process.wait(timeout=300) == 0
    codes = [getattr(answer, "status_code", answer) for answer in answers]
    assert codes == [200] * len(threads), codes


def test_import_a_sentence_transformers_folder(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    done = run_import(str(minilm_source()), "--name", "search", "--model-path", str(repository))
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout and "lowest cosine" in done.stdout
    folder = repository / "search" / "1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.toml",
        "tokenizer.json",
    ]
    listed = subprocess.run(
        [MLAPI, "models", "list"],
        env=base_env(MODEL_PATH=str(repository)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "search" in listed.stdout and " text " in listed.stdout
    # the next import is the next version
    again = run_import(str(minilm_source()), "--name", "search", "--model-path", str(repository))
    assert again.returncode == 0 and (repository / "search" / "2" / "model.onnx").is_file()


def test_import_refuses_what_it_cannot_convert_safely(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(minilm_source() / name, pickled / name)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    corrupt = tmp_path / "corrupt"  # the folder with its weights cut short
    corrupt.mkdir()
    for path in minilm_source().iterdir():
        if path.name != "model.safetensors":
            (corrupt / path.name).symlink_to(path)
    (corrupt / "model.safetensors").write_bytes(
        (minilm_source() / "model.safetensors").read_bytes()[:4096]
    )
    cases = [
        ([str(pickled), "--name", "m"], "pickle"),
        ([str(corrupt), "--name", "m"], "cannot be read as a text model: SafetensorError"),
        ([str(tmp_path), "--name", "m"], "neither a sentence-transformers"),
        ([str(minilm_source()), "--name", "../escape"], "not a model name"),
        ([str(minilm_source()), "--name", "m", "--max-length", "0"], "--max-length"),
        ([str(pickled / "config.json"), "--name", "m", "--quantize", "int8"], "text models"),
    ]
    for args, message in cases:
        done = run_import(*args, "--model-path", str(repository))
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr
    assert list(repository.iterdir()) == []


def test_int8_import_is_held_to_the_original_and_serves(
    start_server: Callable[..., Server], tmp_path: Path, reference: np.ndarray
) -> None:
    repository = tmp_path / "models"
    repository.mkdir()
    done = run_import(
        str(minilm_source()),
        "--name",
        "small",
        "--quantize",
        "int8",
        "--model-path",
        str(repository),
    )
    assert done.returncode == 0, done.stderr
    assert ", int8;" in done.stdout and "lowest cosine 0.9" in done.stdout, done.stdout
    lowest = float(done.stdout.split("lowest cosine ")[1].split()[0])
    assert 0.97 <= lowest < 0.9999  # int8 differs from fp32, within the bound
    folder = repository / "small" / "1"
    assert "quantized to int8" in (folder / "model.toml").read_text()
    assert (folder / "model.onnx").stat().st_size < (
        minilm_source() / "model.safetensors"
    ).stat().st_size
    server = start_server(MODEL_PATH=str(repository))
    answer = httpx.post(server.url + "/v1/embeddings", json={"model": "small", "input": SENTENCES})
    got = np.array([d["embedding"] for d in answer.json()["data"]], dtype=np.float32)
    assert 0.95 <= cosine(got, reference).min() < 0.9999


def test_int8_import_is_refused_when_the_quantization_strays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quantization that moves the weights (four int8 scales of one layer tripled):
    refused, both tries' lowest cosines named (the same import untampered passes:
    test_int8_import_is_held_to_the_original_and_serves)."""
    import onnx
    from onnx import numpy_helper

    from mlapi.errors import ConfigError
    from mlapi.importers import text as text_import

    real = text_import.quantize_int8

    def tampered(path: Path, keep: tuple[str, ...] = ()) -> None:
        real(path, keep)
        model = onnx.load(str(path))
        scales = [t for t in model.graph.initializer if t.name.endswith("_scale")]
        for tensor in scales[:4]:  # the first layer's query, key, value and output
            tripled = numpy_helper.to_array(tensor) * 3
            tensor.CopyFrom(numpy_helper.from_array(tripled, tensor.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(text_import, "quantize_int8", tampered)
    with pytest.raises(ConfigError) as refused:
        text_import.export(minilm_source(), tmp_path / "staging", quantize="int8")
    message = refused.value.args[0]
    assert message.startswith("int8 refused: the int8 encoder differs from the original")
    values = [float(v.split()[0]) for v in message.split("lowest cosine ")[1:]]
    assert len(values) == 2 and all(v < 0.97 for v in values), message

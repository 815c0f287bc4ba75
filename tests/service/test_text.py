"""Text models in-process: /v1/embeddings and /v1/models in OpenAI's shapes, the V2
route on the same models, the classifier, and every bad input a 4xx in OpenAI's
error shape while the server keeps serving."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.fixtures.text import text_models  # noqa: F401  (the session fixture)

Start = Callable[..., TestClient]
SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground, while people watch from the fence.",
    "ok",
    "Two dogs play in the snow; one of them carries a stick almost as long as itself.",
]


@pytest.fixture
def client(serve_app: Start, text_models: Path) -> TestClient:  # noqa: F811
    return serve_app(text_models)


def embed(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/embeddings", json={"model": "minilm", **body})


def vectors(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    rows = []
    for item in data:
        value = item["embedding"]
        if isinstance(value, str):
            value = np.frombuffer(base64.b64decode(value), dtype="<f4")
        rows.append(np.asarray(value, dtype=np.float32))
    return np.stack(rows)


def test_a_batch_of_mixed_lengths_equals_each_sentence_alone(client: TestClient) -> None:
    batch = vectors(embed(client, input=SENTENCES))
    alone = np.stack([vectors(embed(client, input=s))[0] for s in SENTENCES])
    assert batch.shape == (4, 384)
    np.testing.assert_allclose(batch, alone, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)  # normalized


def test_base64_is_the_same_floats(client: TestClient) -> None:
    floats = vectors(embed(client, input=SENTENCES[:2], encoding_format="float"))
    packed = vectors(embed(client, input=SENTENCES[:2], encoding_format="base64"))
    np.testing.assert_array_equal(floats, packed)


def test_usage_counts_the_tokens_and_token_ids_are_accepted(client: TestClient) -> None:
    from tokenizers import Tokenizer

    from tests.fixtures.text import minilm_source

    tokenizer = Tokenizer.from_file(str(minilm_source() / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128
    ids = [tokenizer.encode(s).ids for s in SENTENCES[:2]]
    response = embed(client, input=SENTENCES[:2])
    assert response.json()["usage"] == {
        "prompt_tokens": sum(map(len, ids)),
        "total_tokens": sum(map(len, ids)),
    }
    assert response.json()["object"] == "list" and response.json()["model"] == "minilm"
    by_ids = vectors(embed(client, input=ids))
    np.testing.assert_allclose(by_ids, vectors(response), atol=2e-6)
    single = vectors(embed(client, input=ids[0]))  # one list of ids is one input
    assert single.shape == (1, 384)


def v2_outputs(client: TestClient, model: str, texts: list[str]) -> dict[str, Any]:
    """The V2 infer route on texts as BYTES: its outputs by name."""
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}
    response = client.post(f"/v2/models/{model}/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def test_v2_infer_with_bytes_equals_the_embeddings_route(client: TestClient) -> None:
    outputs = v2_outputs(client, "minilm", SENTENCES[:2])
    assert outputs["embedding"]["shape"] == [2, 384]
    v2 = np.array(outputs["embedding"]["data"], dtype=np.float32).reshape(2, 384)
    np.testing.assert_allclose(v2, vectors(embed(client, input=SENTENCES[:2])), atol=1e-6)
    metadata = client.get("/v2/models/minilm").json()
    assert metadata["platform"] == "text"
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def test_models_lists_the_embedding_models_only(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert sorted(m["id"] for m in listed["data"]) == ["minilm", "minilm-dims", "minilm-strict"]


def test_dimensions_cut_and_renormalize_where_the_model_allows(client: TestClient) -> None:
    full = vectors(client.post("/v1/embeddings", json={"model": "minilm-dims", "input": "hi"}))
    cut = vectors(
        client.post(
            "/v1/embeddings", json={"model": "minilm-dims", "input": "hi", "dimensions": 128}
        )
    )
    assert cut.shape == (1, 128)
    expected = full[:, :128] / np.linalg.norm(full[:, :128])
    np.testing.assert_allclose(cut, expected, atol=1e-6)


def test_the_classifier_answers_labels_and_scores(client: TestClient) -> None:
    outputs = v2_outputs(client, "sentiment", SENTENCES[:3])
    scores = np.array(outputs["scores"]["data"]).reshape(3, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    names = ["negative", "neutral", "positive"]
    assert outputs["label"]["data"] == [names[i] for i in scores.argmax(axis=1)]
    # not an embedding model: the OpenAI route says so
    refused = client.post("/v1/embeddings", json={"model": "sentiment", "input": "x"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"


BAD = [
    ({"input": []}, 400, "input"),
    ({"input": ""}, 400, "input"),
    ({"input": ["fine", ""]}, 400, "input"),
    ({"input": [1.5, "x"]}, 400, "input"),
    ({"input": [{"text": "x"}]}, 400, "input"),
    ({"input": None}, 400, "input"),
    ({"input": [[1, 2], ["a"]]}, 400, "input"),
    ({"input": [[999999999]]}, 400, None),  # a token id past the vocabulary
    ({"input": "x", "model": "nope"}, 404, None),
    ({"input": "x", "dimensions": 64}, 400, "dimensions"),
    ({"input": "x", "model": "minilm-dims", "dimensions": 64}, 400, "dimensions"),
    ({"input": "x", "model": "minilm-dims", "dimensions": "128"}, 400, "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "x", "temperature": 1}, 400, "temperature"),
    ({"input": "x", "model": 3}, 400, "model"),
    ({"input": "word " * 40, "model": "minilm-strict"}, 400, None),  # over 16 tokens
    ({"input": ["x"] * 2049}, 400, "input"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD, ids=[str(b)[:60] for b, _, _ in BAD])
def test_bad_input_is_an_openai_error_and_the_server_keeps_serving(
    client: TestClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = client.post("/v1/embeddings", json={"model": "minilm", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    assert vectors(embed(client, input="still serving")).shape == (1, 384)


def test_over_the_length_limit_without_truncation_says_so(client: TestClient) -> None:
    response = client.post(
        "/v1/embeddings", json={"model": "minilm-strict", "input": ["short", "word " * 40]}
    )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "input[1]" in message and "maximum of 16" in message and "truncation is off" in message
    # truncation on (the default): a long text is cut, not refused
    assert vectors(embed(client, input="word " * 400)).shape == (1, 384)


def test_a_body_over_the_limit_and_bad_json(serve_app: Start, text_models: Path) -> None:  # noqa: F811
    client = serve_app(text_models, MLAPI_MAX_BODY_BYTES=64 * 1024)
    response = embed(client, input=["a sentence of some thirty bytes"] * 10_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    broken = client.post("/v1/embeddings", content=b'{"model": "minilm", "input": [')
    assert broken.status_code == 400 and "error" in broken.json()
    assert vectors(embed(client, input="still serving")).shape == (1, 384)


def test_the_api_key_guards_the_openai_routes(serve_app: Start, text_models: Path) -> None:  # noqa: F811
    client = serve_app(text_models, API_KEY="sk-test-key")
    for path, method in (("/v1/embeddings", "post"), ("/v1/models", "get")):
        kwargs = {"json": {"model": "minilm", "input": "x"}} if method == "post" else {}
        refused = getattr(client, method)(path, **kwargs)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"
        allowed = getattr(client, method)(
            path, headers={"Authorization": "Bearer sk-test-key"}, **kwargs
        )
        assert allowed.status_code == 200


def test_a_small_token_budget_encodes_in_several_passes_alike(text_models: Path) -> None:  # noqa: F811
    from mlapi.repository import config as model_config
    from mlapi.runtimes.base import LoadContext
    from mlapi.runtimes.text import TextRuntime

    folder = text_models / "minilm" / "1"
    config = model_config.parse(model_config.read_raw(folder / "model.toml"))
    runtimes = []
    for budget in (None, 48):
        table = {**(config.text or {}), **({"token_budget": budget} if budget else {})}
        ctx = LoadContext(folder, folder / "model.onnx", replace(config, text=table), False, 1)
        runtimes.append(TextRuntime(ctx))
    one_pass, small = runtimes
    passes: list[int] = []
    encode = small._encode

    def counted(rows: Any, options: Any = None) -> Any:
        passes.append(len(rows))
        return encode(rows, options)

    small._encode = counted  # type: ignore[method-assign]
    rows = np.array(SENTENCES * 3, dtype=object)
    expected = one_pass.predict({"text": rows}, ["embedding"])["embedding"]
    got = small.predict({"text": rows}, ["embedding"])["embedding"]
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert len(passes) > 2 and sum(passes) == len(rows)
    for runtime in runtimes:
        runtime.close()


def test_mixed_lengths_are_cut_by_padding_and_answer_alike(text_models: Path) -> None:  # noqa: F811
    """Texts of 1 to 60 words: the default bound cuts the batch into passes (padded
    within 1.1x of the real tokens past 4 rows); the embeddings equal one pass's."""
    from mlapi.repository import config as model_config
    from mlapi.runtimes.base import LoadContext
    from mlapi.runtimes.text import TextRuntime

    folder = text_models / "minilm" / "1"
    config = model_config.parse(model_config.read_raw(folder / "model.toml"))
    runtimes = []
    for bound in (1000, None):
        table = {**(config.text or {}), **({"max_padding": bound} if bound else {})}
        ctx = LoadContext(folder, folder / "model.onnx", replace(config, text=table), False, 1)
        runtimes.append(TextRuntime(ctx))
    one_pass, cut = runtimes
    shapes: list[tuple[int, int]] = []
    encode = cut._encode

    def counted(rows: Any, options: Any = None) -> Any:
        shapes.append((len(rows), max(len(ids) for ids, _ in rows)))
        return encode(rows, options)

    cut._encode = counted  # type: ignore[method-assign]
    words = [
        "serve",
        "the",
        "model",
        "on",
        "your",
        "own",
        "machine",
        "with",
        "one",
        "command",
        "and",
        "keep",
        "it",
    ]
    texts = [" ".join(words[j % len(words)] for j in range(1 + (i * 7) % 60)) for i in range(40)]
    rows = np.array(texts, dtype=object)
    expected = one_pass.predict({"text": rows}, ["embedding"])["embedding"]
    got = cut.predict({"text": rows}, ["embedding"])["embedding"]
    np.testing.assert_allclose(got, expected, atol=2e-6)
    real = sum(len(r) for r in cut.token_ids(rows))
    padded = sum(n * longest for n, longest in shapes)
    assert len(shapes) > 3 and sum(n for n, _ in shapes) == len(rows)
    one_pass_padded = len(rows) * max(longest for _, longest in shapes)
    assert padded < 1.25 * real and padded < 0.8 * one_pass_padded
    for runtime in runtimes:
        runtime.close()


def test_a_request_over_the_token_budget_is_refused_before_it_runs(
    serve_app: Start,
    text_models: Path,  # noqa: F811
) -> None:
    """2,048 inputs of 512 characters kept the encoder busy for 7 minutes: the
    request's tokens are counted against MLAPI_MAX_TOKENS before it is queued."""
    from tests.service import test_metrics

    client = serve_app(text_models, MLAPI_MAX_TOKENS=64)
    response = embed(client, input=["a sentence of some words"] * 20)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input" and "MLAPI_MAX_TOKENS" in error["message"]
    assert "over the limit of 64 per request" in error["message"]
    within = embed(client, input=["a sentence of some words"] * 2)
    assert vectors(within).shape == (2, 384)
    assert within.json()["usage"]["prompt_tokens"] <= 64
    found = test_metrics.samples(client)
    labels = {"model": "minilm", "version": "1", "protocol": "http"}
    assert test_metrics.value(found, "mlapi_requests_total", outcome="bad_request", **labels) == 1
    assert test_metrics.value(found, "mlapi_requests_total", outcome="ok", **labels) == 1


def test_a_body_that_is_not_json_is_counted_once(serve_app: Start, text_models: Path) -> None:  # noqa: F811
    """The embeddings route counted nothing until its JSON parsed."""
    from tests.service import test_metrics

    client = serve_app(text_models)
    broken = client.post("/v1/embeddings", content=b'{"model": "minilm", "input": [')
    assert broken.status_code == 400
    found = test_metrics.samples(client)
    unknown = {"model": "", "version": "", "protocol": "http", "outcome": "bad_request"}
    assert test_metrics.value(found, "mlapi_requests_total", **unknown) == 1

"""/v1/rerank and /v1/classify in-process, on two tiny BERTs with seeded random
weights made by the fixture and imported as a user would: the scores equal
sentence-transformers' CrossEncoder and transformers' text-classification pipeline
on the same folders (to 1e-5), ordered, cut, tokenized and refused as the README
says, and the V2 infer route answers the same models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from mlapi.app import asgi_app
from tests.conftest import make_settings, wait_for
from tests.fixtures.text import text_models  # noqa: F401  (the session fixture)

Start = Callable[..., TestClient]
QUERY = "how do I serve a model on my own machine?"
DOCUMENTS = [
    "Serving machine learning models locally with one command.",
    "The cat sat on the mat.",
    "",  # an empty document is scored, not refused: a search result can be empty
    "Prices of wheat rose sharply in the spring of 1847, after a poor harvest.",
    "serve a model",
]
TEXTS = ["A man is eating food.", "ok", "Two dogs play in the snow with a very long stick."]


@pytest.fixture(scope="module")
def client(text_models: Path) -> Iterator[TestClient]:  # noqa: F811
    """One server for the module's read-only requests (its models load once)."""
    with TestClient(
        asgi_app(make_settings(text_models)),
        raise_server_exceptions=False,
        base_url="http://127.0.0.1",
    ) as started:
        wait_for(lambda: started.get("/health").status_code == 200, what="readiness")
        yield started


@pytest.fixture(scope="module")
def cross_encoder(text_models: Path) -> Any:  # noqa: F811
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(text_models.parent / "reranker-source"), device="cpu", max_length=128)


@pytest.fixture(scope="module")
def pipeline(text_models: Path) -> Any:  # noqa: F811
    from transformers import pipeline as make

    return make("text-classification", model=str(text_models.parent / "sentiment-source"))


def rerank(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/rerank", json={"model": "reranker", "query": QUERY, **body})


def test_rerank_scores_equal_the_cross_encoder_best_first(
    client: TestClient, cross_encoder: Any
) -> None:
    expected = cross_encoder.predict([(QUERY, d) for d in DOCUMENTS])
    response = rerank(client, documents=DOCUMENTS)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == np.argsort(-expected, kind="stable").tolist()
    got = {r["index"]: r["relevance_score"] for r in results}
    np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], expected, atol=1e-5)
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all("document" not in r for r in results)  # not asked for
    assert body["model"] == "reranker" and body["usage"]["total_tokens"] > len(DOCUMENTS) * 10
    # sentence-transformers' own ranking agrees, documents and all
    ranked = cross_encoder.rank(QUERY, DOCUMENTS, top_k=2, return_documents=True)
    top = rerank(client, documents=DOCUMENTS, top_n=2, return_documents=True).json()["results"]
    assert [r["index"] for r in top] == [r["corpus_id"] for r in ranked]
    assert [r["document"]["text"] for r in top] == [r["text"] for r in ranked]


def test_top_n_past_the_documents_gives_them_all_and_objects_are_accepted(
    client: TestClient,
) -> None:
    plain = rerank(client, documents=DOCUMENTS[:2], top_n=10).json()["results"]
    assert sorted(r["index"] for r in plain) == [0, 1]
    wrapped = rerank(client, documents=[{"text": d} for d in DOCUMENTS[:2]]).json()["results"]
    assert wrapped == plain


def test_an_over_long_document_is_cut_as_the_cross_encoder_cuts_it(
    client: TestClient, cross_encoder: Any
) -> None:
    long = "serving models on one machine " * 60  # ~300 tokens, over 128
    expected = cross_encoder.predict([(QUERY, long)])
    results = rerank(client, documents=[long]).json()["results"]
    np.testing.assert_allclose([results[0]["relevance_score"]], expected, atol=1e-5)


def test_v2_infer_reranks_text_pairs(client: TestClient, cross_encoder: Any) -> None:
    pairs = [(QUERY, d) for d in DOCUMENTS[:3]]
    inputs = [
        {"name": "text", "datatype": "BYTES", "shape": [3], "data": [q for q, _ in pairs]},
        {"name": "text_pair", "datatype": "BYTES", "shape": [3], "data": [d for _, d in pairs]},
    ]
    response = client.post("/v2/models/reranker/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    np.testing.assert_allclose(outputs["score"]["data"], cross_encoder.predict(pairs), atol=1e-5)
    metadata = client.get("/v2/models/reranker").json()
    assert [i["name"] for i in metadata["inputs"]] == ["text", "text_pair"]
    missing = client.post("/v2/models/reranker/infer", json={"inputs": inputs[:1]})
    assert missing.status_code == 400 and "text_pair" in missing.json()["error"]


def test_classify_equals_the_transformers_pipeline(client: TestClient, pipeline: Any) -> None:
    expected = pipeline(TEXTS, top_k=None)
    response = client.post("/v1/classify", json={"model": "sentiment", "input": TEXTS})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    for got, want in zip(data, expected, strict=True):
        assert [x["label"] for x in got["labels"]] == [x["label"] for x in want]
        np.testing.assert_allclose(
            [x["score"] for x in got["labels"]], [x["score"] for x in want], atol=1e-5
        )
        assert (got["label"], got["score"]) == (
            got["labels"][0]["label"],
            got["labels"][0]["score"],
        )
    top = client.post("/v1/classify", json={"model": "sentiment", "input": TEXTS[0], "top_k": 2})
    assert [x["label"] for x in top.json()["data"][0]["labels"]] == [
        x["label"] for x in expected[0][:2]
    ]
    # the V2 route on the same model names the same best label
    tensor = {"name": "text", "datatype": "BYTES", "shape": [3], "data": TEXTS}
    v2 = client.post("/v2/models/sentiment/infer", json={"inputs": [tensor]}).json()
    labels = next(o for o in v2["outputs"] if o["name"] == "label")["data"]
    assert labels == [d["label"] for d in data]


BAD_RERANK = [
    ({"documents": []}, 400, "documents"),
    ({"documents": "one string"}, 400, "documents"),
    ({"documents": ["fine", 3]}, 400, "documents"),
    ({"documents": ["x"] * 2049}, 400, "documents"),
    ({"documents": ["x"], "query": ""}, 400, "query"),
    ({"documents": ["x"], "query": None}, 400, "query"),
    ({"documents": ["x"], "top_n": 0}, 400, "top_n"),
    ({"documents": ["x"], "top_n": "2"}, 400, "top_n"),
    ({"documents": ["x"], "return_documents": "yes"}, 400, "return_documents"),
    ({"documents": ["x"], "rank_fields": ["a"]}, 400, "rank_fields"),
    ({"documents": ["x"], "model": "minilm"}, 400, "model"),  # an encoder, not a reranker
    ({"documents": ["x"], "model": "sentiment"}, 400, "model"),
    ({"documents": ["x"], "model": "nope"}, 404, None),
]


@pytest.mark.parametrize(
    ("body", "status", "param"), BAD_RERANK, ids=[str(b)[:60] for b, _, _ in BAD_RERANK]
)
def test_bad_rerank_input_is_an_openai_error_and_the_server_keeps_serving(
    client: TestClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = rerank(client, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert rerank(client, documents=["still serving"]).status_code == 200


BAD_CLASSIFY = [
    ({"input": []}, 400, "input"),
    ({"input": ""}, 400, "input"),
    ({}, 400, "input"),
    ({"input": "x", "top_k": 0}, 400, "top_k"),
    ({"input": "x", "model": "reranker"}, 400, "model"),
    ({"input": "x", "model": "minilm"}, 400, "model"),
    ({"input": "x", "temperature": 0}, 400, "temperature"),
]


@pytest.mark.parametrize(
    ("body", "status", "param"), BAD_CLASSIFY, ids=[str(b)[:60] for b, _, _ in BAD_CLASSIFY]
)
def test_bad_classify_input_is_an_openai_error(
    client: TestClient, body: dict[str, Any], status: int, param: str | None
) -> None:
    response = client.post("/v1/classify", json={"model": "sentiment", **body})
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    fine = client.post("/v1/classify", json={"model": "sentiment", "input": "still serving"})
    assert fine.status_code == 200


def test_the_token_budget_refuses_before_the_model_runs(
    serve_app: Start,
    text_models: Path,  # noqa: F811
) -> None:
    client = serve_app(text_models, MLAPI_MAX_TOKENS=64)
    ran = batches(client)
    # each pair repeats the query: 5 documents of ~12 tokens with it come to over 64
    refused = rerank(client, documents=DOCUMENTS)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "documents" and "MLAPI_MAX_TOKENS" in error["message"]
    too_many = client.post("/v1/classify", json={"model": "sentiment", "input": TEXTS * 8})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "input"
    assert batches(client) == ran  # refused before the batcher: nothing ran
    assert rerank(client, documents=DOCUMENTS[:1]).status_code == 200
    assert batches(client) != ran  # and the count would have shown a run


def batches(client: TestClient) -> list[str]:
    """The batch counters' lines of /metrics."""
    text = client.get("/metrics").text
    return [line for line in text.splitlines() if line.startswith("mlapi_batch_size_count")]


def test_a_reranker_without_truncation_refuses_an_over_long_document(
    serve_app: Start,
    text_models: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(text_models / "reranker", repo / "reranker")
    toml = repo / "reranker" / "1" / "model.toml"
    toml.write_text(toml.read_text().replace("truncate = true", "truncate = false"))
    (repo / "reranker" / "1" / "manifest.json").unlink()  # model.toml changed
    client = serve_app(repo)
    long = "serving models on one machine " * 60
    response = rerank(client, documents=["short", long])
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "documents[1]" in message and "maximum of 128" in message


def test_a_key_reaches_only_its_models_and_each_call_is_counted(
    serve_app: Start,
    text_models: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    import hashlib

    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(b"k-classify").hexdigest()
    keys.write_text(
        f'[[key]]\nname = "classifier-app"\nsha256 = "{digest}"\nmodels = ["sentiment"]\n'
    )
    client = serve_app(text_models, API_KEYS_FILE=str(keys))
    mine = {"Authorization": "Bearer k-classify"}
    anonymous = client.post("/v1/classify", json={"model": "sentiment", "input": "x"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    fine = client.post("/v1/classify", json={"model": "sentiment", "input": "x"}, headers=mine)
    assert fine.status_code == 200
    denied = client.post(
        "/v1/rerank",
        json={"model": "reranker", "query": "q", "documents": ["d"]},
        headers=mine,
    )
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == "key 'classifier-app' may not call model 'reranker'"
    counted = [
        line
        for line in client.get("/metrics", headers=mine).text.splitlines()
        if line.startswith("mlapi_requests_total{") and 'client="classifier-app"' in line
    ]
    assert any('model="sentiment"' in line and 'outcome="ok"' in line for line in counted), counted
